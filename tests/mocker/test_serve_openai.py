"""`python -m mocker --serve-openai`: the engine-compatible server alone (OpenAI client, /tokenize,
/metrics, KV events in both encodings, replay), then the real vLLM and SGLang adapters
(worker/subprocess_engine.py) against it: health wait, conformance, requests through
`Engine.add/step`, KV events through the adapter's intake (with gap recovery via replay).

The adapters run the engine as `<python> -m vllm.entrypoints.openai.api_server ...` (or
`-m sglang.launch_server ...`); the tests point the adapter's `python` at a two-line shim that drops
`-m <module>` and runs `python -m mocker --serve-openai` with the adapter's own flags.
"""

from __future__ import annotations

import asyncio
import json
import os
import struct
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterable
from pathlib import Path

import msgpack
import openai
import pytest
import zmq
import zmq.asyncio

from frontend.tokenizer import Tokenizer
from router.events import BlockStored, decode_engine_batch
from tests.conftest import ROOT, free_port
from worker.engine import EngineContext, EngineRequest
from worker.engine_kv import EngineKvIntake
from worker.sglang import SglangFlavor
from worker.subprocess_engine import SubprocessConfig, SubprocessEngine, metric_label, parse_metrics
from worker.vllm import VllmFlavor

pytestmark = pytest.mark.timeout(60)

BLOCK = 16
MODEL = "rotor-mock"
SPEED = ["--speedup-ratio", "50"]
SEQ = struct.Struct(">q")


def _spawn(tmp_path: Path, port: int, kv_config: dict, *extra: str) -> subprocess.Popen:
    log = open(tmp_path / f"server-{port}.log", "w")
    proc = subprocess.Popen(
        [sys.executable, "-m", "mocker", "--serve-openai", "--port", str(port), "--block-size",
         str(BLOCK), "--kv-events-config", json.dumps(kv_config), *SPEED,
         # vLLM flags the adapter passes: accepted (the first three ignored)
         "--enforce-eager", "--disable-uvicorn-access-log", "--enable-prompt-tokens-details",
         "--enable-prefix-caching", "--scheduling-policy", "priority", *extra],
        stdout=log, stderr=subprocess.STDOUT, cwd=ROOT, start_new_session=True,
        env={**os.environ, "PYTHONPATH": str(ROOT)})
    log.close()
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=1) as r:
                if r.status == 200:
                    return proc
        except OSError:
            time.sleep(0.1)
        assert proc.poll() is None, (tmp_path / f"server-{port}.log").read_text()
    raise TimeoutError("the mock server did not become healthy")


def _stop(proc: subprocess.Popen) -> None:
    proc.terminate()
    try:
        proc.wait(10)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


def _get(url: str) -> str:
    with urllib.request.urlopen(url, timeout=5) as r:
        return r.read().decode()


def _post(url: str, body: dict) -> dict:
    req = urllib.request.Request(url, json.dumps(body).encode(),
                                 {"Content-Type": "application/json"})
    with urllib.request.urlopen(req, timeout=10) as r:
        return json.load(r)


def _recv_all(sock: zmq.Socket, quiet_ms: int = 300) -> list[list[bytes]]:
    out = []
    while sock.poll(quiet_ms):
        out.append(sock.recv_multipart())
    return out


def _replay(endpoint: str, start: int) -> list[list[bytes]]:
    ctx = zmq.Context.instance()
    dealer = ctx.socket(zmq.DEALER)
    dealer.setsockopt(zmq.LINGER, 0)
    dealer.connect(endpoint)
    try:
        dealer.send_multipart([b"", SEQ.pack(start)])
        frames = []
        while dealer.poll(3000):
            msg = dealer.recv_multipart()
            frames.append(msg)
            if SEQ.unpack(msg[2])[0] == -1:
                break
        return frames
    finally:
        dealer.close()


