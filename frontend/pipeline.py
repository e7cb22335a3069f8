"""One request's life on the fleet, below HTTP: route, dispatch, stream, migrate, release.

    RequestRun.start()         router.route (may wait in the admission queue) ─► worker.submit
    RequestRun.next_outputs()  outputs in order, duplicates dropped; on a migratable worker
                               failure the request continues elsewhere with the tokens generated
                               so far appended to its prompt and max_tokens reduced
    RequestRun.close()         cancel on the worker (frees its KV) and release router bookings

    TextStream                 a RequestRun's tokens as text: incremental detokenization and
                               stop strings (which end the request on its worker)

A client that disconnects cancels its handler's task, and the CancelledError ends the request.
Any other CancelledError is a frontend bug: it becomes an internal error the client sees (a 500,
or an error event mid-stream) and a logged traceback, never a silently cut stream.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Iterator
from dataclasses import replace
from typing import Any

from frontend.metrics import FrontendMetrics
from frontend.protocol import NvExt, OpenAIError, Sampling
from frontend.workers import Model, RequestStream, WorkerFailed
from router.core import Decision, RouteRequest
from router.hashing import Prompt
from tracing.records import RequestClock, ToolCallCollector
from worker.engine import EngineRequest, RequestOutput, Timings

log = logging.getLogger("rotor.frontend")


def unavailable(message: str) -> OpenAIError:
    return OpenAIError(503, message, headers={"Retry-After": "1"})


@contextlib.contextmanager
def unrequested_cancellation_fails(request_id: str) -> Iterator[None]:
    """Let a cancellation of the current task through; turn any other into a 500."""
    try:
        yield
    except asyncio.CancelledError:
        task = asyncio.current_task()
        if task is None or task.cancelling():
            raise
        log.exception("request %s: internal error: cancelled, but not by its client", request_id)
        raise OpenAIError(500, "internal error in the frontend") from None


class RequestRun:
    def __init__(self, model: Model, request: EngineRequest, prompt: Prompt, nvext: NvExt,
                 migration_limit: int, metrics: FrontendMetrics, clock: RequestClock):
        self.model = model
        self.request = request            # the original request; continuations are derived
        self.prompt = prompt
        self.nvext = nvext
        self.migrations_left = migration_limit
        self.metrics = metrics
        self.clock = clock                # receipt, dispatch, first token, end
        self.generated: list[int] = []    # every output token so far, across workers
        self.decision: Decision | None = None   # the first routing decision (cache hit, queue)
        self.timings: Timings | None = None     # the worker's durations, from its last output
        self.finish_reason: str | None = None
        self.worker_id: int | None = None
        self._stream: RequestStream | None = None
        self._offset = 0                  # tokens generated before the current worker's attempt
        self._prefilling = False          # the current attempt's booking still holds prefill load

    @property
    def request_id(self) -> str:
        return self.request.request_id

    async def start(self) -> None:
        with unrequested_cancellation_fails(self.request_id):
            await self._dispatch(self.request, self.prompt)

    async def _dispatch(self, request: EngineRequest, prompt: Prompt) -> None:
        """Route and submit, moving on to another worker while failures are migratable."""
        router = self.model.router
        while True:
            decision = await router.route(RouteRequest(
                request_id=request.request_id, prompt=prompt, priority=self.nvext.priority,
                strict_priority=self.nvext.strict_priority, osl=self.nvext.osl,
                session=self.nvext.session,
                trajectory_final=bool(self.nvext.agent_context and
                                      self.nvext.agent_context.trajectory_final),
                pinned_worker_id=self.nvext.backend_instance_id))
            client = router.client(decision.worker_id)
            try:
                if client is None:
                    raise WorkerFailed(f"worker {decision.worker_id} disconnected", migratable=True)
                request.priority = decision.priority
                self._stream = await client.submit(request)
            except WorkerFailed as exc:
                router.release(request.request_id)
                self._use_migration(exc, "new_request")
                continue
            self.decision = self.decision or decision
            self.worker_id = decision.worker_id
            self._offset = len(self.generated)
            self._prefilling = True
            self.clock.mark_dispatched()
            return

    def _use_migration(self, failure: WorkerFailed, kind: str) -> None:
        if failure.invalid:
            raise OpenAIError(400, f"the engine refused the request: {failure}")
        if not failure.migratable or self.migrations_left <= 0:
            raise unavailable(f"the request failed on its worker: {failure}")
        self.migrations_left -= 1
        self.metrics.migrations.labels(self.model.name, kind).inc()

    async def next_outputs(self) -> list[RequestOutput]:
        """The next outputs of the request, in order, each token once."""
        with unrequested_cancellation_fails(self.request_id):
            while True:
                assert self._stream is not None
                try:
                    outputs = await self._stream.next_outputs()
                except WorkerFailed as exc:
                    await self._migrate(exc)
                    if self.finish_reason is not None:
                        return [RequestOutput(self.request_id, len(self.generated), [],
                                              self.finish_reason)]
                    continue
                fresh = self._accept(outputs)
                if fresh or outputs[-1].finish_reason is not None:
                    return fresh or outputs[-1:]

    def _accept(self, outputs: list[RequestOutput]) -> list[RequestOutput]:
        fresh: list[RequestOutput] = []
        for output in outputs:
            start = self._offset + output.first_index       # index of its first token overall
            expected = len(self.generated)
            if start > expected:
                raise unavailable(f"worker {self.worker_id} skipped tokens {expected}..{start - 1}")
            tokens = output.token_ids[expected - start:]      # drop what was already seen
            if tokens or output.finish_reason is not None or output.tool_call_deltas:
                self.generated.extend(tokens)
                fresh.append(replace(output, first_index=expected, token_ids=tokens))
            if output.timings is not None:
                self.timings = output.timings
            if output.finish_reason is not None:
                self.finish_reason = output.finish_reason
        if self._prefilling and len(self.generated) > self._offset:
            self._prefilling = False          # each attempt's booking: prefill done at its first token
            self.clock.mark_first_token()     # the request's first token: the first call counts
            self.model.router.first_token(self.request_id)
        if self.nvext.osl and fresh:      # the decode-load estimate decays as it generates
            self.model.router.progress(self.request_id, len(self.generated))
        return fresh

    async def _migrate(self, failure: WorkerFailed) -> None:
        self.model.router.release(self.request_id)
        self._use_migration(failure, "ongoing_request")
        remaining = self.request.max_tokens - len(self.generated)
        if remaining <= 0:          # every token arrived; only the end was lost
            self.finish_reason = "length"
            return
        token_ids = self.request.token_ids + self.generated
        # a continuation is a token-id prompt: engines must not re-render the original chat body
        continuation = replace(self.request, token_ids=token_ids, max_tokens=remaining, body=None)
        await self._dispatch(continuation, Prompt(token_ids, self.prompt.block_size))

    def cancel(self) -> None:
        """Stop generating on the worker (e.g. a stop string matched)."""
        if self._stream is not None:
            self._stream.cancel()

    def close(self) -> None:
        """Free everything the request holds; safe to call more than once."""
        self.cancel()
        self.model.router.release(self.request_id)
        self.clock.mark_end()


class TextStream:
    """A RequestRun's tokens as text, with stop strings applied."""

    def __init__(self, run: RequestRun, sampling: Sampling):
        self.run = run
        self.detokenizer = run.model.tokenizer.detokenizer()
        self.stops = sampling.stop
        self.hold = max((len(s) for s in self.stops), default=1) - 1  # chars a stop may straddle
        self.pending = ""                 # text held back until no stop string can start in it
        self.finish_reason: str | None = None
        self.text: list[str] = []         # every piece returned so far
        self.tool_calls = ToolCallCollector()
        self.stop_reason: str | None = None   # the stop string that ended the request

    async def next(self) -> tuple[str, list[dict[str, Any]] | None]:
        """The next piece of text and tool-call deltas; sets finish_reason at the end."""
        outputs = await self.run.next_outputs()
        deltas = [d for o in outputs if o.tool_call_deltas for d in o.tool_call_deltas] or None
        if any(o.text is not None for o in outputs):   # the engine parsed its own output
            new = "".join(o.text or "" for o in outputs)
        else:
            new = self.detokenizer.push([t for o in outputs for t in o.token_ids])
        text = self.pending + new
        if self.run.finish_reason is not None:
            text += self.detokenizer.flush()
            self.finish_reason = self.run.finish_reason
        self.tool_calls.add_all(deltas)
        for stop in self.stops:
            at = text.find(stop)
            if at >= 0:
                self.run.cancel()
                self.finish_reason = "stop"
                self.stop_reason = stop
                self.pending = ""
                text = text[:at]
                break
        else:
            if self.finish_reason is None and self.hold:
                cut = max(len(text) - self.hold, 0)
                text, self.pending = text[:cut], text[cut:]
        self.text.append(text)
        return text, deltas

    def message(self) -> dict[str, Any]:
        """The reply as an assistant message (for the response body and speculative prefill)."""
        message: dict[str, Any] = {"role": "assistant", "content": "".join(self.text) or None}
        if self.tool_calls:
            message["tool_calls"] = self.tool_calls.calls()
        return message
