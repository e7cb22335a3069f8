"""Session affinity (DESIGN.md §4.5): `session_control` pins a session to one worker.

    open   route normally, then pin the session there; the worker opens a session too
    bind   the same, router-only (no worker session)
    (none) a pinned session goes to its worker; each hit slides the expiry to now + timeout
    close  go to the pinned worker one last time, then unpin (the worker closes its session
           after the stream ends); `trajectory_final` on a request does the same

A pin whose worker left, or that went `timeout` seconds without a request, is dropped.
"""

from __future__ import annotations

import heapq
from dataclasses import dataclass
from typing import Literal

from router.index import WorkerKey

SessionAction = Literal["open", "bind", "close"]
DEFAULT_SESSION_TIMEOUT_S = 300.0


@dataclass(frozen=True, slots=True)
class SessionControl:
    """`nvext.session_control` of one request."""

    session_id: str
    action: SessionAction | None = None
    timeout_s: float = DEFAULT_SESSION_TIMEOUT_S

    def __post_init__(self) -> None:
        if not self.session_id:
            raise ValueError("session_control.session_id must be a non-empty string")
        if self.action not in (None, "open", "bind", "close"):
            raise ValueError(f"session_control.action must be open, bind or close, "
                             f"got {self.action!r}")
        if self.timeout_s <= 0:
            raise ValueError(f"session_control.timeout must be positive, got {self.timeout_s}")


@dataclass(slots=True)
class SessionPin:
    session_id: str
    key: WorkerKey
    timeout_s: float
    expires_at: float        # router clock, seconds
    worker_session: bool     # opened with `open`: the worker holds a session to close


class SessionTable:
    def __init__(self) -> None:
        self._pins: dict[str, SessionPin] = {}
        self._expiries: list[tuple[float, str]] = []  # heap; stale entries skipped lazily

    def __len__(self) -> int:
        return len(self._pins)

    def pin(self, session_id: str, key: WorkerKey, timeout_s: float, worker_session: bool,
            now: float) -> None:
        self._pins[session_id] = SessionPin(session_id, key, timeout_s, now + timeout_s,
                                            worker_session)
        heapq.heappush(self._expiries, (now + timeout_s, session_id))

    def lookup(self, session_id: str, now: float) -> SessionPin | None:
        """The live pin of `session_id`, its expiry slid forward; None when unpinned."""
        pin = self._pins.get(session_id)
        if pin is None or now >= pin.expires_at:
            return None
        pin.expires_at = now + pin.timeout_s
        heapq.heappush(self._expiries, (pin.expires_at, session_id))
        return pin

    def unpin(self, session_id: str) -> SessionPin | None:
        return self._pins.pop(session_id, None)

    def expire(self, now: float) -> list[SessionPin]:
        """Remove and return pins whose expiry has passed."""
        out = []
        heap = self._expiries
        while heap and heap[0][0] <= now:
            expires_at, session_id = heapq.heappop(heap)
            pin = self._pins.get(session_id)
            if pin is not None and pin.expires_at == expires_at:
                del self._pins[session_id]
                out.append(pin)
        return out

    def drop_worker(self, key: WorkerKey) -> list[SessionPin]:
        gone = [pin for pin in self._pins.values() if pin.key == key]
        for pin in gone:
            del self._pins[pin.session_id]
        return gone
