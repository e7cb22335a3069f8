"""A real engine (vLLM, SGLang) hosted as a subprocess behind a Rotor worker (DESIGN.md §8).

    worker process                                   engine subprocess group
    --------------                                   -----------------------
    SubprocessEngine ──spawn──► engine_guard (own group, parent-death signal, subreaper)
                                   └─► OpenAI server (vLLM / SGLang) + its children
      add()    ── HTTP POST, always streamed ──►  /v1/chat/completions (chat body as sent)
                                                  /v1/completions or /generate (token-id prompt)
      abort()  ── closes that HTTP stream ──────► the engine cancels the request
      step()   ◄── token ids per chunk, merged per request since the last step
               ◄── KV events: SUB (bound here) ◄── engine PUB, gaps replayed (worker/engine_kv.py)
      load()   ◄── in-flight counts here + KV usage from the engine's /metrics (≤ 10×/s)

What differs between engines is an `EngineFlavor` (command line, environment, request bodies,
stream chunks, priority polarity, metrics, /tokenize); vLLM's is worker/vllm.py, SGLang's
worker/sglang.py. Everything else (process lifetime, health wait, streaming, timings, KV intake,
load, the start-up tokenization conformance check) lives here, once.

Lifetime: `start()` spawns the engine, waits for `/health` (timeout; the error quotes the engine's
last log lines), reads the engine's capacities (`info`), runs the conformance check, and only then
returns, so the worker registers only a healthy engine. If the engine exits later, `step()` raises
`EngineDied` (with its last log lines): the worker deregisters and fails in-flight requests with a
migratable error. `stop()` SIGTERMs the guard, which stops the whole engine group.

Timings: the engine's queueing is invisible from outside, so queue and prefill are folded:
`queue_ms` is 0 and `prefill_ms` = `ttft_ms`, both from the worker's receipt of the request.
`cached_tokens` is the engine's own `usage.prompt_tokens_details.cached_tokens`.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import os
import re
import shutil
import signal
import socket
import sys
import tempfile
import time
from collections import deque
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, AsyncIterator, Protocol

import aiohttp
import zmq.asyncio

from frontend.tokenizer import Tokenizer
from worker import conformance
from worker.engine import (EngineContext, EngineInfo, EngineRequest, EngineStep, LoadSnapshot,
                           RequestOutput, Timings)
from worker.engine_guard import set_parent_death_signal
from worker.engine_kv import EngineKvIntake

log = logging.getLogger("rotor.worker.engine")

GUARD = Path(__file__).with_name("engine_guard.py")
LOG_TAIL_LINES = 40               # engine log lines kept for error messages
METRICS_BUSY_INTERVAL_S = 0.25    # /metrics at most 4x/s while requests are in flight (it costs the engine's server time) ...
METRICS_IDLE_INTERVAL_S = 1.0     # ... and once a second when idle
DEATH_GRACE_S = 5.0               # a broken stream waits this long to learn whether the engine died
STOP_TIMEOUT_S = 15.0             # guard SIGTERM -> SIGKILL of the group
FINISH_REASONS = {"stop": "stop", "length": "length", "tool_calls": "tool_calls",
                  "abort": "abort", "eos": "stop", "stop_token": "stop"}


class EngineDied(RuntimeError):
    """The engine subprocess exited while the worker served it."""


class EngineStartError(RuntimeError):
    """The engine did not become healthy (exited, or timed out)."""


@dataclass
class SubprocessConfig:
    """Worker-side settings of a subprocess engine (flags of `python -m worker --engine X`)."""

    python: str                        # interpreter that has the engine installed
    block_size: int                    # tokens per KV block: the engine's and Rotor's
    max_num_seqs: int
    max_num_batched_tokens: int
    engine_args: list[str] = field(default_factory=list)   # passed through after `--`
    host: str = "127.0.0.1"
    port: int = 0                      # engine HTTP port; 0 picks a free one
    start_timeout_s: float = 600.0
    conformance_check: bool = True
    env: dict[str, str] = field(default_factory=dict)      # extra environment for the engine

    def validate(self, managed_flags: tuple[str, ...]) -> None:
        if self.block_size <= 0:
            raise ValueError(f"--block-size must be positive, got {self.block_size}")
        if self.start_timeout_s <= 0:
            raise ValueError("--engine-start-timeout must be positive")
        for arg in self.engine_args:
            if arg.split("=", 1)[0] in managed_flags:
                raise ValueError(f"engine argument {arg!r} is set by the worker; use the worker's "
                                 f"own flag (see --help) instead")


@dataclass(slots=True)
class ParsedChunk:
    """What one streamed chunk of the engine's reply says, engine-neutral."""

    token_ids: list[int] = field(default_factory=list)
    finish_reason: str | None = None
    tool_call_deltas: list[dict[str, Any]] | None = None
    prompt_token_ids: list[int] | None = None
    cached_tokens: int | None = None
    error: str | None = None
    text: str | None = None           # the engine's text for token_ids (chat: after its parsers)


