"""The tracer: takes records on the event loop, writes them on one thread per sink.

    event loop                        writer thread (one per sink)
    ──────────                        ──────────────────────────────────────────────
    emit(record) ─► bounded queue ─►  envelope + json.dumps ─► sink buffer
       (full: drop, count, warn)      flush every flush_interval_ms, at buffer_bytes,
                                      and at close (gzip compression and file writes here)

`emit` never blocks and never does I/O: it is one `put_nowait` per sink. A sink that falls behind
(its queue of `capacity` records is full) drops the record, counts it in its `dropped`, and logs a
warning at most every 10 s. `close()` stops taking records, drains every queue, flushes and closes
the sinks: the frontend calls it from its shutdown, which runs on SIGTERM and SIGINT, so nothing
recorded before it is lost. Records are owned by the tracer once emitted: do not mutate them.

Each line is the envelope `{"timestamp": ms since the sink started, "event": record}`, the
timestamp taken when the record was emitted.
"""

from __future__ import annotations

import asyncio
import json
import logging
import queue
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, TextIO

from tracing.config import TraceConfig
from tracing.sinks import JsonlGzSink, JsonlSink, Sink, StderrSink

log = logging.getLogger(__name__)

DROP_WARNING_INTERVAL_S = 10.0
_STOP = object()


class _FlushRequest:
    __slots__ = ("done",)

    def __init__(self) -> None:
        self.done = threading.Event()


def encode_line(timestamp_ms: int, record: dict[str, Any]) -> bytes:
    """One envelope line; ValueError for NaN/inf, TypeError for values JSON cannot hold."""
    return (json.dumps({"timestamp": timestamp_ms, "event": record}, separators=(",", ":"),
                       ensure_ascii=False, allow_nan=False) + "\n").encode()


@dataclass(frozen=True, slots=True)
class SinkStats:
    name: str
    queued: int            # records waiting for the writer thread
    written: int           # records flushed to the sink
    dropped: int           # records refused because the sink was behind (or already closed)
    lost: int              # records whose write failed (the error is logged)
    encode_errors: int     # records that could not be encoded as JSON (logged)
    write_errors: int      # failed flushes (logged)


class SinkWriter:
    """One sink, its bounded queue and its writer thread."""

    def __init__(self, sink: Sink, capacity: int, flush_interval_ms: int,
                 clock: Callable[[], float]):
        self.sink = sink
        self.name = sink.name
        self._queue: queue.Queue[Any] = queue.Queue(maxsize=capacity)
        self._interval = max(flush_interval_ms, 1) / 1000.0
        self._clock = clock
        self._started = clock()
        self._thread: threading.Thread | None = None
        self.closing = False
        # counters: `dropped` written on the event loop, the rest on the writer thread
        self.dropped = 0
        self.written = 0
        self.lost = 0
        self.encode_errors = 0
        self.write_errors = 0
        self._dropped_logged = 0
        self._last_warning = float("-inf")

    def start(self) -> None:
        """Open the sink (raises OSError with the path when it cannot) and start the thread."""
        self.sink.open()
        self._started = self._clock()
        self._thread = threading.Thread(target=self._run, name=f"trace-{self.name}", daemon=True)
        self._thread.start()

    def offer(self, emitted_at: float, record: dict[str, Any]) -> bool:
        if not self.closing:
            try:
                self._queue.put_nowait((emitted_at, record))
                return True
            except queue.Full:
                pass
        self.dropped += 1
        now = time.monotonic()
        if now - self._last_warning >= DROP_WARNING_INTERVAL_S:
            log.warning("agent trace sink %s %s; dropped %d record(s) (%d in total)", self.name,
                        "is closed" if self.closing else "is behind",
                        self.dropped - self._dropped_logged, self.dropped)
            self._last_warning = now
            self._dropped_logged = self.dropped
        return False

    def request_flush(self) -> _FlushRequest:
        request = _FlushRequest()
        self._queue.put(request)        # blocks only while the writer drains a full queue
        return request

    def stop(self) -> None:
        """Blocking: queue the stop marker behind every record, then wait for the thread."""
        self.closing = True
        if self._thread is None:
            if self._queue.qsize():
                log.warning("agent trace sink %s was never started; %d record(s) not written",
                            self.name, self._queue.qsize())
            return
        while self._thread.is_alive():
            try:
                self._queue.put(_STOP, timeout=0.1)
                break
            except queue.Full:
                continue
        self._thread.join()

    @property
    def running(self) -> bool:
        return self._thread is not None and self._thread.is_alive() and not self.closing

    def stats(self) -> SinkStats:
        return SinkStats(self.name, self._queue.qsize(), self.written, self.dropped, self.lost,
                         self.encode_errors, self.write_errors)

    # --- writer thread ---

    def _run(self) -> None:
        next_flush = self._clock() + self._interval
        while True:
            try:
                item = self._queue.get(timeout=max(next_flush - self._clock(), 0.0))
            except queue.Empty:
                item = None
            if item is _STOP:
                self._flush()
                self._close()
                return
            if isinstance(item, _FlushRequest):
                self._flush()
                item.done.set()
            elif item is not None:
                self._write(*item)
                if self.sink.buffered_bytes >= self.sink.buffer_bytes:
                    self._flush()
            if self._clock() >= next_flush:
                self._flush()
                next_flush = self._clock() + self._interval

    def _write(self, emitted_at: float, record: dict[str, Any]) -> None:
        timestamp = max(int((emitted_at - self._started) * 1000), 0)
        try:
            line = encode_line(timestamp, record)
        except (TypeError, ValueError) as exc:
            self.encode_errors += 1
            log.error("agent trace sink %s: cannot encode a %s record: %s", self.name,
                      record.get("event_type"), exc)
            return
        self.sink.write(line)

    def _flush(self) -> None:
        pending = self.sink.buffered_lines
        if not pending:
            return
        try:
            self.sink.flush()
        except Exception:  # noqa: BLE001 - tracing is best effort: count, log, keep serving
            self.lost += pending
            self.write_errors += 1
            log.exception("agent trace sink %s: failed to write %d record(s)", self.name, pending)
        else:
            self.written += pending

    def _close(self) -> None:
        try:
            self.sink.close()
        except Exception:  # noqa: BLE001
            log.exception("agent trace sink %s: failed to close", self.name)


