"""A stand-in engine with fixed delays (TEMPORARY: replaced by mocker's engine)."""

from __future__ import annotations

import argparse
import asyncio
import time

from worker.engine import (EngineContext, EngineInfo, EngineKind, EngineRequest, EngineStep,
                           LoadSnapshot, RequestOutput, Timings)


class FixedDelayEngine:
    def __init__(self, context_length: int, ttft_s: float = 0.02, itl_s: float = 0.005):
        self.info = EngineInfo(kv_block_size=64, total_kv_blocks=16384, max_num_seqs=256,
                               max_num_batched_tokens=8192, context_length=context_length)
        self.ttft_s, self.itl_s = ttft_s, itl_s
        self._running: dict[str, tuple[EngineRequest, int]] = {}
        self._wake = asyncio.Event()

    async def start(self) -> None:
        pass

    async def stop(self) -> None:
        pass

    def add(self, request: EngineRequest) -> None:
        if request.max_tokens < 1:
            raise ValueError("max_tokens must be at least 1")
        self._running[request.request_id] = (request, 0)
        self._wake.set()

    def abort(self, request_id: str) -> None:
        self._running.pop(request_id, None)

    async def step(self) -> EngineStep:
        while not self._running:
            self._wake.clear()
            await self._wake.wait()
        await asyncio.sleep(self.itl_s)
        now = time.monotonic()
        outputs = []
        for rid, (req, done) in list(self._running.items()):
            if now - req.received_at < self.ttft_s:
                continue
            token = 1000 + (done * 7 + len(req.token_ids)) % 1000
            done += 1
            if done >= req.max_tokens:
                del self._running[rid]
                ms = (now - req.received_at) * 1000
                outputs.append(RequestOutput(rid, done - 1, [token], "length",
                                             timings=Timings(0.0, self.ttft_s * 1000, self.ttft_s * 1000, ms, 0)))
            else:
                self._running[rid] = (req, done)
                outputs.append(RequestOutput(rid, done - 1, [token]))
        return EngineStep(outputs)

    def load(self) -> LoadSnapshot:
        return LoadSnapshot(0, self.info.total_kv_blocks, len(self._running), 0)


def _add_arguments(parser: argparse.ArgumentParser) -> None:
    pass


def _create(args: argparse.Namespace, context: EngineContext) -> FixedDelayEngine:
    return FixedDelayEngine(context.context_length)


FIXED_DELAY_ENGINE = EngineKind("mock", _add_arguments, _create)
