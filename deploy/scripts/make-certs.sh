#!/usr/bin/env bash
# Coordinator: create the consortium CA and the SuperLink's TLS certificate.
#   deploy/scripts/make-certs.sh OUT_DIR HOST [HOST ...]
# HOST: every DNS name and IP address the sites use to reach the SuperLink (they become the
# certificate's subject alternative names). Writes OUT_DIR/ca.crt (give to every site),
# OUT_DIR/ca.key (keep here), OUT_DIR/superlink.crt and OUT_DIR/superlink.key (0600).
set -euo pipefail
if [ "$#" -lt 2 ]; then
  echo "usage: $0 OUT_DIR HOST [HOST ...]" >&2
  exit 2
fi
out="$1"; shift
FEDNEUROGEN="${FEDNEUROGEN:-fedneurogen}"
if [ ! -f "$out/ca.crt" ]; then
  "$FEDNEUROGEN" certs ca --out "$out"
else
  echo "keeping the existing CA in $out"
fi
hosts=()
for h in "$@"; do hosts+=(--host "$h"); done
"$FEDNEUROGEN" certs server --ca "$out" --out "$out" "${hosts[@]}"
"$FEDNEUROGEN" certs check --cert "$out/superlink.crt" --ca-cert "$out/ca.crt" "${hosts[@]}"
