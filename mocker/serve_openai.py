"""`python -m mocker --serve-openai`: the mock engine behind an engine-compatible server (DESIGN.md §5).

A stand-in for vLLM's and SGLang's OpenAI servers, so the worker adapters (worker/vllm.py,
worker/sglang.py) are tested in seconds instead of minutes:

    HTTP (aiohttp, loopback by default)                      one MockEngine (mocker/realtime.py)
    ----------------------------------                       -----------------------------------
    POST /v1/chat/completions  chat template -> token ids ─┐
    POST /v1/completions       text or token-id prompt    ─┼─► add / abort (client went away)
    POST /generate             SGLang: input_ids or text  ─┘   step() in a background task:
    POST /tokenize, /v1/tokenize   vLLM's / SGLang's shape       outputs -> per-request queues
    GET  /health /v1/models /metrics /get_server_info            KV events -> ZMQ (below)

Request and chunk shapes are what the adapters consume: vLLM's `return_token_ids` (the prompt's ids
on the first chunk — top level for chat, in the choice for completions — and `token_ids` in every
choice), `stream_options.include_usage` with `prompt_tokens_details.cached_tokens`, `priority`
(vLLM polarity: lower runs first; run with `--scheduling-policy priority` to honour it), `ignore_eos`,
`stop_token_ids`; SGLang's `/generate` chunks with cumulative `text`/`output_ids` and `meta_info`
{`id`, `prompt_tokens`, `completion_tokens`, `cached_tokens`, `finish_reason`} (SGLang polarity:
higher priority first). `/metrics` has `vllm:cache_config_info{block_size,num_gpu_blocks}`,
`vllm:kv_cache_usage_perc`, `vllm:num_requests_running|waiting` and `sglang:token_usage`.
The OpenAI request parsing, chunk and error shapes are the frontend's (frontend/protocol.py).

KV events (`--kv-events-config`, vLLM's JSON: `endpoint`, `replay_endpoint`, `topic`, `publisher`):
each engine step's events are one batch `[topic, u64 BE seq, msgpack [ts, [events], dp_rank]]`,
sequence numbers from 0, events as vLLM 0.32 maps or, with `--kv-events-tagged`, SGLang-style
tagged arrays. vLLM's socket rules: the PUB binds for `*`, `::`, `ipc://`, `inproc://` endpoints
and connects otherwise; the replay ROUTER binds and answers `[b"", start_seq]` with
`[b"", topic, seq, payload]` per buffered batch (the last `REPLAY_BUFFER` batches) and an end marker
`[b"", topic, seq=-1, b""]`.
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import json
import logging
import struct
import time
import uuid
from typing import Any, AsyncIterator

import zmq
import zmq.asyncio
from aiohttp import web

from frontend import protocol
from frontend.protocol import OpenAIError, ResponseShape, SSE_DONE, sse, sse_error
from frontend.tokenizer import TemplateError, Tokenizer, resolve_model_path
from mocker.config import MockEngineArgs
from mocker.core import EngineCore
from mocker.realtime import MockEngine
from router.events import EngineEventBatch, encode_engine_batch
from worker.engine import EngineRequest, RequestOutput

log = logging.getLogger("rotor.mocker.serve")

REPLAY_BUFFER = 10_000            # batches the replay socket can answer from
_SEQ = struct.Struct(">q")
END_SEQ = _SEQ.pack(-1)


# -- KV events -------------------------------------------------------------------------------------


def publisher_binds(endpoint: str) -> bool:
    """vLLM's rule: bind for wildcard, ipc and inproc endpoints, connect for anything else."""
    return "*" in endpoint or "::" in endpoint or endpoint.startswith(("ipc://", "inproc://"))