class EngineFlavor(Protocol):
    """What differs between vLLM and SGLang."""

    name: str
    subscriber_binds: bool        # True: the worker binds the KV SUB and the engine connects

    def command(self, cfg: SubprocessConfig, ctx: EngineContext, port: int, kv_endpoint: str,
                replay_endpoint: str) -> list[str]: ...

    def environment(self, cfg: SubprocessConfig, private_dir: Path) -> dict[str, str]: ...

    def request(self, request: EngineRequest, served_name: str) -> tuple[str, dict[str, Any]]:
        """(path, JSON body) of the streamed HTTP call for one request."""

    def parse_chunk(self, chunk: dict[str, Any], emitted: int) -> ParsedChunk:
        """One SSE `data:` object; `emitted` = output tokens this request produced so far."""

    async def read_info(self, http: aiohttp.ClientSession, base: str, cfg: SubprocessConfig,
                        ctx: EngineContext) -> EngineInfo: ...

    def kv_usage(self, metrics: dict[str, float]) -> float | None:
        """Fraction of the KV cache in use, from parsed /metrics."""

    async def tokenize(self, http: aiohttp.ClientSession, base: str, served_name: str,
                       case: conformance.ConformanceCase, rotor_text: str) -> list[int]: ...


@dataclass(slots=True)
class _InFlight:
    request: EngineRequest
    task: asyncio.Task | None = None
    emitted: int = 0                 # output tokens handed out so far
    first_token_at: float | None = None
    finish_reason: str | None = None
    cached_tokens: int = 0


