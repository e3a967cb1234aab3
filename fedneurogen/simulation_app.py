"""The ClientApp the local simulation installs: the site's own app (``client/app.py``) with the
simulation's mod (``simulations/drills.py``: simulated node settings, fault and attack drills).

It is composed here, at the top of the stack, so that neither ``client`` nor ``simulations``
imports the other. ``run_federated`` runs it (``simulation_app``); a deployment's ``flwr run .``
runs ``fedneurogen.client.app:app`` and never loads this module.
"""

from fedneurogen.client.app import client_app
from fedneurogen.simulations.drills import simulation_mod

app = client_app(mods=[simulation_mod])