class KvPublisher:
    """ZMQ PUB of engine event batches plus the replay ROUTER (vLLM's ZmqEventPublisher's rules)."""

    def __init__(self, endpoint: str, replay_endpoint: str | None = None, topic: str = "",
                 tagged: bool = False, buffer: int = REPLAY_BUFFER):
        self._ctx = zmq.asyncio.Context()
        self._pub = self._ctx.socket(zmq.PUB)
        self._pub.setsockopt(zmq.LINGER, 0)
        if publisher_binds(endpoint):
            self._pub.bind(endpoint)
        else:
            self._pub.connect(endpoint)
        self.endpoint = endpoint
        self._router = None
        if replay_endpoint:
            self._router = self._ctx.socket(zmq.ROUTER)
            self._router.setsockopt(zmq.LINGER, 0)
            self._router.bind(replay_endpoint)
        self.topic = topic.encode()
        self.tagged = tagged
        self.seq = 0                                  # the next batch's sequence number
        self._buffer: collections.deque[tuple[int, bytes]] = collections.deque(maxlen=buffer)
        self._task: asyncio.Task | None = None

    def start(self) -> None:
        if self._router is not None:
            self._task = asyncio.create_task(self._serve_replay())

    def publish(self, batch: EngineEventBatch) -> int:
        seq, self.seq = self.seq, self.seq + 1
        payload = encode_engine_batch(batch, tagged=self.tagged)
        self._buffer.append((seq, payload))
        try:
            self._pub.send_multipart([self.topic, _SEQ.pack(seq), payload], flags=zmq.NOBLOCK)
        except zmq.Again:
            pass                                      # no peer / high-water mark: PUB drops
        return seq

    async def _serve_replay(self) -> None:
        assert self._router is not None
        while True:
            frames = await self._router.recv_multipart()
            if len(frames) != 3 or len(frames[2]) != 8:
                log.warning("ignored a replay request of %d frames", len(frames))
                continue
            client, start = frames[0], _SEQ.unpack(frames[2])[0]
            for seq, payload in list(self._buffer):
                if seq >= start:
                    await self._router.send_multipart([client, b"", self.topic, _SEQ.pack(seq),
                                                       payload])
            await self._router.send_multipart([client, b"", self.topic, END_SEQ, b""])

    async def close(self) -> None:
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)
        self._pub.close(linger=0)
        if self._router is not None:
            self._router.close(linger=0)
        self._ctx.term()


def parse_kv_events_config(raw: str | None) -> dict[str, Any] | None:
    """vLLM's `--kv-events-config` JSON; None (or publisher null / events disabled): no events."""
    if not raw:
        return None
    try:
        config = json.loads(raw)
    except ValueError as exc:
        raise ValueError(f"--kv-events-config is not valid JSON: {exc}") from None
    if not isinstance(config, dict):
        raise ValueError("--kv-events-config must be a JSON object")
    if config.get("enable_kv_cache_events") is False or config.get("publisher", "zmq") == "null":
        return None
    if config.get("publisher", "zmq") != "zmq":
        raise ValueError(f"--kv-events-config: publisher {config['publisher']!r} is not supported "
                         f"(only zmq)")
    if not isinstance(config.get("endpoint"), str) or not config["endpoint"]:
        raise ValueError("--kv-events-config: 'endpoint' is required")
    return config


# -- the engine and its requests -------------------------------------------------------------------


class _Stream:
    """One request's outputs, in order; `finish_reason` set once the last output was read."""

    def __init__(self, server: "MockServer", request: EngineRequest):
        self.server = server
        self.request = request
        self.queue: asyncio.Queue[RequestOutput] = asyncio.Queue()
        self.finished = False

    async def __aiter__(self) -> AsyncIterator[RequestOutput]:
        while not self.finished:
            out = await self.queue.get()
            if out.finish_reason is not None:
                self.finished = True
            yield out

    def close(self) -> None:
        rid = self.request.request_id
        self.server.streams.pop(rid, None)
        if not self.finished:
            self.finished = True
            self.server.engine.abort(rid)          # client went away or we stopped early


