"""The HTTP frontend: an aiohttp app speaking the OpenAI API (DESIGN.md §3).

    POST /v1/chat/completions ─┐ parse ─► render chat template ─► tokenize ─► route ─► worker
    POST /v1/completions ──────┘         (off the loop when long)                      │
         ◄── SSE chunks / JSON ◄── detokenize incrementally, stop strings ◄── outputs ◄┘

Errors leave through one middleware as OpenAI error JSON. A client that disconnects cancels its
handler (`handler_cancellation=True`), which cancels the request on its worker.
"""

from __future__ import annotations

import asyncio
import logging
import time
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any

from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST

from frontend import protocol
from frontend.config import FrontendConfig
from frontend.metrics import FrontendMetrics, fleet_metrics, tracing_metrics
from frontend.pipeline import RequestRun, TextStream
from frontend.protocol import OpenAIError, Sampling
from frontend.tokenizer import TemplateError, Tokenizer
from frontend.workers import Model, WorkerPool
from router.config import RouterConfig
from router.discovery import Discovery, FileDiscovery
from router.hashing import Prompt
from tracing.config import TraceConfig
from tracing.records import (AgentContext, FinishReasonMetadata, ReplayHashes, RequestClock,
                             RequestEnd, WorkerPlacement, router_cache_hit)
from tracing.service import Tracing, open_tracing
from worker.engine import EngineRequest

log = logging.getLogger("rotor.frontend")


@dataclass
class FrontendState:
    config: FrontendConfig
    pool: WorkerPool
    metrics: FrontendMetrics
    trace_config: TraceConfig
    tracing: Tracing | None = None       # set while the app runs
    shutting_down: bool = False
    background: set[asyncio.Task] = field(default_factory=set)   # e.g. speculative prefills

    def spawn(self, coroutine) -> None:
        """Run work that outlives its request; the app cancels what is left at shutdown."""
        task = asyncio.create_task(coroutine)
        self.background.add(task)
        task.add_done_callback(self.background.discard)


STATE = web.AppKey("state", FrontendState)


def create_app(config: FrontendConfig, router_config: RouterConfig,
               trace_config: TraceConfig | None = None, discovery: Discovery | None = None,
               tokenizer: Tokenizer | None = None) -> web.Application:
    app = web.Application(client_max_size=int(config.max_body_mb * 2**20),
                          middlewares=[error_middleware])
    metrics = FrontendMetrics()
    pool = WorkerPool(discovery or FileDiscovery(config.namespace), router_config, metrics,
                      tokenizer)
    metrics.add_collector(lambda: fleet_metrics(pool))
    state = app[STATE] = FrontendState(config, pool, metrics, trace_config or TraceConfig())
    metrics.add_collector(lambda: tracing_metrics(state.tracing))
    app.cleanup_ctx.append(_run_tracing)
    app.cleanup_ctx.append(_run_pool)
    app.cleanup_ctx.append(_cancel_background)
    app.on_shutdown.append(_mark_shutting_down)
    app.router.add_post("/v1/chat/completions", chat_completions)
    app.router.add_post("/v1/completions", completions)
    app.router.add_get("/v1/models", list_models)
    app.router.add_get("/health", health)
    app.router.add_get("/live", live)
    app.router.add_get("/metrics", metrics_endpoint)
    return app


async def _run_pool(app: web.Application) -> AsyncIterator[None]:
    pool = app[STATE].pool
    task = asyncio.create_task(pool.run())
    yield
    task.cancel()
    await asyncio.gather(task, return_exceptions=True)
    await pool.close()


async def _run_tracing(app: web.Application) -> AsyncIterator[None]:
    """Trace sinks and the tool-event ingress; on shutdown (SIGTERM, SIGINT) everything recorded
    is flushed. Registered first, so it closes last, after in-flight requests wrote their rows."""
    state = app[STATE]
    async with open_tracing(state.trace_config) as tracing:
        state.tracing = tracing
        if tracing.enabled:
            log.info("agent tracing on: sinks %s at %s%s", ",".join(state.trace_config.sinks),
                     state.trace_config.output_path,
                     f", tool events on {state.trace_config.tool_events_endpoint}"
                     if tracing.ingress else "")
        yield
        state.tracing = None