# -- the server alone ------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def tcp_server(tmp_path_factory):
    """Subscriber binds a loopback tcp endpoint; the server's PUB connects (vLLM's rule)."""
    tmp = tmp_path_factory.mktemp("serve")
    ctx = zmq.Context.instance()
    sub = ctx.socket(zmq.SUB)
    sub.setsockopt(zmq.LINGER, 0)
    sub.setsockopt(zmq.SUBSCRIBE, b"")
    sub.bind("tcp://127.0.0.1:0")
    endpoint = sub.getsockopt_string(zmq.LAST_ENDPOINT)
    replay = f"tcp://127.0.0.1:{free_port()}"
    port = free_port()
    proc = _spawn(tmp, port, {"enable_kv_cache_events": True, "publisher": "zmq",
                              "endpoint": endpoint, "replay_endpoint": replay,
                              "topic": "kv-events"})
    # a bound SUB attaches an incoming peer (and sends it the subscription) only when it is used
    deadline = time.monotonic() + 1
    while time.monotonic() < deadline:
        sub.poll(50)
    try:
        yield {"url": f"http://127.0.0.1:{port}", "sub": sub, "replay": replay}
    finally:
        _stop(proc)
        sub.close()


def _client(server) -> openai.OpenAI:
    return openai.OpenAI(base_url=server["url"] + "/v1", api_key="x", max_retries=0, timeout=20)


def test_streamed_chat_and_completions_with_token_ids_and_usage(tcp_server):
    tok = Tokenizer.load(None)
    messages = [{"role": "user", "content": "Hello there, mock engine! " * 4}]
    expected_prompt = tok.encode(tok.apply_chat_template(messages, add_generation_prompt=True))
    chunks = list(_client(tcp_server).chat.completions.create(
        model=MODEL, messages=messages, max_tokens=7, stream=True,
        stream_options={"include_usage": True}, extra_body={"return_token_ids": True}))
    assert chunks[0].model_extra["prompt_token_ids"] == expected_prompt
    ids = [i for c in chunks for ch in c.choices for i in (ch.model_extra.get("token_ids") or [])]
    text = "".join(ch.delta.content or "" for c in chunks for ch in c.choices)
    assert len(ids) == 7 and text == tok.decode(ids)
    assert [ch.finish_reason for c in chunks for ch in c.choices if ch.finish_reason] == ["length"]
    assert chunks[-1].usage.prompt_tokens == len(expected_prompt)
    assert chunks[-1].usage.completion_tokens == 7

    prompt = list(range(10, 10 + 3 * BLOCK + 5))
    for attempt in range(2):       # the second time the prompt's full blocks are cached
        chunks = list(_client(tcp_server).completions.create(
            model=MODEL, prompt=prompt, max_tokens=5, stream=True,
            stream_options={"include_usage": True}, extra_body={"return_token_ids": True}))
        assert chunks[0].choices[0].model_extra["prompt_token_ids"] == prompt
        ids = [i for c in chunks for ch in c.choices for i in (ch.model_extra.get("token_ids") or [])]
        assert len(ids) == 5
        cached = chunks[-1].usage.prompt_tokens_details.cached_tokens
        assert cached == (0 if attempt == 0 else 3 * BLOCK)
    unary = _client(tcp_server).completions.create(model=MODEL, prompt="def f(x):", max_tokens=3)
    assert unary.usage.completion_tokens == 3 and unary.choices[0].finish_reason == "length"
    with pytest.raises(openai.NotFoundError):
        _client(tcp_server).completions.create(model="nope", prompt="x", max_tokens=1)


def test_tokenize_models_metrics(tcp_server):
    tok = Tokenizer.load(None)
    messages = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi"}]
    reply = _post(tcp_server["url"] + "/tokenize",
                  {"model": MODEL, "messages": messages, "add_generation_prompt": True})
    assert reply["tokens"] == tok.encode(tok.apply_chat_template(messages))
    assert reply["count"] == len(reply["tokens"])
    reply = _post(tcp_server["url"] + "/tokenize", {"model": MODEL, "prompt": "Once upon"})
    assert reply["tokens"] == tok.encode("Once upon", add_special_tokens=True)
    models = json.loads(_get(tcp_server["url"] + "/v1/models"))
    assert models["data"][0]["id"] == MODEL and models["data"][0]["max_model_len"] > 0
    text = _get(tcp_server["url"] + "/metrics")
    assert metric_label(text, "vllm:cache_config_info", "block_size") == str(BLOCK)
    assert metric_label(text, "vllm:cache_config_info", "num_gpu_blocks") == "16384"
    parsed = parse_metrics(text)
    assert 0.0 <= parsed["vllm:kv_cache_usage_perc"] <= 1.0 and "sglang:token_usage" in parsed
    info = json.loads(_get(tcp_server["url"] + "/get_server_info"))
    assert info["page_size"] == BLOCK and info["max_total_num_tokens"] == 16384 * BLOCK


