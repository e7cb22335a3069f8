"""`python -m mocker.replay TRACE... [flags]`: offline replay on a virtual clock (DESIGN.md §7).

Prints a summary table and writes the JSON report (`--report-json`, default
./rotor_replay_report_<time>.json). Exit status 2 for bad input (the message names the line).
"""

from __future__ import annotations

import argparse
import gc
import json
import sys
import time
from pathlib import Path

from mocker.replay import (TRACE_FORMATS, TraceError, load_trace, replay_trace, summary_table)
from router.policies import ROUTER_MODES


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m mocker.replay",
        description="Replay Mooncake or agentic Mooncake traces through Rotor's router core and "
                    "mock engine cores on a virtual clock, in one process.")
    p.add_argument("traces", nargs="+", metavar="TRACE", help="JSONL trace file(s)")
    p.add_argument("--trace-format", choices=TRACE_FORMATS, default="mooncake",
                   help="row format (default: mooncake)")
    p.add_argument("--router-mode", default="kv",
                   choices=sorted(set(ROUTER_MODES) | {m.replace("-", "_") for m in ROUTER_MODES}),
                   help="worker selection (default: kv)")
    p.add_argument("--num-workers", type=int, default=1, help="mock engine workers (default: 1)")
    p.add_argument("--trace-block-size", type=int, default=512,
                   help="tokens per trace hash id (default: 512); separate from the engine's "
                        "block size")
    p.add_argument("--arrival-speedup-ratio", type=float, default=1.0,
                   help="divide row timestamps by this (default: 1)")
    p.add_argument("--extra-engine-args", default=None, metavar="JSON|FILE",
                   help="mock engine options (mocker/config.py field names), e.g. "
                        "'{\"block_size\": 64, \"num_gpu_blocks\": 16384}'")
    p.add_argument("--router-config", default=None, metavar="JSON|FILE",
                   help="router options (router/config.py field names), e.g. "
                        "'{\"router_queue_policy\": \"wspt\"}'")
    p.add_argument("--agent-features", default="all", metavar="all|none|LIST",
                   help="agent-aware inputs given to the router: comma list of priority, osl, "
                        "sessions (default: all; plain rows only carry priority)")
    p.add_argument("--seed", type=int, default=0, help="router RNG seed (default: 0)")
    p.add_argument("--report-json", default=None, metavar="PATH",
                   help="report path (default: ./rotor_replay_report_<time>.json)")
    p.add_argument("--no-progress", action="store_true", help="no progress bar on stderr")
    return p


def main(argv: list[str] | None = None) -> int:
    ns = build_parser().parse_args(argv)
    if ns.num_workers < 1:
        print("error: --num-workers must be at least 1", file=sys.stderr)
        return 2
    try:
        trace = load_trace(ns.traces, ns.trace_format, ns.trace_block_size,
                           ns.arrival_speedup_ratio)
        report = replay_trace(trace, router_mode=ns.router_mode, num_workers=ns.num_workers,
                              engine_args=ns.extra_engine_args, router_config=ns.router_config,
                              seed=ns.seed, agent=ns.agent_features, progress=not ns.no_progress,
                              arrival_speedup_ratio=ns.arrival_speedup_ratio)
    except (TraceError, ValueError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    title = (f"Rotor offline replay: {', '.join(Path(t).name for t in ns.traces)} | "
             f"{report['router_mode']} | {ns.num_workers} worker(s)")
    print(summary_table(report, title))
    path = Path(ns.report_json or f"rotor_replay_report_{time.strftime('%Y%m%d_%H%M%S')}.json")
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(report, indent=2) + "\n")
    print(f"\nreport: {path}")
    return 0


if __name__ == "__main__":
    status = main()
    # The replay's structures hold cycles (index nodes point to their parents), so only the cycle
    # collector frees them, and the interpreter's last collection at exit would walk all of them:
    # 1.4 s after the conversation trace. The process is ending; the OS frees them at once.
    gc.freeze()
    sys.exit(status)
