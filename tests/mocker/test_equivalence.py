"""Bulk advancing == pass-by-pass stepping == a plain reference engine, on random workloads: same
outputs, same KV events, same timestamps, same block ids."""

from __future__ import annotations

import math
import random
from dataclasses import dataclass

import pytest

from mocker.core import CoreRequest, EngineCore
from router.events import BlockStored
from router.hashing import local_hashes
from tests.mocker.mock_factories import make_args
from tests.mocker.reference import ReferenceEngine


@dataclass
class Op:
    time_ms: float
    request: CoreRequest | None = None     # an arrival
    abort: str | None = None               # or an abort


def random_workload(seed: int):
    rng = random.Random(seed)
    bs = rng.choice([1, 2, 4, 8])
    max_num_seqs = rng.randint(1, 6)
    max_tokens_limit = rng.randint(4, 24)
    chunked = rng.random() < 0.8
    budget = rng.randint(max_num_seqs, 48)
    if not chunked:
        budget = max(budget, 56 + max_tokens_limit)
    fits_one = (56 + max_tokens_limit) // bs + 1        # blocks the largest request needs alone
    args = make_args(num_gpu_blocks=rng.randint(fits_one, fits_one + 24),
                     block_size=bs, max_num_seqs=max_num_seqs, max_num_batched_tokens=budget,
                     enable_chunked_prefill=chunked,
                     enable_prefix_caching=rng.random() < 0.85,
                     scheduling_policy=rng.choice(["fcfs", "priority"]),
                     eviction_policy=rng.choice(["lru", "priority"]),
                     speedup_ratio=rng.choice([1.0, 3.0]), output_token_seed=seed)
    bases = [[rng.randint(1, 50) for _ in range(40)] for _ in range(3)]
    ops, t = [], 0.0
    for i in range(rng.randint(4, 22)):
        t += rng.choice([0.0, 0.0, rng.uniform(0, 40), rng.uniform(0, 400)])
        prompt = rng.choice(bases)[:rng.randint(0, 36)] + [rng.randint(1, 50)
                                                           for _ in range(rng.randint(1, 20))]
        stop = [rng.randint(1000, 1999)] if rng.random() < 0.2 else []
        ops.append(Op(t, CoreRequest(f"r{i}", prompt, rng.randint(1, max_tokens_limit),
                                     priority=rng.randint(0, 2), stop_token_ids=stop)))
        if rng.random() < 0.15:
            ops.append(Op(t + rng.uniform(0, 300), abort=f"r{rng.randint(0, i)}"))
    ops.sort(key=lambda op: op.time_ms)
    return args, ops


def drive(engine, ops: list[Op], stepwise: bool):
    """Feed `ops`; stepwise: one advance_until call per pass, else one per op."""
    firsts, finished = [], []

    def advance(t: float) -> None:
        if stepwise:
            while (nxt := engine_next(engine)) is not None and nxt <= t:
                # a pass due to start now starts once the clock moves past now
                collect(engine.advance_until(nxt if nxt > engine.now else math.nextafter(nxt, t)))
                if nxt == t:
                    break
        collect(engine.advance_until(t))

    def collect(step) -> None:
        firsts.extend((f.request_id, f.time_ms) for f in step.first_tokens)
        finished.extend((f.request_id, f.finish_reason, f.arrival_ms, f.start_ms, f.first_token_ms,
                         f.end_ms, f.prompt_tokens, f.output_ids.tolist(), f.cached_tokens,
                         f.preemptions) for f in step.finished)

    events = []
    for op in ops:
        advance(op.time_ms)
        if op.request is not None:
            engine.add(op.request)
        else:
            engine.abort(op.abort)
        events += engine.take_events()
    advance(math.inf)
    events += engine.take_events()
    return firsts, finished, [(b.time_ms, b.events) for b in events], engine.pool.num_active


def engine_next(engine):
    if isinstance(engine, EngineCore):
        return engine.next_event_time()
    return engine.inflight[0] if engine.inflight else (engine.now if engine.running or len(engine.policy) else None)


@pytest.mark.parametrize("seed", range(200))
def test_bulk_stepwise_and_reference_agree(seed):
    args, ops = random_workload(seed)
    bulk = drive(EngineCore(args, bulk=True), ops, stepwise=False)
    stepwise = drive(EngineCore(args, bulk=False), ops, stepwise=True)
    reference = drive(ReferenceEngine(args), ops, stepwise=False)
    assert bulk == stepwise
    assert bulk == reference
    firsts, finished, events, active = bulk
    for _, batch in events:            # the local hashes handed to the relay are the tokens' own
        for e in batch:
            if isinstance(e, BlockStored):
                assert e.local_hashes == local_hashes(e.token_ids, args.block_size)
    assert active == 0                                    # nothing leaked
    aborted = {op.abort for op in ops if op.abort}
    assert {f[0] for f in finished} | aborted >= {op.request.request_id for op in ops if op.request}
    for f in finished:                                    # max_tokens honoured exactly
        request = next(op.request for op in ops if op.request and op.request.request_id == f[0])
        assert len(f[7]) == request.max_tokens or f[1] == "stop"