def test_kv_events_vllm_maps_seq_from_zero_and_replay(tcp_server):
    sub = tcp_server["sub"]
    _client(tcp_server).completions.create(model=MODEL, prompt=list(range(500, 500 + 2 * BLOCK)),
                                           max_tokens=BLOCK + 1)
    frames = _recv_all(sub)
    assert frames, "no KV events arrived"
    seqs = [SEQ.unpack(f[1])[0] for f in frames]
    assert seqs == list(range(len(seqs))) and seqs[0] == 0   # from 0, no gaps (PUB connected)
    assert all(f[0] == b"kv-events" and len(f) == 3 for f in frames)
    raw = [msgpack.unpackb(f[2], raw=False) for f in frames]
    assert all(isinstance(e, dict) and "type" in e for r in raw for e in r[1])   # vLLM 0.32 maps
    stored = [e for f in frames for e in decode_engine_batch(f[2]).events
              if isinstance(e, BlockStored)]
    tokens = [t for e in stored for t in e.token_ids]
    assert list(range(500, 500 + 2 * BLOCK)) == tokens[-3 * BLOCK:-BLOCK]  # prompt + 1 decode block

    replayed = _replay(tcp_server["replay"], 1)
    assert [SEQ.unpack(m[2])[0] for m in replayed] == seqs[1:] + [-1]
    assert [m[3] for m in replayed[:-1]] == [f[2] for f in frames[1:]]
    assert replayed[-1][0] == b"" and replayed[-1][3] == b""                # end marker


def test_generate_sglang_shape(tcp_server):
    req = urllib.request.Request(
        tcp_server["url"] + "/generate",
        json.dumps({"input_ids": [5, 6, 7], "sampling_params": {"max_new_tokens": 4},
                    "stream": True, "rid": "g1"}).encode())
    with urllib.request.urlopen(req, timeout=10) as r:
        lines = [ln[5:].strip() for ln in r.read().decode().splitlines() if ln.startswith("data:")]
    assert lines[-1] == "[DONE]"
    objs = [json.loads(x) for x in lines[:-1]]
    assert len(objs[-1]["output_ids"]) == 4 and objs[-1]["meta_info"]["id"] == "g1"
    assert objs[-1]["meta_info"]["finish_reason"]["type"] == "length"
    assert [o["meta_info"]["completion_tokens"] for o in objs] == list(range(1, 5))


def test_ipc_server_binds_tagged_arrays_and_intake_recovers_gap(tmp_path):
    """With an ipc:// endpoint the server binds; batches sent before the adapter's intake connects
    are recovered by its replay client (worker/engine_kv.py); events are tagged arrays."""
    endpoint = f"ipc://{tmp_path}/kv.sock"
    replay = f"tcp://127.0.0.1:{free_port()}"
    port = free_port()
    proc = _spawn(tmp_path, port, {"publisher": "zmq", "endpoint": endpoint,
                                   "replay_endpoint": replay, "topic": "kv-events"},
                  "--kv-events-tagged")
    server = {"url": f"http://127.0.0.1:{port}"}
    try:
        _client(server).completions.create(model=MODEL, prompt=list(range(50, 50 + 2 * BLOCK)),
                                           max_tokens=2)          # nobody listens: dropped
        tagged = _replay(replay, 0)
        assert SEQ.unpack(tagged[0][2])[0] == 0 and SEQ.unpack(tagged[-1][2])[0] == -1
        events = msgpack.unpackb(tagged[0][3], raw=False)[1]
        assert events[0][0] == "BlockStored" and isinstance(events[0], list)
        missed = len(tagged) - 1

        async def run():
            ctx = zmq.asyncio.Context()
            intake = EngineKvIntake(ctx, bind=False, endpoint=endpoint, replay_endpoint=replay)
            task = asyncio.create_task(intake.run())
            await asyncio.sleep(0.3)                               # subscription propagates
            await asyncio.to_thread(_client(server).completions.create, model=MODEL,
                                    prompt=list(range(900, 900 + 2 * BLOCK)), max_tokens=2)
            deadline = time.monotonic() + 5
            got = []
            while time.monotonic() < deadline and not any(
                    isinstance(e, BlockStored) and 900 in e.token_ids for b in got for e in b.events):
                await asyncio.sleep(0.05)
                got += intake.drain()
            task.cancel()
            intake.close()
            ctx.term()
            return intake, got

        intake, got = asyncio.run(run())
        assert intake.gaps == 1 and intake.recovered == missed and intake.lost == 0
        stored = [t for b in got for e in b.events if isinstance(e, BlockStored) for t in e.token_ids]
        assert stored[:2 * BLOCK] == list(range(50, 50 + 2 * BLOCK))
        assert list(range(900, 900 + 2 * BLOCK)) == stored[-2 * BLOCK:]
    finally:
        _stop(proc)


