"""Keeping the router's view of one worker's KV events in order (DESIGN.md §4.3).

A worker's relay numbers its router events 1, 2, 3, ... and keeps the last 1024. The router
applies them strictly in that order, per worker:

    cursor = last applied id
    id <= cursor          duplicate (delivery is at-least-once): dropped, counted
    id == cursor + 1      applied, then any buffered successors
    id >  cursor + 1      gap: buffered, and a `KvQuery(start=cursor + 1)` goes to the worker

A newly discovered worker starts with a dump (`KvQuery(start=None)`); events that arrive before
the reply are buffered. The worker answers a query with a `RangeReply` (every event from `start`
on) or, when its ring no longer reaches back that far, a `DumpReply` (its whole current state).

The reply types live here, with the router, because the router is the authority on KV events;
the worker's relay (worker/kv_relay.py) builds them.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Union

from router.events import RouterEvent

MAX_PENDING = 4096  # events buffered per worker while a query is outstanding


@dataclass(frozen=True, slots=True)
class KvQuery:
    """Ask worker `worker_id` for its events from `start_event_id` on (None: a full dump)."""

    worker_id: int
    start_event_id: int | None

    def to_wire(self) -> dict[str, Any]:
        return {"worker_id": self.worker_id, "start_event_id": self.start_event_id}

    @classmethod
    def from_wire(cls, msg: dict[str, Any]) -> "KvQuery":
        start = msg.get("start_event_id")
        return cls(int(msg["worker_id"]), None if start is None else int(start))


@dataclass(slots=True)
class RangeReply:
    """Every event the worker emitted from the queried start on, in id order."""

    worker_id: int
    events: list[RouterEvent]

    def to_wire(self) -> dict[str, Any]:
        return {"kind": "range", "worker_id": self.worker_id,
                "events": [e.to_wire() for e in self.events]}


@dataclass(slots=True)
class DumpReply:
    """The worker's whole current KV state as of `last_event_id`, as stored events, every parent
    before its children (all ranks). Applying it to an empty index reproduces the worker's state."""

    worker_id: int
    last_event_id: int
    events: list[RouterEvent] = field(default_factory=list)

    def to_wire(self) -> dict[str, Any]:
        return {"kind": "dump", "worker_id": self.worker_id, "last_event_id": self.last_event_id,
                "events": [e.to_wire() for e in self.events]}


KvReply = Union[RangeReply, DumpReply]


def kv_reply_from_wire(msg: dict[str, Any]) -> KvReply:
    """Parse a `kv_query` reply. Raises ValueError on anything malformed."""
    try:
        events = [RouterEvent.from_wire(e) for e in msg["events"]]
        if msg["kind"] == "range":
            return RangeReply(int(msg["worker_id"]), events)
        if msg["kind"] == "dump":
            return DumpReply(int(msg["worker_id"]), int(msg["last_event_id"]), events)
        raise ValueError(f"unknown kv_query reply kind {msg['kind']!r}")
    except (KeyError, TypeError, IndexError) as exc:
        raise ValueError(f"malformed kv_query reply: {exc!r}") from exc


class EventStream:
    """Ordering state of one worker's router events: the cursor, out-of-order arrivals, and
    whether a query is outstanding. Decides what to apply; applying is the caller's job."""

    __slots__ = ("worker_id", "cursor", "pending", "awaiting", "query_sent_at")

    def __init__(self, worker_id: int, now: float):
        self.worker_id = worker_id
        self.cursor = 0                              # last applied event id
        self.pending: dict[int, RouterEvent] = {}    # event id -> event, all > cursor
        self.awaiting: KvQuery | None = KvQuery(worker_id, None)  # starts with a dump
        self.query_sent_at = now

    def in_order(self, event: RouterEvent) -> bool:
        """The common case: `event` is the next one and nothing is buffered or awaited. Then the
        cursor moves past it and the caller applies it; otherwise nothing changes (use `offer`)."""
        if event.event_id == self.cursor + 1 and self.awaiting is None and not self.pending:
            self.cursor += 1
            return True
        return False

    def offer(self, event: RouterEvent, now: float) -> tuple[list[RouterEvent], KvQuery | None]:
        """Events now ready to apply in order (possibly none), and a query to send (or None).

        Raises nothing; a duplicate returns ([], None) and the caller counts it via `is_duplicate`.
        """
        if self.awaiting is not None:
            self.pending[event.event_id] = event
            if len(self.pending) > MAX_PENDING:
                # the worker is not answering: a dump will cover everything buffered so far
                self.pending.clear()
                return [], self._ask(KvQuery(self.worker_id, None), now)
            return [], None
        if event.event_id == self.cursor + 1:
            self.cursor += 1
            if not self.pending:
                return [event], None
            return [event, *self._drain()], None
        self.pending[event.event_id] = event
        return [], self._ask(KvQuery(self.worker_id, self.cursor + 1), now)

    def is_duplicate(self, event: RouterEvent) -> bool:
        return event.event_id <= self.cursor or event.event_id in self.pending

    def accept_range(self, reply: RangeReply, now: float
                     ) -> tuple[list[RouterEvent], KvQuery | None]:
        """Events of a range reply (plus buffered ones) to apply in order, and a follow-up query
        when the reply did not close the gap (then a dump: the ring has moved on)."""
        for event in reply.events:
            if event.event_id > self.cursor:
                self.pending.setdefault(event.event_id, event)
        self.awaiting = None
        ready = self._drain()
        if self.pending:
            return ready, self._ask(KvQuery(self.worker_id, None), now)
        return ready, None

    def accept_dump(self, reply: DumpReply) -> list[RouterEvent]:
        """Reset to the dump's point; returns buffered events after it, to apply after the dump."""
        self.cursor = reply.last_event_id
        self.awaiting = None
        for event_id in [i for i in self.pending if i <= self.cursor]:
            del self.pending[event_id]
        return self._drain()

    def retry(self, now: float, timeout: float) -> KvQuery | None:
        """The outstanding query again if it went unanswered for `timeout` seconds."""
        if self.awaiting is None or now - self.query_sent_at < timeout:
            return None
        self.query_sent_at = now
        return self.awaiting

    def _ask(self, query: KvQuery, now: float) -> KvQuery:
        self.awaiting = query
        self.query_sent_at = now
        return query

    def _drain(self) -> list[RouterEvent]:
        ready = []
        pending = self.pending
        while (event := pending.pop(self.cursor + 1, None)) is not None:
            ready.append(event)
            self.cursor += 1
        return ready
