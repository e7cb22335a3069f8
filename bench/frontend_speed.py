"""Frontend speed on the reference workload of the Dynamo comparison (issue 6), in one command.

For each speedup ratio it starts two mock workers (block size 16) and a frontend with KV
routing in a private namespace on 127.0.0.1, sends the workload with bench/loadgen.py
(streaming chat, ~1.3k-token prompts sharing one of 100 system prompts, 64 output tokens with
ignore_eos, concurrency 32, 500 requests), records requests/s, TTFT/ITL and the frontend's CPU,
then stops every process by PID.

    python -m bench.frontend_speed                     # speedups 1000 (the ceiling) and 1
    python -m bench.frontend_speed --speedups 1000 --requests 200

Reference (NVIDIA Dynamo 1.6.1 on this machine, ../shared/notes/dynamo-reference.md): 338
requests/s at speedup 1000; 37.6 requests/s using 24% of one core at speedup 1.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import shutil
import signal
import subprocess
import sys
import time
import urllib.request
import uuid
from pathlib import Path

from bench import loadgen
from router.discovery import namespace_dir

ROOT = Path(__file__).resolve().parent.parent
DYNAMO = {"1000": {"requests_per_s": 338.0}, "1": {"requests_per_s": 37.6, "cpu_cores": 0.24}}


def free_port() -> int:
    import socket
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start(*args: str) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, *args], cwd=ROOT, start_new_session=True,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                            env={**os.environ, "PYTHONPATH": str(ROOT)})


def wait_served(url: str, procs: list[subprocess.Popen], timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if any(p.poll() is not None for p in procs):
            raise RuntimeError("a stack process exited during start-up")
        try:
            with urllib.request.urlopen(url + "/health", timeout=1) as response:
                if len(json.load(response)["workers"]) == 2:
                    return
        except OSError:
            pass
        time.sleep(0.2)
    raise TimeoutError(f"no two workers served at {url} after {timeout}s")


def measure(speedup: str, args: argparse.Namespace) -> dict:
    namespace, port = f"bench-{uuid.uuid4().hex[:8]}", free_port()
    procs = [start("-m", "mocker", "--num-workers", "2", "--namespace", namespace,
                   "--speedup-ratio", speedup, "--block-size", "16"),
             start("-m", "frontend", "--namespace", namespace, "--http-port", str(port),
                   "--router-mode", "kv", "--log-level", "WARNING")]
    try:
        url = f"http://127.0.0.1:{port}"
        wait_served(url, procs)
        load = loadgen.build_parser().parse_args([
            "--url", url, "--requests", str(args.requests), "--concurrency", str(args.concurrency),
            "--max-tokens", "64", "--prefix-words", "500", "--unique-words", "130",
            "--cpu", f"frontend=-m frontend --namespace {namespace}"])
        return asyncio.run(loadgen.run(load))
    finally:
        for proc in procs:
            if proc.poll() is None:
                os.killpg(proc.pid, signal.SIGTERM)
        for proc in procs:
            try:
                proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
        shutil.rmtree(namespace_dir(namespace), ignore_errors=True)   # this run's alone


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.frontend_speed", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--speedups", nargs="+", default=["1000", "1"],
                        help="mock engine speedup ratios to run (default: 1000 1)")
    parser.add_argument("--requests", type=int, default=500, help="requests per run (500)")
    parser.add_argument("--concurrency", type=int, default=32, help="streams in flight (32)")
    parser.add_argument("--output", default=str(ROOT / "bench" / "results" / "frontend_speed.json"),
                        help="JSON report path (default: bench/results/frontend_speed.json)")
    args = parser.parse_args(argv)
    results = {}
    for speedup in args.speedups:
        report = measure(speedup, args)
        cores = report["cpu"]["frontend"]["cores"]
        results[f"speedup_{speedup}"] = {
            "requests_ok": report["requests_ok"], "errors": report["errors"],
            "requests_per_s": report["requests_per_s"], "ttft_ms": report["ttft_ms"],
            "itl_ms": report["itl_ms"], "frontend_cpu_cores": cores,
            "frontend_cpu_ms_per_request": round(1000 * cores / max(report["requests_per_s"], 1e-9), 2),
            "dynamo_1_6_1": DYNAMO.get(speedup), "mean_prompt_tokens": report["mean_prompt_tokens"]}
        print(f"speedup {speedup}: {report['requests_ok']}/{report['requests_sent']} correct, "
              f"{report['requests_per_s']} req/s, TTFT p50 {report['ttft_ms']['p50']} ms, "
              f"frontend {cores:.0%} of a core", flush=True)
    Path(args.output).write_text(json.dumps(results, indent=2) + "\n")
    return 0 if all(r["errors"] == 0 for r in results.values()) else 1


if __name__ == "__main__":
    sys.exit(main())
