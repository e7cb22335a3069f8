#!/usr/bin/env bash
# Aggregated serving on one machine: the HTTP frontend (round-robin routing) plus N mock workers,
# all on 127.0.0.1 in a private discovery namespace. Ctrl-C stops everything.
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"
ROTOR_FRONTEND_ARGS=()
rotor_serve_stack agg.sh round-robin \
  "Starts the Rotor frontend with round-robin routing and mock workers." "$@"
