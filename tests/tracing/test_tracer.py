"""Sinks and the tracer: envelopes, gzip segments and members, rolling, numbering, flushing,
dropping when behind, failures counted, everything written at close (also on SIGTERM)."""

import asyncio
import gzip
import io
import json
import logging
import signal
import subprocess
import sys
import textwrap
import threading
import time
import zlib
from pathlib import Path

import pytest

from tests.tracing.trace_factories import read_envelopes, request_end
from tracing.config import TraceConfig
from tracing.sinks import JsonlGzSink, JsonlSink, StderrSink, next_segment_index, segment_prefix
from tracing.tracer import Tracer

ROOT = Path(__file__).resolve().parents[2]


def gzip_members(data: bytes) -> int:
    count = 0
    while data:
        inflater = zlib.decompressobj(16 + zlib.MAX_WBITS)
        inflater.decompress(data)
        data = inflater.unused_data
        count += 1
    return count


def config(tmp_path: Path, sinks: str = "jsonl_gz", **env: str) -> TraceConfig:
    return TraceConfig.from_env({"DYN_AGENT_TRACE": "1", "DYN_AGENT_TRACE_SINKS": sinks,
                                 "DYN_AGENT_TRACE_OUTPUT_PATH": str(tmp_path / "trace"), **env})


def line(n: int, size: int = 10) -> bytes:
    """A JSON line of exactly `size` bytes, newline included."""
    data = json.dumps({"n": n}, separators=(",", ":")).encode().ljust(size - 1) + b"\n"
    assert len(data) == size
    return data


# --- sinks, directly ---

def test_segment_prefix_strips_one_jsonl_suffix():
    assert segment_prefix("/t/a.jsonl.gz") == "/t/a"
    assert segment_prefix("/t/a.jsonl") == "/t/a"
    assert segment_prefix("/t/a") == "/t/a"


def test_gz_segments_get_one_member_per_flush(tmp_path):
    sink = JsonlGzSink(tmp_path / "trace.jsonl.gz", buffer_bytes=1 << 20, roll_bytes=1 << 20)
    sink.open()
    for flush in range(3):
        sink.write(line(2 * flush, 40))
        sink.write(line(2 * flush + 1, 40))
        sink.flush()
    sink.flush()                                   # nothing buffered: no empty member
    sink.close()
    path = tmp_path / "trace.000000.jsonl.gz"
    assert sorted(p.name for p in tmp_path.iterdir()) == [path.name]
    assert gzip_members(path.read_bytes()) == 3
    assert [json.loads(x)["n"] for x in gzip.decompress(path.read_bytes()).splitlines()] == \
        list(range(6))


def test_gz_rolls_by_uncompressed_bytes_exactly(tmp_path):
    """Roll before a line when the segment has a line and bytes + line > roll_bytes."""
    sink = JsonlGzSink(tmp_path / "t", buffer_bytes=1 << 20, roll_bytes=30)
    sink.open()
    for n in range(4):
        sink.write(line(n, 10))      # 10, 20, 30 fit (30 is not > 30); the 4th rolls
    sink.write(line(9, 100))         # a long line rolls again but always fits an empty segment
    sink.write(line(10, 10))
    sink.close()
    names = sorted(p.name for p in tmp_path.iterdir())
    assert names == ["t.000000.jsonl.gz", "t.000001.jsonl.gz", "t.000002.jsonl.gz",
                     "t.000003.jsonl.gz"]
    counts = [len(gzip.decompress((tmp_path / n).read_bytes()).splitlines()) for n in names]
    assert counts == [3, 1, 1, 1]


def test_gz_rolls_by_lines(tmp_path):
    sink = JsonlGzSink(tmp_path / "t", buffer_bytes=1 << 20, roll_bytes=1 << 20, roll_lines=2)
    sink.open()
    for n in range(5):
        sink.write(line(n, 20))
    sink.close()
    counts = [len(gzip.decompress(p.read_bytes()).splitlines())
              for p in sorted(tmp_path.iterdir())]
    assert counts == [2, 2, 1]


def test_gz_numbering_continues_after_the_highest_segment_and_never_overwrites(tmp_path):
    (tmp_path / "t.000000.jsonl.gz").write_bytes(b"old0")
    (tmp_path / "t.000005.jsonl.gz").write_bytes(b"old5")
    (tmp_path / "t.000007.jsonl.gz").write_bytes(b"someone else's")   # next roll must skip it
    (tmp_path / "other.000009.jsonl.gz").write_bytes(b"other prefix")
    assert next_segment_index(str(tmp_path / "t")) == 8
    (tmp_path / "t.000007.jsonl.gz").unlink()
    sink = JsonlGzSink(tmp_path / "t", buffer_bytes=1 << 20, roll_bytes=15)
    sink.open()
    assert sink.index == 6
    (tmp_path / "t.000007.jsonl.gz").write_bytes(b"appeared meanwhile")
    sink.write(line(0, 10))
    sink.write(line(1, 10))           # rolls: 7 exists now, so 8
    sink.close()
    assert (tmp_path / "t.000000.jsonl.gz").read_bytes() == b"old0"
    assert (tmp_path / "t.000005.jsonl.gz").read_bytes() == b"old5"
    assert (tmp_path / "t.000007.jsonl.gz").read_bytes() == b"appeared meanwhile"
    assert len(gzip.decompress((tmp_path / "t.000006.jsonl.gz").read_bytes()).splitlines()) == 1
    assert len(gzip.decompress((tmp_path / "t.000008.jsonl.gz").read_bytes()).splitlines()) == 1


