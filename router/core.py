"""The router core (DESIGN.md §4): synchronous and deterministic, clock and RNG injected.

The same `Router` runs behind the live frontend and inside offline replay. It owns no sockets
and no tasks; its adapter feeds it and acts on what it returns:

    adapter event                          call                       then
    ─────────────                          ────                       ────
    worker discovered                      add_worker(info)           send the KvQuery (a dump)
    worker gone                            remove_worker(worker_id)   fail the returned requests
    router KV event (msgpack map)          apply_wire_event(msg)      send the KvQuery, if any
    kv_query reply                         apply_kv_reply(reply)      send the KvQuery, if any
    load report                            apply_load(report)
    request admitted                       route(request)             Decision: dispatch it
                                                                      Queued: await its outcome
                                                                      Shed: 503 + Retry-After
    first output token                     first_token(request_id)
    tokens generated so far (optional)     progress(request_id, n)
    end, error or cancel (queued or not)   release(request_id)
    every ~100 ms                          tick()                     send the KvQueries
    after any call above                   take_outcomes()            Decisions and Sheds of
                                                                      queued requests; sessions
                                                                      that expired on a worker

Every state change that can free a worker (first token, release, load report, a new worker,
expiry) drains the admission queue; what it admits comes out of `take_outcomes()`.
"""

from __future__ import annotations

import random
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Literal, Union

from router.approx import ApproxCredits
from router.config import RouterConfig
from router.events import LoadReport, RouterEvent
from router.hashing import Prompt
from router.index import ApplyStatus, KvIndex, OverlapScores, WorkerKey
from router.kv_sync import DumpReply, EventStream, KvQuery, KvReply, RangeReply
from router.load import LoadTracker, WorkerInfo
from router.policies import Candidate, CostInputs, make_policy, miss_scale
from router.queue import AdmissionQueue
from router.sessions import SessionControl, SessionTable

RETRY_AFTER_S = 1  # the Retry-After a shed request is given, seconds


# ---------------------------------------------------------------------------------------------
# Inputs and results


@dataclass(slots=True)
class RouteRequest:
    """What the router needs to know about one request (parsed by the frontend)."""

    request_id: str
    prompt: Prompt                       # token ids with their block hashes
    priority: int = 0                    # agent_hints.priority; higher: more urgent
    strict_priority: int = 0             # agent_hints.strict_priority: queue tier
    osl: int = 0                         # agent_hints.osl: expected output tokens, 0 unknown
    session: SessionControl | None = None
    trajectory_final: bool = False       # agent_context.trajectory_final: unpin the session
    pinned_worker_id: int | None = None  # backend_instance_id
    pinned_dp_rank: int | None = None
    arrival: float | None = None         # router clock, seconds; None: now


@dataclass(frozen=True, slots=True)
class RouteTimings:
    """Router overhead of one decision, seconds of wall time (perf counter)."""

    hashing_s: float
    matching_s: float
    selection_s: float

    @property
    def total_s(self) -> float:
        return self.hashing_s + self.matching_s + self.selection_s


SessionOp = Literal["open", "close"]


@dataclass(frozen=True, slots=True)
class Decision:
    """Where a request goes. The adapter dispatches it there and, for `session_op`, opens the
    worker session before dispatch ("open") or closes it after the stream ends ("close")."""

    request_id: str
    worker_id: int
    dp_rank: int
    overlap_blocks: int      # leading prompt blocks cached on the worker
    cached_tokens: int       # overlap_blocks × block size, at most the prompt length
    prompt_tokens: int
    queue_depth: int         # requests left waiting in the router's queue
    queued_s: float          # seconds this request waited in the queue
    priority: int            # forwarded to the engine
    session_op: SessionOp | None
    session_id: str | None
    timings: RouteTimings

    @property
    def kv_hit_rate(self) -> float:
        return self.cached_tokens / self.prompt_tokens if self.prompt_tokens else 0.0


@dataclass(frozen=True, slots=True)
class Queued:
    request_id: str
    queue_depth: int


ShedReason = Literal["queue_full", "queue_timeout", "no_workers"]