def test_help_and_bad_flags():
    out = subprocess.run([sys.executable, "-m", "mocker", "--serve-openai", "--help"], cwd=ROOT,
                         capture_output=True, text=True, check=True).stdout
    for flag in ("--model", "--served-model-name", "--host", "--port", "--block-size",
                 "--kv-events-config", "--kv-events-tagged", "--page-size", "--enforce-eager"):
        assert flag in out
    assert "--serve-openai" in subprocess.run([sys.executable, "-m", "mocker", "--help"], cwd=ROOT,
                                              capture_output=True, text=True).stdout
    bad = subprocess.run([sys.executable, "-m", "mocker", "--serve-openai", "--kv-events-config",
                          "{nope"], cwd=ROOT, capture_output=True, text=True)
    assert bad.returncode == 2 and "--kv-events-config" in bad.stderr


# -- the real adapters against it ------------------------------------------------------------------


def _shim(tmp_path: Path, *extra: str) -> str:
    """An 'engine python' for the adapter: drops `-m <engine module>`, runs the mock server."""
    path = tmp_path / "engine-python"
    path.write_text(f"#!/bin/sh\nshift 2\nPYTHONPATH={ROOT} exec {sys.executable} -m mocker "
                    f"--serve-openai {' '.join([*SPEED, *extra])} \"$@\"\n")
    path.chmod(0o755)
    return str(path)


async def _drive(engine: SubprocessEngine, requests: list[EngineRequest],
                 want_stored: Iterable[int] = ()):
    """Run `requests` to their end, and on until KV events have stored every token id in
    `want_stored` (events can trail the outputs they belong to); bounded by 15 s."""
    outputs: dict[str, list] = {r.request_id: [] for r in requests}
    finish: dict[str, str] = {}
    kv = []
    missing = set(want_stored)
    for r in requests:
        engine.add(r)
    deadline = time.monotonic() + 15
    while (len(finish) < len(requests) or missing) and time.monotonic() < deadline:
        try:
            step = await asyncio.wait_for(engine.step(), 1)
        except asyncio.TimeoutError:
            continue
        kv += step.kv_events
        for e in step.kv_events:
            if isinstance(e, BlockStored):
                missing.difference_update(e.token_ids)
        for out in step.outputs:
            assert out.first_index == len(outputs[out.request_id])
            outputs[out.request_id] += out.token_ids
            if out.finish_reason:
                assert out.error is None, out.error
                finish[out.request_id] = out.finish_reason
    return outputs, finish, kv


def _context() -> EngineContext:
    tok = Tokenizer.load(None)
    return EngineContext(tok.model_path, MODEL, tok.context_length)


