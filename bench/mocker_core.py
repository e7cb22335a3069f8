"""Mock engine core speed: the requests of a Mooncake trace on a virtual clock, no router.

Rows go round-robin to `--engines` cores (default 2, the default engine: 16384 blocks of 64 tokens).
Each row's prompt is its hash ids repeated `--trace-block-size` (512) times and cut to its input
length; prompts are hashed once, as the frontend would, while the trace is read (timed apart).

    python -m bench.mocker_core [--trace ../shared/traces/prefix_groups_10k.jsonl] \\
        [--output bench/results/mocker_core.json] [--cprofile]

Reports simulated seconds per wall second (target: at least 200), passes/s and tokens/s.
"""

from __future__ import annotations

import argparse
import cProfile
import gc
import json
import platform
import pstats
import time
from pathlib import Path
from typing import Iterator

from mocker.config import MockEngineArgs
from mocker.core import CoreRequest, EngineCore
from mocker.virtual import Arrival, VirtualCluster
from router.hashing import Prompt

ROOT = Path(__file__).resolve().parent.parent
DEFAULT_TRACE = ROOT.parent / "shared" / "traces" / "prefix_groups_10k.jsonl"


class TraceArrivals:
    """Arrivals of a Mooncake trace, built lazily; `build_s` is the time spent building prompts."""

    def __init__(self, rows: list[dict], engines: int, block_size: int, trace_block_size: int):
        self.rows, self.engines = rows, engines
        self.block_size, self.trace_block_size = block_size, trace_block_size
        self.build_s = 0.0

    def __iter__(self) -> Iterator[Arrival]:
        start = self.rows[0]["timestamp"]
        for i, row in enumerate(self.rows):
            t0 = time.perf_counter()
            tokens: list[int] = []
            for h in row["hash_ids"]:
                tokens += [h] * self.trace_block_size
            del tokens[row["input_length"]:]
            prompt = Prompt(tokens, self.block_size)
            prompt.sequence_hashes  # noqa: B018 - hashed once, as the frontend does
            request = CoreRequest(f"req-{i}", tokens, row["output_length"], prompt=prompt)
            self.build_s += time.perf_counter() - t0
            yield Arrival(float(row["timestamp"] - start), i % self.engines, request)


def replay(cluster: VirtualCluster, arrivals: TraceArrivals) -> int:
    """Feed the arrivals, draining KV events after every step as a router would; returns the
    number of KV events."""
    events = 0
    for arrival in arrivals:
        cluster.advance_until(arrival.time_ms)
        cluster.add(arrival.engine, arrival.request)
        for core in cluster.cores:
            events += sum(len(batch.events) for batch in core.take_events())
    cluster.run_until_idle()
    return events + sum(len(b.events) for core in cluster.cores for b in core.take_events())


def run(rows: list[dict], engines: int, trace_block_size: int, args: MockEngineArgs) -> dict:
    arrivals = TraceArrivals(rows, engines, args.block_size, trace_block_size)
    cluster = VirtualCluster([EngineCore(args) for _ in range(engines)])
    t0 = time.perf_counter()
    kv_events = replay(cluster, arrivals)
    wall = time.perf_counter() - t0
    core_wall = wall - arrivals.build_s
    results = cluster.results
    sim_s = max(r.end_ms for r in results) / 1000.0
    output_tokens = sum(r.output_tokens for r in results)
    prompt_tokens = sum(r.prompt_tokens for r in results)
    cached_tokens = sum(r.cached_tokens for r in results)
    ttft = sorted(r.first_token_ms - r.arrival_ms for r in results)
    return {
        "engines": engines,
        "engine_args": {"num_gpu_blocks": args.num_gpu_blocks, "block_size": args.block_size,
                        "max_num_seqs": args.max_num_seqs,
                        "max_num_batched_tokens": args.max_num_batched_tokens,
                        "speedup_ratio": args.speedup_ratio},
        "trace_block_size": trace_block_size,
        "requests": len(results),
        "simulated_s": round(sim_s, 3),
        "core_wall_s": round(core_wall, 4),
        "prompt_build_wall_s": round(arrivals.build_s, 4),
        "sim_s_per_wall_s": round(sim_s / core_wall, 1),
        "passes": cluster.passes,
        "passes_per_s": round(cluster.passes / core_wall),
        "output_tokens": output_tokens,
        "output_tokens_per_s": round(output_tokens / core_wall),
        "prompt_tokens_per_s": round(prompt_tokens / core_wall),
        "prefix_cache_reused_ratio": round(cached_tokens / prompt_tokens, 4),
        "preemptions": sum(r.preemptions for r in results),
        "kv_events": kv_events,
        "ttft_ms_p50": round(ttft[len(ttft) // 2], 2),
        "ttft_ms_p99": round(ttft[int(len(ttft) * 0.99)], 2),
        "python": platform.python_version(),
    }


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--trace", type=Path, default=DEFAULT_TRACE,
                        help="Mooncake trace to run (default: shared/traces/prefix_groups_10k.jsonl)")
    parser.add_argument("--engines", type=int, default=2,
                        help="engine cores the requests are split over, round robin (default: 2)")
    parser.add_argument("--trace-block-size", type=int, default=512,
                        help="tokens per trace hash id (default: 512)")
    parser.add_argument("--repeat", type=int, default=3, help="runs; the fastest is reported")
    parser.add_argument("--output", type=Path, default=ROOT / "bench" / "results" / "mocker_core.json",
                        help="JSON report path (default: bench/results/mocker_core.json)")
    parser.add_argument("--cprofile", action="store_true",
                        help="also run once under cProfile and print the top functions")
    MockEngineArgs.add_arguments(parser)
    ns = parser.parse_args(argv)
    args = MockEngineArgs.from_args(ns).validate()
    rows = [json.loads(line) for line in ns.trace.read_text().splitlines() if line.strip()]
    gc.freeze()   # the loaded trace is permanent: keep the collector from rescanning it
    best = min((run(rows, ns.engines, ns.trace_block_size, args) for _ in range(ns.repeat)),
               key=lambda r: r["core_wall_s"])
    best["trace"] = ns.trace.name
    print(json.dumps(best, indent=2))
    ns.output.parent.mkdir(parents=True, exist_ok=True)
    ns.output.write_text(json.dumps(best, indent=2) + "\n")
    if ns.cprofile:
        profiler = cProfile.Profile()
        profiler.runcall(run, rows, ns.engines, ns.trace_block_size, args)
        stats = pstats.Stats(profiler)
        stats.sort_stats("tottime").print_stats(r"mocker/|router/", 22)


if __name__ == "__main__":
    main()
