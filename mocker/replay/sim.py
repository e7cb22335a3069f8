"""Offline replay: the real router core and N real mock engine cores on one virtual clock.

One process, typed objects, no sockets. Per worker i: an `EngineCore`, a `KvRelay(i)` (the live
worker's relay), and a `WorkerInfo` in the `Router`, which starts from the relay's dump as it
does live. The loop mirrors what the live frontend and worker do, in this order at each instant t:

    1. engine cores run to t (`advance_until`); their KV event batches go through the relay
       (`ingest`) into `Router.apply_event`, in order per worker
    2. load reports: each core's `load()` → `Router.apply_load` whenever it changed (the live
       worker publishes on change at most every 100 ms; offline it is never late)
    3. first tokens → `Router.first_token`; finished requests → `Router.release`, and the rows
       waiting on them become due at end + delay + tool_wait_ms
    4. `Router.tick()` on the live frontend's 100 ms cadence
    5. arrivals due at t → `Router.route`: a Decision is added to that engine at t, Queued waits
       for its outcome (`take_outcomes` after every router call), Shed fails the request

How far the cores may run in one go (the horizon) is what keeps this both exact and fast. With
the admission queue empty nothing between two arrivals can dispatch anything, so the cores run
straight to the next arrival, decode runs in bulk. A finishing request's dependents start at
least `gap` later, so with requests in flight that others wait on the horizon is also
now + the smallest such gap. While requests wait in the router's queue, the cores advance pass by
pass (every pass end can free a worker) and on tick boundaries (queue wait limits).
"""

from __future__ import annotations

import heapq
import math
import random
import time
from collections.abc import Callable
from dataclasses import dataclass, field

from mocker.config import MockEngineArgs
from mocker.core import CoreRequest, EngineCore, StepOutput
from mocker.replay.trace import PromptFactory, Trace, TraceRequest
from router.config import RouterConfig
from router.core import Decision, Queued, RouteRequest, Router, SessionClosed, Shed
from router.events import LoadReport, RouterEvent
from router.load import WorkerInfo
from router.sessions import SessionControl
from worker.kv_relay import KvRelay

TICK_MS = 100.0          # the live frontend's router tick
_NEVER = math.inf


@dataclass(frozen=True, slots=True)
class AgentFeatures:
    """Which agent-aware inputs replay hands the router (and, for priority, the engine).

    priority  the row's `priority` as agent_hints.priority (router cost and queue, engine order)
    osl       the row's output_length as agent_hints.osl (expected output blocks in the load)
    sessions  each agentic trajectory bound to one worker (session_control bind on its first
              request, trajectory_final on its last)
    """

    priority: bool = True
    osl: bool = True
    sessions: bool = True

    @classmethod
    def parse(cls, text: str) -> "AgentFeatures":
        """`all`, `none`, or a comma list of priority, osl, sessions."""
        text = text.strip().lower()
        if text == "all":
            return cls()
        if text in ("none", ""):
            return cls(False, False, False)
        names = {n.strip() for n in text.split(",")}
        unknown = names - {"priority", "osl", "sessions"}
        if unknown:
            raise ValueError(f"agent features: unknown {sorted(unknown)}; use all, none or a "
                             f"comma list of priority, osl, sessions")
        return cls("priority" in names, "osl" in names, "sessions" in names)

    def names(self) -> list[str]:
        return [n for n in ("priority", "osl", "sessions") if getattr(self, n)]


@dataclass(slots=True)
class Outcome:
    """What happened to one request (times: virtual ms)."""

    index: int
    arrival_ms: float = math.nan       # reached the router
    dispatch_ms: float = math.nan      # added to its engine
    first_token_ms: float = math.nan
    end_ms: float = math.nan
    worker: int = -1
    cached_tokens: int = 0
    output_tokens: int = 0
    preemptions: int = 0
    status: str = "pending"            # pending, ok, shed:<reason>, failed:<why>


@dataclass
class SimResult:
    outcomes: list[Outcome]
    wall_s: float
    passes: int
    router_events: int
    router_event_status: dict[str, int]
    max_queue_depth: int
    queued_requests: int
    prompt_build_s: float = 0.0
    notes: list[str] = field(default_factory=list)