def test_jsonl_appends_to_the_literal_path(tmp_path):
    path = tmp_path / "sub" / "trace.jsonl"
    path.parent.mkdir()
    path.write_bytes(b'{"old":1}\n')
    sink = JsonlSink(path, buffer_bytes=0)
    sink.open()
    sink.write(b'{"new":1}\n')
    sink.close()
    assert path.read_bytes() == b'{"old":1}\n{"new":1}\n'


def test_stderr_sink_writes_lines_to_its_stream():
    stream = io.StringIO()
    sink = StderrSink(stream)
    sink.write(b'{"a":1}\n')
    sink.flush()
    assert stream.getvalue() == '{"a":1}\n'


# --- the tracer ---

def test_tracer_writes_envelopes_to_every_sink(tmp_path):
    async def run():
        clock = {"t": 50.0}
        stream = io.StringIO()
        tracer = Tracer(config(tmp_path, "jsonl_gz, jsonl, stderr",
                               DYN_AGENT_TRACE_OUTPUT_PATH=str(tmp_path / "trace.jsonl")),
                        stderr=stream, clock=lambda: clock["t"])
        await tracer.start()
        clock["t"] = 50.25
        assert tracer.emit(request_end("a"))
        clock["t"] = 51.0
        assert tracer.emit(request_end("b"))
        await tracer.close()
        return tracer, stream

    tracer, stream = asyncio.run(run())
    expected = [{"timestamp": 250, "event": request_end("a")},
                {"timestamp": 1000, "event": request_end("b")}]
    assert read_envelopes(tmp_path / "trace.000000.jsonl.gz") == expected
    assert read_envelopes(tmp_path / "trace.jsonl") == expected
    assert [json.loads(x) for x in stream.getvalue().splitlines()] == expected
    assert tracer.emitted == 2 and tracer.written == 6 and tracer.dropped == 0


def test_disabled_tracer_does_nothing(tmp_path):
    async def run():
        tracer = Tracer(TraceConfig.from_env({}))
        await tracer.start()
        assert not tracer.enabled
        assert tracer.emit(request_end())
        await tracer.close()
    asyncio.run(run())
    assert list(tmp_path.iterdir()) == []


def test_flush_interval_writes_without_close(tmp_path):
    async def run():
        tracer = Tracer(config(tmp_path, DYN_AGENT_TRACE_JSONL_FLUSH_INTERVAL_MS="20"))
        await tracer.start()
        tracer.emit(request_end())
        deadline = time.monotonic() + 5
        path = tmp_path / "trace.000000.jsonl.gz"
        while (not path.exists() or not path.stat().st_size) and time.monotonic() < deadline:
            await asyncio.sleep(0.01)
        assert [e["event"] for e in read_envelopes(path)] == [request_end()]
        await tracer.close()
    asyncio.run(run())


def test_buffer_bytes_triggers_a_flush_per_full_buffer(tmp_path):
    async def run():
        tracer = Tracer(config(tmp_path, DYN_AGENT_TRACE_JSONL_BUFFER_BYTES="1",
                               DYN_AGENT_TRACE_JSONL_FLUSH_INTERVAL_MS="60000"))
        await tracer.start()
        for n in range(3):
            tracer.emit(request_end(f"r{n}"))
        await tracer.flush()
        data = (tmp_path / "trace.000000.jsonl.gz").read_bytes()
        await tracer.close()
        return data
    data = asyncio.run(run())
    assert gzip_members(data) == 3                 # one member per record: buffer of 1 byte


class GatedSink:
    """A sink whose flush waits for a gate: a writer that has fallen behind."""
    name = "gated"
    buffer_bytes = 0

    def __init__(self, fail: bool = False):
        self.gate = threading.Event()
        self.lines: list[bytes] = []
        self.pending: list[bytes] = []
        self.fail = fail

    buffered_bytes = property(lambda self: sum(map(len, self.pending)))
    buffered_lines = property(lambda self: len(self.pending))

    def open(self):
        pass

    def write(self, data):
        self.pending.append(data)

    def flush(self):
        self.gate.wait()
        pending, self.pending = self.pending, []
        if self.fail:
            raise OSError("disk full")
        self.lines.extend(pending)

    def close(self):
        self.flush()


