"""The HTTP frontend: an aiohttp app speaking the OpenAI API (DESIGN.md §3).

    POST /v1/chat/completions ─┐ parse ─► render chat template ─► tokenize ─► route ─► worker
    POST /v1/completions ──────┘         (off the loop when long)                      │
         ◄── SSE chunks / JSON ◄── detokenize incrementally, stop strings ◄── outputs ◄┘

Errors leave through one middleware as OpenAI error JSON. A client that disconnects cancels its
handler (`handler_cancellation=True`), which cancels the request on its worker.
"""

from __future__ import annotations

import asyncio
import itertools
import logging
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any

from aiohttp import web

from frontend import protocol
from frontend.config import FrontendConfig
from frontend.protocol import OpenAIError, Sampling
from frontend.tokenizer import TemplateError, Tokenizer
from frontend.workers import Model, RequestStream, WorkerFailed, WorkerPool
from router.discovery import Discovery, FileDiscovery
from worker.engine import EngineRequest, RequestOutput

log = logging.getLogger("rotor.frontend")


@dataclass
class FrontendState:
    config: FrontendConfig
    pool: WorkerPool
    round_robin: itertools.count = field(default_factory=itertools.count)
    shutting_down: bool = False


STATE = web.AppKey("state", FrontendState)


def create_app(config: FrontendConfig, discovery: Discovery | None = None,
               tokenizer: Tokenizer | None = None) -> web.Application:
    app = web.Application(client_max_size=int(config.max_body_mb * 2**20),
                          middlewares=[error_middleware])
    pool = WorkerPool(discovery or FileDiscovery(config.namespace), tokenizer)
    app[STATE] = FrontendState(config, pool)
    app.cleanup_ctx.append(_run_pool)
    app.on_shutdown.append(_mark_shutting_down)
    app.router.add_post("/v1/chat/completions", chat_completions)
    app.router.add_post("/v1/completions", completions)
    app.router.add_get("/v1/models", list_models)
    app.router.add_get("/health", health)
    app.router.add_get("/live", live)
    return app


async def _run_pool(app: web.Application) -> AsyncIterator[None]:
    pool = app[STATE].pool
    task = asyncio.create_task(pool.run())
    yield
    task.cancel()
    await asyncio.gather(task, return_exceptions=True)
    await pool.close()


async def _mark_shutting_down(app: web.Application) -> None:
    app[STATE].shutting_down = True


# ---------------------------------------------------------------------------------------------
# Errors


@web.middleware
async def error_middleware(request: web.Request, handler) -> web.StreamResponse:
    try:
        return await handler(request)
    except OpenAIError as exc:
        return _error_response(exc)
    except web.HTTPException as exc:
        if exc.status < 400:
            raise
        message = {404: f"no such path: {request.path}",
                   405: f"method {request.method} not allowed on {request.path}",
                   413: f"request body too large: the limit is "
                        f"{request.app[STATE].config.max_body_mb:g} MiB"}.get(exc.status, exc.reason)
        return _error_response(OpenAIError(exc.status, message))
    except asyncio.CancelledError:
        raise
    except Exception:
        log.exception("internal error on %s %s", request.method, request.path)
        return _error_response(OpenAIError(500, "internal server error"))


def _error_response(error: OpenAIError) -> web.Response:
    return web.json_response(error.body(), status=error.status, headers=error.headers)


# ---------------------------------------------------------------------------------------------
# OpenAI endpoints


async def chat_completions(request: web.Request) -> web.StreamResponse:
    state = request.app[STATE]
    chat = protocol.parse_chat(protocol.parse_json_body(await request.read()))
    model = _model(state, chat.model)
    try:
        text = model.tokenizer.apply_chat_template(chat.messages, tools=chat.tools,
                                                   add_generation_prompt=True)
    except TemplateError as exc:
        raise protocol.invalid("messages", f"cannot render the chat template: {exc}") from None
    token_ids = await _encode(state, model.tokenizer, text)
    return await _generate(request, state, model, token_ids, chat.sampling, chat=True,
                           extra=protocol.extra_fields(chat.body))


async def completions(request: web.Request) -> web.StreamResponse:
    state = request.app[STATE]
    completion = protocol.parse_completion(protocol.parse_json_body(await request.read()))
    model = _model(state, completion.model)
    if isinstance(completion.prompt, str):
        token_ids = await _encode(state, model.tokenizer, completion.prompt,
                                  add_special_tokens=True)
    else:
        token_ids = completion.prompt
        if max(token_ids) >= model.tokenizer.vocab_size:
            raise protocol.invalid("prompt", f"token ids must be below the vocabulary size "
                                             f"{model.tokenizer.vocab_size}")
    return await _generate(request, state, model, token_ids, completion.sampling, chat=False,
                           extra=protocol.extra_fields(completion.body))


