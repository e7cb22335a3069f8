"""Online replay: a Mooncake or agentic Mooncake trace sent in real time to any OpenAI-compatible
server, measured as offline replay measures it (the same report, mocker/replay/report.py).

    .venv/bin/python -m bench.online TRACE... --url http://127.0.0.1:8000 \\
        [--trace-format agentic_mooncake] [--max-requests 500] [--max-duration-s 120] \\
        [--arrival-speedup-ratio 1] [--report-json bench/results/online.json]

Schedule. Root rows are sent at their timestamps (divided by the arrival speedup) from the start;
a row with dependencies is sent when every request it waits for has ended, plus `delay +
tool_wait_ms`. `--max-requests` keeps the first N rows (and drops rows whose dependencies fell
outside them); `--max-duration-s` stops sending after that long and gives requests in flight
`--request-timeout-s` to end. Nothing runs forever.

Prompts are token ids, so the prefix structure survives the trip: `/v1/completions` with
`prompt` = token ids, `max_tokens` = output_length, `ignore_eos`, streamed with usage. Trace
block i of a row (B tokens of hash id h) becomes B tokens alternating a = offset + h mod span and
b = offset + h div span (span = vocab_size − offset): two rows share a block exactly when they
share its hash id, for every id below span² (the report's `token_mapping` says how many are
above, if any). Agentic rows also carry `nvext.agent_context` (session_type_id, session_id,
trajectory_id, parent_trajectory_id, trajectory_final), `nvext.agent_hints` (priority, osl) and,
with sessions on, `nvext.session_control` (bind on a trajectory's first request).

TTFT is measured from sending to the first streamed text, e2e to the end of the stream, ITL as
(end − first) / (tokens − 1); cached tokens come from `usage.prompt_tokens_details`.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import math
import sys
import time
from pathlib import Path
from typing import Any

import aiohttp

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from mocker.replay import TraceError, load_trace, summary_table  # noqa: E402
from mocker.replay.report import Sample, build_report  # noqa: E402
from mocker.replay.sim import AgentFeatures  # noqa: E402
from mocker.replay.trace import Trace, TraceRequest  # noqa: E402

DEFAULT_VOCAB = 4096      # the default rotor-mock tokenizer's base vocabulary
DEFAULT_OFFSET = 16       # keep clear of the lowest ids


class TokenMapping:
    """Hash id -> the two alternating token ids of its blocks (see the module docstring)."""

    def __init__(self, vocab_size: int, offset: int):
        if not 0 <= offset < vocab_size - 1:
            raise ValueError(f"token offset must be in [0, vocab_size - 1), got {offset}")
        self.vocab_size, self.offset = vocab_size, offset
        self.span = vocab_size - offset

    def pair(self, h: int) -> tuple[int, int]:
        return self.offset + h % self.span, self.offset + (h // self.span) % self.span

    def tokens(self, r: TraceRequest, trace_block_size: int) -> list[int]:
        out: list[int] = []
        for h in r.hash_ids:
            if len(out) >= r.input_length:
                break
            a, b = self.pair(h)
            out += [a, b] * (trace_block_size // 2) + ([a] if trace_block_size % 2 else [])
        del out[r.input_length:]
        return out

    def describe(self, requests: list[TraceRequest]) -> dict[str, Any]:
        ids = {h for r in requests for h in r.hash_ids}
        capacity = self.span * self.span
        return {"scheme": "alternating pair (offset + h mod span, offset + h div span)",
                "vocab_size": self.vocab_size, "offset": self.offset, "span": self.span,
                "distinct_ids": capacity, "trace_hash_ids": len(ids),
                "max_hash_id": max(ids, default=0),
                "ids_beyond_capacity": sum(1 for h in ids if h >= capacity)}


def select(trace: Trace, max_requests: int | None) -> list[TraceRequest]:
    """The first `max_requests` rows, minus those that wait (directly or not) on a row left out."""
    rows = trace.requests[:max_requests] if max_requests else trace.requests
    keep = {r.index for r in rows}
    changed = True
    while changed:
        changed = False
        for r in rows:
            if r.index in keep and any(d not in keep for d in r.deps):
                keep.discard(r.index)
                changed = True
    return [r for r in rows if r.index in keep]


def nvext_for(r: TraceRequest, agent: AgentFeatures) -> dict[str, Any] | None:
    ext: dict[str, Any] = {}
    hints: dict[str, Any] = {}
    if agent.priority and r.priority:
        hints["priority"] = r.priority
    if r.strict_priority:
        hints["strict_priority"] = r.strict_priority
    if agent.osl:
        hints["osl"] = r.output_length
    if r.trajectory is not None:
        context = {"session_type_id": r.session_type_id or "replay",
                   "session_id": r.agent_session_id or r.trajectory,
                   "trajectory_id": r.trajectory}
        if r.parent_trajectory:
            context["parent_trajectory_id"] = r.parent_trajectory
        if r.last_in_trajectory:
            context["trajectory_final"] = True
        ext["agent_context"] = context
        if agent.sessions:
            control: dict[str, Any] = {"session_id": r.trajectory}
            if r.first_in_trajectory:
                control["action"] = "bind"
            ext["session_control"] = control
    if hints:
        ext["agent_hints"] = hints
    return ext or None


class OnlineReplay:
    def __init__(self, trace: Trace, url: str, *, model: str | None = None,
                 max_requests: int | None = None, max_duration_s: float = 600.0,
                 request_timeout_s: float = 120.0, agent: AgentFeatures = AgentFeatures(),
                 vocab_size: int = DEFAULT_VOCAB, token_offset: int = DEFAULT_OFFSET):
        self.trace = trace
        self.url = url.rstrip("/")
        self.model = model
        self.requests = select(trace, max_requests)
        self.max_duration_s = max_duration_s
        self.request_timeout_s = request_timeout_s
        self.agent = agent
        self.mapping = TokenMapping(vocab_size, token_offset)
        self.samples: dict[int, Sample] = {}
        self.errors: list[str] = []
        self.skipped = 0

    async def run(self) -> dict:
        timeout = aiohttp.ClientTimeout(total=self.request_timeout_s)
        connector = aiohttp.TCPConnector(limit=0)
        async with aiohttp.ClientSession(timeout=timeout, connector=connector) as session:
            if self.model is None:
                async with session.get(self.url + "/v1/models") as response:
                    response.raise_for_status()
                    self.model = (await response.json())["data"][0]["id"]
            wall0 = time.perf_counter()
            await self._schedule(session)
            wall = time.perf_counter() - wall0
        ordered = [self.samples[r.index] for r in self.requests if r.index in self.samples]
        report = build_report(ordered, wall, self.trace.agentic)
        report["num_requests"] = len(self.requests)
        report.update({"mode": "online", "url": self.url, "model": self.model,
                       "trace_format": self.trace.trace_format,
                       "trace_block_size": self.trace.trace_block_size,
                       "traces": self.trace.sources, "agent_features": self.agent.names(),
                       "not_sent": self.skipped, "errors": self.errors[:10],
                       "token_mapping": self.mapping.describe(self.requests)})
        return report

    async def _schedule(self, session: aiohttp.ClientSession) -> None:
        loop = asyncio.get_running_loop()
        self.t0 = loop.time()
        deadline = self.t0 + self.max_duration_s
        index = {r.index: r for r in self.requests}
        waiting = {r.index: len(r.deps) for r in self.requests}
        dependents: dict[int, list[int]] = {}
        for r in self.requests:
            for d in r.deps:
                dependents.setdefault(d, []).append(r.index)
        ready_at = {r.index: 0.0 for r in self.requests}
        tasks: set[asyncio.Task] = set()
        done_event = asyncio.Event()
        remaining = [len(self.requests)]

        def settle(i: int, end: float) -> None:
            remaining[0] -= 1
            for j in dependents.get(i, ()):
                ready_at[j] = max(ready_at[j], end + index[j].gap_ms / 1000.0)
                waiting[j] -= 1
                if waiting[j] == 0:
                    launch(j, ready_at[j])
            if remaining[0] == 0:
                done_event.set()

        def launch(i: int, at: float) -> None:
            task = asyncio.create_task(self._one(session, index[i], at, deadline, settle))
            tasks.add(task)
            task.add_done_callback(tasks.discard)

        for r in self.requests:
            if not r.deps:
                launch(r.index, self.t0 + (r.arrival_ms or 0.0) / 1000.0)
        if not self.requests:
            return
        try:
            await asyncio.wait_for(done_event.wait(),
                                   self.max_duration_s + self.request_timeout_s + 5)
        except asyncio.TimeoutError:
            self.errors.append("run stopped at its time bound with requests outstanding")
        for task in list(tasks):
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)

    async def _one(self, session: aiohttp.ClientSession, r: TraceRequest, at: float,
                   deadline: float, settle) -> None:
        loop = asyncio.get_running_loop()
        now = loop.time()
        if at > deadline:
            self.skipped += 1
            settle(r.index, now)
            return
        if at > now:
            await asyncio.sleep(at - now)
        body: dict[str, Any] = {
            "model": self.model, "prompt": self.mapping.tokens(r, self.trace.trace_block_size),
            "max_tokens": r.output_length, "ignore_eos": True, "stream": True,
            "stream_options": {"include_usage": True}}
        ext = nvext_for(r, self.agent)
        if ext:
            body["nvext"] = ext
        start = loop.time()
        first = math.nan
        usage: dict[str, Any] = {}
        ok = False
        try:
            async with session.post(self.url + "/v1/completions", json=body) as response:
                if response.status != 200:
                    raise RuntimeError(f"HTTP {response.status}: {(await response.text())[:200]}")
                async for raw in response.content:
                    line = raw.strip()
                    if not line.startswith(b"data:"):
                        continue
                    data = line[5:].strip()
                    if data == b"[DONE]":
                        break
                    chunk = json.loads(data)
                    if chunk.get("usage"):
                        usage = chunk["usage"]
                    if math.isnan(first) and any(c.get("text") for c in chunk.get("choices", ())):
                        first = loop.time()
            ok = not math.isnan(first)
        except (aiohttp.ClientError, asyncio.TimeoutError, RuntimeError, ValueError) as exc:
            self.errors.append(f"{r.where}: {type(exc).__name__}: {exc}")
        end = loop.time()
        ms = lambda t: (t - self.t0) * 1000.0  # noqa: E731
        details = usage.get("prompt_tokens_details") or {}
        self.samples[r.index] = Sample(ms(start), ms(first), ms(end), r.input_length,
                                       int(usage.get("completion_tokens", 0)),
                                       int(details.get("cached_tokens") or 0), ok,
                                       r.priority, r.trajectory)
        settle(r.index, end)


def run_online(trace: Trace, url: str, **kwargs: Any) -> dict:
    return asyncio.run(OnlineReplay(trace, url, **kwargs).run())


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench.online",
                                description=__doc__.split("\n\n")[0])
    p.add_argument("traces", nargs="+", metavar="TRACE", help="Mooncake or agentic Mooncake files")
    p.add_argument("--url", default="http://127.0.0.1:8000", help="server base URL")
    p.add_argument("--model", default=None, help="model name (default: the first of /v1/models)")
    p.add_argument("--trace-format", choices=("mooncake", "agentic_mooncake"), default="mooncake",
                   help="row format (default: mooncake)")
    p.add_argument("--trace-block-size", type=int, default=512,
                   help="tokens per hash id (default: 512)")
    p.add_argument("--arrival-speedup-ratio", type=float, default=1.0,
                   help="divide the trace's timestamps and delays by this (default: 1)")
    p.add_argument("--max-requests", type=int, default=None, help="first N rows only")
    p.add_argument("--max-duration-s", type=float, default=600.0,
                   help="stop sending after this many seconds (600)")
    p.add_argument("--request-timeout-s", type=float, default=120.0,
                   help="per-request timeout, seconds (default: 120)")
    p.add_argument("--agent-features", default="all", metavar="all|none|LIST",
                   help="priority, osl, sessions sent as nvext (default: all)")
    p.add_argument("--vocab-size", type=int, default=DEFAULT_VOCAB,
                   help=f"token ids used for prompts are below this ({DEFAULT_VOCAB})")
    p.add_argument("--token-offset", type=int, default=DEFAULT_OFFSET,
                   help=f"lowest token id used ({DEFAULT_OFFSET})")
    p.add_argument("--report-json", default=None, metavar="PATH",
                   help="write the JSON report here (default: print only)")
    ns = p.parse_args(argv)
    try:
        trace = load_trace(ns.traces, ns.trace_format, ns.trace_block_size,
                           ns.arrival_speedup_ratio)
        report = run_online(trace, ns.url, model=ns.model, max_requests=ns.max_requests,
                            max_duration_s=ns.max_duration_s,
                            request_timeout_s=ns.request_timeout_s,
                            agent=AgentFeatures.parse(ns.agent_features),
                            vocab_size=ns.vocab_size, token_offset=ns.token_offset)
    except (TraceError, ValueError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print(summary_table(report, f"Rotor online replay against {ns.url}"))
    if ns.report_json:
        Path(ns.report_json).parent.mkdir(parents=True, exist_ok=True)
        Path(ns.report_json).write_text(json.dumps(report, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
