"""The real-time driver: the worker's `Engine` protocol over the core."""

from __future__ import annotations

import argparse
import asyncio
import json
import math
import time
from typing import Callable

import pytest

from mocker.config import MockEngineArgs
from mocker.core import CoreRequest, EngineCore
from mocker.realtime import MOCK_ENGINE, MockEngine
from mocker.script import ScriptBook
from mocker.virtual import Arrival, simulate
from tests.mocker.mock_factories import make_args
from worker.engine import EngineContext, EngineRequest, EngineStep


class ScriptedClock:  # implements mocker.realtime.Clock
    """Simulated time for the real-time driver: a wait jumps to its deadline, or to the next
    scripted arrival if that comes first, and delivers the arrival (which wakes the engine). As on
    a real clock, time moves forward on every wait."""

    def __init__(self, arrivals: list[tuple[float, Callable[[], None]]]):
        self.t = 0.0
        self._arrivals = sorted(arrivals, key=lambda a: a[0])

    def now_ms(self) -> float:
        return self.t

    async def wait(self, deadline_ms: float | None, wake: asyncio.Event) -> None:
        if wake.is_set():
            return
        next_arrival = self._arrivals[0][0] if self._arrivals else math.inf
        if next_arrival <= (math.inf if deadline_ms is None else deadline_ms):
            self.t, deliver = max(self.t, next_arrival), self._arrivals.pop(0)[1]
            deliver()
        else:
            assert deadline_ms is not None, "idle with nothing left to arrive"
            self.t = max(deadline_ms, math.nextafter(self.t, math.inf))
        await asyncio.sleep(0)


def engine_request(rid: str, tokens: list[int], max_tokens: int, received_at: float = 0.0,
                   **kw) -> EngineRequest:
    return EngineRequest(rid, tokens, max_tokens, received_at, **kw)


def workload() -> list[tuple[float, str, list[int], int]]:
    shared = list(range(1, 30))
    return [(t, f"r{i}", shared[:(i * 7) % 29] + [100 + i] * (3 + i % 5), 3 + (i * 5) % 11)
            for i, t in enumerate([0.0, 0.0, 3.5, 10.0, 10.0, 41.0, 42.5, 90.0, 91.0, 300.0])]


async def run_realtime(engine: MockEngine, expected: int) -> tuple[dict, list]:
    outputs: dict[str, list] = {}
    events: list = []
    finished = 0
    while finished < expected:
        step: EngineStep = await engine.step()
        events += step.kv_events
        for out in step.outputs:
            outputs.setdefault(out.request_id, []).append(out)
            finished += out.finish_reason is not None
    return outputs, events


def test_realtime_and_virtual_drivers_produce_the_same_schedule():
    args = make_args(num_gpu_blocks=24, max_num_seqs=3, max_num_batched_tokens=16)
    arrivals = workload()

    virtual_core = EngineCore(args)
    cluster = simulate([virtual_core], [Arrival(t, 0, CoreRequest(rid, tokens, n))
                                        for t, rid, tokens, n in arrivals])
    virtual_events = [e for b in virtual_core.take_events() for e in b.events]

    engine = MockEngine(EngineCore(args, context_length=4096))
    clock = ScriptedClock([(t, lambda t=t, rid=rid, tokens=tokens, n=n: engine.add(
        engine_request(rid, tokens, n, received_at=t / 1000.0))) for t, rid, tokens, n in arrivals])
    engine._clock = clock
    outputs, events = asyncio.run(run_realtime(engine, len(arrivals)))

    assert events == virtual_events
    for r in cluster.results:
        outs = outputs[r.request_id]
        tokens = [t for out in outs for t in out.token_ids]
        assert [out.first_index for out in outs] == [sum(len(o.token_ids) for o in outs[:i])
                                                    for i in range(len(outs))]
        timings = outs[-1].timings
        assert len(tokens) == r.output_tokens and outs[-1].finish_reason == r.finish_reason
        assert timings.cached_tokens == r.cached_tokens
        assert timings.queue_ms == pytest.approx(r.start_ms - r.arrival_ms)
        assert timings.ttft_ms == pytest.approx(r.first_token_ms - r.arrival_ms)
        assert timings.total_ms == pytest.approx(r.end_ms - r.arrival_ms)
        assert len(outs) == r.output_tokens                # one output per pass that emitted
    assert engine.load().kv_used_blocks == 0


