#!/usr/bin/env bash
# A local consortium for rehearsal: CA, a TLS SuperLink with node authentication behind an nginx
# proxy that gives the sites the Fleet API only and the admins the Control API only, and N
# authenticated site daemons with their privacy policies, as real processes on loopback.
#   deploy/scripts/local-consortium.sh up DIR [--sites N] [--data-root ROOT] [--site-config 'key="value" ...']
#   deploy/scripts/local-consortium.sh down DIR
# `up` writes DIR/endpoints.env (SITE_ADDRESS, ADMIN_ADDRESS, CA_CERT, FLWR_HOME, FLWR_CONNECTION);
# `down` stops exactly the processes `up` started. Needs nginx and the fedneurogen environment
# (flower-superlink, flower-supernode, flwr and fedneurogen on PATH). Same as `fedneurogen consortium`.
set -euo pipefail
exec "${FEDNEUROGEN:-fedneurogen}" consortium "$@"
