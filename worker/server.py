"""The worker: one engine behind a request-plane ROUTER and an event-plane PUB (DESIGN.md §2).

    frontend DEALER ──generate/cancel/ping──► ROUTER ─► engine.add / engine.abort
    frontend DEALER ◄──one frame per pass──── ROUTER ◄─ engine.step()   (grouped per frontend)
    frontend SUB    ◄──kv / load──────────── PUB     ◄─ KV relay, engine.load()
    discovery dir   ◄──record, every 1 s──── heartbeat

Failure semantics: a frontend that can no longer be reached (ROUTER_MANDATORY reports it) gets
its requests cancelled and their KV freed; a full send queue is waited on, never dropped; on
shutdown the record is removed first, then every in-flight request fails with a migratable error.
"""

from __future__ import annotations

import asyncio
import errno
import logging
import math
import os
import threading
import time
from collections import defaultdict
from dataclasses import dataclass, replace

import msgpack
import zmq
import zmq.asyncio

from router.discovery import HEARTBEAT_INTERVAL_S, Discovery, WorkerRecord
from router.events import EngineEventBatch, LoadReport
from router.kv_sync import KvQuery
from worker import protocol
from worker.engine import Engine, EngineStep, RequestOutput
from worker.kv_relay import KvRelay

log = logging.getLogger("rotor.worker")

LOAD_REPORT_INTERVAL_S = 0.1      # load is published at most this often, when it changed
LOAD_REPORT_REFRESH_S = 2.0       # ... and at least this often, for subscribers that joined late


@dataclass(frozen=True)
class WorkerIdentity:
    """What the worker registers besides the engine's capacities."""

    worker_id: int
    model: str
    model_path: str
    tokenizer_sha256: str
    context_length: int
    engine: str
    host: str = "127.0.0.1"


