"""Harness tool events over ZMQ (DESIGN.md §6.3): Rotor binds PULL, harnesses connect PUSH.

Every message is exactly three frames:

    [topic, sequence (u64 big-endian, 8 bytes), payload (msgpack map of one tool record)]

- topic: compared byte for byte only when a topic is configured (harnesses use
  `agent-tool-events`); otherwise anything, including empty, is accepted;
- sequence: not checked (as Dynamo);
- payload: at most `max_payload_bytes` (1 MiB by default; a tool record is a few hundred bytes),
  validated and normalised by `tracing.records.normalize_tool_record`, then emitted to the tracer.

Anything else is counted in `rejected[reason]` and dropped, with a rate-limited warning; the
ingress keeps running whatever arrives. Reasons: `frame_count`, `topic`, `oversized`, `msgpack`,
and the validation reasons of `InvalidToolRecord` (`not_a_map`, `schema`, `event_source`,
`event_type`, `request_present`, `tool_missing`, `event_time`, `agent_context`, `tool_field`).
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import Counter
from typing import Any

import msgpack
import zmq
import zmq.asyncio

from tracing.records import InvalidToolRecord, normalize_tool_record
from tracing.tracer import Tracer

log = logging.getLogger(__name__)

DEFAULT_MAX_PAYLOAD_BYTES = 1 << 20          # bytes of msgpack per tool record
WARNING_INTERVAL_S = 10.0


class ToolEventIngress:
    """The PULL socket and its receive loop.

        ingress = ToolEventIngress(config.tool_events_endpoint, tracer,
                                   topic=config.tool_events_topic)
        await ingress.start()      # binds; RuntimeError naming the endpoint if it cannot
        ...
        await ingress.close()      # before tracer.close(), so late tool events are still written
    """

    def __init__(self, endpoint: str, tracer: Tracer, *, topic: str | None = None,
                 max_payload_bytes: int = DEFAULT_MAX_PAYLOAD_BYTES,
                 context: zmq.asyncio.Context | None = None):
        self.endpoint = endpoint
        self.tracer = tracer
        self.topic = topic.encode() if topic is not None else None
        self.max_payload_bytes = max_payload_bytes
        self._context = context
        self._own_context = context is None
        self._socket: zmq.asyncio.Socket | None = None
        self._task: asyncio.Task[None] | None = None
        self.received = 0                        # messages taken off the socket
        self.accepted = 0                        # records passed to the tracer
        self.rejected: Counter[str] = Counter()  # reason -> messages dropped
        self._last_warning = float("-inf")

    @property
    def bound_endpoint(self) -> str | None:
        """The endpoint actually bound (resolves `tcp://127.0.0.1:*`)."""
        if self._socket is None:
            return None
        return self._socket.getsockopt_string(zmq.LAST_ENDPOINT)

    async def start(self) -> None:
        if self._context is None:
            self._context = zmq.asyncio.Context()
        sock = self._context.socket(zmq.PULL)
        sock.setsockopt(zmq.LINGER, 0)
        try:
            sock.bind(self.endpoint)
        except zmq.ZMQError as exc:
            sock.close()
            self._term_context()
            raise RuntimeError(f"agent tool-event ingress cannot bind {self.endpoint}: {exc}") \
                from exc
        self._socket = sock
        self._task = asyncio.create_task(self._run(), name="tool-event-ingress")
        log.info("agent tool-event ingress bound at %s", self.bound_endpoint)

    async def close(self) -> None:
        if self._task is not None:
            self._task.cancel()
            try:
                await self._task
            except asyncio.CancelledError:
                pass
            self._task = None
        if self._socket is not None:
            self._socket.close(linger=0)
            self._socket = None
        self._term_context()

    def _term_context(self) -> None:
        if self._own_context and self._context is not None:
            self._context.term()
            self._context = None

    async def _run(self) -> None:
        assert self._socket is not None
        while True:
            frames = await self._socket.recv_multipart()
            self.received += 1
            try:
                self.handle(frames)
            except Exception:  # noqa: BLE001 - a bug here must not stop the ingress; log it
                self.rejected["internal_error"] += 1
                log.exception("agent tool-event ingress: unexpected error on a message")

    def handle(self, frames: list[bytes]) -> dict[str, Any] | None:
        """Validate one message and emit its record; the record, or None when rejected."""
        if len(frames) != 3:
            return self._reject("frame_count", f"expected 3 frames, got {len(frames)}")
        topic, _sequence, payload = frames
        if self.topic is not None and bytes(topic) != self.topic:
            return self._reject("topic", f"topic {bytes(topic)[:64]!r} is not the configured one")
        if len(payload) > self.max_payload_bytes:
            return self._reject("oversized", f"payload of {len(payload)} bytes exceeds "
                                             f"{self.max_payload_bytes}")
        try:
            raw = msgpack.unpackb(payload, raw=False)
        except (ValueError, msgpack.UnpackException, TypeError) as exc:
            return self._reject("msgpack", f"undecodable payload: {exc}")
        try:
            record = normalize_tool_record(raw)
        except InvalidToolRecord as exc:
            return self._reject(exc.reason, str(exc))
        self.accepted += 1
        self.tracer.emit(record)
        return record

    def _reject(self, reason: str, message: str) -> None:
        self.rejected[reason] += 1
        now = time.monotonic()
        if now - self._last_warning >= WARNING_INTERVAL_S:
            self._last_warning = now
            log.warning("agent tool-event ingress dropped a message (%s): %s; rejected so far: %s",
                        reason, message, dict(self.rejected))
        return None