class MockServer:
    def __init__(self, engine: MockEngine, tokenizer: Tokenizer, served_name: str,
                 publisher: KvPublisher | None = None):
        self.engine = engine
        self.tokenizer = tokenizer
        self.served_name = served_name
        self.publisher = publisher
        self.streams: dict[str, _Stream] = {}
        self._task: asyncio.Task | None = None

    async def start(self, app: web.Application) -> None:
        await self.engine.start()
        if self.publisher is not None:
            self.publisher.start()
        self._task = asyncio.create_task(self._drive())

    async def stop(self, app: web.Application) -> None:
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)
        await self.engine.stop()
        if self.publisher is not None:
            await self.publisher.close()

    async def _drive(self) -> None:
        while True:
            step = await self.engine.step()
            for out in step.outputs:
                stream = self.streams.get(out.request_id)
                if stream is not None:
                    stream.queue.put_nowait(out)
            if step.kv_events and self.publisher is not None:
                self.publisher.publish(EngineEventBatch(time.time(), step.kv_events, 0))

    def submit(self, token_ids: list[int], max_tokens: int | None, priority: int,
               ignore_eos: bool, stop_token_ids: list[int], request_id: str | None = None
               ) -> _Stream:
        context = self.engine.info.context_length
        if max_tokens is None:                     # vLLM's default: the rest of the context
            max_tokens = max(context - len(token_ids), 1)
        if len(token_ids) + max_tokens > context:
            raise OpenAIError(400, f"this model's maximum context length is {context} tokens; "
                                   f"the request has {len(token_ids)} prompt tokens and "
                                   f"max_tokens {max_tokens}", param="max_tokens")
        rid = request_id or uuid.uuid4().hex
        if rid in self.streams:
            raise OpenAIError(400, f"request id {rid!r} is already running", param="rid")
        request = EngineRequest(rid, list(token_ids), max_tokens, time.monotonic(),
                                priority=priority, ignore_eos=ignore_eos,
                                stop_token_ids=[] if ignore_eos else list(stop_token_ids))
        stream = _Stream(self, request)
        try:
            self.engine.add(request)
        except ValueError as exc:
            raise OpenAIError(400, str(exc)) from None
        self.streams[rid] = stream
        return stream

    # -- tokenization --------------------------------------------------------------------------

    def render_chat(self, messages: list[dict[str, Any]], tools: list[dict[str, Any]] | None,
                    add_generation_prompt: bool = True, kwargs: dict[str, Any] | None = None
                    ) -> list[int]:
        try:
            text = self.tokenizer.apply_chat_template(messages, tools=tools,
                                                      add_generation_prompt=add_generation_prompt,
                                                      **(kwargs or {}))
        except TemplateError as exc:
            raise OpenAIError(400, str(exc), param="messages") from None
        return self.tokenizer.encode(text, add_special_tokens=False)

    def prompt_ids(self, prompt: str | list[int], add_special_tokens: bool = True) -> list[int]:
        if isinstance(prompt, str):
            return self.tokenizer.encode(prompt, add_special_tokens=add_special_tokens)
        return list(prompt)


def _error(exc: OpenAIError) -> web.Response:
    return web.json_response(exc.body(), status=exc.status, headers=exc.headers)


def _stop_ids(body: dict[str, Any]) -> list[int]:
    ids = body.get("stop_token_ids") or []
    if not (isinstance(ids, list) and all(isinstance(i, int) for i in ids)):
        raise protocol.invalid("stop_token_ids", "'stop_token_ids' must be an array of integers")
    return ids


def _priority(body: dict[str, Any]) -> int:
    value = body.get("priority", 0) or 0
    if isinstance(value, bool) or not isinstance(value, int):
        raise protocol.invalid("priority", "'priority' must be an integer")
    return value


# -- OpenAI endpoints (vLLM's shapes) --------------------------------------------------------------