def test_a_lone_4096_token_prompt_on_the_real_clock():
    async def main():
        engine = MockEngine(EngineCore(MockEngineArgs(), context_length=8192))
        await engine.start()
        start = time.monotonic()
        engine.add(engine_request("a", [5] * 4096, 1, received_at=start))
        steps = [await engine.step()]                  # the prompt's blocks, at the pass start
        while not steps[-1].outputs:
            steps.append(await engine.step())
        return steps, time.monotonic() - start

    steps, wall_s = asyncio.run(main())
    t, p = 4096, 64 / 16384
    expected_ms = (4.209989e-7 * t * t + 1.518344e-2 * t + 16.50142) + (-25.74 * p * p + 54.01 * p + 5.74)
    (out,) = steps[-1].outputs
    assert out.finish_reason == "length" and len(out.token_ids) == 1
    assert out.timings.prefill_ms == pytest.approx(expected_ms, abs=1.0)
    assert expected_ms / 1000 <= wall_s + 0.001           # it did wait for the modelled time
    (stored,) = [e for step in steps for e in step.kv_events]
    assert len(stored.block_hashes) == 64


def test_bad_requests_are_refused_and_leave_nothing_behind():
    engine = MockEngine(EngineCore(make_args(), context_length=64))
    for request, field in ((engine_request("a", [1, 2], 0), "max_tokens"),
                           (engine_request("b", list(range(60)), 10), "context length"),
                           (engine_request("c", list(range(40)), 5), "whole cache")):
        with pytest.raises(ValueError, match=field):
            engine.add(request)
    assert engine.load() == type(engine.load())(0, 10, 0, 0)


def test_abort_frees_the_request_and_no_output_follows():
    async def main():
        engine = MockEngine(EngineCore(make_args(num_gpu_blocks=64), context_length=4096),
                            clock=ScriptedClock([]))
        engine.add(engine_request("a", list(range(1, 14)), 50))
        engine.add(engine_request("b", list(range(1, 14)), 20))
        while not (await engine.step()).outputs:
            pass
        engine.abort("a")
        seen = []
        while not any(o.finish_reason for o in seen):
            seen += (await engine.step()).outputs
        return seen, engine.load()

    seen, load = asyncio.run(main())
    assert {o.request_id for o in seen} == {"b"}
    assert sum(len(o.token_ids) for o in seen) == 19
    assert load.kv_used_blocks == 0 and load.num_running == 0


def test_scripted_replies_stream_text_then_tool_calls(tmp_path):
    script = tmp_path / "script.json"
    script.write_text(json.dumps({
        "replies": {"call-7": {"text": "hi", "tool_calls": [
            {"name": "read_file", "arguments": {"path": "a.py"}, "id": "call_1"}]}},
        "turns": [{"text": "first turn"}, {"text": "second turn"}]}))
    encode = lambda text: [1000 + b for b in text.encode()]     # noqa: E731 - a byte tokenizer
    book = ScriptBook.load(script, encode)

    async def main(request: EngineRequest):
        engine = MockEngine(EngineCore(make_args(speedup_ratio=1000.0, num_gpu_blocks=64),
                                       context_length=4096), script=book)
        engine.add(request)
        outs = []
        while not any(o.finish_reason for o in outs):
            outs += (await engine.step()).outputs
        return outs

    outs = asyncio.run(main(engine_request("r1", [1, 2, 3], 100, x_request_id="call-7")))
    assert [t for o in outs for t in o.token_ids] == encode("hi")
    assert outs[-1].finish_reason == "tool_calls"
    assert outs[-1].tool_call_deltas == [{"index": 0, "id": "call_1", "type": "function",
                                          "function": {"name": "read_file",
                                                       "arguments": '{"path": "a.py"}'}}]
    body = {"messages": [{"role": "user", "content": "x"}, {"role": "assistant", "content": "y"},
                         {"role": "user", "content": "z"}]}
    outs = asyncio.run(main(engine_request("r2", [1, 2, 3], 100, body=json.dumps(body).encode())))
    assert [t for o in outs for t in o.token_ids] == encode("second turn")
    assert outs[-1].finish_reason == "stop" and outs[-1].tool_call_deltas is None
    with pytest.raises(ValueError, match="--script"):
        script.write_text('{"turns": [{"text": ""}]}')
        ScriptBook.load(script, encode)


def test_engine_kind_builds_the_engine_from_worker_flags(tmp_path):
    parser = argparse.ArgumentParser()
    MOCK_ENGINE.add_arguments(parser.add_argument_group("mock"))
    extra = tmp_path / "extra.json"
    extra.write_text('{"max_num_seqs": 8}')
    ns = parser.parse_args(["--num-gpu-blocks-override", "128", "--block-size", "16",
                            "--extra-engine-args", str(extra)])
    engine = MOCK_ENGINE.create(ns, EngineContext("unused", "m", context_length=2048))
    info = engine.info
    assert (MOCK_ENGINE.name, info.total_kv_blocks, info.kv_block_size, info.max_num_seqs,
            info.max_num_batched_tokens, info.context_length) == ("mock", 128, 16, 8, 8192, 2048)