class SubprocessEngine:
    """The `Engine` protocol over an engine subprocess. See the module docstring."""

    def __init__(self, flavor: EngineFlavor, config: SubprocessConfig, context: EngineContext):
        self.flavor = flavor
        self.config = config
        self.context = context
        self.info = EngineInfo(kv_block_size=config.block_size, total_kv_blocks=0,
                               max_num_seqs=config.max_num_seqs,
                               max_num_batched_tokens=config.max_num_batched_tokens,
                               context_length=context.context_length)
        self.conformance: conformance.ConformanceReport | None = None
        self.tokenization_mismatches = 0        # requests whose engine prompt ids differ
        self.guard_pid: int | None = None       # the engine group's leader (its pgid)
        self.base_url = ""
        self._served_name = context.model_name
        self._proc: asyncio.subprocess.Process | None = None
        self._private_dir: Path | None = None
        self._zmq = zmq.asyncio.Context()
        self._intake: EngineKvIntake | None = None
        self._http: aiohttp.ClientSession | None = None
        self._tasks: list[asyncio.Task] = []
        self._log_tail: deque[str] = deque(maxlen=LOG_TAIL_LINES)
        self._healthy = False
        self._exited = asyncio.Event()
        self._death: str | None = None
        self._inflight: dict[str, _InFlight] = {}
        self._pending: dict[str, RequestOutput] = {}   # request_id -> merged output since last step
        self._wake = asyncio.Event()
        self._kv_used_fraction = 0.0
        self._last_activity = 0.0

    # -- lifecycle -------------------------------------------------------------------------------

    async def start(self) -> None:
        try:
            await self._start()
        except BaseException:
            await self.stop()
            raise

    async def _start(self) -> None:
        cfg = self.config
        self._private_dir = Path(tempfile.mkdtemp(prefix=f"rotor-{self.flavor.name}-"))
        port = cfg.port or _free_port(cfg.host)
        self._intake = EngineKvIntake(
            self._zmq, cfg.host, bind=self.flavor.subscriber_binds,
            endpoint=None if self.flavor.subscriber_binds else f"tcp://{cfg.host}:{_free_port(cfg.host)}",
            replay_endpoint=f"tcp://{cfg.host}:{_free_port(cfg.host)}", ready=self._wake)
        command = self.flavor.command(cfg, self.context, port, self._intake.endpoint,
                                      self._intake.replay_endpoint or "")
        env = {**os.environ, **self.flavor.environment(cfg, self._private_dir), **cfg.env}
        log.info("starting %s engine: %s", self.flavor.name, " ".join(command))
        self._proc = await asyncio.create_subprocess_exec(
            sys.executable, str(GUARD), "--parent", str(os.getpid()),
            "--remove-dir", str(self._private_dir), "--", *command,
            stdin=asyncio.subprocess.DEVNULL, stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.STDOUT, env=env, start_new_session=True,
            preexec_fn=set_parent_death_signal)
        self.guard_pid = self._proc.pid
        self._tasks.append(asyncio.create_task(self._read_log()))
        self._tasks.append(asyncio.create_task(self._watch()))
        self.base_url = f"http://{cfg.host}:{port}"
        self._http = aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=None, connect=10),
                                           connector=aiohttp.TCPConnector(limit=0))
        started = time.monotonic()
        await self._wait_healthy(started + cfg.start_timeout_s)
        self._healthy = True
        self.info = await self.flavor.read_info(self._http, self.base_url, cfg, self.context)
        log.info("%s engine healthy after %.1fs (pid group %d): %s", self.flavor.name,
                 time.monotonic() - started, self.guard_pid, self.info)
        self._tasks.append(asyncio.create_task(self._intake.run()))
        self._tasks.append(asyncio.create_task(self._poll_metrics()))
        if cfg.conformance_check:
            await self._check_conformance()

    async def _wait_healthy(self, deadline: float) -> None:
        assert self._http is not None
        while True:
            if self._exited.is_set():
                raise EngineStartError(self._death or "the engine exited during start-up")
            try:
                async with self._http.get(self.base_url + "/health",
                                          timeout=aiohttp.ClientTimeout(total=2)) as resp:
                    if resp.status == 200:
                        return
            except (aiohttp.ClientError, asyncio.TimeoutError):
                pass
            if time.monotonic() > deadline:
                raise EngineStartError(
                    f"the {self.flavor.name} engine was not healthy within "
                    f"{self.config.start_timeout_s:g}s (--engine-start-timeout); its last log "
                    f"lines:\n{self.log_tail()}")
            await asyncio.sleep(0.25)

    async def stop(self) -> None:
        for inflight in self._inflight.values():
            if inflight.task is not None:
                inflight.task.cancel()
        self._inflight.clear()
        proc = self._proc
        if proc is not None and proc.returncode is None:
            try:
                proc.send_signal(signal.SIGTERM)
                await asyncio.wait_for(proc.wait(), STOP_TIMEOUT_S)
            except asyncio.TimeoutError:
                log.warning("%s engine did not stop in %ss; killing its process group",
                            self.flavor.name, STOP_TIMEOUT_S)
            except ProcessLookupError:
                pass
        if self.guard_pid is not None:
            try:
                os.killpg(self.guard_pid, signal.SIGKILL)   # anything left of the group
            except (ProcessLookupError, PermissionError):
                pass
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        self._tasks.clear()
        if self._http is not None:
            await self._http.close()
            self._http = None
        if self._intake is not None:
            self._intake.close()
        self._zmq.term()
        if self._private_dir is not None:
            shutil.rmtree(self._private_dir, ignore_errors=True)
            self._private_dir = None

    def log_tail(self) -> str:
        return "\n".join(self._log_tail) or "(no output)"

    async def _read_log(self) -> None:
        assert self._proc is not None and self._proc.stdout is not None
        engine_log = logging.getLogger(f"rotor.engine.{self.flavor.name}")
        async for raw in self._proc.stdout:
            line = raw.decode(errors="replace").rstrip()
            self._log_tail.append(line)
            if not self._healthy:
                engine_log.info("%s", line)
            elif "ERROR" in line or "Traceback" in line or "WARNING" in line:
                engine_log.warning("%s", line)
            else:
                engine_log.debug("%s", line)

    async def _watch(self) -> None:
        assert self._proc is not None
        code = await self._proc.wait()
        await asyncio.sleep(0.2)          # let the log reader take the last lines
        self._death = (f"the {self.flavor.name} engine exited with status {code}; its last log "
                       f"lines:\n{self.log_tail()}")
        if self._healthy:
            log.error("%s", self._death)
        self._exited.set()
        self._wake.set()

    async def _check_conformance(self) -> None:
        assert self._http is not None
        tokenizer = await asyncio.to_thread(Tokenizer.load, self.context.model_path)
        http, base, name = self._http, self.base_url, self._served_name
        self.conformance = await conformance.check(
            tokenizer, lambda case, text: self.flavor.tokenize(http, base, name, case, text))
        if self.conformance.passed:
            log.info("tokenization conformance: Rotor and the %s engine agree on all %d cases",
                     self.flavor.name, self.conformance.cases)
        else:
            log.error("TOKENIZATION CONFORMANCE FAILED: Rotor's token ids differ from the %s "
                      "engine's, so KV routing will miss: %s", self.flavor.name,
                      json.dumps(self.conformance.to_dict()))

    # -- the Engine protocol ---------------------------------------------------------------------

    def add(self, request: EngineRequest) -> None:
        if request.max_tokens < 1:
            raise ValueError("max_tokens must be at least 1")
        if not request.token_ids and request.body is None:
            raise ValueError("token_ids must not be empty")
        if self._exited.is_set():
            raise ValueError(f"the {self.flavor.name} engine is not running")
        inflight = _InFlight(request)
        self._inflight[request.request_id] = inflight
        inflight.task = asyncio.create_task(self._run(inflight))
        self._last_activity = time.monotonic()

    def abort(self, request_id: str) -> None:
        inflight = self._inflight.pop(request_id, None)
        self._pending.pop(request_id, None)
        if inflight is not None and inflight.task is not None:
            inflight.task.cancel()          # closes the HTTP stream: the engine aborts it

    async def step(self) -> EngineStep:
        while True:
            if self._exited.is_set():
                raise EngineDied(self._death or f"the {self.flavor.name} engine exited")
            outputs = list(self._pending.values())
            self._pending = {}
            batches = self._intake.drain() if self._intake is not None else []
            if outputs or batches:
                return EngineStep(outputs, [event for b in batches for event in b.events])
            self._wake.clear()
            await self._wake.wait()

    def load(self) -> LoadSnapshot:
        running = sum(1 for f in self._inflight.values() if f.first_token_at is not None)
        total = self.info.total_kv_blocks
        return LoadSnapshot(kv_used_blocks=round(self._kv_used_fraction * total),
                            kv_total_blocks=total, num_running=running,
                            num_waiting=len(self._inflight) - running)

    def stats(self) -> dict[str, Any]:
        """Counters for the worker's record / metrics."""
        intake = self._intake
        return {"tokenization_mismatch_total": self.tokenization_mismatches,
                "kv_event_gaps_total": intake.gaps if intake else 0,
                "kv_events_replayed_total": intake.recovered if intake else 0,
                "kv_events_lost_total": intake.lost if intake else 0,
                "conformance": self.conformance.to_dict() if self.conformance else None}

    # -- one request -----------------------------------------------------------------------------

    async def _run(self, inflight: _InFlight) -> None:
        request = inflight.request
        path, body = self.flavor.request(request, self._served_name)
        assert self._http is not None
        try:
            async with self._http.post(self.base_url + path, json=body) as resp:
                if resp.status != 200:
                    text = (await resp.text())[:1000]
                    self._finish(inflight, "error", f"{self.flavor.name} engine answered "
                                                    f"{resp.status}: {text}")
                    return
                async for chunk in _sse_objects(resp):
                    parsed = self.flavor.parse_chunk(chunk, inflight.emitted)
                    if parsed.error is not None:
                        self._finish(inflight, "error", parsed.error)
                        return
                    self._take(inflight, parsed)
                    # Buffered lines come back without awaiting: yield so step() sends each
                    # engine step's tokens at once and the heartbeat keeps the record fresh.
                    await asyncio.sleep(0)
            if inflight.finish_reason is None:
                raise aiohttp.ClientPayloadError("the stream ended without a finish reason")
            self._finish(inflight, inflight.finish_reason)
        except asyncio.CancelledError:
            raise
        except (aiohttp.ClientError, asyncio.TimeoutError, ValueError) as exc:
            try:                            # a dead engine fails everything in step(), migratably
                await asyncio.wait_for(self._exited.wait(), DEATH_GRACE_S)
                return
            except asyncio.TimeoutError:
                self._finish(inflight, "error", f"{self.flavor.name} engine stream failed: {exc}")

    def _take(self, inflight: _InFlight, parsed: ParsedChunk) -> None:
        request = inflight.request
        if parsed.prompt_token_ids is not None and parsed.prompt_token_ids != request.token_ids:
            self.tokenization_mismatches += 1
            if self.tokenization_mismatches <= 5 or self.tokenization_mismatches % 1000 == 0:
                at = conformance.first_difference(parsed.prompt_token_ids, request.token_ids)
                log.warning("tokenization mismatch #%d (request %s): the engine's prompt has %d "
                            "tokens, Rotor's %d, first difference at %s",
                            self.tokenization_mismatches, request.request_id,
                            len(parsed.prompt_token_ids), len(request.token_ids), at)
        if parsed.cached_tokens is not None:
            inflight.cached_tokens = parsed.cached_tokens
        if parsed.finish_reason is not None:
            inflight.finish_reason = FINISH_REASONS.get(parsed.finish_reason, "stop")
        if parsed.token_ids or parsed.tool_call_deltas:
            if inflight.first_token_at is None and parsed.token_ids:
                inflight.first_token_at = time.monotonic()
            out = self._output(inflight)
            out.token_ids.extend(parsed.token_ids)
            if parsed.text is not None:
                out.text = (out.text or "") + parsed.text
            inflight.emitted += len(parsed.token_ids)
            if parsed.tool_call_deltas:
                out.tool_call_deltas = (out.tool_call_deltas or []) + parsed.tool_call_deltas
            self._wake.set()

    def _output(self, inflight: _InFlight) -> RequestOutput:
        rid = inflight.request.request_id
        out = self._pending.get(rid)
        if out is None:
            out = self._pending[rid] = RequestOutput(rid, inflight.emitted, [])
        return out

    def _finish(self, inflight: _InFlight, reason: str, error: str | None = None) -> None:
        request = inflight.request
        if self._inflight.pop(request.request_id, None) is None:
            return                          # aborted meanwhile: no output follows an abort
        now = time.monotonic()
        total_ms = (now - request.received_at) * 1000
        ttft_ms = ((inflight.first_token_at or now) - request.received_at) * 1000
        out = self._output(inflight)
        out.finish_reason = reason
        out.error = error
        out.timings = Timings(queue_ms=0.0, prefill_ms=ttft_ms, ttft_ms=ttft_ms,
                              total_ms=total_ms, cached_tokens=inflight.cached_tokens)
        self._last_activity = now
        self._wake.set()

    # -- load ------------------------------------------------------------------------------------

    async def _poll_metrics(self) -> None:
        assert self._http is not None
        while True:
            busy = self._inflight or time.monotonic() - self._last_activity < 2.0
            await asyncio.sleep(METRICS_BUSY_INTERVAL_S if busy else METRICS_IDLE_INTERVAL_S)
            try:
                async with self._http.get(self.base_url + "/metrics",
                                          timeout=aiohttp.ClientTimeout(total=2)) as resp:
                    text = await resp.text()
            except (aiohttp.ClientError, asyncio.TimeoutError):
                continue
            usage = self.flavor.kv_usage(parse_metrics(text))
            if usage is not None:
                self._kv_used_fraction = min(max(usage, 0.0), 1.0)


