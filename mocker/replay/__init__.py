"""Offline trace replay on a virtual clock (DESIGN.md §7): the real router core and mock engine
cores in one process. `python -m mocker.replay --help` for the command line; in Python:

    from mocker.replay import run_replay
    report = run_replay(["trace.jsonl"], router_mode="kv", num_workers=2,
                        engine_args={"block_size": 64})

`run_replay` returns the report dict (mocker/replay/report.py); `replay_trace` does the same for
a `Trace` already loaded (`load_trace`, `trace_from_rows`, synthetic workloads).
"""

from __future__ import annotations

import gc
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any, TextIO

from mocker.config import MockEngineArgs
from mocker.replay.report import Sample, build_report, summary_table
from mocker.replay.sim import AgentFeatures, SimResult, Simulation
from mocker.replay.trace import (TRACE_FORMATS, Trace, TraceError, load_trace,
                                 trace_from_rows)
from router.config import RouterConfig, load_json_object, load_overrides

__all__ = ["AgentFeatures", "TRACE_FORMATS", "Trace", "TraceError", "load_trace", "replay_trace",
           "run_replay", "summary_table", "trace_from_rows"]


def engine_args_from(value: MockEngineArgs | dict[str, Any] | str | None) -> MockEngineArgs:
    """MockEngineArgs from a value, a dict of field -> value, or JSON text / a JSON file."""
    if isinstance(value, MockEngineArgs):
        return value.validate()
    if isinstance(value, str):
        value = load_json_object(value, "--extra-engine-args")
    return MockEngineArgs().with_overrides(value or {}).validate()


def router_config_from(value: RouterConfig | dict[str, Any] | str | None,
                       router_mode: str | None = None) -> RouterConfig:
    """RouterConfig from a value, a dict, or JSON text / file; `router_mode` set on top
    (`round_robin` spellings accepted)."""
    if isinstance(value, RouterConfig):
        config = value
    else:
        overrides = load_overrides(value) if isinstance(value, str) else (value or {})
        config = RouterConfig().with_overrides(overrides)
    if router_mode is not None:
        config = config.with_overrides({"router_mode": router_mode.replace("_", "-")})
    return config.validate()


class Progress:
    """Progress on stderr once a run has taken `after_s` seconds: a bar redrawn in place on a
    terminal, a plain line every 10 s otherwise (logs stay readable)."""

    def __init__(self, label: str, stream: TextIO = sys.stderr, after_s: float = 2.0):
        self.label, self.stream, self.after_s = label, stream, after_s
        self.t0 = time.perf_counter()
        self.next_s = after_s
        self.shown = False
        self.tty = stream.isatty()

    def __call__(self, done: int, total: int, now_ms: float) -> None:
        elapsed = time.perf_counter() - self.t0
        if elapsed < self.next_s:
            return
        self.next_s = elapsed + (0.25 if self.tty else 10.0)
        self.shown = True
        frac = done / total if total else 1.0
        bar = "#" * int(30 * frac)
        line = (f"{self.label} [{bar:<30}] {done}/{total} requests, "
                f"{now_ms / 1000:.1f} s virtual, {elapsed:.1f} s wall")
        self.stream.write("\r" + line if self.tty else line + "\n")
        self.stream.flush()

    def close(self) -> None:
        if self.shown and self.tty:
            self.stream.write("\n")
            self.stream.flush()


def replay_trace(trace: Trace, *, router_mode: str | None = "kv", num_workers: int = 1,
                 engine_args: MockEngineArgs | dict | str | None = None,
                 router_config: RouterConfig | dict | str | None = None, seed: int = 0,
                 agent: AgentFeatures | str = AgentFeatures(), progress: bool = False,
                 arrival_speedup_ratio: float | None = None) -> dict:
    """Replay a loaded trace; returns the report (a dict of DESIGN.md §7's keys and more)."""
    args = engine_args_from(engine_args)
    config = router_config_from(router_config, router_mode)
    if isinstance(agent, str):
        agent = AgentFeatures.parse(agent)
    bar = Progress(f"replay {config.router_mode} x{num_workers}") if progress else None
    sim = Simulation(trace, num_workers=num_workers, engine_args=args, router_config=config,
                     seed=seed, agent=agent, progress=bar)
    # The run's garbage is freed by reference counting; what it keeps (trace, cores, index) would
    # only be rescanned, again and again, by the cycle collector.
    collecting = gc.isenabled()
    gc.disable()
    try:
        result = sim.run()
        report = _report(trace, result)
    finally:
        if collecting:
            if not gc.get_freeze_count():
                # Everything the run allocated is still in the youngest generation: the first
                # collection after `enable` would walk all of it (~70 ms on prefix_groups_10k)
                # while it is still alive. Freeze-then-unfreeze moves it to the oldest
                # generation in O(1); full collections still see it, and free its cycles.
                gc.freeze()
                gc.unfreeze()
            gc.enable()
        if bar is not None:
            bar.close()
    report.update({
        "router_mode": config.router_mode, "num_workers": num_workers, "seed": seed,
        "trace_format": trace.trace_format, "trace_block_size": trace.trace_block_size,
        "traces": trace.sources, "agent_features": agent.names(),
        "engine_args": {k: v for k, v in vars(args).items() if v is not None},
        "router_config": {k: v for k, v in vars(config).items()},
        "passes": result.passes, "router_kv_events": result.router_events,
        "router_kv_event_status": result.router_event_status,
        "queued_requests": result.queued_requests, "max_queue_depth": result.max_queue_depth,
        "preemptions": sum(o.preemptions for o in result.outcomes),
        "failures": _failures(trace, result),
    })
    if arrival_speedup_ratio is not None:
        report["arrival_speedup_ratio"] = arrival_speedup_ratio
    return report


def run_replay(traces: Sequence[str | Path], *, trace_format: str = "mooncake",
               trace_block_size: int = 512, arrival_speedup_ratio: float = 1.0,
               **kwargs: Any) -> dict:
    """Load trace files and replay them (keyword arguments as `replay_trace`)."""
    trace = load_trace(traces, trace_format, trace_block_size, arrival_speedup_ratio)
    return replay_trace(trace, arrival_speedup_ratio=arrival_speedup_ratio, **kwargs)


def _report(trace: Trace, result: SimResult) -> dict:
    samples = [Sample(o.arrival_ms, o.first_token_ms, o.end_ms, r.input_length, o.output_tokens,
                      o.cached_tokens, o.status == "ok", r.priority, r.trajectory)
               for r, o in zip(trace.requests, result.outcomes)]
    return build_report(samples, result.wall_s, trace.agentic)


def _failures(trace: Trace, result: SimResult) -> dict[str, Any]:
    """Requests that did not complete: counts by kind, and the first few with their rows."""
    counts: dict[str, int] = {}
    examples: list[str] = []
    for r, o in zip(trace.requests, result.outcomes):
        if o.status == "ok":
            continue
        kind = o.status if o.status.startswith("shed:") else o.status.split(":", 1)[0]
        counts[kind] = counts.get(kind, 0) + 1
        if len(examples) < 5:
            examples.append(f"{r.where}: {o.status}")
    return {"counts": counts, "examples": examples} if counts else {}
