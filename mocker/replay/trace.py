"""Replay inputs: Mooncake and agentic Mooncake rows, checked, turned into requests (DESIGN.md §7).

    rows (JSONL) ──► TraceRequest per row: arrival or dependencies, lengths, hash ids, hints
                 ──► prompt_for(request): the row's tokens and their block hashes, built once

Formats (notes/dynamo-agent-facts.md §5.2-§5.4):

* `mooncake`: `{timestamp (alias created_time), input_length (input_tokens), output_length
  (output_tokens), hash_ids}`, optional `priority`, `strict_priority`, and `session_id` +
  `delay` (alias `delay_ms`): rows sharing a `session_id` form a closed loop, turn n+1 starts when
  turn n ends plus `delay` (or plus the timestamp difference when `delay` is absent).
* `agentic_mooncake`: adds `request_id`, `session_id` (the trajectory), `wait_for`, `delay`,
  `tool_wait_ms` (and analysis-only `branches`, `prefix_reset`, `tool_events`). A row with
  `wait_for` starts when every listed request has ended, plus `delay + tool_wait_ms`; a row
  without starts at its `timestamp`. Rotor's synthetic workloads (mocker/workloads.py) add
  `priority`, `session_type_id`, `agent_session_id` and `parent_trajectory_id`, which replay
  forwards as agent hints and context; other readers ignore them.

Only root arrivals (`timestamp`) are divided by the arrival speedup ratio; delays and tool waits
are durations of the agent, not of the arrival process, and stay as written.

Tokens: each hash id stands for `trace_block_size` (B) copies of token id = hash id, cut to
`input_length` (`len(hash_ids) × B ≥ input_length`, ids < 2^32). They are never materialised
whole: `TraceTokens` produces slices on demand (the engine asks for the tokens of blocks it
stores), and when B is a multiple of the engine block size the block hashes come from a memo
keyed by (parent sequence hash, hash id), computed with router/hashing.py, so every distinct
trace block is hashed once per run instead of once per row.

Every problem raises `TraceError` naming the file and line.
"""

from __future__ import annotations

import json
import math
from array import array
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, overload

from router.hashing import SEED, Prompt, chain_hash, local_hashes

TRACE_FORMATS = ("mooncake", "agentic_mooncake")
_U32 = 1 << 32


class TraceError(ValueError):
    """A trace cannot be replayed; the message names the file and line."""


@dataclass(slots=True)
class TraceRequest:
    """One row, ready to schedule. Times are milliseconds of the replay's virtual clock."""

    index: int                    # position in the replay (0-based); ids are `req-<index>`
    where: str                    # "file:line" for messages
    request_id: str               # the row's request_id (agentic), else "req-<index>"
    input_length: int
    output_length: int
    hash_ids: list[int]
    arrival_ms: float | None      # roots: timestamp / speedup; None: waits for `deps`
    deps: list[int]               # indices of the requests it waits for
    gap_ms: float                 # after the last dependency ends: delay + tool_wait_ms
    priority: int = 0
    strict_priority: int = 0
    trajectory: str | None = None       # trajectory id (agentic `session_id`)
    session_type_id: str | None = None
    agent_session_id: str | None = None
    parent_trajectory: str | None = None
    first_in_trajectory: bool = False
    last_in_trajectory: bool = False


@dataclass(slots=True)
class Trace:
    requests: list[TraceRequest]
    trace_format: str
    trace_block_size: int
    sources: list[str]

    @property
    def agentic(self) -> bool:
        return any(r.trajectory is not None for r in self.requests)


# ---------------------------------------------------------------------------------------------
# Reading


def load_trace(paths: Sequence[str | Path], trace_format: str = "mooncake",
               trace_block_size: int = 512, arrival_speedup_ratio: float = 1.0) -> Trace:
    """Read and check JSONL files (one row a line; blank lines skipped)."""
    rows: list[tuple[str, dict[str, Any]]] = []
    sources: list[str] = []
    if not paths:
        raise TraceError("no trace file given")
    for path in paths:
        path = Path(path)
        sources.append(str(path))
        try:
            fh = open(path, encoding="utf-8")
        except OSError as exc:
            raise TraceError(f"{path}: cannot read: {exc.strerror}") from None
        with fh:
            for lineno, line in enumerate(fh, 1):
                if not line.strip():
                    continue
                where = f"{path}:{lineno}"
                try:
                    row = json.loads(line)
                except json.JSONDecodeError as exc:
                    raise TraceError(f"{where}: not JSON: {exc.msg}") from None
                rows.append((where, row))
    return build_trace(rows, trace_format, trace_block_size, arrival_speedup_ratio, sources)