# -- helpers shared by the flavors -----------------------------------------------------------------

_METRIC_LINE = re.compile(r"^([a-zA-Z_:][a-zA-Z0-9_:]*)(\{[^}]*\})?\s+([-+0-9.eEinfNa]+)")


def parse_metrics(text: str) -> dict[str, float]:
    """Prometheus text -> {name: value}; for a name with several label sets, their sum."""
    out: dict[str, float] = {}
    for line in text.splitlines():
        match = _METRIC_LINE.match(line)
        if match:
            out[match.group(1)] = out.get(match.group(1), 0.0) + float(match.group(3))
    return out


def metric_label(text: str, name: str, label: str) -> str | None:
    """The value of `label` on the first sample of metric `name` (e.g. vLLM's cache_config_info)."""
    for line in text.splitlines():
        if line.startswith(name + "{"):
            match = re.search(rf'[{{,]{re.escape(label)}="([^"]*)"', line)
            if match:
                return match.group(1)
    return None


def engine_arg(args: list[str], flag: str) -> str | None:
    """The value given to `flag` in a pass-through argument list (`--flag V` or `--flag=V`)."""
    for i, arg in enumerate(args):
        if arg == flag and i + 1 < len(args):
            return args[i + 1]
        if arg.startswith(flag + "="):
            return arg.split("=", 1)[1]
    return None


