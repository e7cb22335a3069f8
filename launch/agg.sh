#!/usr/bin/env bash
# Aggregated serving on one machine: the HTTP frontend (round-robin routing) plus N mock workers,
# all on 127.0.0.1 in a private discovery namespace. Ctrl-C stops everything.
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

usage() {
  cat <<USAGE
Usage: launch/agg.sh [options] [-- extra mocker flags]

Starts the Rotor frontend and mock workers, waits until the model is served, then runs until
Ctrl-C or until any process exits.

Options:
  --num-workers N     mock workers to start (default: 2)
  --http-port PORT    frontend HTTP port on 127.0.0.1 (default: 8000)
  --model-path DIR    local Hugging Face model folder (default: Rotor's shipped mock model)
  --namespace NAME    discovery namespace (default: a private one for this run)
  -h, --help          show this help
Flags after -- go to 'python -m mocker' (see 'python -m mocker --help'), for example
  launch/agg.sh -- --speedup-ratio 10
USAGE
}

num_workers=2 http_port=8000 model_path="" namespace="" extra=()
while (( $# )); do
  case "$1" in
    --num-workers) num_workers="$2"; shift 2 ;;
    --http-port) http_port="$2"; shift 2 ;;
    --model-path) model_path="$2"; shift 2 ;;
    --namespace) namespace="$2"; shift 2 ;;
    -h|--help) usage; exit 0 ;;
    --) shift; extra=("$@"); break ;;
    *) echo "unknown option: $1" >&2; usage >&2; exit 2 ;;
  esac
done
namespace="${namespace:-$(rotor_private_namespace)}"
model_args=(); [[ -n "$model_path" ]] && model_args=(--model-path "$model_path")

rotor_install_traps
rotor_start frontend "$PYTHON" -m frontend --http-host 127.0.0.1 --http-port "$http_port" \
  --namespace "$namespace"
rotor_start workers "$PYTHON" -m mocker --num-workers "$num_workers" --namespace "$namespace" \
  "${model_args[@]}" "${extra[@]}"
rotor_wait_for_model "http://127.0.0.1:$http_port" 60
rotor_log "serving on http://127.0.0.1:$http_port/v1 with $num_workers mock worker(s) (namespace $namespace)"
rotor_wait_any_exit
