"""Benchmark the KV index: apply 16 workers' router events at full speed, interleaved with
find_matches, then time find_matches for 16k-token prompts against the full tree.

    .venv/bin/python -m bench.router_index [--limit N] [--rerecord]

Recording: offline replay (mocker/replay) serves every row of ../shared/traces/conversation_trace.jsonl
at its trace time with the real router core (kv mode) and 16 real mock engine cores (16384 blocks
of 64 tokens each, default engine); each core's KV events go through the worker's real `KvRelay`
into router events, exactly as in the live stack. Those router events are recorded and cached in
bench/results/router_index_events.<key>.tmp so re-runs skip the recording.
Results are written to bench/results/router_index.json.
"""

from __future__ import annotations

import argparse
import dataclasses
import hashlib
import json
import random
import statistics
import sys
import time
from pathlib import Path

import msgpack

from router.config import RouterConfig
from router.core import Router
from router.events import RouterEvent
from router.hashing import Prompt
from router.kv_sync import DumpReply
from router.load import WorkerInfo

ROOT = Path(__file__).resolve().parent.parent

TRACE = ROOT.parent / "shared" / "traces" / "conversation_trace.jsonl"
RESULTS = ROOT / "bench" / "results"
TRACE_BLOCK = 512        # tokens per trace hash id
BLOCK_SIZE = 64          # tokens per KV block
NUM_WORKERS = 16
NUM_BLOCKS = 16384       # KV blocks per worker
PROMPT_TOKENS = 16384    # the find_matches target: a 16k-token prompt = 256 blocks
MATCH_EVERY = 8          # one find_matches per this many applied events while applying


def load_rows(limit: int | None) -> list[dict]:
    rows = []
    with open(TRACE, encoding="utf-8") as fh:
        for line in fh:
            rows.append(json.loads(line))
            if limit is not None and len(rows) >= limit:
                break
    return rows


def row_tokens(row: dict, max_tokens: int | None = None) -> list[int]:
    """Mooncake row -> token ids: each hash id repeated 512 times, cut to input_length."""
    n = row["input_length"] if max_tokens is None else min(row["input_length"], max_tokens)
    return [h for h in row["hash_ids"] for _ in range(TRACE_BLOCK)][:n]


def worker_infos() -> list[WorkerInfo]:
    return [WorkerInfo(worker_id=w, kv_block_size=BLOCK_SIZE, total_kv_blocks=NUM_BLOCKS,
                       max_num_batched_tokens=8192, max_num_seqs=256)
            for w in range(1, NUM_WORKERS + 1)]


def synced_router(clock=time.monotonic, seed: int = 0) -> Router:
    """A router knowing the 16 benchmark workers, each with an (empty) dump applied."""
    router = Router(RouterConfig(router_queue_threshold=None), clock=clock,
                    rng=random.Random(seed))
    for info in worker_infos():
        router.add_worker(info)
        router.apply_kv_reply(DumpReply(info.worker_id, 0, []))
    return router


def record(rows: list[dict]) -> list[RouterEvent]:
    """Replay the rows through the router core and 16 mock engine cores (mocker/replay) and
    return every router event the relays produced, in the order the router applied them. The
    replay numbers its workers from 0; the benchmark's router knows them as 1..16."""
    from mocker.config import MockEngineArgs
    from mocker.replay import trace_from_rows
    from mocker.replay.sim import Simulation

    trace = trace_from_rows(rows, "mooncake", TRACE_BLOCK, source=TRACE.name)
    recorded: list[RouterEvent] = []

    def keep(event: RouterEvent) -> None:
        recorded.append(dataclasses.replace(event, worker_id=event.worker_id + 1))

    shown = [-1]          # last thousand reported

    def progress(done: int, total: int, _now_ms: float) -> None:
        if done // 1000 > shown[0]:
            shown[0] = done // 1000
            print(f"  recorded {done}/{total} rows, {len(recorded)} events", file=sys.stderr)

    sim = Simulation(trace, num_workers=NUM_WORKERS,
                     engine_args=MockEngineArgs(num_gpu_blocks=NUM_BLOCKS, block_size=BLOCK_SIZE),
                     router_config=RouterConfig(), seed=0, progress=progress, event_sink=keep)
    result = sim.run()
    print(f"  replayed {len(rows)} rows in {result.wall_s:.1f} s: {len(recorded)} router events",
          file=sys.stderr)
    return recorded


