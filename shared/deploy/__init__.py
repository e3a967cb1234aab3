"""What a deployed consortium is made of, in one place (deploy/README.md):

- ``pki``: the consortium CA, the SuperLink's TLS certificate, the sites' authentication keys;
- ``tls``: ``TlsFiles``, the SuperLink's certificate, key and CA as the Flower processes and the
  proxy take them;
- ``proxy``: the nginx routes in front of the SuperLink (sites reach the Fleet API only, admins
  the Control API only), for ``fedneurogen consortium proxy-config`` and the local consortium;
- ``apps``: the hash of a Flower app and a site's allowlist of apps.

Part of the core of ``shared``: it imports nothing from ``workflows``, ``server``, ``client`` or
``simulations``; the local consortium (``simulations/consortium.py``) and the CLI build on it.
"""