def trace_from_rows(rows: Iterable[dict[str, Any]], trace_format: str = "mooncake",
                    trace_block_size: int = 512, arrival_speedup_ratio: float = 1.0,
                    source: str = "<rows>") -> Trace:
    """The same checks for rows already in memory (synthetic workloads, tests)."""
    numbered = [(f"{source}:{i + 1}", row) for i, row in enumerate(rows)]
    return build_trace(numbered, trace_format, trace_block_size, arrival_speedup_ratio, [source])


def build_trace(rows: list[tuple[str, dict[str, Any]]], trace_format: str,
                trace_block_size: int, arrival_speedup_ratio: float,
                sources: list[str]) -> Trace:
    if trace_format not in TRACE_FORMATS:
        raise TraceError(f"unknown trace format {trace_format!r}; known: {', '.join(TRACE_FORMATS)}")
    if isinstance(trace_block_size, bool) or not isinstance(trace_block_size, int) \
            or trace_block_size <= 0:
        raise TraceError(f"trace_block_size must be a positive integer, got {trace_block_size!r}")
    if not (isinstance(arrival_speedup_ratio, (int, float)) and arrival_speedup_ratio > 0
            and math.isfinite(arrival_speedup_ratio)):
        raise TraceError(f"arrival_speedup_ratio must be a positive number, "
                         f"got {arrival_speedup_ratio!r}")
    if not rows:
        raise TraceError(f"{', '.join(sources)}: no rows")
    agentic = trace_format == "agentic_mooncake"
    requests = [_parse_row(i, where, row, trace_block_size, agentic)
                for i, (where, row) in enumerate(rows)]
    timestamps = [ts for ts in (_timestamp(rows[r.index]) for r in requests) if ts is not None]
    origin = min(timestamps, default=0.0)
    if agentic:
        _link_agentic(requests, rows)
    else:
        _link_sessions(requests, rows)
    for r in requests:
        if r.arrival_ms is not None:
            r.arrival_ms = (r.arrival_ms - origin) / arrival_speedup_ratio
    _check_acyclic(requests)
    return Trace(requests, trace_format, trace_block_size, sources)


def _timestamp(item: tuple[str, dict[str, Any]]) -> float | None:
    row = item[1]
    ts = row.get("timestamp", row.get("created_time"))
    return float(ts) if isinstance(ts, (int, float)) and not isinstance(ts, bool) else None


def _field(row: dict[str, Any], where: str, names: tuple[str, ...], kind: type,
           required: bool = True, default: Any = None) -> Any:
    for name in names:
        if name in row and row[name] is not None:
            value = row[name]
            ok = isinstance(value, kind) and not isinstance(value, bool)
            if kind is float:
                ok = isinstance(value, (int, float)) and not isinstance(value, bool) \
                    and math.isfinite(value)
            if not ok:
                raise TraceError(f"{where}: {name} must be {'a number' if kind is float else kind.__name__}"
                                 f", got {value!r}")
            return float(value) if kind is float else value
    if required:
        raise TraceError(f"{where}: missing {names[0]}")
    return default


