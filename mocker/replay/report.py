"""The replay report (DESIGN.md §7): Dynamo's keys, plus trajectories and per-priority TTFT.

Latencies are per request, in ms: `ttft_ms` = first token − arrival at the router (queueing in
the router and the engine included), `e2e_latency_ms` = end − arrival, `itl_ms` = (end − first
token) / (output tokens − 1) for requests with at least two output tokens (the mean gap between
its tokens, as AIPerf computes it per request). Each gets mean, min, max, median (p50), p75,
p90, p95, p99 and std. `prefix_cache_reused_ratio` = prompt tokens the engines found cached at
admission / prompt tokens, over completed requests. `duration_ms` is virtual: first arrival to
last end. Online replay builds the same report from its measurements (bench/online.py).
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

import numpy as np

STAT_NAMES = ("mean", "min", "max", "median", "p75", "p90", "p95", "p99", "std")
LATENCIES = ("ttft_ms", "itl_ms", "e2e_latency_ms")


@dataclass(slots=True)
class Sample:
    """One request's measurements, offline or online (ms on one clock)."""

    arrival_ms: float
    first_token_ms: float
    end_ms: float
    input_tokens: int
    output_tokens: int
    cached_tokens: int
    ok: bool
    priority: int = 0
    trajectory: str | None = None


def stats(values: Sequence[float], name: str) -> dict[str, float | None]:
    """`mean_<name>` ... `std_<name>`; None when there are no values."""
    if not len(values):
        return {f"{s}_{name}": None for s in STAT_NAMES}
    a = np.asarray(values, dtype=np.float64)
    p = np.percentile(a, [50, 75, 90, 95, 99])
    out = {"mean": a.mean(), "min": a.min(), "max": a.max(), "median": p[0], "p75": p[1],
           "p90": p[2], "p95": p[3], "p99": p[4], "std": a.std()}
    return {f"{s}_{name}": round(float(out[s]), 3) for s in STAT_NAMES}


def build_report(samples: Sequence[Sample], wall_s: float, agentic: bool) -> dict:
    done = [s for s in samples if s.ok]
    ttft = [s.first_token_ms - s.arrival_ms for s in done]
    e2e = [s.end_ms - s.arrival_ms for s in done]
    itl = [(s.end_ms - s.first_token_ms) / (s.output_tokens - 1) for s in done
           if s.output_tokens > 1]
    t0 = min((s.arrival_ms for s in samples if not math.isnan(s.arrival_ms)), default=0.0)
    t1 = max((s.end_ms for s in done), default=t0)
    duration_s = max(t1 - t0, 1e-9) / 1000.0
    isl = sum(s.input_tokens for s in done)
    osl = sum(s.output_tokens for s in done)
    report: dict = {
        "num_requests": len(samples),
        "completed_requests": len(done),
        "failed_requests": len(samples) - len(done),
        "total_input_tokens": isl,
        "total_output_tokens": osl,
        "duration_ms": round(t1 - t0, 3),
        "wall_time_ms": round(wall_s * 1000.0, 3),
        "request_throughput_rps": round(len(done) / duration_s, 4),
        "input_token_throughput_tps": round(isl / duration_s, 2),
        "output_token_throughput_tps": round(osl / duration_s, 2),
        "total_token_throughput_tps": round((isl + osl) / duration_s, 2),
        "prefix_cache_reused_ratio": round(sum(s.cached_tokens for s in done) / isl, 6)
        if isl else 0.0,
    }
    for name, values in (("ttft_ms", ttft), ("itl_ms", itl), ("e2e_latency_ms", e2e)):
        report.update(stats(values, name))
    report["ttft_ms_by_priority"] = by_priority(done)
    if agentic:
        report.update(trajectory_stats(samples))
    return report


def by_priority(done: Iterable[Sample]) -> dict[str, dict]:
    groups: dict[int, list[float]] = {}
    for s in done:
        groups.setdefault(s.priority, []).append(s.first_token_ms - s.arrival_ms)
    out = {}
    for prio in sorted(groups):
        values = groups[prio]
        st = stats(values, "ttft_ms")
        out[str(prio)] = {"count": len(values), "mean": st["mean_ttft_ms"],
                          "p50": st["median_ttft_ms"], "p90": st["p90_ttft_ms"],
                          "p99": st["p99_ttft_ms"]}
    return out


def trajectory_stats(samples: Sequence[Sample]) -> dict:
    spans: dict[str, list[float]] = {}     # trajectory -> [start, end, all ok]
    for s in samples:
        if s.trajectory is None:
            continue
        span = spans.setdefault(s.trajectory, [math.inf, -math.inf, 1.0])
        if not math.isnan(s.arrival_ms):
            span[0] = min(span[0], s.arrival_ms)
        if s.ok:
            span[1] = max(span[1], s.end_ms)
        else:
            span[2] = 0.0
    complete = [end - start for start, end, ok in spans.values() if ok and end >= start]
    out: dict[str, float | None] = {
        "total_trajectories": len(spans), "completed_trajectories": len(complete),
        "incomplete_trajectories": len(spans) - len(complete)}
    out.update(stats(complete, "trajectory_e2e_latency_ms"))
    return out


def summary_table(report: dict, title: str) -> str:
    """An AIPerf-style table of the report, for stdout."""
    lines = [title, ""]
    head = f"{'Metric':<34}" + "".join(f"{c:>11}" for c in ("avg", "min", "max", "p99", "p90",
                                                               "p50", "std"))
    lines += [head, "-" * len(head)]
    names = [("Time to first token (ms)", "ttft_ms"), ("Inter-token latency (ms)", "itl_ms"),
             ("Request latency (ms)", "e2e_latency_ms")]
    if "mean_trajectory_e2e_latency_ms" in report:
        names.append(("Trajectory latency (ms)", "trajectory_e2e_latency_ms"))
    for label, key in names:
        cells = [report.get(f"{s}_{key}") for s in ("mean", "min", "max", "p99", "p90", "median",
                                                     "std")]
        lines.append(f"{label:<34}" + "".join(f"{'-' if c is None else f'{c:.2f}':>11}"
                                              for c in cells))
    lines.append("")
    requests = f"{report['completed_requests']} / {report['num_requests']}"
    lines.append(f"{'Requests (completed / total)':<34}{requests:>11}")
    for label, key, fmt in (
            ("Duration, virtual (s)", "duration_ms", lambda v: f"{v / 1000:.2f}"),
            ("Wall time (s)", "wall_time_ms", lambda v: f"{v / 1000:.3f}"),
            ("Request throughput (req/s)", "request_throughput_rps", lambda v: f"{v:.3f}"),
            ("Input token throughput (tok/s)", "input_token_throughput_tps", lambda v: f"{v:.0f}"),
            ("Output token throughput (tok/s)", "output_token_throughput_tps",
             lambda v: f"{v:.0f}"),
            ("Prefix cache reused ratio", "prefix_cache_reused_ratio", lambda v: f"{v:.4f}")):
        lines.append(f"{label:<34}{fmt(report[key]):>11}")
    if "total_trajectories" in report:
        lines.append(f"{'Trajectories (completed / total)':<34}"
                     f"{report['completed_trajectories']} / {report['total_trajectories']:>}")
    prios = report.get("ttft_ms_by_priority", {})
    if len(prios) > 1:
        for prio, st in prios.items():
            lines.append(f"{'TTFT p90, priority ' + prio + ' (ms)':<34}{st['p90']:>11.2f}")
    return "\n".join(lines)
