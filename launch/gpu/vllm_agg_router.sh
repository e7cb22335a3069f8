#!/usr/bin/env bash
# Two vLLM workers (one per GPU) behind the Rotor frontend with KV-aware routing on vLLM's own KV
# events. Expects 2 CUDA GPUs with >= 24 GB each and a local Hugging Face model folder (default
# Qwen/Qwen3-0.6B from the local HF cache; Rotor never downloads). Ctrl-C stops everything.
source "$(dirname "${BASH_SOURCE[0]}")/../lib.sh"

usage() {
  cat <<USAGE
Usage: launch/gpu/vllm_agg_router.sh [--model-path DIR] [--http-port P] [--block-size B] [-- vLLM args]
  --model-path DIR   local model folder or org/name in the local HF cache (default: Qwen/Qwen3-0.6B)
  --http-port P      frontend port on 127.0.0.1 (default: 8000)
  --block-size B     KV block size for vLLM and the router (default: 64)
Flags after -- go to both vLLM servers (e.g. --max-model-len 32768 --gpu-memory-utilization 0.85).
Needs: vLLM installed for the python in ENGINE_PYTHON (default: the same python), 2 GPUs.
USAGE
}

model="Qwen/Qwen3-0.6B" http_port=8000 block_size=64 extra=()
while (( $# )); do
  case "$1" in
    --model-path) model="$2"; shift 2 ;;
    --http-port) http_port="$2"; shift 2 ;;
    --block-size) block_size="$2"; shift 2 ;;
    -h|--help) usage; exit 0 ;;
    --) shift; extra=("$@"); break ;;
    *) echo "unknown option: $1" >&2; usage >&2; exit 2 ;;
  esac
done
rotor_require_gpus 2 || exit 0

namespace="$(rotor_private_namespace)"
engine_python="${ENGINE_PYTHON:-$PYTHON}"
rotor_install_traps
rotor_start frontend "$PYTHON" -m frontend --http-host 127.0.0.1 --http-port "$http_port" \
  --namespace "$namespace" --model-path "$model" --router-mode kv
for gpu in 0 1; do
  CUDA_VISIBLE_DEVICES=$gpu rotor_start "vllm-worker-$gpu" "$PYTHON" -m worker --engine vllm \
    --namespace "$namespace" --model-path "$model" --engine-python "$engine_python" \
    --block-size "$block_size" -- "${extra[@]}"
done
rotor_wait_for_model "http://127.0.0.1:$http_port" 900
rotor_log "serving $model on http://127.0.0.1:$http_port/v1 with 2 vLLM workers, KV routing (namespace $namespace)"
rotor_wait_any_exit