async def _openai(request: web.Request, chat: bool) -> web.StreamResponse:
    server: MockServer = request.app["server"]
    raw = await request.read()
    try:
        if chat:
            parsed = protocol.parse_chat(raw)
            body = parsed.body
            ids = server.render_chat(parsed.messages, parsed.tools,
                                     bool(body.get("add_generation_prompt", True)),
                                     body.get("chat_template_kwargs") or None)
        else:
            body = protocol.parse_json_body(raw)
            parsed = protocol.parse_completion(body)
            ids = server.prompt_ids(parsed.prompt, bool(body.get("add_special_tokens", True)))
        if parsed.model != server.served_name:
            raise OpenAIError(404, f"the model {parsed.model!r} does not exist",
                              param="model", code="model_not_found")
        sampling = parsed.sampling
        stream = server.submit(ids, sampling.max_tokens, -_priority(body),   # vLLM: lower first
                               sampling.ignore_eos, _stop_ids(body))
    except OpenAIError as exc:
        return _error(exc)
    return_ids = bool(body.get("return_token_ids"))
    prefix = "chatcmpl-" if chat else "cmpl-"
    shape = ResponseShape(chat, prefix + stream.request.request_id, server.served_name)
    detok = server.tokenizer.detokenizer()
    try:
        if sampling.stream:
            return await _stream_openai(request, server, stream, shape, ids, detok, return_ids,
                                        sampling.include_usage, sampling.stop)
        text, out_ids, finish, cached = "", [], "length", 0
        async for out in stream:
            out_ids += out.token_ids
            text += detok.push(out.token_ids)
            if out.finish_reason is not None:
                text += detok.flush()
                finish = _finish_reason(out)
                cached = out.timings.cached_tokens if out.timings else 0
            text, hit = _apply_stop(text, sampling.stop)
            if hit:
                finish = "stop"
                break
        full = shape.full(text, finish, protocol.usage(len(ids), len(out_ids), cached))
        if return_ids:
            full["choices"][0]["token_ids"] = out_ids
            if chat:
                full["prompt_token_ids"] = ids
            else:
                full["choices"][0]["prompt_token_ids"] = ids
        return web.json_response(full)
    finally:
        stream.close()


async def _stream_openai(request: web.Request, server: MockServer, stream: _Stream,
                         shape: ResponseShape, ids: list[int], detok: Any, return_ids: bool,
                         include_usage: bool, stops: list[str]) -> web.StreamResponse:
    resp = web.StreamResponse(headers={"Content-Type": "text/event-stream",
                                       "Cache-Control": "no-cache"})
    await resp.prepare(request)
    first = shape.chunk(None, None, first=True) if shape.chat else None
    if first is not None:                    # chat: the role chunk carries the prompt's ids
        if return_ids:
            first["prompt_token_ids"] = ids
        await resp.write(sse(first))
    emitted, cached, text_so_far = 0, 0, ""
    try:
        async for out in stream:
            piece = detok.push(out.token_ids)
            finish = None
            if out.finish_reason is not None:
                piece += detok.flush()
                finish = _finish_reason(out)
                cached = out.timings.cached_tokens if out.timings else 0
            if stops:
                full, hit = _apply_stop(text_so_far + piece, stops)
                piece, text_so_far = full[len(text_so_far):], full
                if hit:
                    finish = "stop"
            chunk = shape.chunk(piece, finish, tool_call_deltas=out.tool_call_deltas)
            if return_ids:
                chunk["choices"][0]["token_ids"] = out.token_ids
                if not shape.chat and emitted == 0:
                    chunk["choices"][0]["prompt_token_ids"] = ids
            emitted += len(out.token_ids)
            await resp.write(sse(chunk))
            if finish is not None:
                break
        if include_usage:
            await resp.write(sse(shape.usage_chunk(protocol.usage(len(ids), emitted, cached))))
        await resp.write(SSE_DONE)
    except OpenAIError as exc:
        await resp.write(sse_error(exc))
    return resp


def _finish_reason(out: RequestOutput) -> str:
    if out.finish_reason == "error":
        raise OpenAIError(500, out.error or "the mock engine failed")
    return out.finish_reason or "stop"


def _apply_stop(text: str, stops: list[str]) -> tuple[str, bool]:
    cut = min((i for i in (text.find(s) for s in stops if s) if i >= 0), default=-1)
    return (text[:cut], True) if cut >= 0 else (text, False)


async def chat_completions(request: web.Request) -> web.StreamResponse:
    return await _openai(request, chat=True)


