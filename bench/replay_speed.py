"""Offline replay speed: Rotor's `mocker.replay.run_replay` side by side with NVIDIA Dynamo 1.6.1's
`dynamo.replay.run_trace_replay`, runs interleaved (rotor, dynamo, rotor, ...) so that the
machine's minute-to-minute swings hit both alike and the comparison is a ratio.

    python -m bench.replay_speed [--dynamo-python ~/.cache/rotor/dynamo-1.6.1/bin/python] \\
        [--compiled] [--repeat 5] [--conversation] [--out bench/results/replay_speed.json]

Every run is a fresh subprocess; the time is taken inside it around the replay call alone
(imports excluded, trace loading included). The report's `wall_time_ms` (the simulation loop
alone, trace loading excluded, in both engines) is kept beside it. Same settings for both:
KV router, engine block size 64 (otherwise the default engine: 16384 blocks), trace block size 512.
Jobs: prefix_groups_10k.jsonl on 2 workers; with --conversation also conversation_trace.jsonl on 8.
Dynamo runs with DYN_LOG=warn: at its default level it logs one line per routing decision (~8%).
Without --dynamo-python only Rotor is measured. Install Dynamo (outside the repo) as in
../shared/notes/dynamo-reference.md. With --compiled, Rotor's optional compiled build (setup.py,
ROTOR_MYPYC=1; built first into a scratch directory by bench/compiled.py, ~40 s) runs beside the
plain sources as `rotor-mypyc`.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

from bench.compiled import build as build_compiled

ROOT = Path(__file__).resolve().parent.parent
TRACES = ROOT.parent / "shared" / "traces"
BLOCK_SIZE, TRACE_BLOCK = 64, 512
# name -> (trace, workers, Dynamo 1.6.1's KV-router reuse ratio from the notes)
JOBS = {"prefix_groups_10k": (TRACES / "prefix_groups_10k.jsonl", 2, 0.749),
        "conversation": (TRACES / "conversation_trace.jsonl", 8, 0.202)}
OUTPUTS = ["completed_requests", "duration_ms", "prefix_cache_reused_ratio", "median_ttft_ms",
           "p99_ttft_ms", "mean_itl_ms", "median_e2e_latency_ms", "p99_e2e_latency_ms"]

# Child programs: argv[1] is the job as JSON; they print {"wall_s", "report": {...}}.
CHILD_HEAD = "import json, sys, time\njob = json.loads(sys.argv[1])\n"
CHILD_TAIL = ("wall_s = time.perf_counter() - t0\n"
              "keys = ['wall_time_ms'] + job['outputs']\n"
              "print(json.dumps({'wall_s': wall_s, 'version': version,"
              " 'report': {k: report[k] for k in keys}}))\n")
ROTOR_CHILD = CHILD_HEAD + """\
import mocker.kv_cache
from mocker.replay import run_replay
version = 'mypyc' if mocker.kv_cache.__file__.endswith('.so') else 'plain'
t0 = time.perf_counter()
report = run_replay([job['trace']], num_workers=job['workers'], router_mode='kv',
                    engine_args={'block_size': job['block_size']},
                    trace_block_size=job['trace_block_size'])
""" + CHILD_TAIL
DYNAMO_CHILD = CHILD_HEAD + """\
from importlib.metadata import version as dist_version
from dynamo.replay import run_trace_replay
version = dist_version('ai-dynamo')
t0 = time.perf_counter()
report = run_trace_replay([job['trace']], num_workers=job['workers'], router_mode='kv_router',
                          extra_engine_args={'engine': {'block_size': job['block_size']}},
                          trace_block_size=job['trace_block_size']).summary
