"""The frontend's view of the fleet: discovered workers, one request-plane client each, and the
event-plane subscription (DESIGN.md §2).

    FileDiscovery.scan() ──diff──► WorkerPool.add / remove
    WorkerClient (DEALER, one per worker) ── generate/cancel ──► worker ROUTER
        reader task:  frames ──► RequestStream queues (one per in-flight request)
        monitor task: disconnect / heartbeat timeout ──► every in-flight request fails, migratable
        engine_shutdown / wrong_worker ──► the worker is stopping or gone: no more routing to it
    SUB (one, connected to every worker's PUB) ──► load reports and router KV events
    each model's ModelRouter ◄── a worker joins it when its connection is up, leaves when it drops

A worker whose KV block size or tokenizer differs from its model's other workers is refused, and
the reason is kept for /health.

A worker leaves when its record leaves discovery: at once if its request-plane connection is down
(a clean exit, a crash), but only after `MISSING_GRACE_S` while the connection is still up. A
record goes stale when its process cannot write the heartbeat for 5 s, which a live worker
starved of CPU on a loaded machine does; its connection's own heartbeats tell the truth sooner.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import msgpack
import zmq
import zmq.asyncio
from zmq.utils.monitor import parse_monitor_message

from frontend.metrics import FrontendMetrics
from frontend.routing import TICK_S, ModelRouter
from frontend.tokenizer import Tokenizer
from router.config import RouterConfig
from router.discovery import Discovery, WorkerRecord
from router.events import LoadReport
from router.kv_sync import KvQuery
from worker import protocol
from worker.engine import EngineRequest, RequestOutput

log = logging.getLogger("rotor.frontend")

DISCOVERY_POLL_S = 0.25
MISSING_GRACE_S = 30.0     # a connected worker whose record is gone or stale stays this long
CONNECT_TIMEOUT_S = 2.0


class WorkerFailed(Exception):
    """A request could not complete on its worker. `migratable`: another worker may continue it;
    `invalid`: the engine refused the request itself (the client's fault, a 400)."""

    def __init__(self, message: str, migratable: bool, invalid: bool = False):
        super().__init__(message)
        self.migratable = migratable
        self.invalid = invalid


class RequestStream:
    """The outputs of one request on one worker, in order; raises WorkerFailed on failure."""

    def __init__(self, client: "WorkerClient", request_id: str):
        self.client = client
        self.request_id = request_id
        self._queue: asyncio.Queue[list[RequestOutput] | WorkerFailed] = asyncio.Queue()
        self.finished = False

    def _push(self, item: list[RequestOutput] | WorkerFailed) -> None:
        self._queue.put_nowait(item)

    async def next_outputs(self) -> list[RequestOutput]:
        """Everything that arrived since the last call (at least one output)."""
        item = await self._queue.get()
        if isinstance(item, WorkerFailed):
            self.finished = True
            raise item
        batch = item
        while not self._queue.empty():
            more = self._queue.get_nowait()
            if isinstance(more, WorkerFailed):
                self._queue.put_nowait(more)    # surface after the outputs that came before it
                break
            batch.extend(more)
        if batch and batch[-1].finish_reason is not None:
            self.finished = True
        return batch

    def cancel(self) -> None:
        """Stop the request on its worker (frees its KV there); idempotent."""
        if not self.finished:
            self.finished = True
            self.client.cancel(self.request_id)


class WorkerClient:
    """One DEALER to one worker, multiplexing that worker's in-flight requests.

    `on_state(client, connected)` is called when the connection comes up or drops, or (with
    `stopping` set) when the worker says it no longer serves; `on_kv_reply(client, message)`
    with each answer to a kv_query."""

    def __init__(self, ctx: zmq.asyncio.Context, record: WorkerRecord,
                 on_state: Callable[["WorkerClient", bool], None],
                 on_kv_reply: Callable[["WorkerClient", dict], None]):
        self.record = record
        self._on_state = on_state
        self._on_kv_reply = on_kv_reply
        self.worker_id = record.worker_id
        self.load: LoadReport | None = None
        self._sock = ctx.socket(zmq.DEALER)
        self._sock.setsockopt(zmq.IMMEDIATE, 1)
        self._sock.setsockopt(zmq.LINGER, 0)
        self._sock.setsockopt(zmq.SNDHWM, protocol.SEND_HWM)
        self._sock.setsockopt(zmq.HEARTBEAT_IVL, protocol.HEARTBEAT_IVL_MS)
        self._sock.setsockopt(zmq.HEARTBEAT_TIMEOUT, protocol.HEARTBEAT_TIMEOUT_MS)
        self._sock.setsockopt(zmq.HEARTBEAT_TTL, protocol.HEARTBEAT_TIMEOUT_MS)
        self._monitor = self._sock.get_monitor_socket(
            zmq.EVENT_HANDSHAKE_SUCCEEDED | zmq.EVENT_DISCONNECTED)
        self._sock.connect(record.request_endpoint)
        self._connected = asyncio.Event()
        self._streams: dict[str, RequestStream] = {}
        self._tasks = [asyncio.create_task(self._read_loop()),
                       asyncio.create_task(self._monitor_loop())]
        for task in self._tasks:
            task.add_done_callback(self._task_died)
        self.closed = False
        self.stopping = False       # the worker failed a request with a migratable error

    @property
    def connected(self) -> bool:
        return self._connected.is_set()

    @property
    def num_in_flight(self) -> int:
        return len(self._streams)

    async def submit(self, request: EngineRequest) -> RequestStream:
        """Send a request; WorkerFailed(migratable) if the worker cannot be reached."""
        if self.closed or self.stopping:
            raise WorkerFailed(f"worker {self.worker_id} is gone or stopping", migratable=True)
        if not self._connected.is_set():
            try:
                await asyncio.wait_for(self._connected.wait(), CONNECT_TIMEOUT_S)
            except TimeoutError:
                raise WorkerFailed(f"cannot connect to worker {self.worker_id}",
                                   migratable=True) from None
        stream = RequestStream(self, request.request_id)
        self._streams[request.request_id] = stream
        try:
            await self._sock.send(protocol.generate_message(self.worker_id, request))
        except BaseException as exc:
            self._streams.pop(request.request_id, None)
            # A send waits while the connection is down; close() cancels it when the worker
            # leaves. That is the worker's failure, not a cancellation of our caller.
            task = asyncio.current_task()
            if (isinstance(exc, asyncio.CancelledError) and self.closed and task is not None
                    and not task.cancelling()):
                raise WorkerFailed(f"worker {self.worker_id} is gone", migratable=True) from None
            raise
        return stream

    def _task_died(self, task: asyncio.Task) -> None:
        """A reader or monitor that stops on its own is a bug: say so, and fail what it served
        (migratable) rather than leave those requests waiting forever."""
        if task.cancelled():
            return
        log.error("worker %d: its %s stopped: %r", self.worker_id, task.get_coro().__name__,
                  task.exception(), exc_info=task.exception())
        self.closed = True
        self.fail_all(f"internal error in the frontend's client: {task.exception()!r}")

    def send_kv_query(self, query: KvQuery) -> None:
        self._send_now(protocol.kv_query_message(self.worker_id, query))

    def cancel(self, request_id: str) -> None:
        if self._streams.pop(request_id, None) is not None:
            self._send_now(protocol.cancel_message(self.worker_id, request_id))

    def _send_now(self, frame: bytes) -> None:
        """Send without waiting, through the asyncio socket (which re-arms the reader)."""
        if not self.closed:
            self._sock.send(frame, flags=zmq.NOBLOCK).add_done_callback(self._sent)

    def _sent(self, future: asyncio.Future) -> None:
        if not future.cancelled() and future.exception() is not None:
            # disconnected: the worker cleans up on its own
            log.debug("worker %d: message not sent: %s", self.worker_id, future.exception())

    def fail_all(self, reason: str) -> None:
        streams, self._streams = self._streams, {}
        for stream in streams.values():
            stream._push(WorkerFailed(reason, migratable=True))
        if streams:
            log.warning("worker %d: %s; failed %d in-flight request(s)",
                        self.worker_id, reason, len(streams))

    async def close(self, reason: str) -> None:
        self.closed = True
        self.fail_all(reason)
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        self._sock.disable_monitor()
        self._monitor.close(linger=0)
        self._sock.close(linger=0)

    async def _read_loop(self) -> None:
        while True:
            frame = await self._sock.recv()
            try:
                message = protocol.unpack(frame)
                if message["type"] == "kv_reply":
                    self._on_kv_reply(self, message["reply"])
                    continue
                if message["type"] != "outputs":
                    continue
                outputs = protocol.outputs_from_message(message)
            except (ValueError, KeyError, TypeError) as exc:
                log.warning("worker %d sent a malformed frame: %s", self.worker_id, exc)
                continue
            self._dispatch(outputs)

    def _dispatch(self, outputs: list[RequestOutput]) -> None:
        by_request: dict[str, list[RequestOutput]] = {}
        for output in outputs:
            by_request.setdefault(output.request_id, []).append(output)
        for request_id, mine in by_request.items():
            final = mine[-1]
            if final.finish_reason == "error":
                self._fail(request_id, final.error or "unknown error")
                continue
            stream = self._streams.get(request_id)
            if stream is None:
                continue                         # cancelled meanwhile
            if final.finish_reason is not None:
                del self._streams[request_id]
            stream._push(mine)

    def _fail(self, request_id: str, error: str) -> None:
        """The worker failed the request with `error`."""
        migratable = error in protocol.MIGRATABLE_ERRORS
        if migratable and not self.stopping:
            # the worker no longer serves: out of routing before any continuation is routed
            self.stopping = True
            self._on_state(self, False)
        stream = self._streams.pop(request_id, None)
        if stream is None:
            return                               # cancelled meanwhile
        if error.startswith(protocol.ERROR_INVALID_REQUEST):
            stream._push(WorkerFailed(error.removeprefix(protocol.ERROR_INVALID_REQUEST),
                                      migratable=False, invalid=True))
        else:
            stream._push(WorkerFailed(f"worker {self.worker_id}: {error}", migratable))

    async def _monitor_loop(self) -> None:
        while True:
            event = parse_monitor_message(await self._monitor.recv_multipart())["event"]
            if event == zmq.EVENT_HANDSHAKE_SUCCEEDED and not self._connected.is_set():
                self._connected.set()
                if not self.stopping:
                    self._on_state(self, True)
            elif event == zmq.EVENT_DISCONNECTED and self._connected.is_set():
                self._connected.clear()
                self.fail_all("connection lost")
                if not self.stopping:
                    self._on_state(self, False)


@dataclass
class Model:
    """One served model: its tokenizer, its router and the workers accepted for it."""

    name: str
    tokenizer: Tokenizer
    kv_block_size: int
    context_length: int
    router: ModelRouter
    worker_ids: list[int] = field(default_factory=list)


class WorkerPool:
    """Discovered workers by model, kept in sync with discovery."""

    def __init__(self, discovery: Discovery, router_config: RouterConfig,
                 metrics: FrontendMetrics, tokenizer: Tokenizer | None = None):
        self.discovery = discovery
        self.router_config = router_config
        self.metrics = metrics
        self.fixed_tokenizer = tokenizer      # --model-path given: every model must use it
        self.ctx = zmq.asyncio.Context()
        self.clients: dict[int, WorkerClient] = {}
        self.models: dict[str, Model] = {}
        self._routers: dict[str, ModelRouter] = {}   # every model's router, kept while it has none
        self.refused: dict[int, str] = {}      # worker_id -> why it was refused
        self._missing_since: dict[int, float] = {}  # connected, but not in discovery since
        self._sub = self.ctx.socket(zmq.SUB)
        self._sub.setsockopt(zmq.LINGER, 0)
        self._sub.setsockopt(zmq.SUBSCRIBE, b"load")
        self._sub.setsockopt(zmq.SUBSCRIBE, b"kv")
        self._tokenizers: dict[str, Tokenizer] = {}

    # -- lifecycle (run by the app's cleanup context) ----------------------------------------

    async def run(self) -> None:
        helpers = [asyncio.create_task(self._event_loop()), asyncio.create_task(self._tick_loop())]
        try:
            while True:
                await self.sync(await asyncio.to_thread(self.discovery.scan))
                await asyncio.sleep(DISCOVERY_POLL_S)
        finally:
            for task in helpers:
                task.cancel()
            await asyncio.gather(*helpers, return_exceptions=True)

    async def close(self) -> None:
        for worker_id in list(self.clients):
            await self._remove(worker_id, "frontend shutting down")
        self._sub.close(linger=0)
        self.ctx.term()

    async def sync(self, records: dict[int, WorkerRecord]) -> None:
        """Apply one discovery scan: add new workers, drop vanished ones."""
        now = time.monotonic()
        for worker_id in [w for w in self.clients if w not in records]:
            if self.clients[worker_id].connected:
                since = self._missing_since.setdefault(worker_id, now)
                if since == now:
                    log.warning("worker %d: its discovery record is stale or gone but its "
                                "connection is up; keeping it up to %.0f s", worker_id,
                                MISSING_GRACE_S)
                if now - since < MISSING_GRACE_S:
                    continue
            await self._remove(worker_id, "worker left discovery")
        for worker_id in [w for w in self._missing_since if w in records or
                          w not in self.clients]:
            del self._missing_since[worker_id]
        for worker_id in [w for w in self.refused if w not in records]:
            del self.refused[worker_id]
        for worker_id, record in records.items():
            if worker_id in self.clients:
                self.clients[worker_id].record = record       # fresh engine stats
            elif worker_id not in self.refused:
                await self._add(record)

    # -- membership ------------------------------------------------------------------------

    async def _add(self, record: WorkerRecord) -> None:
        model = self.models.get(record.model)
        reason = None
        if model is not None and record.kv_block_size != model.kv_block_size:
            reason = (f"KV block size {record.kv_block_size} differs from model {record.model!r}'s "
                      f"{model.kv_block_size}")
        tokenizer = model.tokenizer if model else await self._tokenizer_for(record)
        if reason is None and tokenizer is None:
            reason = f"cannot load the tokenizer at {record.model_path!r}"
        if reason is None and record.tokenizer_sha256 != tokenizer.sha256:
            reason = (f"tokenizer {record.tokenizer_sha256[:12]} differs from model "
                      f"{record.model!r}'s {tokenizer.sha256[:12]}")
        if reason is not None:
            self.refused[record.worker_id] = reason
            log.error("refused worker %d: %s", record.worker_id, reason)
            return
        if model is None:
            # a model whose last worker left keeps its router: requests waiting in it for a
            # worker to come back (ModelRouter.route) are woken when one does
            router = self._routers.get(record.model)
            if router is None:
                router = self._routers[record.model] = ModelRouter(record.model, self.router_config,
                                                                   self.metrics)
            model = self.models[record.model] = Model(record.model, tokenizer, record.kv_block_size,
                                                      record.context_length, router)
        model.worker_ids.append(record.worker_id)
        model.router.connecting.add(record.worker_id)   # requests wait for its handshake
        self._sub.connect(record.event_endpoint)       # before the router asks for a dump
        self.clients[record.worker_id] = WorkerClient(self.ctx, record, self._on_state,
                                                      self._on_kv_reply)
        log.info("added worker %d for model %r at %s", record.worker_id, record.model,
                 record.request_endpoint)

    async def _remove(self, worker_id: int, reason: str) -> None:
        client = self.clients.pop(worker_id)
        model = self.models[client.record.model]
        model.worker_ids.remove(worker_id)
        model.router.remove_worker(worker_id)
        model.router.connecting.discard(worker_id)
        if not model.worker_ids:
            del self.models[model.name]
        try:
            self._sub.disconnect(client.record.event_endpoint)
        except zmq.ZMQError:
            pass                                   # never connected or already gone
        await client.close(reason)
        log.info("removed worker %d: %s", worker_id, reason)

    def _on_state(self, client: WorkerClient, connected: bool) -> None:
        """Route to a worker only while its connection is up."""
        model = self.models.get(client.record.model)
        if model is None or client.worker_id not in self.clients:
            return
        if connected:
            model.router.add_worker(client)
            log.info("worker %d connected: routing to it", client.worker_id)
        elif client.stopping:
            model.router.remove_worker(client.worker_id)
            log.info("worker %d is stopping or gone: not routing to it", client.worker_id)
        else:
            model.router.remove_worker(client.worker_id)
            model.router.connecting.add(client.worker_id)
            log.warning("worker %d disconnected: not routing to it until it reconnects",
                        client.worker_id)

    def _on_kv_reply(self, client: WorkerClient, message: dict) -> None:
        model = self.models.get(client.record.model)
        if model is not None:
            model.router.on_kv_reply(message)

    def model_of(self, worker_id: int) -> Model | None:
        client = self.clients.get(worker_id)
        return self.models.get(client.record.model) if client else None

    async def _tokenizer_for(self, record: WorkerRecord) -> Tokenizer | None:
        if self.fixed_tokenizer is not None:
            return self.fixed_tokenizer
        cached = self._tokenizers.get(record.model_path)
        if cached is None:
            try:
                cached = await asyncio.to_thread(Tokenizer.load, record.model_path)
            except (OSError, ValueError) as exc:
                log.error("cannot load tokenizer of worker %d: %s", record.worker_id, exc)
                return None
            self._tokenizers[record.model_path] = cached
        return cached

    # -- event plane -----------------------------------------------------------------------

    async def _event_loop(self) -> None:
        while True:
            frames = await self._sub.recv_multipart()
            try:
                topic, payload = frames
                message = msgpack.unpackb(payload, raw=False, strict_map_key=False)
                if topic == b"load":
                    report = LoadReport.from_wire(message)
                    if (client := self.clients.get(report.worker_id)) is not None:
                        client.load = report
                    if (model := self.model_of(report.worker_id)) is not None:
                        model.router.on_load(report)
                elif topic == b"kv":
                    worker_id = message["worker_id"]
                    if (model := self.model_of(worker_id)) is not None:
                        model.router.on_kv_events(message["events"])
            except (ValueError, KeyError, TypeError, msgpack.UnpackException) as exc:
                log.warning("dropped a malformed event-plane message: %s", exc)

    async def _tick_loop(self) -> None:
        while True:
            await asyncio.sleep(TICK_S)
            for model in list(self.models.values()):
                model.router.tick()