def make_sinks(config: TraceConfig, stderr: TextIO | None = None) -> list[Sink]:
    """The sinks `config` names, in its order (none when tracing is off)."""
    if not config.enabled:
        return []
    sinks: list[Sink] = []
    for name in config.sinks:
        if name == "jsonl":
            sinks.append(JsonlSink(config.output_path or "", config.buffer_bytes))
        elif name == "jsonl_gz":
            sinks.append(JsonlGzSink(config.output_path or "", config.buffer_bytes,
                                     config.gz_roll_bytes, config.gz_roll_lines))
        elif name == "stderr":
            sinks.append(StderrSink(stderr))
        else:
            raise ValueError(f"unknown agent trace sink {name!r}")
    return sinks


class Tracer:
    """Agent-trace records from the frontend and the tool ingress to the configured sinks.

        tracer = Tracer(TraceConfig.from_env(os.environ))
        await tracer.start()                 # opens files, starts writer threads
        tracer.emit(record)                  # from the event loop; never blocks
        await tracer.close()                 # at shutdown: drain, flush, close

    With tracing off (`enabled` False) it has no sinks and `emit` does nothing.
    """

    def __init__(self, config: TraceConfig, *, sinks: Sequence[Sink] | None = None,
                 stderr: TextIO | None = None, clock: Callable[[], float] = time.monotonic):
        self.config = config
        self._clock = clock
        chosen = list(sinks) if sinks is not None else make_sinks(config, stderr)
        self.writers = [SinkWriter(s, config.capacity, config.flush_interval_ms, clock)
                        for s in chosen]
        self.emitted = 0             # records accepted by at least one sink
        self._started = False
        self._closed = False

    @property
    def enabled(self) -> bool:
        return bool(self.writers)

    @property
    def dropped(self) -> int:
        return sum(w.dropped for w in self.writers)

    @property
    def written(self) -> int:
        return sum(w.written for w in self.writers)

    def stats(self) -> list[SinkStats]:
        return [w.stats() for w in self.writers]

    async def start(self) -> None:
        if self._started:
            return
        self._started = True
        for writer in self.writers:
            try:
                await asyncio.to_thread(writer.start)
            except OSError as exc:
                await self.close()
                raise RuntimeError(f"agent trace sink {writer.name} cannot open its output: "
                                   f"{exc}") from exc
        if self.writers:
            log.info("agent trace sinks ready: %s", ", ".join(w.name for w in self.writers))

    def emit(self, record: dict[str, Any]) -> bool:
        """Queue `record` for every sink; False when some sink dropped it (counted)."""
        if not self.writers:
            return True
        now = self._clock()
        accepted = [w.offer(now, record) for w in self.writers]
        if any(accepted):
            self.emitted += 1
        return all(accepted)

    async def flush(self) -> None:
        """Write out everything emitted so far (tests; a frontend need not call it)."""
        live = [w for w in self.writers if w.running]
        requests = [await asyncio.to_thread(w.request_flush) for w in live]
        for request in requests:
            await asyncio.to_thread(request.done.wait)

    async def close(self) -> None:
        """Stop taking records, drain the queues, flush and close every sink. Idempotent."""
        if self._closed:
            return
        self._closed = True
        for writer in self.writers:
            writer.closing = True
        await asyncio.gather(*(asyncio.to_thread(w.stop) for w in self.writers))
        for writer in self.writers:
            s = writer.stats()
            log.info("agent trace sink %s closed: %d written, %d dropped, %d lost", s.name,
                     s.written, s.dropped, s.lost)
