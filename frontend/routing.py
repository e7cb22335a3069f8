"""The async adapter around one model's synchronous router core (router/core.py).

    WorkerPool: worker connected / disconnected ──► add_worker / remove_worker ─┐
    event plane: router KV events, load reports ──► on_kv_events / on_load ─────┤
    request plane: kv_query replies ──────────────► on_kv_reply ────────────────┼─► Router core
    requests: route / first_token / release ─────────────────────────────────────┤
    every 100 ms: tick ───────────────────────────────────────────────────────────┘
    core outcomes (queued requests admitted or shed) ──► the futures their handlers await

The core decides; this adapter only does I/O: it sends the core's kv_queries to workers, and wakes
the handlers of queued requests.
"""

from __future__ import annotations

import asyncio
import logging
import random
import time
from typing import TYPE_CHECKING, Any

from frontend.metrics import FrontendMetrics
from frontend.protocol import OpenAIError
from router.config import RouterConfig
from router.core import Decision, Queued, RouteRequest, Router, SessionClosed, Shed
from router.events import LoadReport
from router.kv_sync import KvQuery, kv_reply_from_wire
from router.load import WorkerInfo

if TYPE_CHECKING:
    from frontend.workers import WorkerClient

log = logging.getLogger("rotor.frontend")

TICK_S = 0.1
# How long a request with no worker to go to waits for a known worker whose connection is not up:
# one just discovered (its handshake takes a moment), or one whose connection dropped. A worker
# stalled long enough to miss its 5 s request-plane heartbeat (a loaded or briefly frozen machine)
# is also dropped from discovery 5 s after its last record write, and comes back once it runs again.
CONNECT_WAIT_S = 10.0


class ModelRouter:
    def __init__(self, model: str, config: RouterConfig, metrics: FrontendMetrics):
        self.model = model
        self.core = Router(config, clock=time.monotonic, rng=random.Random())
        self.metrics = metrics
        self._clients: dict[int, WorkerClient] = {}
        self._waiting: dict[str, asyncio.Future[Decision | Shed]] = {}
        self.connecting: set[int] = set()      # known workers whose connection is not up (yet)
        self._joined = asyncio.Event()          # set whenever a worker (re)joins

    # -- fleet -----------------------------------------------------------------------------

    def add_worker(self, client: "WorkerClient") -> None:
        record = client.record
        self._clients[record.worker_id] = client
        self.connecting.discard(record.worker_id)
        self._joined.set()
        self._send(self.core.add_worker(WorkerInfo(
            worker_id=record.worker_id, kv_block_size=record.kv_block_size,
            total_kv_blocks=record.total_kv_blocks,
            max_num_batched_tokens=record.max_num_batched_tokens,
            max_num_seqs=record.max_num_seqs)))
        self._settle()

    def remove_worker(self, worker_id: int) -> None:
        self._clients.pop(worker_id, None)
        self.core.remove_worker(worker_id)   # its streams fail through their own client
        self._settle()

    def on_kv_events(self, messages: list[Any]) -> None:
        for message in messages:
            self._send(self.core.apply_wire_event(message))
        self._settle()

    def on_kv_reply(self, message: dict[str, Any]) -> None:
        try:
            reply = kv_reply_from_wire(message)
        except ValueError as exc:
            log.warning("dropped a malformed kv_query reply: %s", exc)
            return
        self._send(self.core.apply_kv_reply(reply))
        self._settle()

    def on_load(self, report: LoadReport) -> None:
        self.core.apply_load(report)
        self._settle()

    def tick(self) -> None:
        """Time-driven work (expiry, queue wait limits, kv_query retries), every TICK_S."""
        for query in self.core.tick():
            self._send(query)
        self._settle()

    # -- requests --------------------------------------------------------------------------

    async def route(self, request: RouteRequest) -> Decision:
        """A worker for the request, waiting in the admission queue if every worker is busy.
        Raises OpenAIError 503 (+ Retry-After) when shed; a cancelled wait leaves the queue."""
        result = self._route_now(request)
        deadline = time.monotonic() + CONNECT_WAIT_S
        while (isinstance(result, Shed) and result.reason == "no_workers" and self.connecting
               and (left := deadline - time.monotonic()) > 0):
            self._joined.clear()       # a worker is on its way: wait for it rather than fail
            try:
                await asyncio.wait_for(self._joined.wait(), left)
            except TimeoutError:
                break
            result = self._route_now(request)
        if isinstance(result, Queued):
            future = asyncio.get_running_loop().create_future()
            self._waiting[request.request_id] = future
            try:
                result = await future
            finally:
                if self._waiting.pop(request.request_id, None) is not None:
                    self.release(request.request_id)          # cancelled while queued
        if isinstance(result, Shed):
            self.metrics.rejections.labels(self.model, "route").inc()
            reason = {"no_workers": f"no worker serves model {self.model!r} right now",
                      "queue_full": "all workers are busy and the queue is full",
                      "queue_timeout": "all workers stayed busy too long"}[result.reason]
            raise OpenAIError(503, f"{reason}; please retry later",
                              headers={"Retry-After": str(result.retry_after_s)})
        timings = result.timings
        for phase, seconds in (("hashing", timings.hashing_s), ("matching", timings.matching_s),
                               ("selection", timings.selection_s), ("total", timings.total_s)):
            self.metrics.router_overhead.labels(phase).observe(seconds * 1000)
        self.metrics.kv_hit_rate.observe(result.kv_hit_rate)
        return result

    def _route_now(self, request: RouteRequest) -> Decision | Queued | Shed:
        try:
            return self.core.route(request)
        except ValueError as exc:
            raise OpenAIError(400, str(exc), param="nvext") from None

    def client(self, worker_id: int) -> "WorkerClient | None":
        return self._clients.get(worker_id)

    def first_token(self, request_id: str) -> None:
        self.core.first_token(request_id)
        self._settle()

    def progress(self, request_id: str, generated_tokens: int) -> None:
        self.core.progress(request_id, generated_tokens)

    def release(self, request_id: str) -> None:
        self.core.release(request_id)
        self._settle()

    # -- internals -------------------------------------------------------------------------

    def _send(self, query: KvQuery | None) -> None:
        if query is not None and (client := self._clients.get(query.worker_id)) is not None:
            client.send_kv_query(query)

    def _settle(self) -> None:
        """Hand the core's outcomes to whoever waits for them."""
        while outcomes := self.core.take_outcomes():
            for outcome in outcomes:
                if isinstance(outcome, SessionClosed):
                    continue        # the mock engine keeps no worker-side session state
                future = self._waiting.pop(outcome.request_id, None)
                if future is not None and not future.done():
                    future.set_result(outcome)
                elif isinstance(outcome, Decision):
                    self.core.release(outcome.request_id)    # its waiter is gone
