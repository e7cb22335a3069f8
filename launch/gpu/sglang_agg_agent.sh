#!/usr/bin/env bash
# An agent-serving node: the Rotor frontend with KV routing and agent tracing, in front of ONE
# SGLang worker with tensor parallelism 2, streaming sessions, priority scheduling (and priority
# radix eviction) and SGLang's KV events. Expects 2 CUDA GPUs (e.g. 2x H100 80 GB) and a local
# model folder (default Qwen/Qwen3-32B from the local HF cache). Ctrl-C stops everything.
source "$(dirname "${BASH_SOURCE[0]}")/../lib.sh"

usage() {
  cat <<USAGE
Usage: launch/gpu/sglang_agg_agent.sh [--model-path DIR] [--http-port P] [--trace-dir DIR] [-- SGLang args]
  --model-path DIR   local model folder or org/name in the local HF cache (default: Qwen/Qwen3-32B)
  --http-port P      frontend port on 127.0.0.1 (default: 8000)
  --trace-dir DIR    where the frontend writes agent traces (default: ./traces)
Flags after -- go to SGLang (e.g. --context-length 65536 --mem-fraction-static 0.85).
Needs: SGLang installed for the python in ENGINE_PYTHON (default: the same python), 2 GPUs.
USAGE
}

model="Qwen/Qwen3-32B" http_port=8000 trace_dir="./traces" extra=()
while (( $# )); do
  case "$1" in
    --model-path) model="$2"; shift 2 ;;
    --http-port) http_port="$2"; shift 2 ;;
    --trace-dir) trace_dir="$2"; shift 2 ;;
    -h|--help) usage; exit 0 ;;
    --) shift; extra=("$@"); break ;;
    *) echo "unknown option: $1" >&2; usage >&2; exit 2 ;;
  esac
done
rotor_require_gpus 2 || exit 0

namespace="$(rotor_private_namespace)"
engine_python="${ENGINE_PYTHON:-$PYTHON}"
mkdir -p "$trace_dir"
rotor_install_traps
export DYN_AGENT_TRACE=1
export DYN_AGENT_TRACE_OUTPUT_PATH="${DYN_AGENT_TRACE_OUTPUT_PATH:-$trace_dir/rotor-agent-trace}"
export DYN_AGENT_TRACE_TOOL_EVENTS_ZMQ_ENDPOINT="${DYN_AGENT_TRACE_TOOL_EVENTS_ZMQ_ENDPOINT:-tcp://127.0.0.1:20390}"
rotor_log "agent trace: $DYN_AGENT_TRACE_OUTPUT_PATH.NNNNNN.jsonl.gz; tool events: PUSH to" \
  "$DYN_AGENT_TRACE_TOOL_EVENTS_ZMQ_ENDPOINT"
rotor_start frontend "$PYTHON" -m frontend --http-host 127.0.0.1 --http-port "$http_port" \
  --namespace "$namespace" --model-path "$model" --router-mode kv
CUDA_VISIBLE_DEVICES=0,1 rotor_start sglang-worker "$PYTHON" -m worker --engine sglang \
  --namespace "$namespace" --model-path "$model" --engine-python "$engine_python" \
  -- --tp 2 --enable-streaming-session --radix-eviction-policy priority "${extra[@]}"
rotor_wait_for_model "http://127.0.0.1:$http_port" 1800
rotor_log "serving $model on http://127.0.0.1:$http_port/v1: one SGLang worker, TP 2 (namespace $namespace)"
rotor_wait_any_exit
