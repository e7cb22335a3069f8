"""Synthetic workloads written as Mooncake or agentic Mooncake rows (DESIGN.md §7).

    python -m mocker.workloads plain   --count 2000 --rate 20 --prefix-groups 10 -o plain.jsonl
    python -m mocker.workloads agentic --sessions 40 --session-rate 0.5 -o agentic.jsonl

Both write one JSON row a line that `python -m mocker.replay` (and Dynamo's replay) read; `B` is
the trace block size (`--trace-block-size`, 512): each hash id stands for B tokens together with
everything before it, so rows share leading ids exactly when their prompts share a prefix.

plain    `count` requests, exponential gaps at `rate` per second; each prompt is one of
         `prefix_groups` shared prefixes of `prefix_blocks` blocks (none when 0) plus unique
         blocks to an input length drawn uniformly from [isl·(1−spread), isl·(1+spread)];
         outputs likewise around `osl`.
agentic  sessions arrive at `session_rate` per second, each of a session type (`coding`, priority
         2, interactive; `research`, priority 1); a session is one main trajectory of `turns`
         requests (uniform in [turns/2, 3·turns/2]):
           turn 1 prompt  = the type's system prompt (shared by every session of the type) + a
                            user task
           turn n+1       = turn n's prompt + its reply + the output of a tool call, after
                            `delay` (harness overhead) + `tool_wait_ms` drawn from the tool
                            class's log-normal (`read_file` ~0.2 s, `run_tests` ~4 s,
                            `web_search` ~1.5 s, `edit_file` ~0.1 s)
         With probability `subagent_prob` a turn spawns 1-3 subagents (priority 0), each its
         own trajectory (system prompt of the type's subagent + a task, `turns/2` turns); the
         parent's next request waits for the spawning request and every subagent's last one
         (the join) and adds their results to its prompt. Prompts are whole blocks
         (input_length = len(hash_ids)·B), so a turn's prompt extends the previous one exactly.

Rows carry Dynamo's agentic fields (request_id, session_id = trajectory id, wait_for, delay,
tool_wait_ms, tool_events, branches, prefix_reset) plus `priority`, `session_type_id`,
`agent_session_id` and `parent_trajectory_id`, which Rotor's replays send as agent hints and
`nvext.agent_context`. Deterministic for a seed.
"""

from __future__ import annotations

import argparse
import json
import math
import random
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

# tool class -> (median ms, log-normal sigma)
TOOL_CLASSES: dict[str, tuple[float, float]] = {
    "read_file": (200.0, 0.6), "edit_file": (100.0, 0.5), "run_tests": (4000.0, 0.7),
    "web_search": (1500.0, 0.5),
}


@dataclass(frozen=True)
class SessionType:
    name: str
    priority: int
    system_blocks: int          # shared system prompt, blocks
    task_blocks: int            # the user's task, blocks
    tools: tuple[str, ...]
    weight: float = 1.0


SESSION_TYPES = (
    SessionType("coding", 2, 12, 2, ("read_file", "edit_file", "run_tests")),
    SessionType("research", 1, 8, 1, ("web_search", "read_file")),
)


class _Ids:
    """First-seen hash id counter (Mooncake ids are small integers from 0)."""

    def __init__(self) -> None:
        self.next = 0

    def take(self, n: int) -> list[int]:
        ids = list(range(self.next, self.next + n))
        self.next += n
        return ids


