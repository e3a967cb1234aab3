"""The site's Flower ClientApp and nothing else: training and evaluation on the site's data,
differential privacy, refusals and the app gate (fairness augmentation is in
``fedneurogen.shared.workflows.fairness``; the simulation's drills in ``fedneurogen.simulations``)."""