""" + CHILD_TAIL


def run_child(engine: str, python: str, path: str, job: dict) -> dict:
    """One replay in a fresh `python` with PYTHONPATH `path`, run from / (no sources there)."""
    code = DYNAMO_CHILD if engine == "dynamo" else ROTOR_CHILD
    env = dict(os.environ, PYTHONPATH=path, DYN_LOG="warn")
    proc = subprocess.run([python, "-c", code, json.dumps(job)], cwd=Path(path).anchor, env=env,
                          capture_output=True, text=True)
    if proc.returncode != 0:
        tail = "\n".join(proc.stderr.strip().splitlines()[-20:])
        raise SystemExit(f"{engine} replay failed ({python}, exit {proc.returncode}):\n{tail}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def summarize(runs: list[dict]) -> dict:
    walls = [r["wall_s"] for r in runs]
    return {"wall_s_median": statistics.median(walls), "wall_s_min": min(walls),
            "sim_loop_s_median": statistics.median(r["report"]["wall_time_ms"] for r in runs) / 1e3,
            "outputs": runs[0]["report"], "version": runs[0]["version"], "runs": runs}


def print_job(name: str, result: dict) -> None:
    print(f"\n{name}: {result['workers']} workers, KV router, block size {BLOCK_SIZE}, "
          f"trace block size {TRACE_BLOCK}, {result['repeat']} runs each")
    print(f"{'engine':<11} {'median s':>9} {'min s':>7} {'loop s':>7} {'reuse':>7} "
          f"{'TTFT p50':>9} {'TTFT p99':>9} {'e2e p50':>8} {'e2e p99':>8} {'virtual s':>9}")
    for engine, s in result["engines"].items():
        o = s["outputs"]
        print(f"{engine:<11} {s['wall_s_median']:>9.3f} {s['wall_s_min']:>7.3f} "
              f"{s['sim_loop_s_median']:>7.3f} {o['prefix_cache_reused_ratio']:>7.4f} "
              f"{o['median_ttft_ms']:>9.1f} {o['p99_ttft_ms']:>9.1f} "
              f"{o['median_e2e_latency_ms']:>8.0f} {o['p99_e2e_latency_ms']:>8.0f} "
              f"{o['duration_ms'] / 1e3:>9.1f}")
    for engine, r in result.get("ratios", {}).items():
        print(f"{engine}/dynamo wall time: ratio of medians {r['of_medians']:.2f}, "
              f"median of per-pair ratios {r['median_of_pairs']:.2f}")
    if "dynamo_reuse_check" in result:
        check = result["dynamo_reuse_check"]
        print(f"dynamo reuse {check['measured']:.4f} vs {check['notes']} in the notes: "
              f"{'ok' if check['ok'] else 'MISMATCH'}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--dynamo-python", type=Path, default=None,
                        help="a python with ai-dynamo 1.6.1 installed (omit: Rotor only)")
    parser.add_argument("--compiled", action="store_true",
                        help="also build and measure the compiled build (ROTOR_MYPYC=1)")
    parser.add_argument("--repeat", type=int, default=5, help="runs per engine (default 5)")
    parser.add_argument("--conversation", action="store_true",
                        help="also replay conversation_trace.jsonl on 8 workers")
    parser.add_argument("--out", type=Path, default=ROOT / "bench" / "results" / "replay_speed.json",
                        help="JSON report path (default: bench/results/replay_speed.json)")
    args = parser.parse_args()
    dynamo = args.dynamo_python and str(args.dynamo_python.expanduser())
    if dynamo and not os.access(dynamo, os.X_OK):
        raise SystemExit(f"--dynamo-python {dynamo}: no such executable "
                         "(install: ../shared/notes/dynamo-reference.md)")
    # engine -> (python, PYTHONPATH, what the child must report as its version)
    engines: dict[str, tuple[str, str, str | None]] = {
        "rotor": (sys.executable, str(ROOT), "plain")}
    scratch = tempfile.TemporaryDirectory(prefix="rotor-replay-speed-")
    if args.compiled:
        site = Path(scratch.name) / "site"
        print(f"building the compiled variant into {site} ...", file=sys.stderr)
        build_compiled(site)
        engines["rotor-mypyc"] = (sys.executable, f"{site}{os.pathsep}{ROOT}", "mypyc")
    if dynamo:
        engines["dynamo"] = (dynamo, str(ROOT), None)

    results = {}
    for name in ["prefix_groups_10k"] + (["conversation"] if args.conversation else []):
        trace, workers, dynamo_reuse = JOBS[name]
        job = {"trace": str(trace), "workers": workers, "block_size": BLOCK_SIZE,
               "trace_block_size": TRACE_BLOCK, "outputs": OUTPUTS}
        runs: dict[str, list[dict]] = {engine: [] for engine in engines}
        for i in range(args.repeat):
            for engine, (python, path, version) in engines.items():
                runs[engine].append(run_child(engine, python, path, job))
                if version is not None and runs[engine][-1]["version"] != version:
                    raise SystemExit(f"{engine} ran {runs[engine][-1]['version']} modules")
                print(f"{name} run {i + 1}/{args.repeat} {engine}: "
                      f"{runs[engine][-1]['wall_s']:.3f} s", file=sys.stderr)
        result = {"trace": trace.name, "workers": workers, "repeat": args.repeat,
                  "engines": {engine: summarize(r) for engine, r in runs.items()}}
        if dynamo:
            dynamo_s = [r["wall_s"] for r in runs["dynamo"]]
            result["ratios"] = {}
            for engine in (e for e in engines if e != "dynamo"):
                rotor_s = [r["wall_s"] for r in runs[engine]]
                result["ratios"][engine] = {
                    "of_medians": statistics.median(rotor_s) / statistics.median(dynamo_s),
                    "median_of_pairs": statistics.median(a / b for a, b in zip(rotor_s, dynamo_s))}
            measured = result["engines"]["dynamo"]["outputs"]["prefix_cache_reused_ratio"]
            result["dynamo_reuse_check"] = {"measured": measured, "notes": dynamo_reuse,
                                            "ok": abs(measured - dynamo_reuse) < 0.005}
        results[name] = result
        print_job(name, result)

    commit = subprocess.run(["git", "describe", "--always", "--dirty"], cwd=ROOT,
                            capture_output=True, text=True).stdout.strip()
    report = {"benchmark": "replay_speed", "rotor_commit": commit,
              "settings": {"router": "kv", "block_size": BLOCK_SIZE, "trace_block_size": TRACE_BLOCK,
                           "timing": "inside a fresh subprocess, around the replay call "
                                     "(trace loading included, imports excluded)",
                           "dynamo_env": {"DYN_LOG": "warn"} if dynamo else None},
              "python": sys.version.split()[0], "jobs": results}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2) + "\n")
    scratch.cleanup()
    print(f"\nwritten {args.out}")


if __name__ == "__main__":
    main()
