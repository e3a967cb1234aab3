"""Model and data code used by both the server and the site clients (docs/architecture.md §2).

Two layers:

- the core, here at the top: the data contract (``recording``), reading sites (``data/``), the
  hemodynamic design and ridge statistics (``design``, ``ridge``, ``features``, ``integration``),
  the model (``model/``), configuration (``config``, ``run_config``), errors, atomic I/O, file
  formats, metrics, subject splits, the cortical surface; and ``deploy/``, what a deployed
  consortium is made of (certificates, TLS files, the proxy's routes, the app allowlist);
- ``workflows/``: what is done with them: training, synthesis, evaluation with its baselines,
  explanations, plots and fairness augmentation.

The core imports nothing from ``workflows`` (tests/test_layers.py checks it), and nothing in
this package imports ``fedneurogen.server``, ``fedneurogen.client`` or ``fedneurogen.simulations``.
"""
