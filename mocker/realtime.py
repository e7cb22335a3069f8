"""The real-time driver: the mock engine core behind the worker's `Engine` protocol.

The core's clock is the worker's monotonic clock in ms. `step()` sleeps until the core's next pass
ends (waking early when a request is added or aborted), advances the core to the clock and returns
what the passes produced: one `RequestOutput` per request that advanced, plus the KV events drained
from the core. `add` and `abort` first bring the core up to the clock, so a request arriving while
the engine idles starts a pass at once, and one arriving mid-pass waits for the next, exactly as on
the virtual clock (mocker/virtual.py); with the same arrival times both drivers produce the same
schedule.

Registry entry: `MOCK_ENGINE` (`python -m worker --engine mock [mock flags]`).
"""

from __future__ import annotations

import argparse
import asyncio
import time
from collections import deque
from dataclasses import dataclass
from typing import Any, Protocol

from frontend.tokenizer import Tokenizer
from mocker.config import MockEngineArgs
from mocker.core import CoreRequest, EngineCore, Finished, StepOutput
from mocker.script import Reply, ScriptBook
from worker.engine import (EngineContext, EngineInfo, EngineKind, EngineRequest, EngineStep,
                           LoadSnapshot, RequestOutput, Timings)


class Clock(Protocol):
    def now_ms(self) -> float:
        """Monotonic time in ms, on the same clock as `EngineRequest.received_at` (s)."""

    async def wait(self, deadline_ms: float | None, wake: asyncio.Event) -> None:
        """Return at `deadline_ms` (None: no deadline) or as soon as `wake` is set."""


class MonotonicClock:
    def now_ms(self) -> float:
        return time.monotonic() * 1000.0

    async def wait(self, deadline_ms: float | None, wake: asyncio.Event) -> None:
        timeout = None if deadline_ms is None else (deadline_ms - self.now_ms()) / 1000.0
        if timeout is not None and timeout <= 0:
            return
        try:
            await asyncio.wait_for(wake.wait(), timeout)
        except asyncio.TimeoutError:
            pass


@dataclass(slots=True)
class _Live:
    received_ms: float
    reply: Reply | None       # scripted reply, if any
    sent: int = 0             # output tokens already returned


class MockEngine:
    def __init__(self, core: EngineCore, clock: Clock | None = None,
                 script: ScriptBook | None = None):
        args = core.args
        if core.context_length is None:
            raise ValueError("the mock engine behind a worker needs the model's context length")
        self.info = EngineInfo(kv_block_size=args.block_size, total_kv_blocks=args.num_gpu_blocks,
                               max_num_seqs=args.max_num_seqs,
                               max_num_batched_tokens=args.max_num_batched_tokens,
                               context_length=core.context_length)
        self._core = core
        self._clock = clock or MonotonicClock()
        self._script = script
        self._live: dict[str, _Live] = {}
        self._finished: list[Finished] = []       # finished while add/abort caught the core up
        self._ready: deque[EngineStep] = deque()  # collected frames not yet handed out
        self._wake = asyncio.Event()

    async def start(self) -> None:
        self._catch_up()

    async def stop(self) -> None:
        for request_id in list(self._live):
            self.abort(request_id)

    def add(self, request: EngineRequest) -> None:
        reply = self._script.reply_for(request) if self._script else None
        core_request = CoreRequest(
            request.request_id, request.token_ids, request.max_tokens, request.priority,
            prompt=request.prompt, output_ids=reply.token_ids if reply else None,
            stop_token_ids=() if request.ignore_eos else request.stop_token_ids)
        self._catch_up()
        self._core.add(core_request)
        self._live[request.request_id] = _Live(request.received_at * 1000.0, reply)
        self._wake.set()

    def abort(self, request_id: str) -> None:
        if self._live.pop(request_id, None) is None:
            return
        for step in self._ready:                  # no output follows an abort
            step.outputs = [o for o in step.outputs if o.request_id != request_id]
        self._catch_up()
        self._core.abort(request_id)
        self._wake.set()

    async def step(self) -> EngineStep:
        while not self._ready:
            self._catch_up()
            self._ready.extend(self._collect())
            if self._ready:
                break
            self._wake.clear()
            await self._clock.wait(self._core.next_event_time(), self._wake)
        return self._ready.popleft()

    def stats(self) -> dict[str, Any]:
        return {}

    def load(self) -> LoadSnapshot:
        return self._core.load()

    # -- internals ---------------------------------------------------------------------------

    def _catch_up(self) -> None:
        step: StepOutput = self._core.advance_until(self._clock.now_ms())
        self._finished += step.finished

    def _collect(self) -> list[EngineStep]:
        """What the core produced since the last call, one EngineStep per token position: each
        pass gives every running request one token, so a driver that fell behind the core (high
        speedup ratios) still hands the worker one frame per pass, and clients stream per token."""
        finished = {f.request_id: f for f in self._finished}
        self._finished = []
        steps: list[list[RequestOutput]] = []
        for request_id, live in list(self._live.items()):
            done = finished.get(request_id)
            ids = done.output_ids if done is not None else self._core.emitted(request_id)
            visible = len(ids) if live.reply is None else min(len(ids), len(live.reply.text_ids))
            if visible == live.sent and done is None:
                continue
            pieces = [RequestOutput(request_id, live.sent + i, [token])
                      for i, token in enumerate(ids[live.sent:visible].tolist())]
            if not pieces:                      # finished with nothing new to show
                pieces = [RequestOutput(request_id, live.sent, [])]
            live.sent = visible
            if done is not None:
                del self._live[request_id]
                self._finish(pieces[-1], done, live)
            for position, piece in enumerate(pieces):
                if position == len(steps):
                    steps.append([])
                steps[position].append(piece)
        events = [event for batch in self._core.take_events() for event in batch.events]
        if not steps and not events:
            return []
        collected = [EngineStep(outputs) for outputs in steps] or [EngineStep([])]
        collected[0].kv_events = events
        return collected

    @staticmethod
    def _finish(output: RequestOutput, done: Finished, live: _Live) -> None:
        output.finish_reason = done.finish_reason
        reply = live.reply
        if reply is not None and reply.tool_calls and len(done.output_ids) == len(reply.token_ids):
            output.finish_reason = "tool_calls"
            output.tool_call_deltas = reply.tool_call_deltas(done.request_id)
        output.timings = Timings(queue_ms=done.start_ms - live.received_ms,
                                 prefill_ms=done.first_token_ms - done.start_ms,
                                 ttft_ms=done.first_token_ms - live.received_ms,
                                 total_ms=done.end_ms - live.received_ms,
                                 cached_tokens=done.cached_tokens)


def create_engine(args: argparse.Namespace, context: EngineContext) -> MockEngine:
    """The worker's factory: flags (with --extra-engine-args applied) to a running mock engine."""
    engine_args = MockEngineArgs.from_args(args).validate()
    script = None
    if engine_args.script:
        script = ScriptBook.load(engine_args.script, Tokenizer.load(context.model_path).encode)
    return MockEngine(EngineCore(engine_args, context_length=context.context_length), script=script)


MOCK_ENGINE = EngineKind(name="mock", add_arguments=MockEngineArgs.add_arguments,
                         create=create_engine)