def test_a_sink_that_falls_behind_drops_and_counts_without_blocking(caplog, tmp_path):
    sink = GatedSink()

    async def run():
        tracer = Tracer(config(tmp_path, DYN_AGENT_TRACE_CAPACITY="2"), sinks=[sink])
        await tracer.start()
        started = time.monotonic()
        with caplog.at_level(logging.WARNING, logger="tracing.tracer"):
            results = [tracer.emit(request_end(f"r{n}")) for n in range(10)]
        assert time.monotonic() - started < 0.5           # never blocks
        sink.gate.set()
        await tracer.close()
        return tracer, results

    tracer, results = asyncio.run(run())
    # the writer took one record and is stuck flushing it; two more fit the queue; 7 dropped
    assert results.count(False) == tracer.dropped
    assert 7 <= tracer.dropped <= 8
    assert len(sink.lines) == 10 - tracer.dropped
    assert tracer.stats()[0].dropped == tracer.dropped
    assert "behind" in caplog.text and caplog.text.count("dropped") == 1   # rate-limited


def test_write_failures_are_counted_and_logged_and_the_tracer_keeps_going(caplog, tmp_path):
    sink = GatedSink(fail=True)
    sink.gate.set()

    async def run():
        tracer = Tracer(config(tmp_path), sinks=[sink])
        await tracer.start()
        with caplog.at_level(logging.ERROR, logger="tracing.tracer"):
            tracer.emit(request_end("a"))
            await tracer.flush()
            sink.fail = False
            tracer.emit(request_end("b"))
            tracer.emit({"event_type": "request_end", "bad": {1, 2}})   # not JSON
            await tracer.close()
        return tracer

    tracer = asyncio.run(run())
    stats = tracer.stats()[0]
    assert (stats.lost, stats.write_errors, stats.written, stats.encode_errors) == (1, 1, 1, 1)
    assert "disk full" in caplog.text and "cannot encode" in caplog.text


def test_close_writes_everything_emitted_and_later_records_are_dropped(tmp_path):
    async def run():
        tracer = Tracer(config(tmp_path, DYN_AGENT_TRACE_JSONL_GZ_ROLL_LINES="100"))
        await tracer.start()
        for n in range(500):
            assert tracer.emit(request_end(f"r{n}"))
        await tracer.close()
        await tracer.close()                           # idempotent
        assert not tracer.emit(request_end("late"))
        return tracer

    tracer = asyncio.run(run())
    segments = sorted(tmp_path.iterdir())
    assert len(segments) == 5
    ids = [e["event"]["request"]["request_id"] for p in segments for e in read_envelopes(p)]
    assert ids == [f"r{n}" for n in range(500)]
    assert tracer.written == 500 and tracer.dropped == 1


def test_start_fails_clearly_when_the_output_cannot_be_opened(tmp_path):
    (tmp_path / "file").write_text("")
    bad = TraceConfig.from_env({"DYN_AGENT_TRACE": "1", "DYN_AGENT_TRACE_SINKS": "jsonl",
                                "DYN_AGENT_TRACE_OUTPUT_PATH": str(tmp_path / "file" / "t")})

    async def run():
        await Tracer(bad).start()
    with pytest.raises(RuntimeError, match="agent trace sink jsonl cannot open"):
        asyncio.run(run())


SIGTERM_SCRIPT = textwrap.dedent("""
    import asyncio, signal, sys
    from tracing.config import TraceConfig
    from tracing.tracer import Tracer

    async def main():
        tracer = Tracer(TraceConfig.from_env({"DYN_AGENT_TRACE": "1",
                                              "DYN_AGENT_TRACE_OUTPUT_PATH": sys.argv[1]}))
        await tracer.start()
        stop = asyncio.Event()
        for sig in (signal.SIGTERM, signal.SIGINT):
            asyncio.get_running_loop().add_signal_handler(sig, stop.set)
        for n in range(200):
            tracer.emit({"event_type": "request_end", "n": n})
        print("ready", flush=True)
        await stop.wait()          # the frontend's shutdown: close the tracer
        await tracer.close()

    asyncio.run(main())
""")


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT])
def test_shutdown_on_a_signal_loses_nothing_recorded(tmp_path, sig):
    """Flush interval 1 s and 1 MiB buffer: nothing is on disk until the shutdown closes the
    tracer, which must then write all 200 records."""
    proc = subprocess.Popen([sys.executable, "-c", SIGTERM_SCRIPT, str(tmp_path / "t")],
                            stdout=subprocess.PIPE, cwd=ROOT, text=True)
    try:
        assert proc.stdout.readline().strip() == "ready"
        proc.send_signal(sig)
        assert proc.wait(timeout=10) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    events = [e["event"]["n"] for e in read_envelopes(tmp_path / "t.000000.jsonl.gz")]
    assert events == list(range(200))