def test_vllm_adapter_against_the_mock_server(tmp_path):
    cfg = SubprocessConfig(python=_shim(tmp_path), block_size=BLOCK, max_num_seqs=8,
                           max_num_batched_tokens=2048, start_timeout_s=30)
    engine = SubprocessEngine(VllmFlavor(), cfg, _context())
    tok = Tokenizer.load(None)
    messages = [{"role": "user", "content": "Tell me about KV caches. " * 6}]
    chat_ids = tok.encode(tok.apply_chat_template(messages))
    body = json.dumps({"model": MODEL, "messages": messages, "max_tokens": 99}).encode()
    prompt = list(range(200, 200 + 3 * BLOCK))

    async def run():
        await engine.start()
        try:
            assert engine.conformance is not None and engine.conformance.passed, \
                engine.conformance.to_dict()
            assert engine.info.total_kv_blocks == 16384 and engine.info.kv_block_size == BLOCK
            now = time.monotonic()
            reqs = [EngineRequest("chat", chat_ids, 6, now, body=body, priority=1),
                    EngineRequest("cmpl", prompt, 4, now, ignore_eos=True)]
            outputs, finish, kv = await _drive(engine, reqs,
                                               want_stored=prompt + chat_ids[:BLOCK])
            # a repeat of the completion hits the cache: cached_tokens from the engine's usage
            again, _, _ = await _drive(engine, [EngineRequest("cmpl2", prompt, 2, time.monotonic())])
            return outputs, finish, kv, engine.stats(), again
        finally:
            await engine.stop()

    outputs, finish, kv, stats, again = asyncio.run(run())
    assert finish == {"chat": "length", "cmpl": "length"}
    assert len(outputs["chat"]) == 6 and len(outputs["cmpl"]) == 4 and len(again["cmpl2"]) == 2
    assert stats["tokenization_mismatch_total"] == 0          # prompt ids came back and matched
    assert stats["kv_events_lost_total"] == 0
    stored = [t for e in kv if isinstance(e, BlockStored) for t in e.token_ids]
    assert set(prompt) <= set(stored) and set(chat_ids[:BLOCK]) <= set(stored)


def test_vllm_adapter_abort_cancels_in_the_engine(tmp_path):
    cfg = SubprocessConfig(python=_shim(tmp_path, "--speedup-ratio", "1"), block_size=BLOCK,
                           max_num_seqs=8, max_num_batched_tokens=2048, start_timeout_s=30,
                           conformance_check=False)
    engine = SubprocessEngine(VllmFlavor(), cfg, _context())

    async def run():
        await engine.start()
        try:
            engine.add(EngineRequest("long", list(range(300, 340)), 5000, time.monotonic()))
            while not (await asyncio.wait_for(engine.step(), 5)).outputs:
                pass
            running = parse_metrics(_get(engine.base_url + "/metrics"))
            assert running["vllm:num_requests_running"] == 1
            engine.abort("long")
            for _ in range(50):
                await asyncio.sleep(0.1)
                metrics = parse_metrics(_get(engine.base_url + "/metrics"))
                if metrics["vllm:num_requests_running"] == 0:
                    return True
            return False
        finally:
            await engine.stop()

    assert asyncio.run(run()), "the engine kept running an aborted request"


def test_sglang_adapter_with_tagged_arrays(tmp_path):
    cfg = SubprocessConfig(python=_shim(tmp_path, "--kv-events-tagged"), block_size=BLOCK,
                           max_num_seqs=8, max_num_batched_tokens=2048, start_timeout_s=30)
    engine = SubprocessEngine(SglangFlavor(), cfg, _context())
    prompt = list(range(700, 700 + 2 * BLOCK + 3))

    async def run():
        await engine.start()
        try:
            assert engine.conformance is not None and engine.conformance.passed, \
                engine.conformance.to_dict()
            assert engine.info.total_kv_blocks == 16384 and engine.info.max_num_seqs == 8
            outputs, finish, kv = await _drive(
                engine, [EngineRequest("s1", prompt, 5, time.monotonic())],
                want_stored=prompt[:2 * BLOCK])
            return outputs, finish, kv, engine.stats()
        finally:
            await engine.stop()

    outputs, finish, kv, stats = asyncio.run(run())
    assert finish == {"s1": "length"} and len(outputs["s1"]) == 5
    stored = [t for e in kv if isinstance(e, BlockStored) for t in e.token_ids]
    assert stored[:2 * BLOCK] == prompt[:2 * BLOCK]
    assert stats["kv_events_lost_total"] == 0