async def _cancel_background(app: web.Application) -> AsyncIterator[None]:
    yield
    tasks = list(app[STATE].background)
    for task in tasks:
        task.cancel()
    await asyncio.gather(*tasks, return_exceptions=True)


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
    clock = RequestClock()
    state = request.app[STATE]
    chat = protocol.parse_chat(await request.read())
    model = _model(state, chat.model)
    try:
        text = model.tokenizer.apply_chat_template(chat.messages, tools=chat.tools,
                                                   add_generation_prompt=True)
    except TemplateError as exc:
        raise protocol.invalid("messages", f"cannot render the chat template: {exc}") from None
    token_ids = await _encode(state, model.tokenizer, text)
    return await _generate(request, state, model, token_ids, chat.sampling, clock, chat=True,
                           nvext=protocol.parse_nvext(chat.body), history=chat)


async def completions(request: web.Request) -> web.StreamResponse:
    clock = RequestClock()
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
    return await _generate(request, state, model, token_ids, completion.sampling, clock,
                           chat=False, nvext=protocol.parse_nvext(completion.body))


async def list_models(request: web.Request) -> web.Response:
    state = request.app[STATE]
    data = [{"id": m.name, "object": "model", "created": 0, "owned_by": "rotor",
             "context_length": m.context_length} for m in state.pool.models.values()]
    return web.json_response({"object": "list", "data": data})


async def health(request: web.Request) -> web.Response:
    pool = request.app[STATE].pool
    workers = [{"worker_id": c.worker_id, "model": c.record.model, "engine": c.record.engine,
                "pid": c.record.pid, "endpoint": c.record.request_endpoint,
                "connected": c.connected, "in_flight": c.num_in_flight,
                "load": c.load.to_wire() if c.load else None, "engine_stats": c.record.stats}
               for c in pool.clients.values()]
    refused = [{"worker_id": w, "reason": r} for w, r in pool.refused.items()]
    status = "healthy" if workers else "no_workers"
    return web.json_response({"status": status, "models": sorted(pool.models), "workers": workers,
                              "refused_workers": refused}, status=200 if workers else 503)


async def metrics_endpoint(request: web.Request) -> web.Response:
    body = request.app[STATE].metrics.render()
    return web.Response(body=body, headers={"Content-Type": CONTENT_TYPE_LATEST})


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
        # encode_batch releases the GIL, so other streams go on while a long prompt is encoded
        (ids,) = await asyncio.to_thread(tokenizer.encode_batch, [text], add_special_tokens)
        return ids
    return tokenizer.encode(text, add_special_tokens)


# ---------------------------------------------------------------------------------------------
# Generation


