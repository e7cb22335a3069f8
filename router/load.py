"""Load the router has booked on each worker (DESIGN.md §4.4, §4.5), and what workers report.

A request is booked on its worker at admission and released in two steps:

    admission ──► prefill tokens + prompt blocks (+ expected output blocks) booked
    first token ──► prefill tokens released
    end / error / cancel ──► everything released      (older than 300 s: expired)

Per worker (worker_id, dp_rank):

* `prefill_tokens`: tokens admitted but not yet prefilled: Σ max(isl − overlap·block_size, 0).
* `active_blocks`: distinct prompt blocks of its requests (a sequence hash booked by two requests
  counts once: refcounts), plus, for requests that gave an `osl`, their expected output blocks
  `osl / block_size` scaled by the fraction of `osl` not yet generated (it decays as they run).
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass

from router.events import LoadReport
from router.index import WorkerKey

BOOKING_EXPIRY_S = 300.0  # a booking older than this is released (its end was never reported)


@dataclass(frozen=True, slots=True)
class WorkerInfo:
    """One worker as the router sees it: identity and the capacities load is measured against.
    Every rank in `range(dp_size)` is routed to separately."""

    worker_id: int
    kv_block_size: int
    total_kv_blocks: int
    max_num_batched_tokens: int
    max_num_seqs: int
    dp_size: int = 1

    def keys(self) -> list[WorkerKey]:
        return [(self.worker_id, rank) for rank in range(self.dp_size)]


class Booking:
    __slots__ = ("request_id", "key", "prefill_tokens", "seq_hashes", "output_blocks",
                 "osl", "remaining", "admitted_at")

    def __init__(self, request_id: str, key: WorkerKey, prefill_tokens: int,
                 seq_hashes: list[int], osl: int, block_size: int, admitted_at: float):
        self.request_id = request_id
        self.key = key
        self.prefill_tokens = prefill_tokens   # tokens; 0 once the first token arrived
        self.seq_hashes = seq_hashes           # prompt blocks booked on `key`
        self.osl = osl                         # expected output tokens, 0 when unknown
        self.output_blocks = osl / block_size  # expected output blocks (a float)
        self.remaining = 1.0                   # fraction of osl still to generate
        self.admitted_at = admitted_at


class WorkerLoad:
    """Booked and reported load of one (worker_id, dp_rank)."""

    __slots__ = ("info", "prefill_tokens", "block_refs", "output_blocks", "num_requests",
                 "reported_used_blocks")

    def __init__(self, info: WorkerInfo):
        self.info = info
        self.prefill_tokens = 0                  # tokens
        # Booked prompt blocks by sequence hash. They form a prefix tree (a booking holds a block
        # with every block before it), so a count is kept per tree node, not per booking: the
        # bookings that end at the block plus its booked followers. Booking touches only the new
        # blocks and release only the blocks no other booking reaches.
        self.block_refs: dict[int, int] = {}
        self.output_blocks = 0.0                 # Σ expected output blocks × remaining fraction
        self.num_requests = 0
        self.reported_used_blocks = 0            # from the worker's last LoadReport

    @property
    def active_blocks(self) -> float:
        return len(self.block_refs) + self.output_blocks

    def kv_usage(self) -> float:
        """Fraction of the KV cache in use: the worker's report or the router's bookings,
        whichever is higher (reports lag admissions; bookings miss cached, idle blocks)."""
        used = max(self.reported_used_blocks, self.active_blocks)
        return used / self.info.total_kv_blocks

    def active_prefix(self, seq_hashes: list[int]) -> int:
        """Leading blocks of `seq_hashes` already booked here by running requests.

        Binary search is exact: a booked sequence hash implies its whole prefix is booked too
        (the request that booked block i booked blocks 0..i-1 with it).
        """
        refs = self.block_refs
        lo, hi = 0, len(seq_hashes)
        while lo < hi:
            mid = (lo + hi) // 2
            if seq_hashes[mid] in refs:
                lo = mid + 1
            else:
                hi = mid
        return lo


class LoadTracker:
    """Bookings of every admitted request, per worker. Times are the router's clock, seconds."""

    def __init__(self) -> None:
        self.workers: dict[WorkerKey, WorkerLoad] = {}
        self._bookings: dict[str, Booking] = {}
        self._admissions: deque[tuple[float, str]] = deque()  # (admitted_at, id), oldest first

    def add_worker(self, key: WorkerKey, info: WorkerInfo) -> None:
        self.workers.setdefault(key, WorkerLoad(info))

    def remove_worker(self, key: WorkerKey) -> list[str]:
        """Forget `key`; returns the ids of the requests that were booked on it (now released)."""
        self.workers.pop(key, None)
        gone = [b.request_id for b in self._bookings.values() if b.key == key]
        for request_id in gone:
            del self._bookings[request_id]
        return gone

    def book(self, request_id: str, key: WorkerKey, prefill_tokens: int, seq_hashes: list[int],
             osl: int, now: float) -> None:
        if request_id in self._bookings:
            raise ValueError(f"request_id {request_id!r} is already booked")
        load = self.workers[key]
        booking = Booking(request_id, key, prefill_tokens, seq_hashes, osl,
                          load.info.kv_block_size, now)
        self._bookings[request_id] = booking
        self._admissions.append((now, request_id))
        load.prefill_tokens += prefill_tokens
        # the blocks already booked are a prefix; the block before the new ones gains a follower
        # (or, when nothing is new, a booking that ends there)
        refs = load.block_refs
        k = load.active_prefix(seq_hashes)
        if k:
            refs[seq_hashes[k - 1]] += 1
        refs.update(dict.fromkeys(seq_hashes[k:], 1))
        load.output_blocks += booking.output_blocks
        load.num_requests += 1

    def booking(self, request_id: str) -> Booking | None:
        return self._bookings.get(request_id)

    def first_token(self, request_id: str) -> bool:
        """Release the request's prefill tokens. False when nothing changed."""
        booking = self._bookings.get(request_id)
        if booking is None or not booking.prefill_tokens:
            return False
        self.workers[booking.key].prefill_tokens -= booking.prefill_tokens
        booking.prefill_tokens = 0
        return True

    def progress(self, request_id: str, generated_tokens: int) -> None:
        """The request has generated `generated_tokens` so far: decay its expected output."""
        booking = self._bookings.get(request_id)
        if booking is None or not booking.osl:
            return
        remaining = max(0.0, 1.0 - generated_tokens / booking.osl)
        self.workers[booking.key].output_blocks -= booking.output_blocks * (booking.remaining
                                                                            - remaining)
        booking.remaining = remaining

    def release(self, request_id: str) -> Booking | None:
        """Release everything the request booked; None when it was not booked (or already gone)."""
        booking = self._bookings.pop(request_id, None)
        if booking is None:
            return None
        load = self.workers.get(booking.key)
        if load is None:
            return booking
        load.prefill_tokens -= booking.prefill_tokens
        # free the blocks only this booking reached, from its last block back
        refs, hashes = load.block_refs, booking.seq_hashes
        for i in range(len(hashes) - 1, -1, -1):
            h = hashes[i]
            count = refs[h] - 1
            if count:
                refs[h] = count
                break
            del refs[h]
        load.output_blocks -= booking.output_blocks * booking.remaining
        if not load.block_refs and load.output_blocks < 1e-9:
            load.output_blocks = 0.0  # no float drift left behind on an idle worker
        load.num_requests -= 1
        return booking

    def expire(self, now: float) -> list[str]:
        """Release bookings older than BOOKING_EXPIRY_S; returns their ids."""
        expired = []
        admissions = self._admissions
        while admissions and now - admissions[0][0] >= BOOKING_EXPIRY_S:
            admitted_at, request_id = admissions.popleft()
            booking = self._bookings.get(request_id)
            if booking is not None and booking.admitted_at == admitted_at:
                self.release(request_id)
                expired.append(request_id)
        return expired

    def apply_report(self, report: LoadReport) -> bool:
        """Record a worker's own KV usage; False for an unknown worker."""
        load = self.workers.get((report.worker_id, report.dp_rank))
        if load is None:
            return False
        load.reported_used_blocks = report.kv_used_blocks
        return True

    def __len__(self) -> int:
        return len(self._bookings)
