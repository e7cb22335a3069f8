"""Load generator for any OpenAI-compatible server (Rotor or any other).

Sends a bounded number of chat requests at a fixed concurrency, within a time limit, and reports
requests/s, TTFT and inter-token latency percentiles, errors, and the CPU time that named server
processes used during the run. Prompts follow the reference workload of the Dynamo comparison:
each is one of `--shared-prefixes` system prompts of about `--prefix-words` words followed by
about `--unique-words` unique words.

    python -m bench.loadgen --url http://127.0.0.1:8000 --requests 100 --concurrency 8 \\
        --cpu frontend='-m frontend' --output bench/results/loadgen.json
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import aiohttp
import numpy as np

WORDS = ("alpha beta gamma delta epsilon river mountain cloud signal vector kernel cache token "
         "router worker engine prompt stream batch queue latency block prefix session agent tool "
         "search plan write read edit test build deploy scale measure trace replay").split()


@dataclass
class Sample:
    ok: bool
    ttft_s: float = 0.0
    itl_s: list[float] = field(default_factory=list)
    e2e_s: float = 0.0
    output_tokens: int = 0
    prompt_tokens: int = 0
    cached_tokens: int = 0
    error: str = ""


def make_prompts(count: int, shared: int, prefix_words: int, unique_words: int,
                 seed: int) -> list[list[dict]]:
    rng = random.Random(seed)
    systems = [" ".join(rng.choice(WORDS) for _ in range(prefix_words)) for _ in range(shared)]
    return [[{"role": "system", "content": systems[i % shared]},
             {"role": "user", "content": f"request {i}: " +
              " ".join(rng.choice(WORDS) for _ in range(unique_words))}] for i in range(count)]


async def one_request(session: aiohttp.ClientSession, url: str, body: dict) -> Sample:
    start = time.perf_counter()
    last = None
    sample = Sample(ok=False)
    try:
        async with session.post(url, json=body) as response:
            if response.status != 200:
                return Sample(ok=False, error=f"HTTP {response.status}: {(await response.text())[:200]}")
            async for raw in response.content:
                line = raw.strip()
                if not line.startswith(b"data: "):
                    if line.startswith(b"event: error"):
                        sample.error = "stream error event"
                    continue
                data = line[6:]
                if data == b"[DONE]":
                    sample.ok = not sample.error
                    break
                chunk = json.loads(data)
                now = time.perf_counter()
                if chunk.get("usage"):
                    usage = chunk["usage"]
                    sample.output_tokens = usage["completion_tokens"]
                    sample.prompt_tokens = usage["prompt_tokens"]
                    sample.cached_tokens = (usage.get("prompt_tokens_details") or {}).get(
                        "cached_tokens", 0)
                if not chunk.get("choices"):
                    continue
                if chunk["choices"][0]["delta"].get("content"):
                    if last is None:
                        sample.ttft_s = now - start
                    else:
                        sample.itl_s.append(now - last)
                    last = now
    except (aiohttp.ClientError, asyncio.TimeoutError, ValueError) as exc:
        sample.error = f"{type(exc).__name__}: {exc}"
    sample.e2e_s = time.perf_counter() - start
    if sample.ok and sample.output_tokens != body["max_tokens"]:
        sample.ok, sample.error = False, (f"expected {body['max_tokens']} tokens, "
                                          f"got {sample.output_tokens}")
    return sample


def cpu_seconds(pids: list[int]) -> float:
    total = 0
    tick = os.sysconf("SC_CLK_TCK")
    for pid in pids:
        try:
            fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
            total += int(fields[11]) + int(fields[12])     # utime + stime, in clock ticks
        except (OSError, IndexError, ValueError):
            pass
    return total / tick


def find_pids(substring: str) -> list[int]:
    pids = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit() and int(entry.name) != os.getpid():
            try:
                cmdline = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode()
            except OSError:
                continue
            if substring in cmdline:
                pids.append(int(entry.name))
    return pids


def percentiles(values: list[float], scale: float = 1000.0) -> dict[str, float]:
    if not values:
        return {"p50": 0.0, "p99": 0.0, "mean": 0.0}
    arr = np.asarray(values) * scale
    return {"p50": round(float(np.percentile(arr, 50)), 3),
            "p99": round(float(np.percentile(arr, 99)), 3), "mean": round(float(arr.mean()), 3)}


async def run(args: argparse.Namespace) -> dict:
    prompts = make_prompts(args.requests, args.shared_prefixes, args.prefix_words,
                           args.unique_words, args.seed)
    url = args.url.rstrip("/") + "/v1/chat/completions"
    watched = {name: find_pids(sub) for name, sub in (c.split("=", 1) for c in args.cpu)}
    cpu_before = {name: cpu_seconds(pids) for name, pids in watched.items()}
    queue: asyncio.Queue[int] = asyncio.Queue()
    for i in range(args.requests):
        queue.put_nowait(i)
    samples: list[Sample] = []
    deadline = time.perf_counter() + args.time_limit
    timeout = aiohttp.ClientTimeout(total=args.request_timeout)
    connector = aiohttp.TCPConnector(limit=args.concurrency)

    async def client_loop(session: aiohttp.ClientSession) -> None:
        while not queue.empty() and time.perf_counter() < deadline:
            i = queue.get_nowait()
            body = {"model": args.model, "messages": prompts[i], "max_tokens": args.max_tokens,
                    "stream": True, "stream_options": {"include_usage": True},
                    "ignore_eos": args.ignore_eos}
            samples.append(await one_request(session, url, body))

    start = time.perf_counter()
    async with aiohttp.ClientSession(timeout=timeout, connector=connector) as session:
        await asyncio.gather(*(client_loop(session) for _ in range(args.concurrency)))
    wall = time.perf_counter() - start
    good = [s for s in samples if s.ok]
    report = {
        "url": args.url, "model": args.model, "requests_sent": len(samples),
        "requests_ok": len(good), "errors": len(samples) - len(good),
        "first_errors": sorted({s.error for s in samples if not s.ok})[:5],
        "concurrency": args.concurrency, "max_tokens": args.max_tokens,
        "wall_time_s": round(wall, 3), "requests_per_s": round(len(good) / wall, 2),
        "output_tokens_per_s": round(sum(s.output_tokens for s in good) / wall, 1),
        "mean_prompt_tokens": round(float(np.mean([s.prompt_tokens for s in good])), 1) if good else 0,
        "cached_token_fraction": round(sum(s.cached_tokens for s in good) /
                                       max(sum(s.prompt_tokens for s in good), 1), 3),
        "ttft_ms": percentiles([s.ttft_s for s in good]),
        "itl_ms": percentiles([x for s in good for x in s.itl_s]),
        "e2e_ms": percentiles([s.e2e_s for s in good]),
        "cpu": {name: {"pids": pids, "cpu_s": round(cpu_seconds(pids) - cpu_before[name], 2),
                       "cores": round((cpu_seconds(pids) - cpu_before[name]) / wall, 3)}
                for name, pids in watched.items()},
        "config": vars(args),
    }
    return report


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m bench.loadgen", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--url", default="http://127.0.0.1:8000", help="server base URL")
    parser.add_argument("--model", default="rotor-mock", help="model name to request")
    parser.add_argument("--requests", type=int, default=100, help="requests to send (bound)")
    parser.add_argument("--concurrency", type=int, default=8, help="requests in flight at once")
    parser.add_argument("--max-tokens", type=int, default=64, help="output tokens per request")
    parser.add_argument("--ignore-eos", action=argparse.BooleanOptionalAction, default=True,
                        help="send ignore_eos so every request emits exactly --max-tokens")
    parser.add_argument("--shared-prefixes", type=int, default=100,
                        help="distinct shared system prompts")
    parser.add_argument("--prefix-words", type=int, default=800,
                        help="words per shared system prompt")
    parser.add_argument("--unique-words", type=int, default=200, help="unique words per request")
    parser.add_argument("--time-limit", type=float, default=600, help="stop sending after this "
                        "many seconds")
    parser.add_argument("--request-timeout", type=float, default=120, help="per-request timeout, s")
    parser.add_argument("--seed", type=int, default=0, help="prompt generator seed")
    parser.add_argument("--cpu", action="append", default=[], metavar="NAME=SUBSTRING",
                        help="report the CPU time of processes whose command line contains "
                             "SUBSTRING, under NAME (repeatable)")
    parser.add_argument("--output", default="bench/results/loadgen.json", help="JSON report path")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    report = asyncio.run(run(args))
    Path(args.output).parent.mkdir(parents=True, exist_ok=True)
    Path(args.output).write_text(json.dumps(report, indent=2) + "\n")
    summary = {k: report[k] for k in ("requests_ok", "errors", "wall_time_s", "requests_per_s",
                                      "ttft_ms", "itl_ms", "cpu")}
    print(json.dumps(summary, indent=2))
    return 0 if report["errors"] == 0 else 1


if __name__ == "__main__":
    sys.exit(main())
