"""Trace sinks (DESIGN.md §6.2): synchronous writers that live on a tracer's writer thread.

A sink buffers encoded lines (`write`, never any I/O) and writes them out on `flush`; the tracer
decides when to flush (every `flush_interval_ms`, when `buffered_bytes` reaches the sink's
`buffer_bytes`, and at close). `flush` always empties the buffer, even when the write fails
(it raises; the tracer counts the lost lines), so a broken disk never grows memory.

    jsonl     append every line to one literal file
    jsonl_gz  segments <prefix>.000000.jsonl.gz, ...; each flush appends one complete gzip member
              per segment it touches; a line starts a new segment when the current one already has
              a line and (segment bytes + line bytes) > roll_bytes or lines >= roll_lines
              (uncompressed); numbering starts after the highest existing segment and skips any
              file that exists, so nothing is ever overwritten
    stderr    each line as written, flushed at once
"""

from __future__ import annotations

import gzip
import os
import re
import sys
from pathlib import Path
from typing import BinaryIO, Protocol, TextIO


class Sink(Protocol):
    name: str
    buffer_bytes: int            # flush once this many bytes are buffered (0: every line)

    @property
    def buffered_bytes(self) -> int: ...

    @property
    def buffered_lines(self) -> int: ...

    def open(self) -> None: ...

    def write(self, line: bytes) -> None: ...

    def flush(self) -> None: ...

    def close(self) -> None: ...


class _Buffer:
    """Lines waiting for the next flush."""

    def __init__(self, buffer_bytes: int):
        self.buffer_bytes = buffer_bytes
        self._lines: list[bytes] = []
        self._bytes = 0

    @property
    def buffered_bytes(self) -> int:
        return self._bytes

    @property
    def buffered_lines(self) -> int:
        return len(self._lines)

    def _append(self, line: bytes) -> None:
        self._lines.append(line)
        self._bytes += len(line)

    def _take(self) -> list[bytes]:
        lines, self._lines, self._bytes = self._lines, [], 0
        return lines


class JsonlSink(_Buffer):
    name = "jsonl"

    def __init__(self, path: str | os.PathLike[str], buffer_bytes: int):
        super().__init__(buffer_bytes)
        self.path = Path(path)
        self._file: BinaryIO | None = None

    def open(self) -> None:
        if self.path.parent != Path(""):
            self.path.parent.mkdir(parents=True, exist_ok=True)
        self._file = open(self.path, "ab")

    def write(self, line: bytes) -> None:
        self._append(line)

    def flush(self) -> None:
        lines = self._take()
        if lines and self._file is not None:
            self._file.write(b"".join(lines))
            self._file.flush()

    def close(self) -> None:
        try:
            self.flush()
        finally:
            if self._file is not None:
                self._file.close()
                self._file = None


def segment_prefix(path: str | os.PathLike[str]) -> str:
    """The configured path with a `.jsonl.gz` or `.jsonl` suffix stripped."""
    raw = os.fspath(path)
    for suffix in (".jsonl.gz", ".jsonl"):
        if raw.endswith(suffix):
            return raw[: -len(suffix)]
    return raw


def segment_path(prefix: str, index: int) -> Path:
    return Path(f"{prefix}.{index:06d}.jsonl.gz")


def next_segment_index(prefix: str) -> int:
    """One past the highest existing `<prefix>.N.jsonl.gz` (0 when there is none)."""
    directory, base = os.path.split(prefix)
    pattern = re.compile(re.escape(base) + r"\.(\d{6,})\.jsonl\.gz\Z")
    try:
        names = os.listdir(directory or ".")
    except FileNotFoundError:
        return 0
    indices = [int(m.group(1)) for name in names if (m := pattern.match(name))]
    return max(indices) + 1 if indices else 0


class JsonlGzSink(_Buffer):
    name = "jsonl_gz"

    def __init__(self, path: str | os.PathLike[str], buffer_bytes: int, roll_bytes: int,
                 roll_lines: int | None = None):
        super().__init__(buffer_bytes)
        self.prefix = segment_prefix(path)
        self.roll_bytes = max(roll_bytes, 1)
        self.roll_lines = roll_lines
        self.index = 0                   # the segment new lines go to
        self.segment_bytes = 0           # uncompressed bytes assigned to the current segment
        self.segment_lines = 0
        self._segments: list[int] = []   # per buffered line: its segment index
        self.segments_written: set[int] = set()

    @property
    def current_path(self) -> Path:
        return segment_path(self.prefix, self.index)

    def open(self) -> None:
        parent = os.path.dirname(self.prefix)
        if parent:
            os.makedirs(parent, exist_ok=True)
        self.index = self._free_index(next_segment_index(self.prefix))

    def _free_index(self, index: int) -> int:
        while segment_path(self.prefix, index).exists():
            index += 1
        return index

    def write(self, line: bytes) -> None:
        if self.segment_lines > 0 and (
                self.segment_bytes + len(line) > self.roll_bytes
                or (self.roll_lines is not None and self.segment_lines >= self.roll_lines)):
            self.index = self._free_index(self.index + 1)
            self.segment_bytes = self.segment_lines = 0
        self._append(line)
        self._segments.append(self.index)
        self.segment_bytes += len(line)
        self.segment_lines += 1

    def flush(self) -> None:
        lines, segments = self._take(), self._segments
        self._segments = []
        start = 0
        while start < len(lines):       # one gzip member per run of lines of one segment
            end = start
            while end < len(lines) and segments[end] == segments[start]:
                end += 1
            member = gzip.compress(b"".join(lines[start:end]))
            with open(segment_path(self.prefix, segments[start]), "ab") as f:
                f.write(member)
            self.segments_written.add(segments[start])
            start = end

    def close(self) -> None:
        self.flush()


class StderrSink(_Buffer):
    name = "stderr"

    def __init__(self, stream: TextIO | None = None):
        super().__init__(0)
        self._stream = stream

    def open(self) -> None:
        pass

    def write(self, line: bytes) -> None:
        self._append(line)

    def flush(self) -> None:
        lines = self._take()
        if lines:
            stream = self._stream or sys.stderr
            stream.write(b"".join(lines).decode())
            stream.flush()

    def close(self) -> None:
        self.flush()