class Simulation:
    def __init__(self, trace: Trace, *, num_workers: int, engine_args: MockEngineArgs,
                 router_config: RouterConfig, seed: int = 0,
                 agent: AgentFeatures = AgentFeatures(),
                 progress: Callable[[int, int, float], None] | None = None,
                 event_sink: Callable[[RouterEvent], None] | None = None):
        if num_workers < 1:
            raise ValueError(f"num_workers must be at least 1, got {num_workers}")
        self.trace = trace
        self.requests = trace.requests
        self.args = engine_args.validate()
        self.agent = agent
        self.progress = progress
        self.event_sink = event_sink        # sees every router event applied (benchmarks)
        self.now = 0.0                                      # ms
        bs = self.args.block_size
        self.cores = [EngineCore(self.args) for _ in range(num_workers)]
        self.relays = [KvRelay(i, bs) for i in range(num_workers)]
        self.router = Router(router_config, clock=lambda: self.now / 1000.0,
                             rng=random.Random(seed))
        for i in range(num_workers):
            self.router.add_worker(WorkerInfo(i, bs, self.args.num_gpu_blocks,
                                              self.args.max_num_batched_tokens,
                                              self.args.max_num_seqs))
            self.router.apply_kv_reply(self.relays[i].dump())
        self.prompts = PromptFactory(trace.trace_block_size, bs)
        self.outcomes = [Outcome(r.index) for r in self.requests]
        self._route_requests: dict[str, RouteRequest] = {}
        self._index_of: dict[str, int] = {}
        # dependencies
        n = len(self.requests)
        self._waiting_on = [len(r.deps) for r in self.requests]
        self._dependents: list[list[int]] = [[] for _ in range(n)]
        for r in self.requests:
            for d in r.deps:
                self._dependents[d].append(r.index)
        self._ready_at = [r.arrival_ms if r.arrival_ms is not None else -_NEVER
                          for r in self.requests]   # latest dependency end + gap so far
        self._min_gap = [min((self.requests[j].gap_ms for j in deps), default=_NEVER)
                         for deps in self._dependents]
        self._gaps: list[tuple[float, int]] = []   # (min gap of its dependents, index) in flight
        self._arrivals: list[tuple[float, int]] = [(r.arrival_ms, r.index) for r in self.requests
                                                   if r.arrival_ms is not None]
        heapq.heapify(self._arrivals)
        self._loads: list[tuple[int, int, int] | None] = [None] * num_workers
        self._next_tick = TICK_MS
        self._done = 0
        self._router_events = 0
        self._max_queue = 0
        self._queued = 0
        self._passes = 0

    # -- the loop ------------------------------------------------------------------------------

    def run(self) -> SimResult:
        t_wall = time.perf_counter()
        total = len(self.requests)
        router = self.router
        while True:
            t = self._horizon()
            if t is None:
                break
            self._advance(t)
            if router.queue_depth or self._next_tick <= self.now:
                if self._next_tick <= self.now:
                    router.tick()
                    self._next_tick = (math.floor(self.now / TICK_MS) + 1) * TICK_MS
                self._settle()
            arrivals = self._arrivals
            while arrivals and arrivals[0][0] <= self.now:
                _, i = heapq.heappop(arrivals)
                self._arrive(i)
            if self.progress is not None:
                self.progress(self._done, total, self.now)
        wall = time.perf_counter() - t_wall
        status = {f"{kind}:{st}": c for (kind, st), c in sorted(router.metrics.events.items())}
        return SimResult(self.outcomes, wall, self._passes, self._router_events, status,
                         self._max_queue, self._queued)

    def _horizon(self) -> float | None:
        """The time to run the cores to next (None: all done)."""
        t = self._arrivals[0][0] if self._arrivals else _NEVER
        if t <= self.now:
            return self.now                                 # arrivals due now go first
        gaps = self._gaps
        while gaps and self.outcomes[gaps[0][1]].status != "pending":
            heapq.heappop(gaps)
        gap = gaps[0][0] if gaps else _NEVER
        queued = self.router.queue_depth > 0
        if queued or self.now + gap < t:
            # A finish (and a freed worker) can only come at a pass end: find the first one.
            self._kick()
            end = self._next_pass_end()
            t = min(t, self._next_tick, end) if queued else min(t, end + gap)
        if t == _NEVER:
            if any(core.next_event_time() is not None for core in self.cores):
                return _NEVER                               # nothing left to arrive: run to idle
            return None
        return t

    def _kick(self) -> None:
        """Start the pass due on every idle core that has work, so its end time is known."""
        for i, core in enumerate(self.cores):
            due = core.next_event_time()
            if due is not None and due <= core.now:
                self._collect(i, core.advance_until(math.nextafter(core.now, _NEVER)))

    def _next_pass_end(self) -> float:
        ends = [e for core in self.cores if (e := core.next_event_time()) is not None
                and e > core.now]
        return min(ends, default=_NEVER)

    def _advance(self, t: float) -> None:
        """Run every core to t and hand the router what happened, as the live planes would."""
        outputs = [core.advance_until(t) for core in self.cores]
        if t == _NEVER:
            t = max(core.now for core in self.cores)
        self.now = max(self.now, t)
        for i, out in enumerate(outputs):
            self._collect(i, out)

    def _collect(self, i: int, out: StepOutput) -> None:
        router, core = self.router, self.cores[i]
        batches = core.take_events()
        if batches:
            relay = self.relays[i]
            for batch in batches:
                events = relay.ingest(batch.to_engine_batch())
                for event in events:
                    router.apply_event(event)
                self._router_events += len(events)
                if self.event_sink is not None:
                    for event in events:
                        self.event_sink(event)
        load = core.load()
        key = (load.kv_used_blocks, load.num_running, load.num_waiting)
        if key != self._loads[i]:
            self._loads[i] = key
            router.apply_load(LoadReport(i, 0, load.kv_used_blocks, load.kv_total_blocks,
                                         load.num_running, load.num_waiting))
        self._passes += out.passes
        index_of, outcomes = self._index_of, self.outcomes
        for first in out.first_tokens:
            outcomes[index_of[first.request_id]].first_token_ms = first.time_ms
            router.first_token(first.request_id)
        for fin in out.finished:
            j = index_of.pop(fin.request_id)
            o = outcomes[j]
            o.end_ms, o.cached_tokens = fin.end_ms, fin.cached_tokens
            o.output_tokens, o.preemptions = len(fin.output_ids), fin.preemptions
            o.status = "ok"
            router.release(fin.request_id)
            self._finish(j, fin.end_ms)
        if router.queue_depth or out.first_tokens or out.finished:
            self._settle()

    def _finish(self, j: int, end_ms: float) -> None:
        self._done += 1
        self._route_requests.pop(self.requests[j].request_id, None)
        for k in self._dependents[j]:
            r = self.requests[k]
            self._ready_at[k] = max(self._ready_at[k], end_ms + r.gap_ms)
            self._waiting_on[k] -= 1
            if self._waiting_on[k] == 0:
                heapq.heappush(self._arrivals, (max(self._ready_at[k], self.now), k))

    # -- requests ------------------------------------------------------------------------------

    def _arrive(self, i: int) -> None:
        r = self.requests[i]
        o = self.outcomes[i]
        o.arrival_ms = self.now
        if self._min_gap[i] < _NEVER:
            heapq.heappush(self._gaps, (self._min_gap[i], i))
        request = RouteRequest(r.request_id, self.prompts.prompt(r),
                               priority=r.priority if self.agent.priority else 0,
                               strict_priority=r.strict_priority,
                               osl=r.output_length if self.agent.osl else 0,
                               session=self._session(r),
                               trajectory_final=self.agent.sessions and r.last_in_trajectory)
        self._route_requests[r.request_id] = request
        self._index_of[r.request_id] = i
        result = self.router.route(request)
        if isinstance(result, Queued):
            self._queued += 1
            self._max_queue = max(self._max_queue, result.queue_depth)
        else:
            self._resolve(result)
        self._settle()

    def _session(self, r: TraceRequest) -> SessionControl | None:
        if not self.agent.sessions or r.trajectory is None:
            return None
        return SessionControl(r.trajectory, "bind" if r.first_in_trajectory else None)

    def _settle(self) -> None:
        while outcomes := self.router.take_outcomes():
            for outcome in outcomes:
                if not isinstance(outcome, SessionClosed):
                    self._resolve(outcome)

    def _resolve(self, result: Decision | Shed) -> None:
        i = self._index_of[result.request_id]
        r, o = self.requests[i], self.outcomes[i]
        if isinstance(result, Shed):
            self._fail(i, f"shed:{result.reason}")
            return
        request = self._route_requests[r.request_id]
        o.worker, o.dispatch_ms = result.worker_id, self.now
        try:
            self.cores[result.worker_id].add(CoreRequest(
                r.request_id, request.prompt.token_ids, r.output_length,
                priority=result.priority, prompt=request.prompt))
        except ValueError as exc:
            self.router.release(r.request_id)
            self._fail(i, f"failed:{exc}")

    def _fail(self, i: int, status: str) -> None:
        o = self.outcomes[i]
        o.status, o.end_ms = status, self.now
        self._index_of.pop(self.requests[i].request_id, None)
        self._finish(i, self.now)