def plain_rows(*, count: int = 1000, rate: float = 10.0, isl: int = 4096, osl: int = 256,
               spread: float = 0.5, prefix_groups: int = 10, prefix_blocks: int = 4,
               trace_block_size: int = 512, seed: int = 0) -> list[dict[str, Any]]:
    _check(count >= 1, "count must be >= 1")
    _check(rate > 0, "rate must be > 0")
    _check(isl >= 1 and osl >= 1, "isl and osl must be >= 1")
    _check(0 <= spread < 1, "spread must be in [0, 1)")
    _check(prefix_groups >= 0 and prefix_blocks >= 0, "prefix groups/blocks must be >= 0")
    rng, ids, B = random.Random(seed), _Ids(), trace_block_size
    prefixes = [ids.take(prefix_blocks) for _ in range(prefix_groups)]
    rows, t = [], 0.0
    for _ in range(count):
        t += rng.expovariate(rate) * 1000.0
        prefix = rng.choice(prefixes) if prefixes else []
        length = max(1, round(isl * rng.uniform(1 - spread, 1 + spread)))
        length = max(length, len(prefix) * B + 1)
        hash_ids = prefix + ids.take(-(-length // B) - len(prefix))
        out = max(1, round(osl * rng.uniform(1 - spread, 1 + spread)))
        rows.append({"timestamp": round(t, 3), "input_length": length, "output_length": out,
                     "hash_ids": hash_ids})
    return rows


@dataclass
class _Trajectory:
    id: str
    session: str
    stype: SessionType
    priority: int
    parent: str | None
    prompt: list[int]
    turns: int
    rows: list[dict[str, Any]] = field(default_factory=list)


class AgenticGenerator:
    def __init__(self, *, sessions: int = 20, session_rate: float = 0.5, turns: int = 8,
                 osl: int = 300, subagent_prob: float = 0.15, tool_output_blocks: int = 2,
                 trace_block_size: int = 512, seed: int = 0,
                 session_types: tuple[SessionType, ...] = SESSION_TYPES):
        _check(sessions >= 1, "sessions must be >= 1")
        _check(session_rate > 0, "session_rate must be > 0")
        _check(turns >= 1 and osl >= 1, "turns and osl must be >= 1")
        _check(0 <= subagent_prob <= 1, "subagent_prob must be in [0, 1]")
        self.sessions, self.session_rate, self.turns, self.osl = sessions, session_rate, turns, osl
        self.subagent_prob, self.tool_output_blocks = subagent_prob, tool_output_blocks
        self.B = trace_block_size
        self.rng = random.Random(seed)
        self.ids = _Ids()
        self.types = session_types
        self.system = {t.name: self.ids.take(t.system_blocks) for t in session_types}
        self.sub_system = {t.name: self.ids.take(max(t.system_blocks // 2, 1))
                           for t in session_types}
        self._n = 0

    def rows(self) -> list[dict[str, Any]]:
        rng, out, t = self.rng, [], 0.0
        weights = [st.weight for st in self.types]
        for s in range(self.sessions):
            t += rng.expovariate(self.session_rate) * 1000.0
            stype = rng.choices(self.types, weights)[0]
            session = f"s{s:04d}-{stype.name}"
            turns = rng.randint(max(1, self.turns // 2), max(1, self.turns * 3 // 2))
            main = _Trajectory(f"{session}/main", session, stype, stype.priority, None,
                               self.system[stype.name] + self.ids.take(stype.task_blocks), turns)
            self._run(main, [], round(t, 3), out)
        return out

    def _run(self, traj: _Trajectory, first_deps: list[str], ts: float,
             out: list[dict[str, Any]]) -> None:
        """Append the rows of `traj` to `out`, a subagent's before the join that waits for it."""
        rng = self.rng
        deps, gap = list(first_deps), (0.0, 0.0, [])
        for turn in range(traj.turns):
            rid = f"{traj.id}/{turn}"
            out_len = max(1, round(self.osl * rng.uniform(0.3, 1.7)))
            row = {"request_id": rid, "session_id": traj.id,
                   "input_length": len(traj.prompt) * self.B, "output_length": out_len,
                   "hash_ids": list(traj.prompt), "timestamp": ts}
            if deps:
                row["delay"] = gap[0]
                row["wait_for"] = deps
            row["prefix_reset"] = turn == 0
            if deps and gap[1] > 0:
                row["tool_wait_ms"] = gap[1]
                row["tool_events"] = gap[2]
            row.update({"priority": traj.priority, "session_type_id": traj.stype.name,
                        "agent_session_id": traj.session})
            if traj.parent:
                row["parent_trajectory_id"] = traj.parent
            traj.rows.append(row)
            out.append(row)
            if turn == traj.turns - 1:
                break
            reply = self.ids.take(max(1, round(out_len / self.B)))
            deps = [rid]
            joined: list[int] = []
            if traj.parent is None and rng.random() < self.subagent_prob:
                children = []
                for c in range(rng.randint(1, 3)):
                    child = _Trajectory(f"{rid}/sub{c}", traj.session, traj.stype,
                                        max(traj.priority - 2, 0), traj.id,
                                        self.sub_system[traj.stype.name] + self.ids.take(1),
                                        max(1, self.turns // 2))
                    children.append(child)
                    self._run(child, [rid], ts, out)
                row["branches"] = [ch.rows[0]["request_id"] for ch in children]
                deps += [ch.rows[-1]["request_id"] for ch in children]
                for _ in children:
                    joined += self.ids.take(1)
            tool = rng.choice(traj.stype.tools)
            median, sigma = TOOL_CLASSES[tool]
            wait = round(median * math.exp(rng.gauss(0.0, sigma)), 3)
            self._n += 1
            event = {"tool_call_id": f"call-{self._n}", "tool_class": tool,
                     "duration_ms": wait, "status": "succeeded"}
            gap = (round(rng.uniform(5.0, 30.0), 3), wait, [event])
            traj.prompt = traj.prompt + reply + joined + self.ids.take(
                rng.randint(1, max(1, self.tool_output_blocks)))


def agentic_rows(**kwargs: Any) -> list[dict[str, Any]]:
    return AgenticGenerator(**kwargs).rows()


def write_rows(rows: list[dict[str, Any]], path: Path | str) -> None:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", encoding="utf-8") as fh:
        for row in rows:
            fh.write(json.dumps(row) + "\n")


def _check(ok: bool, message: str) -> None:
    if not ok:
        raise ValueError(message)


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m mocker.workloads",
                                description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="kind", required=True)
    plain = sub.add_parser("plain", help="Mooncake rows: lengths, count, rate, prefix groups")
    plain.add_argument("--count", type=int, default=1000, help="requests (default: 1000)")
    plain.add_argument("--rate", type=float, default=10.0, help="requests per second (10)")
    plain.add_argument("--isl", type=int, default=4096, help="mean input tokens (4096)")
    plain.add_argument("--osl", type=int, default=256, help="mean output tokens (256)")
    plain.add_argument("--spread", type=float, default=0.5,
                       help="lengths uniform in mean·[1−spread, 1+spread] (0.5)")
    plain.add_argument("--prefix-groups", type=int, default=10, help="shared prefixes (10)")
    plain.add_argument("--prefix-blocks", type=int, default=4, help="blocks per prefix (4)")
    agentic = sub.add_parser("agentic", help="agentic Mooncake rows: sessions, trajectories, "
                                             "tools, subagents, priorities")
    agentic.add_argument("--sessions", type=int, default=20, help="agent sessions (20)")
    agentic.add_argument("--session-rate", type=float, default=0.5,
                         help="sessions starting per second (0.5)")
    agentic.add_argument("--turns", type=int, default=8, help="mean requests per trajectory (8)")
    agentic.add_argument("--osl", type=int, default=300, help="mean output tokens per turn (300)")
    agentic.add_argument("--subagent-prob", type=float, default=0.15,
                         help="chance that a main-trajectory turn spawns subagents (0.15)")
    agentic.add_argument("--tool-output-blocks", type=int, default=2,
                         help="most blocks a tool result adds to the prompt (2)")
    for sp in (plain, agentic):
        sp.add_argument("--trace-block-size", type=int, default=512,
                        help="tokens per hash id (512)")
        sp.add_argument("--seed", type=int, default=0, help="RNG seed (0)")
        sp.add_argument("-o", "--output", required=True, help="JSONL file to write")
    return p


def main(argv: list[str] | None = None) -> int:
    ns = build_parser().parse_args(argv)
    try:
        if ns.kind == "plain":
            rows = plain_rows(count=ns.count, rate=ns.rate, isl=ns.isl, osl=ns.osl,
                              spread=ns.spread, prefix_groups=ns.prefix_groups,
                              prefix_blocks=ns.prefix_blocks,
                              trace_block_size=ns.trace_block_size, seed=ns.seed)
        else:
            rows = agentic_rows(sessions=ns.sessions, session_rate=ns.session_rate,
                                turns=ns.turns, osl=ns.osl, subagent_prob=ns.subagent_prob,
                                tool_output_blocks=ns.tool_output_blocks,
                                trace_block_size=ns.trace_block_size, seed=ns.seed)
    except ValueError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    write_rows(rows, ns.output)
    fmt = "mooncake" if ns.kind == "plain" else "agentic_mooncake"
    print(f"wrote {len(rows)} {fmt} rows to {ns.output} (trace block size "
          f"{ns.trace_block_size}); replay: python -m mocker.replay {ns.output} "
          f"--trace-format {fmt} --trace-block-size {ns.trace_block_size}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
