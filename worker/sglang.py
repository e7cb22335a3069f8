"""SGLang behind a Rotor worker: `python -m worker --engine sglang --model-path DIR -- <SGLang args>`.

GPU only: SGLang has no CPU build on the package registry, so this adapter is exercised here only
by its unit tests (command line, request bodies, chunk parsing) and on CUDA machines for real
(launch/gpu/sglang_agg_agent.sh). The engine is `python -m sglang.launch_server`, started by
worker/subprocess_engine.py with:

    --host 127.0.0.1 --port P --served-model-name NAME --page-size B    (Rotor routes with B)
    --enable-metrics --enable-priority-scheduling
    --kv-events-config {zmq publisher -> the worker's SUB, replay ROUTER on a free loopback port}
    --max-running-requests, --chunked-prefill-size (the worker's --max-num-seqs and
    --max-num-batched-tokens)

Prefix caching (the radix cache) is on by default in SGLang. Anything after `--` is passed as is
(e.g. `--tp 2`, `--enable-streaming-session`, `--radix-eviction-policy priority`).

Requests: SGLang's OpenAI chat endpoint does not return token ids, so every request, chat
included, goes to SGLang's native `/generate` as a token-id prompt (`input_ids`: Rotor's own
rendering, so the ids Rotor routes with are exactly what the engine caches), streamed. The
consequence: SGLang's tool-call and reasoning parsers do not run; Rotor's frontend gets raw token
ids, as with the mock engine. Priority keeps Rotor's polarity (SGLang runs higher values first).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

import aiohttp

from worker import conformance
from worker.engine import EngineContext, EngineInfo, EngineKind, EngineRequest
from worker.subprocess_engine import (ParsedChunk, SubprocessConfig, SubprocessEngine,
                                      add_common_arguments, chunk_error)

KV_TOPIC = "kv-events"
DEFAULT_BLOCK_SIZE = 64
MANAGED_FLAGS = ("--model-path", "--model", "--host", "--port", "--served-model-name",
                 "--page-size", "--kv-events-config", "--max-running-requests",
                 "--chunked-prefill-size")


class SglangFlavor:
    name = "sglang"
    subscriber_binds = True          # SGLang's publisher is vLLM's: it connects for tcp://host:port

    def command(self, cfg: SubprocessConfig, ctx: EngineContext, port: int, kv_endpoint: str,
                replay_endpoint: str) -> list[str]:
        kv_config = {"publisher": "zmq", "topic": KV_TOPIC, "endpoint": kv_endpoint,
                     "replay_endpoint": replay_endpoint}
        return [cfg.python, "-m", "sglang.launch_server",
                "--model-path", ctx.model_path, "--served-model-name", ctx.model_name,
                "--host", cfg.host, "--port", str(port), "--page-size", str(cfg.block_size),
                "--enable-metrics", "--enable-priority-scheduling",
                "--kv-events-config", json.dumps(kv_config),
                "--max-running-requests", str(cfg.max_num_seqs),
                "--chunked-prefill-size", str(cfg.max_num_batched_tokens), *cfg.engine_args]

    def environment(self, cfg: SubprocessConfig, private_dir: Path) -> dict[str, str]:
        return {"TMPDIR": str(private_dir), "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1",
                "SGLANG_HOST_IP": cfg.host}

    def request(self, request: EngineRequest, served_name: str) -> tuple[str, dict[str, Any]]:
        sampling: dict[str, Any] = {"max_new_tokens": request.max_tokens,
                                    "ignore_eos": request.ignore_eos}
        if request.temperature is not None:
            sampling["temperature"] = request.temperature
        if request.top_p is not None:
            sampling["top_p"] = request.top_p
        if request.stop_token_ids:
            sampling["stop_token_ids"] = request.stop_token_ids
        body: dict[str, Any] = {"input_ids": request.token_ids, "sampling_params": sampling,
                                "stream": True, "priority": request.priority,
                                "rid": request.request_id}
        if request.seed is not None:
            body["sampling_params"]["sampling_seed"] = request.seed
        return "/generate", body

    def parse_chunk(self, chunk: dict[str, Any], emitted: int) -> ParsedChunk:
        parsed = ParsedChunk(error=chunk_error(chunk))
        if parsed.error is not None:
            return parsed
        meta = chunk.get("meta_info") or {}
        ids = list(chunk.get("output_ids") or ())
        # output_ids are cumulative by default and incremental with --stream-output; the count of
        # completion tokens tells how many of the last ids are new in either case.
        total = int(meta.get("completion_tokens", emitted + len(ids)))
        new = max(total - emitted, 0)
        parsed.token_ids = ids[len(ids) - new:] if new else []
        finish = meta.get("finish_reason")
        if finish:
            kind = finish.get("type") if isinstance(finish, dict) else str(finish)
            parsed.finish_reason = {"length": "length", "abort": "abort"}.get(kind, "stop")
        if "cached_tokens" in meta:
            parsed.cached_tokens = int(meta["cached_tokens"] or 0)
        return parsed

    async def read_info(self, http: aiohttp.ClientSession, base: str, cfg: SubprocessConfig,
                        ctx: EngineContext) -> EngineInfo:
        async with http.get(base + "/get_server_info") as resp:
            server = await resp.json(content_type=None) if resp.status == 200 else {}
        page = int(server.get("page_size") or cfg.block_size)
        if page != cfg.block_size:
            raise RuntimeError(f"SGLang runs with page size {page}, Rotor with {cfg.block_size}")
        tokens = int(server.get("max_total_num_tokens") or 0)
        return EngineInfo(kv_block_size=cfg.block_size, total_kv_blocks=tokens // cfg.block_size,
                          max_num_seqs=int(server.get("max_running_requests") or cfg.max_num_seqs),
                          max_num_batched_tokens=cfg.max_num_batched_tokens,
                          context_length=int(server.get("context_length") or ctx.context_length))

    def kv_usage(self, metrics: dict[str, float]) -> float | None:
        return metrics.get("sglang:token_usage")

    async def tokenize(self, http: aiohttp.ClientSession, base: str, served_name: str,
                       case: conformance.ConformanceCase, rotor_text: str) -> list[int]:
        # SGLang receives Rotor's ids, so only the tokenizer itself can differ: compare on
        # Rotor's rendered text (chat) or the prompt (completion).
        body = {"model": served_name, "prompt": rotor_text,
                "add_special_tokens": case.kind != "chat"}
        async with http.post(base + "/v1/tokenize", json=body) as resp:
            reply = await resp.json(content_type=None)
            if resp.status != 200:
                raise RuntimeError(f"/v1/tokenize answered {resp.status}: {reply}")
        return list(reply["tokens"])


def _add_arguments(parser: argparse.ArgumentParser) -> None:
    add_common_arguments(parser, str(DEFAULT_BLOCK_SIZE))


def build_config(args: argparse.Namespace) -> SubprocessConfig:
    config = SubprocessConfig(
        python=args.engine_python or sys.executable,
        block_size=args.block_size or DEFAULT_BLOCK_SIZE,
        max_num_seqs=args.max_num_seqs, max_num_batched_tokens=args.max_num_batched_tokens,
        engine_args=list(getattr(args, "engine_args", None) or []),
        host=getattr(args, "host", "127.0.0.1"), port=args.engine_port,
        start_timeout_s=args.engine_start_timeout, conformance_check=args.conformance_check)
    config.validate(MANAGED_FLAGS)
    return config


def _create(args: argparse.Namespace, context: EngineContext) -> SubprocessEngine:
    return SubprocessEngine(SglangFlavor(), build_config(args), context)


SGLANG_ENGINE = EngineKind("sglang", _add_arguments, _create)