async def completions(request: web.Request) -> web.StreamResponse:
    return await _openai(request, chat=False)


async def tokenize(request: web.Request) -> web.Response:
    """vLLM's /tokenize (SGLang's /v1/tokenize has the same shape): chat `messages` rendered with
    the template (no special tokens added), or a `prompt` (`add_special_tokens`, default true)."""
    server: MockServer = request.app["server"]
    try:
        body = protocol.parse_json_body(await request.read())
        if "messages" in body:
            ids = server.render_chat(body["messages"], body.get("tools"),
                                     bool(body.get("add_generation_prompt", True)),
                                     body.get("chat_template_kwargs") or None)
            if body.get("add_special_tokens"):
                ids = server.tokenizer.encode(server.tokenizer.decode(ids, False), True)
        elif isinstance(body.get("prompt"), (str, list)):
            ids = server.prompt_ids(body["prompt"], bool(body.get("add_special_tokens", True)))
        else:
            raise protocol.invalid("prompt", "'prompt' or 'messages' is required")
    except OpenAIError as exc:
        return _error(exc)
    return web.json_response({"count": len(ids), "max_model_len":
                              server.engine.info.context_length, "tokens": ids,
                              "token_strs": None})


async def models(request: web.Request) -> web.Response:
    server: MockServer = request.app["server"]
    return web.json_response({"object": "list", "data": [{
        "id": server.served_name, "object": "model", "created": int(time.time()),
        "owned_by": "rotor-mocker", "root": server.tokenizer.model_path, "parent": None,
        "max_model_len": server.engine.info.context_length}]})


async def health(request: web.Request) -> web.Response:
    return web.Response(status=200)


async def metrics(request: web.Request) -> web.Response:
    server: MockServer = request.app["server"]
    info, load = server.engine.info, server.engine.load()
    usage = load.kv_used_blocks / load.kv_total_blocks if load.kv_total_blocks else 0.0
    name = server.served_name
    lines = [
        "# TYPE vllm:cache_config_info gauge",
        f'vllm:cache_config_info{{block_size="{info.kv_block_size}",enable_prefix_caching="True",'
        f'num_gpu_blocks="{info.total_kv_blocks}"}} 1.0',
        "# TYPE vllm:kv_cache_usage_perc gauge",
        f'vllm:kv_cache_usage_perc{{model_name="{name}"}} {usage}',
        "# TYPE vllm:num_requests_running gauge",
        f'vllm:num_requests_running{{model_name="{name}"}} {load.num_running}',
        "# TYPE vllm:num_requests_waiting gauge",
        f'vllm:num_requests_waiting{{model_name="{name}"}} {load.num_waiting}',
        "# TYPE sglang:token_usage gauge",
        f'sglang:token_usage{{model_name="{name}"}} {usage}',
        "# TYPE sglang:num_running_reqs gauge",
        f'sglang:num_running_reqs{{model_name="{name}"}} {load.num_running}',
        "# TYPE sglang:num_queue_reqs gauge",
        f'sglang:num_queue_reqs{{model_name="{name}"}} {load.num_waiting}',
    ]
    return web.Response(text="\n".join(lines) + "\n", content_type="text/plain")


# -- SGLang's native endpoints ---------------------------------------------------------------------


async def server_info(request: web.Request) -> web.Response:
    server: MockServer = request.app["server"]
    info = server.engine.info
    return web.json_response({
        "model_path": server.tokenizer.model_path, "served_model_name": server.served_name,
        "page_size": info.kv_block_size,
        "max_total_num_tokens": info.total_kv_blocks * info.kv_block_size,
        "max_running_requests": info.max_num_seqs, "chunked_prefill_size":
        info.max_num_batched_tokens, "context_length": info.context_length})


