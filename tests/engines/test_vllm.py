"""Rotor in front of real vLLM engines on CPU (issue 9): two workers behind the KV router.

One stack for the whole module (tests/engines/conftest.py). The last two tests kill an engine and
a worker, so they stay last, in this order.
"""

from __future__ import annotations

import asyncio
import json
import os
import re
import signal
import time
from pathlib import Path

import aiohttp
import openai
import pytest

from frontend.tokenizer import Tokenizer
from tests.conftest import http_json
from tests.engines.conftest import MODEL_NAME, cmdline, group_members, proc_stat, wait_until
from worker import conformance

pytestmark = pytest.mark.timeout(600)

BLOCK = 32


def _client(stack) -> openai.OpenAI:
    return openai.OpenAI(base_url=stack.url + "/v1", api_key="unused", max_retries=0, timeout=120)


def _engine_port(stack, worker_pid: int) -> int:
    logs = [p.read_text() for p in stack.log_dir.glob("worker-*.log")]
    for text in logs:
        if f"(pid group {stack.engine_guard(worker_pid)})" in text:
            return int(re.search(r"--port (\d+)", text).group(1))
    raise AssertionError("engine port not found in the worker logs")


def _worker_pids(stack) -> list[int]:
    return [w["pid"] for w in stack.health()[1]["workers"]]


def _completion(stack, **body) -> dict:
    status, reply = http_json(stack.url + "/v1/completions",
                              {"model": MODEL_NAME, "temperature": 0, **body}, timeout=120)
    assert status == 200, reply
    return reply


def test_workers_register_only_when_healthy_and_report_engine_capacities(vllm_stack):
    body = vllm_stack.health()[1]
    assert {w["engine"] for w in body["workers"]} == {"vllm"}
    assert len(body["workers"]) == 2
    print(f"\ntwo vLLM workers healthy {vllm_stack.startup_s:.1f}s after the frontend came up")


def test_tokenization_conformance_passes_for_the_tiny_model(vllm_stack):
    for pid in _worker_pids(vllm_stack):
        assert "tokenization conformance: Rotor and the vllm engine agree on all" in "".join(
            p.read_text() for p in vllm_stack.log_dir.glob("worker-*.log"))
        port = _engine_port(vllm_stack, pid)
        from worker.vllm import VllmFlavor
        tokenizer = Tokenizer.load(str(vllm_stack.model))

        async def run():
            async with aiohttp.ClientSession() as http:
                return await conformance.check(tokenizer, lambda case, text: VllmFlavor().tokenize(
                    http, f"http://127.0.0.1:{port}", MODEL_NAME, case, text))

        report = asyncio.run(run())
        assert report.passed, report.to_dict()
        assert report.cases == len(conformance.CASES)


def test_streaming_chat_through_the_openai_client(vllm_stack):
    stream = _client(vllm_stack).chat.completions.create(
        model=MODEL_NAME, max_tokens=24, stream=True, temperature=0,
        stream_options={"include_usage": True}, extra_body={"ignore_eos": True},
        messages=[{"role": "system", "content": "You are terse."},
                  {"role": "user", "content": [{"type": "text", "text": "Say something."}]}])
    chunks = list(stream)
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    finishes = [c.choices[0].finish_reason for c in chunks if c.choices and c.choices[0].finish_reason]
    assert text
    assert finishes == ["length"]
    assert chunks[-1].usage.completion_tokens == 24


def test_completions_with_token_ids(vllm_stack):
    prompt = list(range(100, 260))
    via_rotor = _completion(vllm_stack, prompt=prompt, max_tokens=12, ignore_eos=True)
    assert via_rotor["usage"]["prompt_tokens"] == len(prompt)
    assert via_rotor["usage"]["completion_tokens"] == 12
    assert via_rotor["choices"][0]["text"]
    assert via_rotor["choices"][0]["finish_reason"] == "length"


def test_rotor_detokenizes_the_engine_s_token_ids_as_the_engine_does(vllm_stack):
    """Rotor turns the engine's token ids into text itself: the same text vLLM makes of them.
    (Texts of two separate runs are not compared: with random bf16 weights, a prefix-cache hit
    changes the numerics enough to flip greedy choices.)"""
    port = _engine_port(vllm_stack, _worker_pids(vllm_stack)[0])
    status, direct = http_json(f"http://127.0.0.1:{port}/v1/completions",
                               {"model": MODEL_NAME, "prompt": list(range(400, 480)),
                                "max_tokens": 40, "temperature": 0, "ignore_eos": True,
                                "return_token_ids": True}, timeout=60)
    assert status == 200, direct
    choice = direct["choices"][0]
    tokenizer = Tokenizer.load(str(vllm_stack.model))
    detok = tokenizer.detokenizer()
    assert detok.push(choice["token_ids"]) + detok.flush() == choice["text"]


