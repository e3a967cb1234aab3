#!/usr/bin/env bash
# Site: create this site's SuperNode authentication key pair.
#   deploy/scripts/make-node-key.sh OUT_DIR SITE_NAME
# Writes OUT_DIR/SITE_NAME (private, 0600: it never leaves the site) and OUT_DIR/SITE_NAME.pub
# (send it to the coordinator, who registers it).
set -euo pipefail
if [ "$#" -ne 2 ]; then
  echo "usage: $0 OUT_DIR SITE_NAME" >&2
  exit 2
fi
"${FEDNEUROGEN:-fedneurogen}" certs node-key --out "$1" --name "$2"
