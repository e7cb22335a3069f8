# Shared helper for Rotor's launch scripts: source it, then call rotor_start / rotor_wait_for_model
# / rotor_wait_any_exit. Every child runs in its own process group and is stopped (TERM, then KILL)
# when the script exits, is interrupted, or when any child dies.
#
# Environment: PYTHON (default: python3, or .venv/bin/python at the repository root when present).

set -euo pipefail

ROTOR_ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
if [[ -z "${PYTHON:-}" ]]; then
  if [[ -x "$ROTOR_ROOT/.venv/bin/python" && -z "${VIRTUAL_ENV:-}" ]]; then
    PYTHON="$ROTOR_ROOT/.venv/bin/python"
  else
    PYTHON=python3
  fi
fi
export PYTHONPATH="$ROTOR_ROOT${PYTHONPATH:+:$PYTHONPATH}"
ROTOR_PIDS=()

rotor_log() { printf '[launch] %s\n' "$*" >&2; }

# A private discovery namespace, so parallel stacks never see each other's workers; removed by
# rotor_stop_all (a namespace given with --namespace is the caller's and stays).
ROTOR_PRIVATE_NAMESPACE="launch-$(basename "$0" .sh)-$$"
rotor_private_namespace() { printf '%s' "$ROTOR_PRIVATE_NAMESPACE"; }

# rotor_start NAME CMD...: start CMD in the background in its own process group.
rotor_start() {
  local name="$1"; shift
  setsid "$@" &
  ROTOR_PIDS+=("$!")
  rotor_log "started $name (pid $!): $*"
}

rotor_stop_all() {
  trap - EXIT INT TERM
  local pid
  for pid in "${ROTOR_PIDS[@]}"; do kill -TERM -- "-$pid" 2>/dev/null || true; done
  for _ in $(seq 50); do
    local alive=0
    for pid in "${ROTOR_PIDS[@]}"; do kill -0 "$pid" 2>/dev/null && alive=1; done
    (( alive )) || break
    sleep 0.1
  done
  for pid in "${ROTOR_PIDS[@]}"; do kill -KILL -- "-$pid" 2>/dev/null || true; done
  rm -rf "${TMPDIR:-/tmp}/rotor/$ROTOR_PRIVATE_NAMESPACE"    # this run's alone
  rotor_log "stopped"
}

rotor_install_traps() {
  trap 'rotor_stop_all' EXIT
  trap 'rotor_log "interrupted"; exit 130' INT TERM
}

# rotor_require_gpus N: succeed when this machine has at least N CUDA GPUs; else say why and fail
# (GPU examples then exit 0: without CUDA they skip cleanly).
rotor_require_gpus() {
  local need="$1" gpus
  if ! command -v nvidia-smi >/dev/null 2>&1 || ! nvidia-smi -L >/dev/null 2>&1; then
    rotor_log "no CUDA GPU here (nvidia-smi absent or failing): this example needs $need; skipping"
    return 1
  fi
  gpus=$(nvidia-smi -L | wc -l)
  (( gpus >= need )) || { rotor_log "found $gpus GPU(s); this example needs $need; skipping"; return 1; }
}

# rotor_wait_for_model URL [TIMEOUT_S] [WORKERS]: wait until URL/v1/models lists a model and
# URL/health at least WORKERS (1) workers; fail early if a child died meanwhile.
rotor_wait_for_model() {
  local url="$1" timeout="${2:-60}" workers="${3:-1}" start=$SECONDS pid
  while (( SECONDS - start < timeout )); do
    for pid in "${ROTOR_PIDS[@]}"; do
      kill -0 "$pid" 2>/dev/null || { rotor_log "pid $pid exited during start-up"; return 1; }
    done
    if "$PYTHON" - "$url" "$workers" <<'PY' 2>/dev/null; then return 0; fi
import json, sys, urllib.request
with urllib.request.urlopen(sys.argv[1] + "/v1/models", timeout=1) as r:
    models = json.load(r)["data"]
with urllib.request.urlopen(sys.argv[1] + "/health", timeout=1) as r:
    workers = json.load(r)["workers"]
print(", ".join(m["id"] for m in models)) if models and len(workers) >= int(sys.argv[2]) \
    else sys.exit(1)
PY
    sleep 0.3
  done
  rotor_log "no model served by $workers worker(s) at $url after ${timeout}s"
  return 1
}

