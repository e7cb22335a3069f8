"""The mock engine core: a synchronous state machine on a virtual clock (DESIGN.md §5).

No asyncio, no wall clock, no global RNG: the drivers (mocker/realtime.py, mocker/virtual.py) own
time and feed it in. Times are milliseconds on the driver's clock.

    add(request)          queue a request at the current time (ValueError if it can never run)
    abort(request_id)     drop it and free its KV
    next_event_time()     when advance_until next has something to do (None: idle)
    advance_until(t)      run the passes up to t; returns first tokens and finished requests
    take_events()         KV events queued since the last call, stamped with their pass start
    emitted(request_id)   the output token ids a request has produced so far
    block_table(id)       the KV blocks a request holds
    load()                KV usage and queue lengths

One pass (vLLM-style, chunked prefill):

    start ──► 1. every decoding request computes one token (its newest); a request whose next
                 token opens a block allocates it, one that fills a block publishes it
              2. the request still in prefill (at most one, always the newest running) computes
                 min(rest of its prompt, budget left) tokens
              3. unless step 1 or 2 preempted someone: admit waiting requests in policy order while
                 running < max_num_seqs and budget remains (prefix hits count as computed)
              An allocation that cannot be met preempts the policy's victim (fcfs: the newest
              running request) until it can; the victim frees its blocks, keeps its generated tokens
              and its budget is refunded.
    end   ──► every request that has computed all its tokens emits one (first tokens, finishes)
    duration = prefill(new prompt tokens) + decode(KV usage) if anyone emits   (mocker/timing.py)

Decoding requests are not touched pass by pass. A request that starts decoding at pass k0 with g0
tokens out and c0 = prompt + g0 - 1 tokens computed computes position c0 + (k - k0) in pass k, so its
next block boundary and its last pass are arithmetic; they wait in heaps keyed by pass index and only
those passes do work for it. A pass costs O(boundaries + prefill requests), not O(running), and a
run of passes in which nothing but decoding happens is advanced in one go (`bulk`), with the same
durations, events and timestamps as stepping it pass by pass.
"""

from __future__ import annotations

import heapq
import math
from collections import OrderedDict
from dataclasses import dataclass, field
from typing import Sequence

import numpy as np
import xxhash

from mocker.config import MockEngineArgs
from mocker.kv_cache import BlockPool
from mocker.scheduling import SCHEDULING_POLICIES
from mocker.timing import PassClock, PolynomialTiming, ProfileTiming, TimingModel
from router.events import EngineEvent, EngineEventBatch
from router.hashing import Prompt, chain_hash, local_hashes
from worker.engine import LoadSnapshot

OUTPUT_ID_RANGE = (1000, 2000)   # generated token ids, inside any real vocabulary (as Dynamo's mocker)

_ALLOC, _STORE = 0, 1            # decode boundary kinds; ALLOC sorts first within a request's pass


@dataclass(slots=True)
class CoreRequest:
    request_id: str
    token_ids: Sequence[int]
    max_tokens: int
    priority: int = 0                          # higher is more important
    prompt: Prompt | None = None               # reused when its block size is the engine's
    output_ids: Sequence[int] | None = None    # a scripted reply; None: generated ids
    stop_token_ids: Sequence[int] = ()         # end with "stop" once one of these is emitted


@dataclass(slots=True, frozen=True)
class FirstToken:
    request_id: str
    time_ms: float


@dataclass(slots=True, frozen=True)
class Finished:
    request_id: str
    finish_reason: str           # "length" (max_tokens reached) or "stop" (stop token, script end)
    arrival_ms: float            # add() time
    start_ms: float              # start of the pass that first scheduled it
    first_token_ms: float
    end_ms: float
    prompt_tokens: int
    output_ids: np.ndarray       # every emitted token id, in order
    cached_tokens: int           # prompt tokens that were prefix hits at its first admission
    preemptions: int