async def list_models(request: web.Request) -> web.Response:
    state = request.app[STATE]
    data = [{"id": m.name, "object": "model", "created": 0, "owned_by": "rotor",
             "context_length": m.context_length} for m in state.pool.models.values()]
    return web.json_response({"object": "list", "data": data})


async def health(request: web.Request) -> web.Response:
    pool = request.app[STATE].pool
    workers = [{"worker_id": c.worker_id, "model": c.record.model, "engine": c.record.engine,
                "pid": c.record.pid, "endpoint": c.record.request_endpoint,
                "connected": c.connected, "in_flight": c.num_in_flight}
               for c in pool.clients.values()]
    refused = [{"worker_id": w, "reason": r} for w, r in pool.refused.items()]
    status = "healthy" if workers else "no_workers"
    return web.json_response({"status": status, "models": sorted(pool.models), "workers": workers,
                              "refused_workers": refused}, status=200 if workers else 503)


async def live(request: web.Request) -> web.Response:
    if request.app[STATE].shutting_down:
        return web.json_response({"status": "shutting_down"}, status=503)
    return web.json_response({"status": "live", "message": "Service is live"})


def _model(state: FrontendState, name: str) -> Model:
    model = state.pool.models.get(name)
    if model is None:
        served = ", ".join(sorted(state.pool.models)) or "none yet"
        raise OpenAIError(404, f"model {name!r} not found (served: {served})", param="model",
                          code="model_not_found")
    return model


async def _encode(state: FrontendState, tokenizer: Tokenizer, text: str,
                  add_special_tokens: bool = False) -> list[int]:
    if len(text) > state.config.long_prompt_chars:
        return await asyncio.to_thread(tokenizer.encode, text, add_special_tokens)
    return tokenizer.encode(text, add_special_tokens)


# ---------------------------------------------------------------------------------------------
# Generation


async def _generate(request: web.Request, state: FrontendState, model: Model,
                    token_ids: list[int], sampling: Sampling, chat: bool,
                    extra: frozenset[str]) -> web.StreamResponse:
    room = model.context_length - len(token_ids)
    if room < 1:
        raise protocol.invalid("messages" if chat else "prompt",
                               f"the prompt has {len(token_ids)} tokens; the model's context "
                               f"length is {model.context_length}")
    max_tokens = sampling.max_tokens or min(state.config.default_max_tokens, room)
    if max_tokens > room:
        raise protocol.invalid("max_tokens", f"max_tokens {max_tokens} + {len(token_ids)} prompt "
                                             f"tokens exceed the context length "
                                             f"{model.context_length}")
    request_id = str(uuid.uuid4())
    engine_request = EngineRequest(
        request_id=request_id, token_ids=token_ids, max_tokens=max_tokens, received_at=0.0,
        ignore_eos=sampling.ignore_eos, temperature=sampling.temperature, top_p=sampling.top_p,
        seed=sampling.seed, stop_token_ids=[] if sampling.ignore_eos else [model.tokenizer.eos_token_id],
        x_request_id=request.headers.get("x-request-id"))
    shape = protocol.ResponseShape(chat, ("chatcmpl-" if chat else "cmpl-") + request_id, model.name)
    headers = {"x-request-id": engine_request.x_request_id} if engine_request.x_request_id else {}
    stream = await _dispatch(state, model, engine_request)
    if "worker_id" in extra:
        shape.nvext = protocol.worker_extension(stream.client.worker_id)
    run = _Generation(stream, model.tokenizer, sampling, len(token_ids))
    try:
        if sampling.stream:
            return await _stream_response(request, run, shape, sampling, headers)
        return await _unary_response(run, shape, headers)
    finally:
        stream.cancel()          # no-op when the request finished; frees its KV otherwise


async def _dispatch(state: FrontendState, model: Model, request: EngineRequest) -> RequestStream:
    clients = [c for c in map(state.pool.clients.get, model.worker_ids) if c.available]
    if not clients:
        raise OpenAIError(503, f"no worker serves model {model.name!r} right now",
                          headers={"Retry-After": "1"})
    client = clients[next(state.round_robin) % len(clients)]
    try:
        return await client.submit(request)
    except WorkerFailed as exc:
        raise OpenAIError(503, f"worker unavailable: {exc}", headers={"Retry-After": "1"}) from None