async def generate(request: web.Request) -> web.StreamResponse:
    """SGLang's /generate: `input_ids` or `text`, `sampling_params` {max_new_tokens (128),
    ignore_eos, stop_token_ids}, `stream`, `rid`, `priority` (higher first). Chunks carry the
    cumulative `text` and `output_ids` and `meta_info`."""
    server: MockServer = request.app["server"]
    try:
        body = protocol.parse_json_body(await request.read())
        if isinstance(body.get("input_ids"), list) and body["input_ids"]:
            ids = [int(i) for i in body["input_ids"]]
        elif isinstance(body.get("text"), str) and body["text"]:
            ids = server.prompt_ids(body["text"], True)
        else:
            raise protocol.invalid("input_ids", "'input_ids' or 'text' is required")
        params = body.get("sampling_params") or {}
        if not isinstance(params, dict):
            raise protocol.invalid("sampling_params", "'sampling_params' must be an object")
        max_new = params.get("max_new_tokens", 128)
        if isinstance(max_new, bool) or not isinstance(max_new, int) or max_new < 1:
            raise protocol.invalid("sampling_params.max_new_tokens",
                                   "'max_new_tokens' must be a positive integer")
        rid = body.get("rid")
        stream = server.submit(ids, max_new, _priority(body), bool(params.get("ignore_eos")),
                               _stop_ids(params), request_id=str(rid) if rid else None)
    except OpenAIError as exc:
        return _error(exc)
    detok = server.tokenizer.detokenizer()
    text, out_ids = "", []

    def reply(out: RequestOutput | None) -> dict[str, Any]:
        finish = None
        if out is not None and out.finish_reason is not None:
            kind = "abort" if out.finish_reason in ("abort", "error") else out.finish_reason
            finish = {"type": kind, "length": len(out_ids)} if kind == "length" else {"type": kind}
        cached = out.timings.cached_tokens if out is not None and out.timings else 0
        return {"text": text, "output_ids": list(out_ids), "meta_info": {
            "id": stream.request.request_id, "prompt_tokens": len(ids),
            "completion_tokens": len(out_ids), "cached_tokens": cached,
            "finish_reason": finish}}

    try:
        if not body.get("stream"):
            last = None
            async for out in stream:
                out_ids += out.token_ids
                text += detok.push(out.token_ids)
                last = out
            text += detok.flush()
            return web.json_response(reply(last))
        resp = web.StreamResponse(headers={"Content-Type": "text/event-stream",
                                           "Cache-Control": "no-cache"})
        await resp.prepare(request)
        async for out in stream:
            out_ids += out.token_ids
            text += detok.push(out.token_ids)
            if out.finish_reason is not None:
                text += detok.flush()
            await resp.write(sse(reply(out)))
        await resp.write(SSE_DONE)
        return resp
    finally:
        stream.close()


# -- app and command line --------------------------------------------------------------------------


def build_app(server: MockServer) -> web.Application:
    app = web.Application(client_max_size=64 * 1024 * 1024)
    app["server"] = server
    app.on_startup.append(server.start)
    app.on_cleanup.append(server.stop)
    app.router.add_post("/v1/chat/completions", chat_completions)
    app.router.add_post("/v1/completions", completions)
    app.router.add_post("/tokenize", tokenize)
    app.router.add_post("/v1/tokenize", tokenize)
    app.router.add_get("/v1/models", models)
    app.router.add_get("/health", health)
    app.router.add_get("/metrics", metrics)
    app.router.add_post("/generate", generate)
    app.router.add_get("/get_server_info", server_info)
    app.router.add_get("/get_model_info", server_info)
    return app