def chunk_error(chunk: dict[str, Any]) -> str | None:
    """The error an engine reported in a streamed chunk, if any."""
    if "error" not in chunk:
        return None
    error = chunk["error"]
    return str(error.get("message", error) if isinstance(error, dict) else error)


async def _sse_objects(resp: aiohttp.ClientResponse) -> AsyncIterator[dict[str, Any]]:
    """JSON objects of an SSE stream's `data:` lines, until `[DONE]`."""
    async for raw in resp.content:
        line = raw.strip()
        if not line.startswith(b"data:"):
            continue
        data = line[5:].strip()
        if data == b"[DONE]":
            return
        obj = json.loads(data)
        if isinstance(obj, dict):
            yield obj


def _free_port(host: str) -> int:
    with socket.socket() as s:
        s.bind((host, 0))
        return s.getsockname()[1]


def add_common_arguments(parser: argparse.ArgumentParser, default_block_size: str) -> None:
    """Worker flags every subprocess engine shares (engine flags themselves go after `--`)."""
    parser.add_argument("--engine-python", default=None,
                        help="python interpreter that has the engine installed (default: see the "
                             "engine's notes in --help)")
    parser.add_argument("--block-size", type=int, default=None,
                        help=f"tokens per KV block, for the engine and Rotor's router "
                             f"(default: {default_block_size})")
    parser.add_argument("--max-num-seqs", type=int, default=256,
                        help="sequences the engine runs at once (default: 256)")
    parser.add_argument("--max-num-batched-tokens", type=int, default=8192,
                        help="tokens per engine step (default: 8192)")
    parser.add_argument("--engine-port", type=int, default=0,
                        help="the engine's HTTP port on the worker's host (default: a free port)")
    parser.add_argument("--engine-start-timeout", type=float, default=600.0,
                        help="seconds to wait for the engine's /health (default: 600)")
    parser.add_argument("--no-conformance-check", dest="conformance_check",
                        action="store_false",
                        help="skip the start-up tokenization check against the engine's tokenizer")