class _Generation:
    """One request's outputs turned into text: incremental detokenization and stop strings."""

    def __init__(self, stream: RequestStream, tokenizer: Tokenizer, sampling: Sampling,
                 prompt_tokens: int):
        self.stream = stream
        self.detokenizer = tokenizer.detokenizer()
        self.stops = sampling.stop
        self.hold = max((len(s) for s in self.stops), default=1) - 1  # chars a stop may straddle
        self.pending = ""                 # text held back until no stop string can start in it
        self.prompt_tokens = prompt_tokens
        self.completion_tokens = 0
        self.cached_tokens = 0
        self.finish_reason: str | None = None

    async def next(self) -> tuple[str, list[dict[str, Any]] | None]:
        """The next piece of text (and tool-call deltas); sets finish_reason at the end."""
        outputs = await self.stream.next_outputs()
        ids = [t for o in outputs for t in o.token_ids]
        deltas = [d for o in outputs if o.tool_call_deltas for d in o.tool_call_deltas] or None
        self.completion_tokens += len(ids)
        final: RequestOutput = outputs[-1]
        text = self.pending + self.detokenizer.push(ids)
        if final.finish_reason is not None:
            text += self.detokenizer.flush()
            self.finish_reason = final.finish_reason
            if final.timings is not None:
                self.cached_tokens = final.timings.cached_tokens
        for stop in self.stops:
            at = text.find(stop)
            if at >= 0:
                self.stream.cancel()
                self.finish_reason = "stop"
                self.pending = ""
                return text[:at], deltas
        if self.finish_reason is None and self.hold:
            cut = max(len(text) - self.hold, 0)
            text, self.pending = text[:cut], text[cut:]
        return text, deltas

    def usage(self) -> dict[str, Any]:
        return protocol.usage(self.prompt_tokens, self.completion_tokens, self.cached_tokens)


def _failure(exc: WorkerFailed) -> OpenAIError:
    return OpenAIError(503, f"the request failed on its worker: {exc}", headers={"Retry-After": "1"})


async def _stream_response(request: web.Request, run: _Generation, shape: protocol.ResponseShape,
                           sampling: Sampling, headers: dict[str, str]) -> web.StreamResponse:
    try:
        text, deltas = await run.next()      # fail with a real status until the first token
    except WorkerFailed as exc:
        raise _failure(exc) from None
    response = web.StreamResponse(headers={"Content-Type": "text/event-stream",
                                           "Cache-Control": "no-cache", **headers})
    await response.prepare(request)
    first = True
    try:
        while True:
            if text or deltas or first or run.finish_reason is not None:
                await response.write(protocol.sse(shape.chunk(text, None, first, deltas)))
                first = False
            if run.finish_reason is not None:
                break
            text, deltas = await run.next()
    except WorkerFailed as exc:
        await response.write(protocol.sse_error(_failure(exc)))
        return response
    await response.write(protocol.sse(shape.final_chunk(_openai_finish(run.finish_reason))))
    if sampling.include_usage:
        await response.write(protocol.sse(shape.usage_chunk(run.usage())))
    await response.write(protocol.SSE_DONE)
    return response


async def _unary_response(run: _Generation, shape: protocol.ResponseShape,
                          headers: dict[str, str]) -> web.Response:
    parts: list[str] = []
    tool_calls: dict[int, dict[str, Any]] = {}
    try:
        while run.finish_reason is None:
            text, deltas = await run.next()
            parts.append(text)
            for delta in deltas or ():
                _merge_tool_call(tool_calls, delta)
    except WorkerFailed as exc:
        raise _failure(exc) from None
    body = shape.full("".join(parts), _openai_finish(run.finish_reason), run.usage(),
                      [tool_calls[i] for i in sorted(tool_calls)] or None)
    return web.json_response(body, headers=headers)


def _merge_tool_call(calls: dict[int, dict[str, Any]], delta: dict[str, Any]) -> None:
    call = calls.setdefault(delta.get("index", 0), {"id": "", "type": "function",
                                                    "function": {"name": "", "arguments": ""}})
    call["id"] = delta.get("id") or call["id"]
    function = delta.get("function") or {}
    call["function"]["name"] += function.get("name") or ""
    call["function"]["arguments"] += function.get("arguments") or ""


def _openai_finish(reason: str | None) -> str:
    """Engine finish reasons as OpenAI clients accept them (stop, length, tool_calls)."""
    return reason if reason in ("stop", "length", "tool_calls") else "stop"