class WorkerServer:
    def __init__(self, engine: Engine, identity: WorkerIdentity, discovery: Discovery):
        self.engine = engine
        self.identity = identity
        self.worker_id = identity.worker_id
        self.discovery = discovery
        self._ctx = zmq.asyncio.Context()
        self._router = self._ctx.socket(zmq.ROUTER)
        self._router.setsockopt(zmq.ROUTER_MANDATORY, 1)
        self._router.setsockopt(zmq.LINGER, 0)
        self._router.setsockopt(zmq.SNDHWM, protocol.SEND_HWM)
        self._router.setsockopt(zmq.HEARTBEAT_IVL, protocol.HEARTBEAT_IVL_MS)
        self._router.setsockopt(zmq.HEARTBEAT_TIMEOUT, protocol.HEARTBEAT_TIMEOUT_MS)
        # Every send goes through the asyncio socket, never a synchronous shadow: ZMQ's file
        # descriptor is edge-triggered, and only pyzmq's own sends re-arm a waiting recv (a
        # shadow send once left requests unread in the queue, hanging them).
        self._pub = self._ctx.socket(zmq.PUB)
        self._pub.setsockopt(zmq.LINGER, 0)
        self._owners: dict[str, bytes] = {}      # request_id -> frontend DEALER identity
        self._stopping = threading.Event()       # ends the heartbeat thread
        self._relay: KvRelay | None = None        # made once the engine's block size is known
        self._last_sent = -math.inf               # monotonic time of the last request-plane send
        self.record: WorkerRecord | None = None

    # -- lifecycle -------------------------------------------------------------------------

    async def serve(self, stop: asyncio.Event) -> None:
        host = self.identity.host
        self._router.bind(f"tcp://{host}:0")
        self._pub.bind(f"tcp://{host}:0")
        await self.engine.start()
        info = self.engine.info
        self._relay = KvRelay(self.worker_id, info.kv_block_size)
        self.record = WorkerRecord(
            worker_id=self.worker_id, model=self.identity.model,
            model_path=self.identity.model_path, tokenizer_sha256=self.identity.tokenizer_sha256,
            context_length=min(self.identity.context_length, info.context_length),
            kv_block_size=info.kv_block_size,
            total_kv_blocks=info.total_kv_blocks, max_num_seqs=info.max_num_seqs,
            max_num_batched_tokens=info.max_num_batched_tokens, engine=self.identity.engine,
            request_endpoint=self._endpoint(self._router), event_endpoint=self._endpoint(self._pub),
            started_at=time.time(), pid=os.getpid(), stats=self.engine.stats())
        self.discovery.publish(self.record)
        log.info("worker %d serving model %r (engine %s) requests on %s, events on %s",
                 self.worker_id, self.record.model, self.record.engine,
                 self.record.request_endpoint, self.record.event_endpoint)
        loops = [asyncio.create_task(coro) for coro in (
            self._receive_loop(), self._step_loop(), self._load_loop())]
        stopper = asyncio.create_task(stop.wait())
        heartbeat = threading.Thread(target=self._heartbeat, name="discovery-heartbeat",
                                     daemon=True)
        heartbeat.start()
        try:
            done, _ = await asyncio.wait([stopper, *loops], return_when=asyncio.FIRST_COMPLETED)
            for task in done:
                if task is not stopper and task.exception():
                    raise task.exception()
        finally:
            for task in (stopper, *loops):
                task.cancel()
            await asyncio.gather(stopper, *loops, return_exceptions=True)
            self._stopping.set()
            await asyncio.to_thread(heartbeat.join)
            await self._shutdown()

    async def _shutdown(self) -> None:
        self.discovery.remove(self.worker_id)
        failed: dict[bytes, list[RequestOutput]] = defaultdict(list)
        for request_id, owner in self._owners.items():
            self.engine.abort(request_id)
            failed[owner].append(RequestOutput(request_id, 0, [], "error",
                                               error=protocol.ERROR_SHUTDOWN))
        for owner, outputs in failed.items():
            self._try_send(owner, protocol.outputs_message(self.worker_id, outputs))
        self._owners.clear()
        await self.engine.stop()
        await asyncio.sleep(max(0.0, self._last_sent + protocol.SHUTDOWN_DRAIN_S - time.monotonic()))
        self._router.close(linger=200)
        self._pub.close(linger=0)
        self._ctx.term()
        log.info("worker %d stopped", self.worker_id)

    @staticmethod
    def _endpoint(sock: zmq.Socket) -> str:
        return sock.getsockopt_string(zmq.LAST_ENDPOINT)

    # -- request plane ---------------------------------------------------------------------

    async def _receive_loop(self) -> None:
        while True:
            frames = await self._router.recv_multipart()
            if len(frames) != 2:
                log.warning("dropped a request-plane message of %d frames", len(frames))
                continue
            owner, frame = frames
            try:
                message = protocol.unpack(frame)
                self._handle(owner, message)
            except ValueError as exc:
                log.warning("dropped a malformed request-plane message: %s", exc)

    def _handle(self, owner: bytes, message: dict) -> None:
        kind = message["type"]
        if message.get("worker_id") != self.worker_id:
            # A frontend talking to this worker's predecessor at the same address.
            if kind == "generate":
                request_id = str((message.get("request") or {}).get("request_id", ""))
                self._reject(owner, request_id, protocol.ERROR_WRONG_WORKER)
            return
        if kind == "generate":
            request = protocol.request_from_message(message, received_at=time.monotonic())
            if request.request_id in self._owners:
                raise ValueError(f"duplicate request_id {request.request_id!r}")
            try:
                self.engine.add(request)
            except ValueError as exc:
                self._reject(owner, request.request_id, protocol.ERROR_INVALID_REQUEST + str(exc))
                return
            self._owners[request.request_id] = owner
        elif kind == "cancel":
            request_id = message.get("request_id")
            if self._owners.pop(request_id, None) is not None:
                self.engine.abort(request_id)
        elif kind == "ping":
            self._try_send(owner, protocol.pong_message(self.worker_id))
        elif kind == "kv_query":
            query = KvQuery.from_wire(message["query"])
            assert self._relay is not None
            reply = self._relay.query(query.start_event_id)
            self._try_send(owner, protocol.kv_reply_message(self.worker_id, reply))
        else:
            raise ValueError(f"unknown request-plane message type {kind!r}")

    def _reject(self, owner: bytes, request_id: str, error: str) -> None:
        output = RequestOutput(request_id, 0, [], "error", error=error)
        self._try_send(owner, protocol.outputs_message(self.worker_id, [output]))

    async def _step_loop(self) -> None:
        while True:
            step = await self.engine.step()
            self._publish_kv(step)
            by_owner: dict[bytes, list[RequestOutput]] = defaultdict(list)
            for output in step.outputs:
                owner = (self._owners.pop(output.request_id, None) if output.finish_reason
                         else self._owners.get(output.request_id))
                if owner is not None:          # None: cancelled while the pass ran
                    by_owner[owner].append(output)
            for owner, outputs in by_owner.items():
                await self._send(owner, protocol.outputs_message(self.worker_id, outputs))

    async def _send(self, owner: bytes, frame: bytes) -> None:
        """Send to one frontend, waiting out a full queue; a vanished frontend loses its requests."""
        self._last_sent = time.monotonic()
        try:
            await self._router.send_multipart([owner, frame])
        except zmq.ZMQError as exc:
            if exc.errno != errno.EHOSTUNREACH:
                raise
            self._drop_owner(owner)

    def _try_send(self, owner: bytes, frame: bytes) -> None:
        """A reply that must not wait (pong, rejection, kv_query answer); failures are logged."""
        self._last_sent = time.monotonic()
        self._router.send_multipart([owner, frame], flags=zmq.NOBLOCK).add_done_callback(
            _log_send_failure)

    def _drop_owner(self, owner: bytes) -> None:
        lost = [rid for rid, o in self._owners.items() if o == owner]
        for request_id in lost:
            del self._owners[request_id]
            self.engine.abort(request_id)
        log.warning("a frontend became unreachable: cancelled its %d request(s)", len(lost))

    # -- event plane and discovery ---------------------------------------------------------

    def _publish_kv(self, step: EngineStep) -> None:
        """Engine KV events become router events (local hashes recomputed, numbered from 1)."""
        if not step.kv_events:
            return
        assert self._relay is not None
        events = self._relay.ingest(EngineEventBatch(time.time(), step.kv_events))
        if events:
            message = {"worker_id": self.worker_id, "events": [e.to_wire() for e in events]}
            self._pub.send_multipart([b"kv", msgpack.packb(message, use_bin_type=True)],
                                     flags=zmq.NOBLOCK).add_done_callback(_log_send_failure)

    async def _load_loop(self) -> None:
        last: LoadReport | None = None
        last_sent = 0.0
        while True:
            load = self.engine.load()
            report = LoadReport(self.worker_id, 0, load.kv_used_blocks, load.kv_total_blocks,
                                load.num_running, load.num_waiting)
            now = time.monotonic()
            if report != last or now - last_sent >= LOAD_REPORT_REFRESH_S:
                await self._pub.send_multipart(
                    [b"load", msgpack.packb(report.to_wire(), use_bin_type=True)])
                last, last_sent = report, now
            await asyncio.sleep(LOAD_REPORT_INTERVAL_S)

    def _heartbeat(self) -> None:
        """Refresh the discovery record every second, from a thread: the record says the process
        is alive even while its event loop is busy (two real engines starving both cores once
        let a live worker's record go stale and the frontend drop it mid-request)."""
        while not self._stopping.wait(HEARTBEAT_INTERVAL_S):
            assert self.record is not None
            self.record = replace(self.record, stats=self.engine.stats())
            self.discovery.publish(self.record)


def _log_send_failure(future: asyncio.Future) -> None:
    if not future.cancelled() and future.exception() is not None:
        log.warning("could not send to a frontend: %s", future.exception())
