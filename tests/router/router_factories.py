"""Tiny deterministic fixtures for the router core: a fake clock, workers, prompts, requests."""

from __future__ import annotations

import random

from router.config import RouterConfig
from router.core import RouteRequest, Router
from router.events import RouterEvent
from router.hashing import Prompt
from router.kv_sync import DumpReply
from router.load import WorkerInfo

BS = 4  # tokens per block in these tests


class FakeClock:
    def __init__(self, now: float = 1000.0):
        self.now = now

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


def make_info(worker_id: int, **overrides) -> WorkerInfo:
    fields = dict(worker_id=worker_id, kv_block_size=BS, total_kv_blocks=1000,
                  max_num_batched_tokens=64, max_num_seqs=16)
    return WorkerInfo(**{**fields, **overrides})


def make_router(num_workers: int = 3, *, clock: FakeClock | None = None, seed: int = 0,
                infos: list[WorkerInfo] | None = None, **config) -> Router:
    """A router with workers 1..n, each already synced (an empty dump applied)."""
    router = Router(RouterConfig(**config), clock=clock or FakeClock(), rng=random.Random(seed))
    for info in infos or [make_info(i) for i in range(1, num_workers + 1)]:
        if router.add_worker(info) is not None:
            router.apply_kv_reply(DumpReply(info.worker_id, 0, []))
    return router


def blocks(*block_ids: int) -> list[int]:
    """Tokens of whole blocks: block b is BS copies of token b."""
    return [b for b in block_ids for _ in range(BS)]


def make_prompt(*block_ids: int, extra_tokens: int = 0) -> Prompt:
    return Prompt(blocks(*block_ids) + [999] * extra_tokens, BS)


_ids = iter(range(1, 1 << 30))


def make_request(*block_ids: int, **overrides) -> RouteRequest:
    fields = dict(request_id=f"r{next(_ids)}", prompt=make_prompt(*block_ids))
    return RouteRequest(**{**fields, **overrides})


def stored(worker_id: int, event_id: int, *block_ids: int, dp_rank: int = 0) -> RouterEvent:
    """A router stored event for a chain of blocks from the root (engine hash = sequence hash)."""
    prompt = make_prompt(*block_ids)
    return RouterEvent(worker_id, dp_rank, event_id, "stored", None,
                       list(zip(prompt.sequence_hashes, prompt.local_hashes)))