IGNORED_FLAGS = ("--enforce-eager", "--disable-uvicorn-access-log", "--enable-prompt-tokens-details",
                 "--enable-metrics", "--trust-remote-code", "--disable-log-requests",
                 "--disable-log-stats")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m mocker --serve-openai",
        description="The mock engine behind an engine-compatible OpenAI server (vLLM's endpoints "
                    "and chunk shapes, SGLang's /generate and /get_server_info) publishing KV "
                    "events on ZMQ in vLLM's wire format, for fast tests of the vLLM and SGLang "
                    "worker adapters. Accepts the vLLM and SGLang flag spellings the adapters pass.")
    server = parser.add_argument_group("server options")
    server.add_argument("--model", "--model-path", dest="model", default=None,
                        help="local Hugging Face model folder: tokenizer, chat template, context "
                             "length (default: Rotor's shipped mock model)")
    server.add_argument("--served-model-name", default=None,
                        help="model name requests must use (default: the model folder's name)")
    server.add_argument("--host", default="127.0.0.1",
                        help="HTTP address to bind (default: 127.0.0.1)")
    server.add_argument("--port", type=int, default=8000, help="HTTP port (default: 8000)")
    server.add_argument("--max-model-len", "--context-length", dest="max_model_len", type=int,
                        default=None,
                        help="context length (default: the model's config)")
    server.add_argument("--kv-events-config", default=None, metavar="JSON",
                        help='vLLM\'s KV events config, e.g. \'{"publisher": "zmq", "endpoint": '
                             '"tcp://127.0.0.1:5557", "replay_endpoint": "tcp://127.0.0.1:5558", '
                             '"topic": "kv-events"}\'; the PUB binds for *, ::, ipc:// and '
                             'inproc:// endpoints and connects otherwise; the replay ROUTER binds '
                             '(default: no KV events)')
    server.add_argument("--kv-events-tagged", action="store_true",
                        help="publish events as SGLang-style tagged arrays instead of vLLM 0.32 "
                             "maps")
    engine = parser.add_argument_group("engine options (the mock engine's flags; vLLM spellings)")
    MockEngineArgs.add_arguments(engine)
    aliases = parser.add_argument_group("SGLang spellings")
    aliases.add_argument("--page-size", dest="block_size", type=int, default=argparse.SUPPRESS,
                         help="same as --block-size")
    aliases.add_argument("--max-running-requests", dest="max_num_seqs", type=int,
                         default=argparse.SUPPRESS, help="same as --max-num-seqs")
    aliases.add_argument("--chunked-prefill-size", dest="max_num_batched_tokens", type=int,
                         default=argparse.SUPPRESS, help="same as --max-num-batched-tokens")
    aliases.add_argument("--enable-priority-scheduling", dest="scheduling_policy",
                         action="store_const", const="priority", default=argparse.SUPPRESS,
                         help="same as --scheduling-policy priority (SGLang: higher first)")
    ignored = parser.add_argument_group("accepted and ignored (engine flags without meaning here)")
    for flag in IGNORED_FLAGS:
        ignored.add_argument(flag, action="store_true",
                             help="accepted for vLLM/SGLang command-line compatibility; no effect")
    return parser


def create_server(ns: argparse.Namespace) -> MockServer:
    engine_args = MockEngineArgs.from_args(ns).validate()
    tokenizer = Tokenizer.load(ns.model)
    name = ns.served_model_name or resolve_model_path(ns.model).rstrip("/").rsplit("/", 1)[-1]
    context_length = ns.max_model_len or tokenizer.context_length
    engine = MockEngine(EngineCore(engine_args, context_length=context_length))
    config = parse_kv_events_config(ns.kv_events_config)
    publisher = None
    if config is not None:
        publisher = KvPublisher(config["endpoint"], config.get("replay_endpoint") or None,
                                str(config.get("topic") or ""), tagged=ns.kv_events_tagged)
    return MockServer(engine, tokenizer, name, publisher)


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    ns = parser.parse_args(argv)
    try:
        if ns.script is not None:
            raise ValueError("--script is not supported with --serve-openai")
        server = create_server(ns)
    except (ValueError, FileNotFoundError, zmq.ZMQError) as exc:
        parser.error(str(exc))
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    log.info("mock engine-compatible server for %r on http://%s:%d (block size %d, %d blocks)%s",
             server.served_name, ns.host, ns.port, server.engine.info.kv_block_size,
             server.engine.info.total_kv_blocks,
             f"; KV events -> {server.publisher.endpoint}" if server.publisher else "")
    web.run_app(build_app(server), host=ns.host, port=ns.port, handler_cancellation=True,
                access_log=None, print=None)
    return 0