async def _generate(request: web.Request, state: FrontendState, model: Model,
                    token_ids: list[int], sampling: Sampling, clock: RequestClock, chat: bool,
                    nvext: protocol.NvExt,
                    history: protocol.ChatRequest | None = None) -> web.StreamResponse:
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
    x_request_id = request.headers.get("x-request-id")
    engine_request = EngineRequest(
        request_id=request_id, token_ids=token_ids, max_tokens=max_tokens, received_at=0.0,
        ignore_eos=sampling.ignore_eos, temperature=sampling.temperature, top_p=sampling.top_p,
        seed=sampling.seed, x_request_id=x_request_id,
        stop_token_ids=[] if sampling.ignore_eos else sorted(model.tokenizer.stop_token_ids),
        body=history.raw if history is not None else None)
    run = RequestRun(model, engine_request, Prompt(token_ids, model.kv_block_size), nvext,
                     state.config.migration_limit, state.metrics, clock)
    shape = protocol.ResponseShape(chat, ("chatcmpl-" if chat else "cmpl-") + request_id, model.name)
    headers = {"x-request-id": x_request_id} if x_request_id else {}
    endpoint = "chat_completions" if chat else "completions"
    observer = _Observer(state.metrics, model.name, endpoint, sampling.stream, run)
    text = TextStream(run, sampling)
    try:
        await run.start()
        if "worker_id" in nvext.extra_fields:
            shape.nvext = protocol.worker_extension(run.worker_id)
        if sampling.stream:
            response = await _stream_response(request, text, shape, sampling, headers, observer)
        else:
            response = await _unary_response(text, shape, headers, observer)
        observer.finish("success" if not observer.error_type else "error")
        if nvext.speculative_prefill and history is not None and not observer.error_type:
            state.spawn(_speculative_prefill(state, model, history, text.message(), nvext))
        return response
    except asyncio.CancelledError:
        observer.finish("error", "cancelled")
        raise
    except OpenAIError as exc:
        observer.finish("error", str(exc.status))
        raise
    finally:
        run.close()
        if nvext.agent_context is not None and state.tracing and state.tracing.enabled:
            state.tracing.tracer.emit(_request_end(state, run, text, nvext.agent_context))


def _request_end(state: FrontendState, run: RequestRun, text: TextStream,
                 context: AgentContext) -> dict[str, Any]:
    """The request's `request_end` trace record (DESIGN.md §6.1)."""
    fields: dict[str, Any] = {}
    decision = run.decision
    if decision is not None:
        fields["cached_tokens"], fields["kv_hit_rate"] = router_cache_hit(
            decision.overlap_blocks, len(run.request.token_ids), run.prompt.block_size)
        fields["queue_depth"] = decision.queue_depth
    if run.worker_id is not None:
        fields["worker"] = WorkerPlacement.aggregated(run.worker_id)
    finish = text.finish_reason or run.finish_reason
    if finish is not None:
        fields["finish_reason_metadata"] = FinishReasonMetadata(
            _openai_finish(finish), run.finish_reason, text.stop_reason, text.tool_calls.refs())
    if state.tracing.config.replay_hashes:
        fields["replay"] = ReplayHashes.from_prompt(run.prompt)
    return RequestEnd.build(
        agent_context=context, request_id=run.request_id, model=run.model.name, clock=run.clock,
        worker_durations=run.timings, x_request_id=run.request.x_request_id,
        input_tokens=len(run.request.token_ids), output_tokens=len(run.generated),
        **fields).to_record()


async def _speculative_prefill(state: FrontendState, model: Model, chat: protocol.ChatRequest,
                               reply: dict[str, Any], nvext: protocol.NvExt) -> None:
    """Warm the cache for the next turn: history + this reply, rendered with no generation
    prompt, sent through the router as a max_tokens=1 request (DESIGN.md §3)."""
    try:
        text = model.tokenizer.apply_chat_template([*chat.messages, reply], tools=chat.tools,
                                                   add_generation_prompt=False)
    except TemplateError as exc:
        log.info("speculative prefill skipped: %s", exc)
        return
    token_ids = await _encode(state, model.tokenizer, text)
    if len(token_ids) >= model.context_length:
        return
    request = EngineRequest(request_id=str(uuid.uuid4()), token_ids=token_ids, max_tokens=1,
                            received_at=0.0, ignore_eos=True)
    run = RequestRun(model, request, Prompt(token_ids, model.kv_block_size),
                     protocol.NvExt(priority=nvext.priority), 0, state.metrics, RequestClock())
    status = "error"
    try:
        await run.start()
        while run.finish_reason is None:
            await run.next_outputs()
        status = "success"
    except OpenAIError as exc:
        log.info("speculative prefill %s failed: %s", request.request_id, exc.message)
    finally:
        run.close()
        state.metrics.speculative_prefills.labels(model.name, status).inc()