def _parse_row(index: int, where: str, row: Any, bsize: int, agentic: bool) -> TraceRequest:
    if not isinstance(row, dict):
        raise TraceError(f"{where}: a row must be a JSON object, got {type(row).__name__}")
    isl = _field(row, where, ("input_length", "input_tokens"), int)
    osl = _field(row, where, ("output_length", "output_tokens"), int)
    hash_ids = _field(row, where, ("hash_ids",), list)
    if isl < 1:
        raise TraceError(f"{where}: input_length must be at least 1, got {isl}")
    if osl < 1:
        raise TraceError(f"{where}: output_length must be at least 1, got {osl}")
    if hash_ids and (set(map(type, hash_ids)) != {int} or min(hash_ids) < 0
                     or max(hash_ids) >= _U32):
        bad = next(h for h in hash_ids if type(h) is not int or not 0 <= h < _U32)
        raise TraceError(f"{where}: hash_ids must be integers in [0, 2^32), got {bad!r}")
    if len(hash_ids) * bsize < isl:
        raise TraceError(f"{where}: {len(hash_ids)} hash_ids × trace block size {bsize} = "
                         f"{len(hash_ids) * bsize} tokens cannot cover input_length {isl}")
    ts = _field(row, where, ("timestamp", "created_time"), float, required=False)
    priority = _field(row, where, ("priority",), int, required=False, default=0)
    strict = _field(row, where, ("strict_priority",), int, required=False, default=0)
    if strict < 0:
        raise TraceError(f"{where}: strict_priority must be >= 0, got {strict}")
    if agentic:
        request_id = _field(row, where, ("request_id",), str)
        if not request_id:
            raise TraceError(f"{where}: request_id must be non-empty")
    else:
        request_id = f"req-{index}"
    return TraceRequest(index, where, request_id, isl, osl, hash_ids, ts, [], 0.0, priority, strict)


def _link_sessions(requests: list[TraceRequest], rows: list[tuple[str, dict[str, Any]]]) -> None:
    """Plain Mooncake: rows sharing a session_id form a closed loop in file order."""
    last: dict[str, tuple[TraceRequest, float | None]] = {}   # session -> (turn, its timestamp)
    for r in requests:
        where, row = rows[r.index]
        session = _field(row, where, ("session_id",), str, required=False)
        if r.arrival_ms is None and (session is None or session not in last):
            raise TraceError(f"{where}: missing timestamp")
        if session is None:
            continue
        ts = r.arrival_ms
        prev = last.get(session)
        last[session] = (r, ts)
        if prev is None:
            continue
        delay = _field(row, where, ("delay", "delay_ms"), float, required=False)
        if delay is None:
            if ts is None or prev[1] is None:
                raise TraceError(f"{where}: a later turn of session {session!r} needs a delay or "
                                 f"a timestamp")
            delay = max(ts - prev[1], 0.0)
        if delay < 0:
            raise TraceError(f"{where}: delay must be >= 0, got {delay}")
        r.deps, r.gap_ms, r.arrival_ms = [prev[0].index], delay, None


def _link_agentic(requests: list[TraceRequest], rows: list[tuple[str, dict[str, Any]]]) -> None:
    by_id: dict[str, TraceRequest] = {}
    for r in requests:
        other = by_id.get(r.request_id)
        if other is not None:
            raise TraceError(f"{r.where}: duplicate request_id {r.request_id!r} "
                             f"(first at {other.where})")
        by_id[r.request_id] = r
    per_trajectory: dict[str, list[TraceRequest]] = {}
    for r in requests:
        where, row = rows[r.index]
        wait_for = _field(row, where, ("wait_for",), list, required=False, default=[])
        for dep in wait_for:
            if not isinstance(dep, str):
                raise TraceError(f"{where}: wait_for entries must be request_id strings, "
                                 f"got {dep!r}")
            target = by_id.get(dep)
            if target is None:
                raise TraceError(f"{where}: wait_for names {dep!r}, which is not in the trace")
            if target is r:
                raise TraceError(f"{where}: request {dep!r} waits for itself")
            if target.index not in r.deps:
                r.deps.append(target.index)
        delay = _field(row, where, ("delay", "delay_ms"), float, required=False, default=0.0)
        tool_wait = _field(row, where, ("tool_wait_ms",), float, required=False, default=0.0)
        if delay < 0 or tool_wait < 0:
            raise TraceError(f"{where}: delay and tool_wait_ms must be >= 0")
        if r.deps:
            r.gap_ms = delay + tool_wait
            r.arrival_ms = None
        elif r.arrival_ms is None:
            raise TraceError(f"{where}: a row without wait_for needs a timestamp")
        r.trajectory = _field(row, where, ("session_id",), str, required=False) or r.request_id
        r.session_type_id = _field(row, where, ("session_type_id",), str, required=False)
        r.agent_session_id = _field(row, where, ("agent_session_id",), str, required=False)
        r.parent_trajectory = _field(row, where, ("parent_trajectory_id",), str, required=False)
        per_trajectory.setdefault(r.trajectory, []).append(r)
    for members in per_trajectory.values():
        members[0].first_in_trajectory = True
        members[-1].last_in_trajectory = True