@dataclass(slots=True)
class StepOutput:
    """What one advance_until call produced."""

    passes: int = 0
    first_tokens: list[FirstToken] = field(default_factory=list)
    finished: list[Finished] = field(default_factory=list)


@dataclass(slots=True, frozen=True)
class KvEventBatch:
    """KV events of one pass, in order, stamped with the pass start (ms on the core's clock)."""

    time_ms: float
    events: list[EngineEvent]

    def to_engine_batch(self, dp_rank: int = 0) -> EngineEventBatch:
        """The engine wire format's batch (router/events.py), timestamp in seconds."""
        return EngineEventBatch(self.time_ms / 1000.0, self.events, dp_rank)


@dataclass(slots=True)
class _Pass:
    index: int
    start_ms: float
    end_ms: float
    completing: list[tuple[int, int]]   # (slot, epoch) that computed all their tokens: emit at end


def load_timing(args: MockEngineArgs) -> TimingModel:
    return ProfileTiming.load(args.profile) if args.profile else PolynomialTiming()


class EngineCore:
    def __init__(self, args: MockEngineArgs, timing: TimingModel | None = None, *,
                 context_length: int | None = None, bulk: bool = True):
        self.args = args.validate()
        self.context_length = context_length  # model limit on prompt + max_tokens (None: none)
        self.block_size = args.block_size
        self.pool = BlockPool(args.num_gpu_blocks, args.block_size, args.eviction_policy,
                              args.enable_prefix_caching)
        self._clock = PassClock(timing or load_timing(args), args.speedup_ratio,
                                args.decode_speedup_ratio)
        self._policy = SCHEDULING_POLICIES[args.scheduling_policy]()
        self._bulk = bulk
        self.now = 0.0
        self._started = 0                    # passes started = index of the next pass
        self._done = 0                       # passes completed
        self._inflight: _Pass | None = None
        self._events: list[KvEventBatch] = []
        self._preempted = False              # during scheduling: someone was preempted this pass

        self._slot_of: dict[str, int] = {}
        self._free_slots: list[int] = []
        self._running: OrderedDict[int, None] = OrderedDict()   # admission order, newest last
        self._partial = -1                   # the running slot still in prefill, if any
        self._num_decoding = 0
        self._boundaries: list[tuple[int, int, int, int, int]] = []  # (pass, order, kind, slot, epoch)
        self._finishes: list[tuple[int, int, int, int]] = []         # (pass, order, slot, epoch)
        self._arrivals = 0
        self._admissions = 0

        # Per-request state, one entry per slot (slots are reused; `_epoch` tells incarnations and
        # heap entries apart). For a decoding slot, `_gen`/`_comp` hold the values at pass `_base`.
        self._rid: list[str] = []
        self._prompt: list[Prompt] = []
        self._plen: list[int] = []
        self._limit: list[int] = []          # tokens it will emit
        self._reason: list[str] = []         # finish reason once `_limit` tokens are out
        self._out: list[np.ndarray] = []     # its output ids (`_limit` of them)
        self._prio: list[int] = []
        self._arrival_seq: list[int] = []
        self._arrival_ms: list[float] = []
        self._start_ms: list[float] = []
        self._first_ms: list[float] = []
        self._cached: list[int] = []         # hit tokens at first admission (-1: not admitted yet)
        self._gen: list[int] = []            # tokens emitted
        self._comp: list[int] = []           # tokens whose KV is computed
        self._base: list[int] = []           # pass it started decoding at (-1: not decoding)
        self._last: list[int] = []           # decoding: pass at whose end its last token comes
        self._table: list[list[int]] = []    # block table: ceil(_comp / block_size) blocks
        self._hashes: list[list[int]] = []   # sequence hashes of its full blocks known so far
        self._locals: list[list[int]] = []   # and their local hashes
        self._order: list[int] = []          # admission number (running order)
        self._epoch: list[int] = []
        self._preemptions: list[int] = []

    # -- public API ------------------------------------------------------------------------

    def add(self, request: CoreRequest) -> None:
        """Queue `request` at `self.now`. Raises ValueError naming the field if it can never run."""
        rid = request.request_id
        if rid in self._slot_of:
            raise ValueError(f"request_id {rid!r} is already in the engine")
        plen, max_tokens, bs = len(request.token_ids), request.max_tokens, self.block_size
        if plen == 0:
            raise ValueError("prompt: must hold at least one token")
        if isinstance(max_tokens, bool) or not isinstance(max_tokens, int) or max_tokens < 1:
            raise ValueError(f"max_tokens: must be an integer of at least 1, got {max_tokens!r}")
        if self.context_length is not None and plen + max_tokens > self.context_length:
            raise ValueError(f"prompt: {plen} tokens plus max_tokens {max_tokens} exceed the "
                             f"context length {self.context_length}")
        need = -(-(plen + max_tokens - 1) // bs)
        if need > self.pool.num_blocks:
            raise ValueError(f"prompt: {plen} tokens plus max_tokens {max_tokens} need {need} KV "
                             f"blocks, more than the whole cache ({self.pool.num_blocks})")
        budget = self.args.max_num_batched_tokens
        if not self.args.enable_chunked_prefill and plen + max_tokens - 1 > budget:
            raise ValueError(f"prompt: {plen} tokens plus max_tokens {max_tokens} exceed one pass "
                             f"({budget} tokens) and chunked prefill is off")
        out, limit, reason = self._reply(request)

        prompt = request.prompt
        if prompt is None or prompt.block_size != bs:
            prompt = Prompt(request.token_ids, bs)
        s = self._free_slots.pop() if self._free_slots else self._new_slot()
        self._slot_of[rid] = s
        self._rid[s] = rid
        self._prompt[s] = prompt
        self._plen[s] = plen
        self._limit[s] = limit
        self._reason[s] = reason
        self._out[s] = out
        self._prio[s] = request.priority
        self._arrival_seq[s] = self._arrivals
        self._arrivals += 1
        self._arrival_ms[s] = self.now
        self._start_ms[s] = self._first_ms[s] = float("nan")
        self._cached[s] = -1
        self._gen[s] = self._comp[s] = self._preemptions[s] = 0
        self._base[s] = -1
        self._table[s] = []
        self._hashes[s] = list(prompt.sequence_hashes)
        self._locals[s] = list(prompt.local_hashes)
        self._policy.push(s, request.priority, self._arrival_seq[s])

    def abort(self, request_id: str) -> None:
        """Drop a request wherever it is and free its blocks; unknown ids are ignored."""
        s = self._slot_of.get(request_id)
        if s is None:
            return
        if s in self._running:
            self._leave_running(s)
        else:
            self._policy.remove(s, self._prio[s], self._arrival_seq[s])
        self._free_slot(s)

    def next_event_time(self) -> float | None:
        """When the next pass ends, or `now` if one is due to start (advance past `now` to start
        it); None when idle."""
        if self._inflight is not None:
            return self._inflight.end_ms
        if self._running or len(self._policy):
            return self.now
        return None

    def advance_until(self, t: float) -> StepOutput:
        """Complete every pass that ends by `t` and start every pass that starts before `t`; the
        clock then reads `t` (`math.inf`: run until idle, the clock stays at the last pass end).

        A pass due to start exactly at `t` is left for a later call, so that every request added
        at `t` (a burst of simultaneous arrivals) joins it."""
        out = StepOutput()
        while True:
            p = self._inflight
            if p is not None:
                if p.end_ms > t:
                    break
                self._end_pass(p, out)
            if not (self._running or len(self._policy)):
                break
            if self._bulk:
                self._skip_quiet_passes(t, out)
            if self.now >= t:
                break
            if not self._start_pass() and not self._preempted:
                raise AssertionError("requests are waiting but none can be scheduled")
        if self.now < t < math.inf:
            self.now = t
        return out

    def take_events(self) -> list[KvEventBatch]:
        events, self._events = self._events, []
        return events

    def emitted(self, request_id: str) -> np.ndarray:
        """Output ids the request has emitted so far (KeyError if it is not in the engine)."""
        s = self._slot_of[request_id]
        return self._out[s][:self._tokens_out(s)]

    def block_table(self, request_id: str) -> list[int]:
        """Ids of the blocks a request holds, in sequence order (empty while it waits)."""
        return list(self._table[self._slot_of[request_id]])

    def load(self) -> LoadSnapshot:
        return LoadSnapshot(self.pool.num_active, self.pool.num_blocks, len(self._running),
                            len(self._policy))

    # -- one pass ----------------------------------------------------------------------------

    def _start_pass(self) -> bool:
        """Schedule pass `self._started` at `self.now`; False if it would compute nothing."""
        k, bs, pool, now = self._started, self.block_size, self.pool, self.now
        self._preempted = False
        completing: list[tuple[int, int]] = []
        prefill_tokens = 0

        heap = self._boundaries
        while heap and heap[0][0] == k:
            _, _, kind, s, epoch = heapq.heappop(heap)
            if epoch != self._epoch[s]:
                continue
            x = self._comp[s] + (k - self._base[s])           # the position it computes now
            if kind == _ALLOC:
                if not self._make_room(1, s):
                    continue
                self._table[s] += pool.allocate(1)
            else:
                self._store_blocks(s, x // bs, x // bs + 1)
            if k + bs <= self._last[s]:
                heapq.heappush(heap, (k + bs, self._order[s], kind, s, epoch))

        budget = self.args.max_num_batched_tokens - self._num_decoding
        s = self._partial
        if s >= 0:
            comp, total = self._comp[s], self._plen[s] + self._gen[s]
            n = min(total - comp, budget)
            if self._make_room(-(-(comp + n) // bs) - len(self._table[s]), s):
                self._compute(s, comp, n)
                budget -= n
                prefill_tokens += n
                if comp + n == total:
                    completing.append((s, self._epoch[s]))

        policy = self._policy
        max_seqs, chunked = self.args.max_num_seqs, self.args.enable_chunked_prefill
        while (not self._preempted and budget > 0 and len(policy)
               and len(self._running) < max_seqs):
            s = policy.peek()
            total = self._plen[s] + self._gen[s]
            hits = pool.match(self._hashes[s], (total - 1) // bs) if pool.prefix_caching else []
            comp = len(hits) * bs
            n = min(total - comp, budget)
            if n < total - comp and not chunked:
                break
            new = -(-(comp + n) // bs) - len(hits)
            # taking the inactive hits shrinks num_free: count them only when that could matter
            free = pool.num_free
            if new > free - len(hits) and new > free - pool.count_inactive(hits):
                break
            policy.pop()
            pool.acquire(hits)
            self._table[s] = hits
            if self._cached[s] < 0:
                self._cached[s] = comp
                self._start_ms[s] = now
            self._order[s] = self._admissions
            self._admissions += 1
            self._running[s] = None
            self._compute(s, comp, n)
            budget -= n
            prefill_tokens += n
            if comp + n == total:
                completing.append((s, self._epoch[s]))
            else:
                self._partial = s

        events = pool.take_events()
        if events:
            self._events.append(KvEventBatch(now, events))
        emits = bool(self._num_decoding or completing)
        if not (emits or prefill_tokens):
            return False
        duration = self._clock.pass_ms(prefill_tokens, emits, pool.num_active / pool.num_blocks)
        self._inflight = _Pass(k, now, now + duration, completing)
        self._started = k + 1
        return True

    def _end_pass(self, p: _Pass, out: StepOutput) -> None:
        self._inflight = None
        self.now = end = p.end_ms
        self._done = p.index + 1
        out.passes += 1
        heap = self._finishes
        while heap and heap[0][0] == p.index:
            _, _, s, epoch = heapq.heappop(heap)
            if epoch == self._epoch[s]:
                self._finish(s, out)
        for s, epoch in p.completing:
            if epoch != self._epoch[s]:
                continue
            if s == self._partial:
                self._partial = -1
            g = self._gen[s] = self._gen[s] + 1
            if g == 1:
                self._first_ms[s] = end
                out.first_tokens.append(FirstToken(self._rid[s], end))
            if g == self._limit[s]:
                self._finish(s, out)
            else:
                self._start_decoding(s, p.index + 1)

    def _skip_quiet_passes(self, t: float, out: StepOutput) -> None:
        """Run, in one go, the passes in which only decoding happens and no request reaches a block
        boundary or its end: each lasts the same and changes nothing but the clock."""
        if len(self._policy) or self._partial >= 0 or not self._num_decoding:
            return
        k = self._started
        quiet_until = min(self._boundaries[0][0] if self._boundaries else 1 << 62,
                          self._finishes[0][0] if self._finishes else 1 << 62)
        if quiet_until <= k:
            return
        duration = self._clock.pass_ms(0, True, self.pool.num_active / self.pool.num_blocks)
        now, j = self.now, k
        while j < quiet_until and now + duration <= t:
            now += duration
            j += 1
        self.now = now
        self._started = self._done = j
        out.passes += j - k

    # -- request state -----------------------------------------------------------------------

    def _compute(self, s: int, comp: int, n: int) -> None:
        """Slot `s` computes tokens [comp, comp+n) this pass: allocate, then publish full blocks."""
        bs, table = self.block_size, self._table[s]
        new = -(-(comp + n) // bs) - len(table)
        if new:
            table += self.pool.allocate(new)
        self._store_blocks(s, comp // bs, (comp + n) // bs)
        self._comp[s] = comp + n

    def _store_blocks(self, s: int, lo: int, hi: int) -> None:
        """Blocks [lo, hi) of slot `s` just became full."""
        if lo >= hi or not self.pool.prefix_caching:
            return
        hashes, locals_, bs = self._hashes[s], self._locals[s], self.block_size
        tokens = self._tokens(s, lo * bs, hi * bs)
        if len(hashes) < hi:                             # blocks holding generated tokens
            parent = hashes[-1] if hashes else None
            for local in local_hashes(tokens[(len(hashes) - lo) * bs:], bs, self._prompt[s].seed):
                parent = local if parent is None else chain_hash(parent, local)
                hashes.append(parent)
                locals_.append(local)
        self.pool.store(self._table[s], lo, hashes[lo:hi], hashes[lo - 1] if lo else None, tokens,
                        locals_[lo:hi])

    def _tokens(self, s: int, lo: int, hi: int) -> Sequence[int]:
        """Tokens [lo, hi) of slot `s`'s sequence: its prompt, then its output."""
        prompt, plen = self._prompt[s].token_ids, self._plen[s]
        if hi <= plen:
            return prompt[lo:hi]
        head = list(prompt[lo:plen]) if lo < plen else []
        return head + self._out[s][max(lo - plen, 0):hi - plen].tolist()

    def _start_decoding(self, s: int, k0: int) -> None:
        bs, order, epoch = self.block_size, self._order[s], self._epoch[s]
        c0 = self._comp[s]                     # = prompt + generated - 1: the newest token is next
        last = k0 + self._limit[s] - self._gen[s] - 1
        self._base[s] = k0
        self._last[s] = last
        self._num_decoding += 1
        for kind, first in ((_ALLOC, k0 + (-c0) % bs), (_STORE, k0 + (-1 - c0) % bs)):
            if first <= last:
                heapq.heappush(self._boundaries, (first, order, kind, s, epoch))
        heapq.heappush(self._finishes, (last, order, s, epoch))

    def _tokens_out(self, s: int) -> int:
        base = self._base[s]
        return self._gen[s] + (self._done - base if base >= 0 else 0)

    def _stop_decoding(self, s: int) -> None:
        """Turn a decoding slot's lazy counters into plain ones as of the passes completed."""
        base = self._base[s]
        if base >= 0:
            passes = self._done - base
            self._gen[s] += passes
            self._comp[s] += passes
            self._base[s] = -1
            self._num_decoding -= 1

    def _make_room(self, n: int, s: int) -> bool:
        """Preempt until `n` blocks can be allocated; False if `s` itself had to go."""
        pool = self.pool
        while n > pool.num_free:
            victim = self._policy.victim(self._running, self._prio)
            self._preempt(victim)
            if victim == s:
                return False
        return True

    def _preempt(self, s: int) -> None:
        self._preempted = True
        self._leave_running(s)
        self._comp[s] = 0
        self._epoch[s] += 1
        self._preemptions[s] += 1
        self._policy.requeue(s, self._prio[s], self._arrival_seq[s])

    def _leave_running(self, s: int) -> None:
        """Take `s` out of the running set and free its blocks, tail first."""
        self._stop_decoding(s)
        del self._running[s]
        if s == self._partial:
            self._partial = -1
        table = self._table[s]
        table.reverse()
        self.pool.release(table, self._prio[s])
        self._table[s] = []

    def _finish(self, s: int, out: StepOutput) -> None:
        self._leave_running(s)
        n = self._gen[s]
        out.finished.append(Finished(
            self._rid[s], self._reason[s], self._arrival_ms[s], self._start_ms[s],
            self._first_ms[s], self.now, self._plen[s], self._out[s][:n], self._cached[s],
            self._preemptions[s]))
        self._free_slot(s)

    def _free_slot(self, s: int) -> None:
        del self._slot_of[self._rid[s]]
        self._epoch[s] += 1
        self._prompt[s] = None  # type: ignore[call-overload]
        self._out[s] = self._table[s] = self._hashes[s] = self._locals[s] = None  # type: ignore
        self._free_slots.append(s)

    def _new_slot(self) -> int:
        for column in (self._rid, self._prompt, self._plen, self._limit, self._reason, self._out,
                       self._prio, self._arrival_seq, self._arrival_ms, self._start_ms,
                       self._first_ms, self._cached, self._gen, self._comp, self._base, self._last,
                       self._table, self._hashes, self._locals, self._order, self._preemptions):
            column.append(None)  # type: ignore[arg-type]
        self._epoch.append(0)
        return len(self._epoch) - 1

    def _reply(self, request: CoreRequest) -> tuple[np.ndarray, int, str]:
        """The ids it will emit, how many, and why it stops."""
        max_tokens = request.max_tokens
        if request.output_ids is not None:
            out = np.asarray(request.output_ids[:max_tokens], dtype=np.int64)
            if not len(out):
                raise ValueError("output_ids: a scripted reply needs at least one token")
            return out, len(out), "stop" if len(request.output_ids) < max_tokens else "length"
        out = generated_ids(request.request_id, max_tokens, self.args.output_token_seed)
        if request.stop_token_ids:
            hits = np.flatnonzero(np.isin(out, np.asarray(request.stop_token_ids)))
            if len(hits):
                return out[:hits[0] + 1], int(hits[0]) + 1, "stop"
        return out, max_tokens, "length"


def generated_ids(request_id: str, n: int, seed: int = 0) -> np.ndarray:
    """`n` token ids in OUTPUT_ID_RANGE, a fixed function of (request_id, seed): the high bits of a
    multiplicative (Fibonacci) hash of a per-request counter."""
    x = np.arange(n, dtype=np.uint64)
    x += np.uint64(xxhash.xxh3_64_intdigest(request_id.encode(), seed))
    x *= _FIBONACCI
    x >>= _SHIFT
    x %= _SPAN
    x += _LOW
    return x.view(np.int64)       # every value is below 2^63: the same numbers


_FIBONACCI, _SHIFT = np.uint64(0x9E3779B97F4A7C15), np.uint64(40)
_SPAN, _LOW = np.uint64(OUTPUT_ID_RANGE[1] - OUTPUT_ID_RANGE[0]), np.uint64(OUTPUT_ID_RANGE[0])