# rotor_wait_any_exit: block until the first child exits; the EXIT trap stops the rest.
rotor_wait_any_exit() {
  local status=0
  wait -n "${ROTOR_PIDS[@]}" || status=$?
  rotor_log "a child exited (status $status); stopping the stack"
  return "$status"
}

# rotor_serve_stack NAME ROUTER_MODE DESCRIPTION [script args...]: the frontend with ROUTER_MODE
# plus mock workers, from a script's command line; runs until Ctrl-C or until a child exits.
# Extra environment for the frontend: ROTOR_FRONTEND_ARGS (array, optional).
rotor_serve_stack() {
  local name="$1" router_mode="$2" description="$3"; shift 3
  local engine=mock num_workers=2 http_port=8000 model_path="" namespace="" extra=()
  while (( $# )); do
    case "$1" in
      --engine) engine="$2"; shift 2 ;;
      --num-workers) num_workers="$2"; shift 2 ;;
      --http-port) http_port="$2"; shift 2 ;;
      --model-path) model_path="$2"; shift 2 ;;
      --namespace) namespace="$2"; shift 2 ;;
      -h|--help) rotor_stack_usage "$name" "$description"; return 0 ;;
      --) shift; extra=("$@"); break ;;
      *) echo "unknown option: $1" >&2; rotor_stack_usage "$name" "$description" >&2; return 2 ;;
    esac
  done
  namespace="${namespace:-$(rotor_private_namespace)}"
  local model_args=()
  [[ -n "$model_path" ]] && model_args=(--model-path "$model_path")
  case "$engine" in
    mock) ;;
    vllm|sglang) [[ -n "$model_path" ]] || { echo "--engine $engine needs --model-path" >&2; return 2; } ;;
    *) echo "--engine must be mock, vllm or sglang, got '$engine'" >&2; return 2 ;;
  esac

  rotor_install_traps
  rotor_start frontend "$PYTHON" -m frontend --http-host 127.0.0.1 --http-port "$http_port" \
    --namespace "$namespace" --router-mode "$router_mode" "${ROTOR_FRONTEND_ARGS[@]}"
  if [[ "$engine" == mock ]]; then
    rotor_start workers "$PYTHON" -m mocker --num-workers "$num_workers" --namespace "$namespace" \
      "${model_args[@]}" "${extra[@]}"
  else
    # one worker per GPU (CUDA_VISIBLE_DEVICES) or, without one, per CPU core (vLLM on CPU)
    local i
    for (( i = 0; i < num_workers; i++ )); do
      rotor_start "worker-$i" env CUDA_VISIBLE_DEVICES="$i" VLLM_CPU_OMP_THREADS_BIND="$i" \
        "$PYTHON" -m worker --engine "$engine" --namespace "$namespace" "${model_args[@]}" \
        -- "${extra[@]}"
    done
  fi
  rotor_wait_for_model "http://127.0.0.1:$http_port" "${ROTOR_START_TIMEOUT:-600}" "$num_workers"
  rotor_log "serving on http://127.0.0.1:$http_port/v1: $num_workers $engine worker(s), router" \
    "mode $router_mode, namespace $namespace"
  rotor_wait_any_exit
}

rotor_stack_usage() {
  cat <<USAGE
Usage: launch/$1 [options] [-- extra engine flags]

$2
Waits until the model is served, then runs until Ctrl-C or until any process exits.

Options:
  --engine E          mock, vllm or sglang (default: mock; vllm and sglang need --model-path)
  --num-workers N     workers to start (default: 2); real engines get one GPU, or CPU core, each
  --http-port PORT    frontend HTTP port on 127.0.0.1 (default: 8000)
  --model-path DIR    local Hugging Face model folder (default: Rotor's shipped mock model)
  --namespace NAME    discovery namespace (default: a private one for this run)
  -h, --help          show this help
Flags after -- go to 'python -m mocker' for the mock engine (see 'python -m mocker --help'),
to the engine server for vllm and sglang. Examples:
  launch/$1 -- --speedup-ratio 10
  launch/$1 --engine vllm --model-path /models/tiny -- --enforce-eager
USAGE
}