def test_repeats_of_a_long_prompt_land_where_it_is_cached(vllm_stack):
    """KV routing with the engine's own events: repeats of a long prompt go to the worker that
    holds it, and vLLM's own cached_tokens proves the hit."""
    tokens_per_prompt = 300
    full_blocks = tokens_per_prompt // BLOCK * BLOCK
    for seed in (1000, 2000):
        prompt = [seed + (i * 7) % 1000 for i in range(tokens_per_prompt)]
        landed, cached = [], []
        for attempt in range(4):
            reply = _completion(vllm_stack, prompt=prompt, max_tokens=2,
                                nvext={"extra_fields": ["worker_id"]})
            landed.append(reply["nvext"]["worker_id"]["decode_worker_id"])
            cached.append(reply["usage"]["prompt_tokens_details"]["cached_tokens"])
            time.sleep(0.2)       # KV events travel engine -> worker relay -> router
        assert len(set(landed)) == 1, landed
        assert cached[0] == 0
        # the last prompt block is recomputed by vLLM when the whole prompt is cached
        assert all(c >= full_blocks - BLOCK for c in cached[1:]), cached


def _stream_tokens(stack, max_tokens: int):
    return iter(_client(stack).chat.completions.create(
        model=MODEL_NAME, max_tokens=max_tokens, stream=True, temperature=0,
        stream_options={"include_usage": True}, extra_body={"ignore_eos": True},
        messages=[{"role": "user", "content": "keep going, forever"}]))


def test_measure_ttft_and_throughput_through_rotor_and_direct(vllm_stack):
    """Numbers for the report (no assertion on speed: the machine is shared)."""
    pid = _worker_pids(vllm_stack)[0]
    port = _engine_port(vllm_stack, pid)
    direct = openai.OpenAI(base_url=f"http://127.0.0.1:{port}/v1", api_key="x", max_retries=0)
    results = {}
    for name, client in (("rotor", _client(vllm_stack)), ("direct", direct)):
        ttfts, rates = [], []
        for i in range(3):
            start = time.monotonic()
            first = None
            n = 0
            for chunk in client.completions.create(
                    model=MODEL_NAME, prompt=[50 + i] + list(range(300, 500)), max_tokens=128,
                    temperature=0, stream=True, extra_body={"ignore_eos": True}):
                if chunk.choices and chunk.choices[0].text and first is None:
                    first = time.monotonic()
                n += 1
            end = time.monotonic()
            ttfts.append((first - start) * 1000)
            rates.append(128 / (end - first))
        results[name] = {"ttft_ms": round(sorted(ttfts)[1], 1),
                         "tokens_per_s": round(sorted(rates)[1])}
    print("\nTTFT / single-stream decode (200-token prompt, 128 tokens):", json.dumps(results))


def test_engine_killed_mid_stream_is_deregistered_and_the_request_migrates(vllm_stack):
    max_tokens = 3500
    stream = _stream_tokens(vllm_stack, max_tokens)
    chunks = [next(stream) for _ in range(2)]
    (busy,) = [w for w in vllm_stack.health()[1]["workers"] if w["in_flight"]]
    engine = vllm_stack.engine_server(busy["pid"])
    vllm_stack.killed.add(busy["pid"])              # its worker exits on purpose
    os.kill(engine, signal.SIGKILL)
    chunks += list(stream)                          # with migration: continues elsewhere
    finishes = [c.choices[0].finish_reason for c in chunks
                if c.choices and c.choices[0].finish_reason]
    assert finishes == ["length"]
    assert chunks[-1].usage.completion_tokens == max_tokens
    # the dead engine's worker left discovery, and its whole engine group is gone
    wait_until(lambda: [w["pid"] for w in vllm_stack.health()[1]["workers"]] != [] and
               busy["pid"] not in _worker_pids(vllm_stack), 15, "worker deregistered")
    guard = vllm_stack.engine_guard(busy["pid"])
    wait_until(lambda: not group_members(guard), 20, "engine group gone")
    wait_until(lambda: proc_stat(busy["pid"]) is None or proc_stat(busy["pid"])[0] == "Z", 20,
               "worker exited")


def test_no_engine_process_outlives_a_sigkilled_worker(vllm_stack):
    (survivor,) = _worker_pids(vllm_stack)
    guard = vllm_stack.engine_guard(survivor)
    members = group_members(guard)
    assert len(members) >= 2, members              # guard + API server (+ engine core)
    args = cmdline(guard).split()
    private = Path(args[args.index("--remove-dir") + 1])
    assert private.is_dir()                        # vLLM's sockets and TMPDIR
    vllm_stack.kill(survivor, signal.SIGKILL)
    wait_until(lambda: not group_members(guard), 30, "engine group gone after worker SIGKILL")
    wait_until(lambda: not private.exists(), 10, "the engine's private directory removed")