@dataclass(frozen=True, slots=True)
class Shed:
    """Rejected: answer 503 with `Retry-After: retry_after_s`."""

    request_id: str
    reason: ShedReason
    retry_after_s: int
    queue_depth: int


@dataclass(frozen=True, slots=True)
class SessionClosed:
    """A pinned session expired; the worker still holds a session to close."""

    session_id: str
    worker_id: int
    dp_rank: int


RouteResult = Union[Decision, Queued, Shed]
Outcome = Union[Decision, Shed, SessionClosed]


@dataclass(frozen=True, slots=True)
class WorkerLoadView:
    worker_id: int
    dp_rank: int
    active_blocks: float
    prefill_tokens: int
    num_requests: int
    tree_size: int
    busy: bool


@dataclass
class RouterMetrics:
    """Counters for the adapter to export (Prometheus); gauges come from `Router` methods."""

    # (event kind, status) -> events; status: ok, parent_block_not_found, block_not_found,
    # invalid_block, duplicate, unknown_worker, invalid (undecodable; kind "unknown")
    events: Counter[tuple[str, str]] = field(default_factory=Counter)
    kv_queries: Counter[str] = field(default_factory=Counter)  # "range" | "dump" (and retries)
    sheds: Counter[str] = field(default_factory=Counter)       # ShedReason -> requests
    expired_bookings: int = 0       # bookings released after 300 s without an end


# ---------------------------------------------------------------------------------------------


