#!/usr/bin/env bash
# KV-aware routing on one machine: the HTTP frontend (--router-mode kv) plus N mock workers, on
# 127.0.0.1 in a private discovery namespace. Ctrl-C stops everything.
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"
ROTOR_FRONTEND_ARGS=()
rotor_serve_stack agg_router.sh kv \
  "Starts the Rotor frontend with KV-aware routing (each request goes to the worker that already
holds most of its prompt's KV blocks, weighed against load) and mock workers." "$@"
