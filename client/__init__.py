"""Flower ClientApp: site training, differential privacy, refusals, the app gate and drills (fairness augmentation is in ``fedneurogen.shared.workflows.fairness``)."""