def recorded_events(rows: list[dict], rerecord: bool) -> tuple[list[RouterEvent], Path]:
    key = hashlib.sha256(json.dumps([len(rows), TRACE.stat().st_size, NUM_WORKERS, NUM_BLOCKS,
                                     BLOCK_SIZE, "mock-core-replay-v1"]).encode()).hexdigest()[:12]
    path = RESULTS / f"router_index_events.{key}.tmp"
    if path.exists() and not rerecord:
        with open(path, "rb") as fh:
            return [RouterEvent.from_wire(m) for m in msgpack.unpack(fh, raw=False,
                                                                     strict_map_key=False)], path
    print(f"recording router events of {NUM_WORKERS} workers over {len(rows)} rows ...",
          file=sys.stderr)
    events = record(rows)
    RESULTS.mkdir(parents=True, exist_ok=True)
    with open(path, "wb") as fh:
        msgpack.pack([e.to_wire() for e in events], fh, use_bin_type=True)
    return events, path


def block_ops(event: RouterEvent) -> int:
    return len(event.blocks) if event.kind == "stored" else max(len(event.hashes), 1)


def percentile(samples: list[float], q: float) -> float:
    ordered = sorted(samples)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def summary_us(samples: list[float]) -> dict:
    return {"n": len(samples), "mean_us": statistics.fmean(samples) * 1e6,
            "p50_us": percentile(samples, 0.50) * 1e6, "p99_us": percentile(samples, 0.99) * 1e6,
            "max_us": max(samples) * 1e6}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--limit", type=int, default=None, help="use the first N trace rows")
    parser.add_argument("--rerecord", action="store_true", help="ignore the cached events")
    parser.add_argument("--samples", type=int, default=2000,
                        help="find_matches calls timed against the full tree")
    args = parser.parse_args()

    rows = load_rows(args.limit)
    events, cache_path = recorded_events(rows, args.rerecord)
    prompts = [Prompt(row_tokens(r, PROMPT_TOKENS), BLOCK_SIZE).local_hashes for r in rows
               if r["input_length"] >= PROMPT_TOKENS]
    interleave = [Prompt(row_tokens(r), BLOCK_SIZE).local_hashes[:PROMPT_TOKENS // BLOCK_SIZE]
                  for r in rows[:2000]]

    router = synced_router()
    perf = time.perf_counter
    apply_s, ops, match_during = 0.0, 0, []
    find_matches = router.index.find_matches
    chunk = MATCH_EVERY
    for start in range(0, len(events), chunk):
        batch = events[start:start + chunk]
        t0 = perf()
        for event in batch:
            router.apply_event(event)
        apply_s += perf() - t0
        ops += sum(block_ops(e) for e in batch)
        hashes = interleave[(start // chunk) % len(interleave)]
        t0 = perf()
        find_matches(hashes)
        match_during.append(perf() - t0)

    bad = {f"{k}:{s}": n for (k, s), n in router.metrics.events.items() if s != "ok"}
    tree_blocks = sum(router.index.tree_size(k) for k in router.index.workers())
    match_full = []
    for i in range(args.samples):
        hashes = prompts[i % len(prompts)]
        t0 = perf()
        scores = find_matches(hashes)
        match_full.append(perf() - t0)
    hit_workers = sum(1 for h in prompts if find_matches(h).scores)

    result = {
        "benchmark": "router_index",
        "recording": "offline replay: router core (kv) + 16 mock engine cores + KvRelay",
        "trace": str(TRACE.name), "rows": len(rows), "workers": NUM_WORKERS,
        "blocks_per_worker": NUM_BLOCKS, "block_size": BLOCK_SIZE,
        "events": len(events), "block_ops": ops, "apply_seconds": apply_s,
        "block_ops_per_second": ops / apply_s,
        "events_per_second": len(events) / apply_s,
        "non_ok_events": bad,
        "tree_blocks_at_end": tree_blocks, "tree_nodes_at_end": router.index.num_nodes(),
        "find_matches_interleaved": summary_us(match_during),
        "find_matches_full_tree_16k_tokens": {**summary_us(match_full),
                                              "prompts": len(prompts),
                                              "prompts_with_a_match": hit_workers,
                                              "last_scores": len(scores.scores)},
        "targets": {"block_ops_per_second": 500_000, "find_matches_p99_us": 200},
        "events_cache": str(cache_path.relative_to(ROOT)),
        "python": sys.version.split()[0],
    }
    result["pass"] = (result["block_ops_per_second"] >= 500_000
                      and result["find_matches_full_tree_16k_tokens"]["p99_us"] < 200)
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / "router_index.json").write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
