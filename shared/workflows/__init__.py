"""What is done with the core (``fedneurogen.shared``): training a model on a site's windows,
synthesizing BIDS derivatives, evaluating against the baselines, explaining predictions,
plotting, and fairness augmentation. Both the site client and the command line run these."""