class Router:
    def __init__(self, config: RouterConfig, *, clock: Callable[[], float], rng: random.Random,
                 perf_counter: Callable[[], float] = time.perf_counter):
        self.config = config.validate()
        self._clock = clock
        self._rng = rng
        self._perf = perf_counter
        self._policy = make_policy(config.router_mode, config.router_temperature)
        self._block_size = config.kv_cache_block_size
        self._workers: dict[int, WorkerInfo] = {}
        self._keys: list[WorkerKey] = []  # every (worker_id, dp_rank), in order of arrival
        self.index = KvIndex()
        self.loads = LoadTracker()
        self._streams: dict[int, EventStream] = {}
        self._approx = None if config.router_kv_events else ApproxCredits(
            self.index, config.router_ttl_secs)
        self._queue: AdmissionQueue[RouteRequest] = AdmissionQueue(
            config.router_queue_policy, config.max_queue_depth,
            config.max_queue_wait_ms / 1000.0, origin=clock())
        self._sessions = SessionTable()
        self._outcomes: list[Outcome] = []
        self.metrics = RouterMetrics()

    # -- workers -------------------------------------------------------------------------------

    @property
    def block_size(self) -> int | None:
        """Tokens per block: from the config, else from the first worker."""
        return self._block_size

    def add_worker(self, info: WorkerInfo) -> KvQuery | None:
        """Start routing to `info`'s ranks. Returns the dump query to send (KV events mode)."""
        if self._block_size is None:
            self._block_size = info.kv_block_size
        if info.kv_block_size != self._block_size:
            raise ValueError(f"kv_block_size {info.kv_block_size} of worker {info.worker_id} "
                             f"differs from the router's {self._block_size}")
        if info.worker_id in self._workers:
            raise ValueError(f"worker_id {info.worker_id} is already known")
        self._workers[info.worker_id] = info
        for key in info.keys():
            self._keys.append(key)
            self.index.add_worker(key)
            self.loads.add_worker(key, info)
        query = None
        if self._approx is None:
            now = self._clock()
            self._streams[info.worker_id] = EventStream(info.worker_id, now)
            query = KvQuery(info.worker_id, None)
            self.metrics.kv_queries["dump"] += 1
        self._drain_queue()
        return query

    def remove_worker(self, worker_id: int) -> list[str]:
        """Forget a departed worker: its blocks, bookings, pins and event stream. Returns the
        ids of the requests booked on it (the adapter fails them; their release is a no-op)."""
        info = self._workers.pop(worker_id, None)
        if info is None:
            return []
        gone: list[str] = []
        for key in info.keys():
            self._keys.remove(key)
            self.index.remove_worker(key)
            gone += self.loads.remove_worker(key)
            self._sessions.drop_worker(key)
            if self._approx is not None:
                self._approx.drop_worker(key)
        self._streams.pop(worker_id, None)
        self._drain_queue()
        return gone

    def workers(self) -> list[WorkerInfo]:
        return list(self._workers.values())

    # -- KV events -----------------------------------------------------------------------------

    def apply_wire_event(self, msg: Any) -> KvQuery | None:
        """`apply_event` for a decoded msgpack map; malformed ones are counted and dropped."""
        try:
            event = RouterEvent.from_wire(msg)
            _check_types(event)
        except (ValueError, KeyError, TypeError, IndexError, AttributeError):
            self.metrics.events["unknown", "invalid"] += 1
            return None
        return self.apply_event(event)

    def apply_event(self, event: RouterEvent) -> KvQuery | None:
        """Apply one router event in per-worker id order. Returns the query to send on a gap."""
        stream = self._streams.get(event.worker_id)
        if stream is None or not self._knows(event):
            self.metrics.events[event.kind, "unknown_worker"] += 1
            return None
        if stream.in_order(event):
            self._apply_known(event)
            return None
        if stream.is_duplicate(event):
            self.metrics.events[event.kind, "duplicate"] += 1
            return None
        ready, query = stream.offer(event, self._clock())
        for ev in ready:
            self._apply(ev)
        return self._count_query(query)

    def apply_kv_reply(self, reply: KvReply) -> KvQuery | None:
        """Apply a worker's answer to a KvQuery. Returns a follow-up query (rarely: a dump when
        a range no longer closes the gap)."""
        stream = self._streams.get(reply.worker_id)
        if stream is None:
            return None
        foreign = [ev for ev in reply.events if ev.worker_id != reply.worker_id]
        if foreign:  # never let one worker's reply touch another's state
            for ev in foreign:
                self.metrics.events[ev.kind, "unknown_worker"] += 1
            reply.events = [ev for ev in reply.events if ev.worker_id == reply.worker_id]
        if isinstance(reply, RangeReply):
            ready, query = stream.accept_range(reply, self._clock())
            for ev in ready:
                self._apply(ev)
            return self._count_query(query)
        assert isinstance(reply, DumpReply)
        for key in self._workers[reply.worker_id].keys():
            self.index.clear(key)
        for ev in reply.events:
            self._apply(ev)
        for ev in stream.accept_dump(reply):
            self._apply(ev)
        return None

    def _apply(self, event: RouterEvent) -> None:
        if not self._knows(event):
            self.metrics.events[event.kind, "unknown_worker"] += 1
            return
        self._apply_known(event)

    def _apply_known(self, event: RouterEvent) -> None:
        key = (event.worker_id, event.dp_rank)
        if event.kind == "stored":
            status = self.index.apply_stored(key, event.parent_hash, event.blocks)
        elif event.kind == "removed":
            status = self.index.apply_removed(key, event.hashes)
        else:
            self.index.clear(key)
            status = ApplyStatus.OK
        self.metrics.events[event.kind, status] += 1

    def _knows(self, event: RouterEvent) -> bool:
        info = self._workers.get(event.worker_id)
        return info is not None and 0 <= event.dp_rank < info.dp_size

    def _count_query(self, query: KvQuery | None) -> KvQuery | None:
        if query is not None:
            self.metrics.kv_queries["dump" if query.start_event_id is None else "range"] += 1
        return query

    def apply_load(self, report: LoadReport) -> None:
        if self.loads.apply_report(report):
            self._drain_queue()

    # -- requests ------------------------------------------------------------------------------

    def route(self, request: RouteRequest) -> RouteResult:
        """Choose a worker and book the request there, or queue it, or shed it."""
        t0 = self._perf()
        local, seq = request.prompt.local_hashes, request.prompt.sequence_hashes
        t1 = self._perf()
        now = self._clock()
        if request.request_id in self._queue or self.loads.booking(request.request_id):
            raise ValueError(f"request_id {request.request_id!r} is already routed")
        if self._block_size is not None and request.prompt.block_size != self._block_size:
            raise ValueError(f"prompt block_size {request.prompt.block_size} differs from the "
                             f"router's {self._block_size}")
        keys = self._eligible(request, now)
        if not keys:
            return self._shed(request.request_id, "no_workers")
        if self._approx is not None:
            self._approx.expire(now)
        overlaps = self.index.find_matches(local)
        t2 = self._perf()
        if self._all_busy(keys):
            if request.arrival is None:
                request.arrival = now
            best = max((overlaps.overlap(k) for k in keys), default=0)
            new_tokens = max(len(request.prompt) - best * request.prompt.block_size, 0)
            entry = self._queue.push(request.request_id, request, priority=request.priority,
                                     strict_priority=request.strict_priority,
                                     arrival=request.arrival, new_prefill_tokens=new_tokens,
                                     now=now)
            if entry is None:
                return self._shed(request.request_id, "queue_full")
            return Queued(request.request_id, len(self._queue))
        return self._admit(request, keys, overlaps, now, 0.0, local, seq, t1 - t0, t2 - t1)

    def first_token(self, request_id: str) -> None:
        """The request's first token arrived: its prefill load is done."""
        if self.loads.first_token(request_id):
            self._drain_queue()

    def progress(self, request_id: str, generated_tokens: int) -> None:
        """The request has generated `generated_tokens` tokens (decays its `osl` estimate)."""
        self.loads.progress(request_id, generated_tokens)

    def release(self, request_id: str) -> None:
        """End, error or cancel: a queued request leaves the queue, a booked one frees its load.
        Unknown ids are ignored (releasing twice is harmless)."""
        if self._queue.remove(request_id) is not None:
            return
        if self.loads.release(request_id) is not None:
            self._drain_queue()

    def tick(self) -> list[KvQuery]:
        """Time-driven work: expire bookings, session pins and approximate credits, shed queued
        requests past the wait limit, drain the queue. Returns kv queries to send again."""
        now = self._clock()
        expired = self.loads.expire(now)
        self.metrics.expired_bookings += len(expired)
        for entry in self._queue.expired(now):
            self._outcomes.append(self._shed(entry.request_id, "queue_timeout"))
        for pin in self._sessions.expire(now):
            if pin.worker_session:
                self._outcomes.append(SessionClosed(pin.session_id, *pin.key))
        if self._approx is not None:
            self._approx.expire(now)
        self._drain_queue()
        timeout = self.config.kv_query_timeout_secs
        retries = [q for s in self._streams.values() if (q := s.retry(now, timeout)) is not None]
        for query in retries:
            self._count_query(query)
        return retries

    def take_outcomes(self) -> list[Outcome]:
        """Decisions and sheds of queued requests, and expired worker sessions, since last call."""
        out, self._outcomes = self._outcomes, []
        return out

    # -- gauges --------------------------------------------------------------------------------

    @property
    def queue_depth(self) -> int:
        return len(self._queue)

    @property
    def num_sessions(self) -> int:
        return len(self._sessions)

    def worker_loads(self) -> list[WorkerLoadView]:
        views = []
        for key in self._keys:
            load = self.loads.workers[key]
            views.append(WorkerLoadView(key[0], key[1], load.active_blocks, load.prefill_tokens,
                                        load.num_requests, self.index.tree_size(key),
                                        self._busy(key)))
        return views

    # -- internals -----------------------------------------------------------------------------

    def _eligible(self, request: RouteRequest, now: float) -> list[WorkerKey]:
        """Workers the request may go to: its pin, else its session's pin, else all."""
        if request.pinned_worker_id is not None:
            info = self._workers.get(request.pinned_worker_id)
            if info is None:
                raise ValueError(f"backend_instance_id {request.pinned_worker_id} is not a "
                                 f"known worker")
            if request.pinned_dp_rank is None:
                return info.keys()
            if not 0 <= request.pinned_dp_rank < info.dp_size:
                raise ValueError(f"dp_rank {request.pinned_dp_rank} is out of range for worker "
                                 f"{request.pinned_worker_id}")
            return [(request.pinned_worker_id, request.pinned_dp_rank)]
        session = request.session
        if session is not None and session.action not in ("open", "bind"):
            pin = self._sessions.lookup(session.session_id, now)
            if pin is not None:
                return [pin.key]
        return list(self._keys)

    def _busy(self, key: WorkerKey) -> bool:
        threshold = self.config.router_queue_threshold
        if threshold is None:
            return False
        load = self.loads.workers[key]
        return (load.prefill_tokens > threshold * load.info.max_num_batched_tokens
                or load.kv_usage() > self.config.busy_kv_fraction)

    def _all_busy(self, keys: list[WorkerKey]) -> bool:
        return self.config.router_queue_threshold is not None and all(map(self._busy, keys))

    def _admit(self, request: RouteRequest, keys: list[WorkerKey], overlaps: OverlapScores,
               now: float, queued_s: float, local: list[int], seq: list[int],
               hashing_s: float, matching_s: float) -> Decision:
        t0 = self._perf()
        bs = request.prompt.block_size            # the router's: `route` checked it
        isl = len(request.prompt)
        loads = self.loads.workers
        candidates = [Candidate(k, loads[k], overlaps.overlap(k), overlaps.tree_size(k))
                      for k in keys]
        inputs = CostInputs(isl, seq, bs, self.config.router_kv_overlap_score_weight,
                            miss_scale(request.priority, self.config.router_priority_cache_scale))
        chosen = self._policy.select(candidates, inputs, self._rng)
        key, overlap = chosen.key, chosen.overlap
        self.loads.book(request.request_id, key, max(isl - overlap * bs, 0), seq, request.osl,
                        now)
        if self._approx is not None:
            self._approx.credit(key, local, seq, now)
        session_op, session_id = self._update_session(request, key, now)
        timings = RouteTimings(hashing_s, matching_s, self._perf() - t0)
        return Decision(request.request_id, key[0], key[1], overlap, min(overlap * bs, isl), isl,
                        len(self._queue), queued_s, request.priority, session_op, session_id,
                        timings)

    def _update_session(self, request: RouteRequest, key: WorkerKey, now: float
                        ) -> tuple[SessionOp | None, str | None]:
        session = request.session
        if session is None:
            return None, None
        if session.action in ("open", "bind"):
            opened = session.action == "open"
            self._sessions.pin(session.session_id, key, session.timeout_s, opened, now)
            return ("open" if opened else None), session.session_id
        if session.action == "close" or request.trajectory_final:
            pin = self._sessions.unpin(session.session_id)
            if pin is not None and pin.worker_session:
                return "close", session.session_id
        return None, session.session_id

    def _drain_queue(self) -> None:
        """Admit queued requests from the head while the head has a worker that is not busy."""
        queue = self._queue
        while (entry := queue.peek()) is not None:
            request = entry.item
            now = self._clock()
            try:
                keys = self._eligible(request, now)
            except ValueError:  # its pinned worker left while it waited
                keys = []
            if not keys:
                queue.remove(entry.request_id)
                self._outcomes.append(self._shed(entry.request_id, "no_workers"))
                continue
            if self._all_busy(keys):
                return
            queue.remove(entry.request_id)
            t0 = self._perf()
            overlaps = self.index.find_matches(request.prompt.local_hashes)
            self._outcomes.append(self._admit(
                request, keys, overlaps, now, now - entry.enqueued_at,
                request.prompt.local_hashes, request.prompt.sequence_hashes, 0.0,
                self._perf() - t0))

    def _shed(self, request_id: str, reason: ShedReason) -> Shed:
        self.metrics.sheds[reason] += 1
        return Shed(request_id, reason, RETRY_AFTER_S, len(self._queue))


def _check_types(event: RouterEvent) -> None:
    """Wire events must carry int or bytes engine hashes and int local hashes."""
    hashable = (int, bytes)
    if event.parent_hash is not None and not isinstance(event.parent_hash, hashable):
        raise TypeError("parent_hash")
    for engine_hash, _local in event.blocks:
        if not isinstance(engine_hash, hashable):
            raise TypeError("block hash")
    for engine_hash in event.hashes:
        if not isinstance(engine_hash, hashable):
            raise TypeError("removed hash")