class _Observer:
    """Metrics of one request, observed as its outputs arrive."""

    def __init__(self, metrics: FrontendMetrics, model: str, endpoint: str, stream: bool,
                 run: RequestRun):
        self.metrics, self.model, self.endpoint, self.run = metrics, model, endpoint, run
        self.request_type = "stream" if stream else "unary"
        self.error_type = ""
        self.last = 0.0
        self.done = False
        metrics.inflight.labels(model).inc()
        metrics.queued.labels(model).inc()

    def tokens(self, count: int) -> None:
        now = time.monotonic()
        if not count:
            return
        if not self.last:
            self.metrics.queued.labels(self.model).dec()
            self.metrics.ttft.labels(self.model).observe((self.run.clock.first_token_ms or 0) / 1000)
            count -= 1
        elif count:
            gap = (now - self.last) / count
            for _ in range(count):
                self.metrics.itl.labels(self.model).observe(gap)
        self.last = now

    def finish(self, status: str, error_type: str = "") -> None:
        if self.done:
            return
        self.done = True
        m, model = self.metrics, self.model
        if not self.last:
            m.queued.labels(model).dec()
        m.inflight.labels(model).dec()
        if error_type == "cancelled":
            m.cancellations.labels(model).inc()
            m.disconnected.inc()
        m.requests.labels(model, self.endpoint, self.request_type, status,
                          error_type or self.error_type).inc()
        self.run.clock.mark_end()
        m.duration.labels(model).observe((self.run.clock.end_ms or 0) / 1000)
        m.input_tokens.labels(model).observe(len(self.run.request.token_ids))
        m.output_tokens.labels(model).observe(len(self.run.generated))
        m.output_tokens_total.labels(model).inc(len(self.run.generated))
        if self.run.timings is not None:
            m.cached_tokens.labels(model).observe(self.run.timings.cached_tokens)


def _usage(run: RequestRun) -> dict[str, Any]:
    cached = run.timings.cached_tokens if run.timings else 0
    return protocol.usage(len(run.request.token_ids), len(run.generated), cached)


async def _stream_response(request: web.Request, text: TextStream, shape: protocol.ResponseShape,
                           sampling: Sampling, headers: dict[str, str],
                           observer: _Observer) -> web.StreamResponse:
    before = len(text.run.generated)
    piece, deltas = await text.next()      # fails with a real HTTP status until the first token
    observer.tokens(len(text.run.generated) - before)
    response = web.StreamResponse(headers={"Content-Type": "text/event-stream",
                                           "Cache-Control": "no-cache", **headers})
    await response.prepare(request)
    first = True
    try:
        while True:
            if piece or deltas or first:
                await response.write(protocol.sse(shape.chunk(piece, None, first, deltas)))
                first = False
            if text.finish_reason is not None:
                break
            before = len(text.run.generated)
            piece, deltas = await text.next()
            observer.tokens(len(text.run.generated) - before)
    except OpenAIError as exc:
        observer.error_type = str(exc.status)
        await response.write(protocol.sse_error(exc))
        return response
    await response.write(protocol.sse(shape.final_chunk(_openai_finish(text.finish_reason))))
    if sampling.include_usage:
        await response.write(protocol.sse(shape.usage_chunk(_usage(text.run))))
    await response.write(protocol.SSE_DONE)
    return response


async def _unary_response(text: TextStream, shape: protocol.ResponseShape,
                          headers: dict[str, str], observer: _Observer) -> web.Response:
    while text.finish_reason is None:
        before = len(text.run.generated)
        await text.next()
        observer.tokens(len(text.run.generated) - before)
    message = text.message()
    body = shape.full(message["content"] or "", _openai_finish(text.finish_reason),
                      _usage(text.run), message.get("tool_calls"))
    return web.json_response(body, headers=headers)


def _openai_finish(reason: str | None) -> str:
    """Engine finish reasons as OpenAI clients accept them (stop, length, tool_calls)."""
    return reason if reason in ("stop", "length", "tool_calls") else "stop"