def _check_acyclic(requests: list[TraceRequest]) -> None:
    """Kahn's algorithm; a cycle is reported with the line of one of its rows."""
    indegree = [len(r.deps) for r in requests]
    dependents: list[list[int]] = [[] for _ in requests]
    for r in requests:
        for d in r.deps:
            dependents[d].append(r.index)
    ready = [i for i, n in enumerate(indegree) if n == 0]
    seen = 0
    while ready:
        i = ready.pop()
        seen += 1
        for j in dependents[i]:
            indegree[j] -= 1
            if indegree[j] == 0:
                ready.append(j)
    if seen < len(requests):
        stuck = next(r for r in requests if indegree[r.index] > 0)
        raise TraceError(f"{stuck.where}: request {stuck.request_id!r} is part of (or waits on) a "
                         f"cycle in wait_for")


# ---------------------------------------------------------------------------------------------
# Tokens and prompts


class TraceTokens(Sequence[int]):
    """A row's token ids without materialising them: position p holds hash_ids[p // B]."""

    __slots__ = ("hash_ids", "trace_block_size", "length")

    def __init__(self, hash_ids: list[int], trace_block_size: int, length: int):
        self.hash_ids = hash_ids
        self.trace_block_size = trace_block_size
        self.length = length

    def __len__(self) -> int:
        return self.length

    @overload
    def __getitem__(self, i: int) -> int: ...
    @overload
    def __getitem__(self, i: slice) -> array: ...

    def __getitem__(self, i):
        if isinstance(i, slice):
            lo, hi, step = i.indices(self.length)
            if step != 1:
                return array("I", self.tolist()[i])
            # array('I'): the relay packs these as little-endian u32 with one memcpy
            out = array("I")
            bs, ids = self.trace_block_size, self.hash_ids
            p = lo
            while p < hi:
                k = p // bs
                end = min((k + 1) * bs, hi)
                out += array("I", (ids[k],)) * (end - p)
                p = end
            return out
        if i < 0:
            i += self.length
        if not 0 <= i < self.length:
            raise IndexError(i)
        return self.hash_ids[i // self.trace_block_size]

    def __iter__(self):
        return iter(self[0:self.length])

    def tolist(self) -> list[int]:
        return self[0:self.length].tolist()


class PromptFactory:
    """Builds each request's `Prompt` at the engine block size, hashing every distinct trace block
    once: with B a multiple of the block size, the blocks inside trace block k of a row are B/bs
    copies of the same tokens, so their hashes depend only on (sequence hash before them, id)."""

    def __init__(self, trace_block_size: int, block_size: int):
        self.trace_block_size = trace_block_size
        self.block_size = block_size
        self.fast = trace_block_size % block_size == 0
        self._local: dict[int, int] = {}                             # id -> local hash
        self._chains: dict[tuple[int | None, int], list[int]] = {}   # (parent, id) -> seq hashes

    def prompt(self, request: TraceRequest) -> Prompt:
        tokens = TraceTokens(request.hash_ids, self.trace_block_size, request.input_length)
        prompt = Prompt(tokens, self.block_size)
        if not self.fast:
            prompt.token_ids = tokens.tolist()
            return prompt
        bs, per = self.block_size, self.trace_block_size // self.block_size
        full = request.input_length // bs                # full engine blocks
        local_of, chains = self._local, self._chains
        local: list[int] = []
        seq: list[int] = []
        parent: int | None = None
        for h in request.hash_ids:
            if len(seq) >= full:
                break
            lh = local_of.get(h)
            if lh is None:
                lh = local_of[h] = local_hashes([h] * bs, bs, SEED)[0]
            chain = chains.get((parent, h))
            if chain is None:
                chain, p = [], parent
                for _ in range(per):
                    p = lh if p is None else chain_hash(p, lh)
                    chain.append(p)
                chains[(parent, h)] = chain
            take = min(per, full - len(seq))
            local += [lh] * take
            seq += chain[:take] if take < per else chain
            parent = chain[-1]
        # Prompt's cached properties, filled with the values it would compute itself
        prompt.__dict__["local_hashes"] = local
        prompt.__dict__["sequence_hashes"] = seq
        return prompt
