"""Model and data code used by both the server and the site clients.

Nothing in here imports ``fedneurogen.server``, ``fedneurogen.client`` or
``fedneurogen.simulations``: dependencies point one way, into this package.
"""
