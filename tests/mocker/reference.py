"""A deliberately plain mock engine: every running request is visited in every pass.

The test oracle for mocker/core.py, whose decoding requests advance lazily (heaps of block
boundaries, quiet runs skipped in bulk). It shares the parts that hold no scheduling logic (the
block pool, the pass clock, the policies, hashing) and must produce the same outputs, KV events and
timestamps.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np

from mocker.config import MockEngineArgs
from mocker.core import CoreRequest, Finished, FirstToken, KvEventBatch, StepOutput, generated_ids
from mocker.kv_cache import BlockPool
from mocker.scheduling import SCHEDULING_POLICIES
from mocker.timing import PassClock, PolynomialTiming
from router.hashing import Prompt, chain_hash, local_hashes


@dataclass(eq=False)
class _Req:
    slot: int
    rid: str
    prompt: list[int]
    out: np.ndarray
    limit: int
    reason: str
    prio: int
    arrival_seq: int
    arrival_ms: float
    hashes: list[int]
    start_ms: float = math.nan
    first_ms: float = math.nan
    cached: int = -1
    gen: int = 0
    comp: int = 0
    table: list[int] = field(default_factory=list)
    decoding: bool = False
    preemptions: int = 0

    def tokens(self, lo: int, hi: int) -> list[int]:
        return (self.prompt + self.out.tolist())[lo:hi]


class ReferenceEngine:
    def __init__(self, args: MockEngineArgs, timing=None):
        self.args, self.bs = args, args.block_size
        self.pool = BlockPool(args.num_gpu_blocks, args.block_size, args.eviction_policy,
                              args.enable_prefix_caching)
        self.policy = SCHEDULING_POLICIES[args.scheduling_policy]()
        self.clock = PassClock(timing or PolynomialTiming(), args.speedup_ratio,
                               args.decode_speedup_ratio)
        self.now = 0.0
        self.by_slot: dict[int, _Req] = {}
        self.by_rid: dict[str, _Req] = {}
        self.running: list[_Req] = []
        self.prio: dict[int, int] = {}
        self.inflight: tuple[float, list[_Req]] | None = None
        self.events: list[KvEventBatch] = []
        self.next_slot = self.arrivals = 0

    def add(self, request: CoreRequest) -> None:
        out = generated_ids(request.request_id, request.max_tokens, self.args.output_token_seed)
        limit, reason = request.max_tokens, "length"
        for i, token in enumerate(out.tolist()):
            if token in request.stop_token_ids:
                limit, reason = i + 1, "stop"
                break
        r = _Req(self.next_slot, request.request_id, list(request.token_ids), out[:limit], limit,
                 reason, request.priority, self.arrivals, self.now,
                 list(Prompt(request.token_ids, self.bs).sequence_hashes))
        self.next_slot += 1
        self.arrivals += 1
        self.by_slot[r.slot], self.by_rid[r.rid], self.prio[r.slot] = r, r, r.prio
        self.policy.push(r.slot, r.prio, r.arrival_seq)

    def abort(self, request_id: str) -> None:
        r = self.by_rid.pop(request_id, None)
        if r is None:
            return
        if r in self.running:
            self._leave(r)
        else:
            self.policy.remove(r.slot, r.prio, r.arrival_seq)
        r.slot = -1   # pending emissions of an aborted request are dropped

    def advance_until(self, t: float) -> StepOutput:
        out = StepOutput()
        while True:
            if self.inflight is not None:
                end, emitting = self.inflight
                if end > t:
                    break
                self._end_pass(end, emitting, out)
            if self.now >= t or not (self.running or len(self.policy)):
                break
            self._start_pass()
        if self.now < t < math.inf:
            self.now = t
        return out

    def take_events(self) -> list[KvEventBatch]:
        events, self.events = self.events, []
        return events

    # -- the pass ---------------------------------------------------------------------------

    def _start_pass(self) -> None:
        bs, pool = self.bs, self.pool
        budget, prefill, emitting, preempted = self.args.max_num_batched_tokens, 0, [], False
        for r in list(self.running):
            if r not in self.running:
                continue
            n = min(len(r.prompt) + r.gen - r.comp, budget)
            need = -(-(r.comp + n) // bs) - len(r.table)
            while need > pool.num_free:
                victim = self.by_slot[self.policy.victim([x.slot for x in self.running], self.prio)]
                self._preempt(victim)
                preempted = True
                if victim is r:
                    break
            if r not in self.running:
                continue
            self._compute(r, n)
            budget -= n
            if not r.decoding:
                prefill += n
            if r.comp == len(r.prompt) + r.gen:
                emitting.append(r)
        while (not preempted and budget > 0 and len(self.policy)
               and len(self.running) < self.args.max_num_seqs):
            r = self.by_slot[self.policy.peek()]
            total = len(r.prompt) + r.gen
            hits = pool.match(r.hashes, (total - 1) // bs) if pool.prefix_caching else []
            comp = len(hits) * bs
            n = min(total - comp, budget)
            if n < total - comp and not self.args.enable_chunked_prefill:
                break
            if -(-(comp + n) // bs) - len(hits) > pool.num_free - pool.count_inactive(hits):
                break
            self.policy.pop()
            pool.acquire(hits)
            r.table, r.comp = list(hits), comp
            if r.cached < 0:
                r.cached, r.start_ms = comp, self.now
            self.running.append(r)
            self._compute(r, n)
            budget -= n
            prefill += n
            if r.comp == total:
                emitting.append(r)
        events = pool.take_events()
        if events:
            self.events.append(KvEventBatch(self.now, events))
        emitting = [r for r in emitting if r in self.running]   # a victim emits nothing
        if not (emitting or prefill):
            return
        ms = self.clock.pass_ms(prefill, bool(emitting), pool.num_active / pool.num_blocks)
        self.inflight = (self.now + ms, [(r, r.slot) for r in emitting])

    def _compute(self, r: _Req, n: int) -> None:
        bs = self.bs
        new = -(-(r.comp + n) // bs) - len(r.table)
        if new:
            r.table += self.pool.allocate(new)
        lo, hi = r.comp // bs, (r.comp + n) // bs
        if lo < hi and self.pool.prefix_caching:
            while len(r.hashes) < hi:
                j = len(r.hashes)
                (local,) = local_hashes(r.tokens(j * bs, (j + 1) * bs), bs)
                r.hashes.append(chain_hash(r.hashes[-1], local) if r.hashes else local)
            tokens = r.tokens(lo * bs, hi * bs)
            self.pool.store(r.table, lo, r.hashes[lo:hi], r.hashes[lo - 1] if lo else None, tokens,
                            local_hashes(tokens, bs))
        r.comp += n

    def _end_pass(self, end: float, emitting: list, out: StepOutput) -> None:
        self.inflight = None
        self.now = end
        out.passes += 1
        for r, slot in emitting:
            if r.slot != slot or r not in self.running:
                continue
            r.gen += 1
            if r.gen == 1:
                r.first_ms = end
                out.first_tokens.append(FirstToken(r.rid, end))
            if r.gen == r.limit:
                self._leave(r)
                del self.by_rid[r.rid]
                out.finished.append(Finished(r.rid, r.reason, r.arrival_ms, r.start_ms, r.first_ms,
                                             end, len(r.prompt), r.out[:r.gen], r.cached,
                                             r.preemptions))
            else:
                r.decoding = True

    def _preempt(self, r: _Req) -> None:
        self._leave(r)
        r.comp = 0
        r.preemptions += 1
        self.policy.requeue(r.slot, r.prio, r.arrival_seq)

    def _leave(self, r: _Req) -> None:
        self.running.remove(r)
        r.decoding = False
        self.pool.release(r.table[::-1], r.prio)
        r.table = []
