"""Reading trace files: the one reader behind `tracing.perfetto` and `tracing.to_mooncake`.

Inputs are files, folders (their `*.jsonl` and `*.jsonl.gz`) or glob patterns. `.gz` files are
read as multi-member gzip (one member per sink flush). Blank lines are skipped; a line is either
the sink envelope `{"timestamp", "event": record}` or a bare record (the earliest sinks), and
readers get the record. Tool records arrive late, so consumers sort by `event_time_unix_ms`.
"""

from __future__ import annotations

import glob
import gzip
import json
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any


class TraceReadError(ValueError):
    """A file that cannot be read as a trace; the message names the file (and line)."""


@dataclass(frozen=True, slots=True)
class TraceLine:
    path: Path
    line_no: int               # 1-based
    event: dict[str, Any]      # the record (envelope unwrapped)

    @property
    def where(self) -> str:
        return f"{self.path}:{self.line_no}"


def expand_inputs(inputs: Iterable[str]) -> list[Path]:
    """Files, folders and globs -> sorted, de-duplicated paths. A name that matches nothing is
    kept as given, so callers can report it as missing."""
    paths: list[Path] = []
    for item in inputs:
        candidates = [Path(p) for p in sorted(glob.glob(item))] or [Path(item)]
        for candidate in candidates:
            if candidate.is_dir():
                paths.extend(sorted(candidate.glob("*.jsonl")))
                paths.extend(sorted(candidate.glob("*.jsonl.gz")))
            else:
                paths.append(candidate)
    return sorted(dict.fromkeys(paths))


def _open(path: Path) -> IO[str]:
    if path.suffix == ".gz":
        return gzip.open(path, "rt", encoding="utf-8")
    return open(path, encoding="utf-8")


def unwrap(value: Any) -> dict[str, Any] | None:
    """The record of one parsed line: `event` of an envelope, else the line; None if not a map."""
    if not isinstance(value, dict):
        return None
    event = value.get("event", value)
    return event if isinstance(event, dict) else None


def read_file(path: Path) -> Iterator[TraceLine]:
    try:
        with _open(path) as f:
            for line_no, line in enumerate(f, start=1):
                text = line.strip()
                if not text:
                    continue
                try:
                    value = json.loads(text)
                except json.JSONDecodeError as exc:
                    raise TraceReadError(f"{path}:{line_no}: invalid JSON: {exc}") from None
                event = unwrap(value)
                if event is not None:
                    yield TraceLine(path, line_no, event)
    except (OSError, EOFError, UnicodeDecodeError) as exc:
        # a missing file, a truncated gzip member (writer killed mid-flush), bad bytes
        raise TraceReadError(f"{path}: cannot read: {exc}") from exc


def read_lines(paths: Sequence[Path]) -> Iterator[TraceLine]:
    for path in paths:
        yield from read_file(path)


def event_time(event: dict[str, Any]) -> float:
    value = event.get("event_time_unix_ms")
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return float(value)
    return float("inf")


def load_sorted(paths: Sequence[Path]) -> list[TraceLine]:
    """Every record, ordered by event_time_unix_ms (file order among equals; no time: last)."""
    return sorted(read_lines(paths), key=lambda line: event_time(line.event))
