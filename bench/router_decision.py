"""Benchmark one routing decision: hash + match + select (+ booking) for a 16k-token prompt
against 16 workers whose full trees come from bench/router_index.py's recorded events.

    .venv/bin/python -m bench.router_decision [--samples N]

Each sample builds a fresh `Prompt` (so block hashing is timed), calls `Router.route`, and keeps
64 requests booked at a time (releasing the oldest), so selection sees real bookings. Results
(per phase, from `Decision.timings`, and end to end) go to bench/results/router_decision.json.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections import deque

from bench.router_index import (BLOCK_SIZE, PROMPT_TOKENS, RESULTS, load_rows, percentile,
                                recorded_events, row_tokens, summary_us, synced_router)
from router.core import RouteRequest
from router.hashing import Prompt

ACTIVE = 64  # requests kept booked while sampling


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--limit", type=int, default=None, help="use the first N trace rows")
    parser.add_argument("--samples", type=int, default=3000,
                        help="decisions to time (default: 3000)")
    args = parser.parse_args()

    rows = load_rows(args.limit)
    events, _ = recorded_events(rows, rerecord=False)
    router = synced_router()
    for event in events:
        router.apply_event(event)
    long_rows = [r for r in rows if r["input_length"] >= PROMPT_TOKENS]
    token_lists = [row_tokens(r, PROMPT_TOKENS) for r in long_rows]

    perf = time.perf_counter
    total, hashing, matching, selection, overlaps = [], [], [], [], []
    active: deque[str] = deque()
    for i in range(args.samples):
        tokens = token_lists[i % len(token_lists)]
        t0 = perf()
        request = RouteRequest(f"d{i}", Prompt(tokens, BLOCK_SIZE))
        decision = router.route(request)
        total.append(perf() - t0)
        hashing.append(decision.timings.hashing_s)
        matching.append(decision.timings.matching_s)
        selection.append(decision.timings.selection_s)
        overlaps.append(decision.overlap_blocks)
        active.append(request.request_id)
        if len(active) > ACTIVE:
            router.release(active.popleft())

    result = {
        "benchmark": "router_decision",
        "workers": 16, "prompt_tokens": PROMPT_TOKENS, "block_size": BLOCK_SIZE,
        "tree_blocks": sum(router.index.tree_size(k) for k in router.index.workers()),
        "active_requests": ACTIVE,
        "total": summary_us(total),
        "hashing": summary_us(hashing),
        "matching": summary_us(matching),
        "selection_and_booking": summary_us(selection),
        "mean_overlap_blocks": sum(overlaps) / len(overlaps),
        "target_p99_us": 1000,
        "python": sys.version.split()[0],
    }
    result["pass"] = percentile(total, 0.99) * 1e6 < 1000
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / "router_decision.json").write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
