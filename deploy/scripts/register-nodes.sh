#!/usr/bin/env bash
# Coordinator: allow sites to join by registering their public keys with the SuperLink
# (started with --enable-supernode-auth).
#   deploy/scripts/register-nodes.sh CONNECTION PUBKEY [PUBKEY ...]
# CONNECTION: a SuperLink connection in $FLWR_HOME/config.toml (address, root-certificates).
# A SuperNode whose key is not registered is refused by the SuperLink.
set -euo pipefail
if [ "$#" -lt 2 ]; then
  echo "usage: $0 CONNECTION PUBKEY [PUBKEY ...]" >&2
  exit 2
fi
connection="$1"; shift
for key in "$@"; do
  name="$(basename "$key" .pub)"
  "${FLWR:-flwr}" supernode register "$key" "$connection" --name "$name"
done
"${FLWR:-flwr}" supernode list "$connection"
