"""Worker selection (DESIGN.md §4.4, §4.5): a small `SelectionPolicy` protocol and one registry.

The `kv` cost of sending a request of `isl` prompt tokens to worker w (block size B):

    miss_tokens    = max(isl − overlap(w)·B, 0)                    tokens w must prefill anew
    prefill_blocks = (active_prefill_tokens(w) + s(p)·miss_tokens) / B
    decode_blocks  = active_blocks(w) + (⌊isl/B⌋ − d(w))            d: leading prompt blocks
                                                                    already booked on w
    cost           = overlap_weight · prefill_blocks + decode_blocks

Lowest cost wins; ties go to the smaller tree, then at random. With temperature T > 0 a worker is
sampled with probability ∝ exp(−cost / ((max − min)·T)).

Priority (§4.5) scales only the cache-miss term: s(p) = 2^(−k·clamp(p, −8, 8)) with
k = `router_priority_cache_scale` (default 0.25; 0 turns it off). Priority 0 gives s = 1, the plain
cost. A high-priority request (p = 4: s = 0.5) cares less about recomputing its prompt and more
about the work queued ahead of it, so it goes where it starts soonest; a low-priority one
(p = −4: s = 2) goes where its prompt is cached, costing the fleet least.
"""

from __future__ import annotations

import math
import random
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Protocol

from router.index import WorkerKey
from router.load import WorkerLoad

PRIORITY_CLAMP = 8  # |priority| beyond this scales the cache-miss term no further


def miss_scale(priority: int, cache_scale: float) -> float:
    """s(p) of the module docstring: the weight of cache-miss tokens for a priority."""
    if not priority or not cache_scale:
        return 1.0
    return 2.0 ** (-cache_scale * max(-PRIORITY_CLAMP, min(PRIORITY_CLAMP, priority)))


@dataclass(slots=True)
class Candidate:
    """An eligible worker with what selection needs to know about it."""

    key: WorkerKey
    load: WorkerLoad
    overlap: int      # leading prompt blocks cached there
    tree_size: int    # blocks cached there in all


@dataclass(slots=True)
class CostInputs:
    isl: int                  # prompt tokens
    seq_hashes: list[int]     # the prompt's full-block sequence hashes
    block_size: int           # tokens
    overlap_weight: float
    miss_scale: float         # s(p) above


def kv_cost(c: Candidate, x: CostInputs, overlap: int | None = None) -> float:
    """The cost of the module docstring (`overlap` overrides the candidate's)."""
    bs = x.block_size
    miss_tokens = max(x.isl - (c.overlap if overlap is None else overlap) * bs, 0)
    prefill_blocks = (c.load.prefill_tokens + x.miss_scale * miss_tokens) / bs
    decode_blocks = c.load.active_blocks + len(x.seq_hashes) - c.load.active_prefix(x.seq_hashes)
    return x.overlap_weight * prefill_blocks + decode_blocks


class SelectionPolicy(Protocol):
    def select(self, candidates: Sequence[Candidate], x: CostInputs,
               rng: random.Random) -> Candidate:
        """Pick one of `candidates` (never empty)."""


def _argmin(candidates: Sequence[Candidate], costs: Sequence[float],
            rng: random.Random) -> Candidate:
    """Lowest cost; ties to the smaller tree, then uniformly at random."""
    best = min(costs)
    tied = [c for c, cost in zip(candidates, costs) if cost == best]
    if len(tied) > 1:
        smallest = min(c.tree_size for c in tied)
        tied = [c for c in tied if c.tree_size == smallest]
    return tied[0] if len(tied) == 1 else rng.choice(tied)


def _softmax_sample(candidates: Sequence[Candidate], costs: Sequence[float], temperature: float,
                    rng: random.Random) -> Candidate:
    lo, hi = min(costs), max(costs)
    if hi == lo:
        return rng.choice(candidates)
    # range-normalised negated costs; shifting by the best keeps exp() in (0, 1]
    weights = [math.exp(-(cost - lo) / ((hi - lo) * temperature)) for cost in costs]
    return rng.choices(candidates, weights)[0]


class KvPolicy:
    """The cost of the module docstring: cache overlap against load."""

    def __init__(self, temperature: float = 0.0):
        self.temperature = temperature

    def select(self, candidates, x, rng):
        costs = [kv_cost(c, x) for c in candidates]
        if self.temperature > 0:
            return _softmax_sample(candidates, costs, self.temperature, rng)
        return _argmin(candidates, costs, rng)


class LeastLoadedPolicy:
    """The kv cost with every worker's overlap taken as zero: load only, cache ignored."""

    def select(self, candidates, x, rng):
        return _argmin(candidates, [kv_cost(c, x, overlap=0) for c in candidates], rng)


class RoundRobinPolicy:
    """Eligible workers in (worker_id, dp_rank) order, one after another."""

    def __init__(self) -> None:
        self._turn = 0

    def select(self, candidates, x, rng):
        ordered = sorted(candidates, key=lambda c: c.key)
        choice = ordered[self._turn % len(ordered)]
        self._turn += 1
        return choice


class RandomPolicy:
    def select(self, candidates, x, rng):
        return rng.choice(candidates)


# mode name -> factory(temperature); both spellings of the two-word modes are accepted
POLICIES: dict[str, Callable[[float], SelectionPolicy]] = {
    "kv": KvPolicy,
    "round-robin": lambda _t: RoundRobinPolicy(),
    "random": lambda _t: RandomPolicy(),
    "least-loaded": lambda _t: LeastLoadedPolicy(),
}
ROUTER_MODES = sorted({*POLICIES, *(name.replace("-", "_") for name in POLICIES)})


def make_policy(mode: str, temperature: float) -> SelectionPolicy:
    factory = POLICIES.get(mode.replace("_", "-"))
    if factory is None:
        raise ValueError(f"router_mode must be one of {ROUTER_MODES}, got {mode!r}")
    return factory(temperature)
