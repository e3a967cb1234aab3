"""Flower ClientApp: site training, differential privacy and fairness augmentation."""
