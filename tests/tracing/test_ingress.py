"""The ZMQ tool-event ingress over real PUSH sockets on 127.0.0.1 (Dynamo's relay tests plus
every malformed-message reason)."""

import asyncio
import socket
import struct
import time

import msgpack
import pytest
import zmq
import zmq.asyncio

from tests.tracing.trace_factories import context, tool_record
from tracing.ingress import ToolEventIngress


class CollectingTracer:
    def __init__(self):
        self.records = []

    def emit(self, record):
        self.records.append(record)
        return True


def frames(record, topic=b"agent-tool-events", seq=0):
    return [topic, struct.pack(">Q", seq), msgpack.packb(record, use_bin_type=True)]


def pi_record(call_id="call-1", **tool):
    record = tool_record("tool_end", 1250, ctx=context(phase="reasoning"), tool_call_id=call_id,
                         status="ok", started_at_unix_ms=1000, ended_at_unix_ms=1250,
                         duration_ms=250.123, output_bytes=12, error_type=None, **tool)
    record["schema"] = "dynamo.request.trace.v1"
    return record


async def wait_for(predicate, timeout=5.0):
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, "timed out"
        await asyncio.sleep(0.005)


async def started(tracer, **kwargs):
    ingress = ToolEventIngress("tcp://127.0.0.1:*", tracer, **kwargs)
    await ingress.start()
    return ingress


def push(ctx, endpoint):
    sock = ctx.socket(zmq.PUSH)
    sock.setsockopt(zmq.LINGER, 1000)
    sock.connect(endpoint)
    return sock


def test_push_delivers_a_normalised_record():
    async def run():
        tracer = CollectingTracer()
        ingress = await started(tracer)
        ctx = zmq.asyncio.Context()
        sock = push(ctx, ingress.bound_endpoint)
        await sock.send_multipart(frames(pi_record()))
        await wait_for(lambda: tracer.records)
        sock.close()
        ctx.term()
        await ingress.close()
        return tracer.records, ingress

    records, ingress = asyncio.run(run())
    assert records == [{
        "schema": "dynamo.agent.trace.v1", "event_type": "tool_end", "event_time_unix_ms": 1250,
        "event_source": "harness", "agent_context": context(),
        "tool": {"tool_call_id": "call-1", "tool_class": "web_search", "status": "succeeded",
                 "started_at_unix_ms": 1000, "ended_at_unix_ms": 1250, "duration_ms": 250.123,
                 "output_bytes": 12}}]
    assert (ingress.received, ingress.accepted, sum(ingress.rejected.values())) == (1, 1, 0)


def test_two_producers_both_deliver():
    async def run():
        tracer = CollectingTracer()
        ingress = await started(tracer)
        ctx = zmq.asyncio.Context()
        socks = [push(ctx, ingress.bound_endpoint) for _ in range(2)]
        for i, sock in enumerate(socks):
            for n in range(3):
                await sock.send_multipart(frames(pi_record(f"p{i}-{n}"), seq=n))
        await wait_for(lambda: len(tracer.records) == 6)
        for sock in socks:
            sock.close()
        ctx.term()
        await ingress.close()
        return tracer.records

    ids = sorted(r["tool"]["tool_call_id"] for r in asyncio.run(run()))
    assert ids == ["p0-0", "p0-1", "p0-2", "p1-0", "p1-1", "p1-2"]


def test_start_fails_clearly_when_the_port_is_taken():
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        endpoint = f"tcp://127.0.0.1:{taken.getsockname()[1]}"

        async def run():
            await ToolEventIngress(endpoint, CollectingTracer()).start()
        with pytest.raises(RuntimeError, match=f"cannot bind {endpoint}"):
            asyncio.run(run())


def test_topic_filter_drops_other_topics_and_keeps_the_matching_one():
    async def run():
        tracer = CollectingTracer()
        ingress = await started(tracer, topic="matching-tools")
        ctx = zmq.asyncio.Context()
        sock = push(ctx, ingress.bound_endpoint)
        await sock.send_multipart(frames(pi_record("dropped"), topic=b"other-tools"))
        await sock.send_multipart(frames(pi_record("kept"), topic=b"matching-tools"))
        await wait_for(lambda: ingress.received == 2)
        sock.close()
        ctx.term()
        await ingress.close()
        return tracer.records, ingress

    records, ingress = asyncio.run(run())
    assert [r["tool"]["tool_call_id"] for r in records] == ["kept"]
    assert ingress.rejected == {"topic": 1}


def test_without_a_configured_topic_any_topic_is_accepted():
    async def run():
        tracer = CollectingTracer()
        ingress = await started(tracer)
        ctx = zmq.asyncio.Context()
        sock = push(ctx, ingress.bound_endpoint)
        await sock.send_multipart(frames(pi_record("a"), topic=b""))
        await sock.send_multipart(frames(pi_record("b"), topic=b"anything"))
        await wait_for(lambda: len(tracer.records) == 2)
        sock.close()
        ctx.term()
        await ingress.close()
    asyncio.run(run())


def test_malformed_messages_are_counted_and_dropped_and_the_ingress_keeps_going():
    good = pi_record("good")
    seq = struct.pack(">Q", 0)
    bad_messages = [
        [b"agent-tool-events", seq],                                         # 2 frames
        [b"agent-tool-events", seq, msgpack.packb(good), b"extra"],          # 4 frames
        [b"agent-tool-events", seq, b"\xc1\xc1not msgpack"],
        [b"agent-tool-events", seq, msgpack.packb(good) + b"\x00"],          # trailing bytes
        [b"agent-tool-events", seq, msgpack.packb([1, 2, 3])],
        [b"agent-tool-events", seq, msgpack.packb({1: "int key"})],
        [b"agent-tool-events", seq, msgpack.packb({**good, "tool": None})],
        [b"agent-tool-events", seq, msgpack.packb({**good, "event_source": "dynamo"})],
        [b"agent-tool-events", seq, msgpack.packb({**good, "agent_context": {}})],
        [b"agent-tool-events", seq, msgpack.packb({**good, "event_time_unix_ms": "x"})],
        [b"agent-tool-events", seq, msgpack.packb({**good, "pad": "x" * 2000})],  # > 1 KiB
    ]

    async def run():
        tracer = CollectingTracer()
        ingress = await started(tracer, max_payload_bytes=1024)
        ctx = zmq.asyncio.Context()
        sock = push(ctx, ingress.bound_endpoint)
        for message in bad_messages:
            await sock.send_multipart(message)
        await sock.send_multipart(frames(good))
        await wait_for(lambda: ingress.received == len(bad_messages) + 1)
        sock.close()
        ctx.term()
        await ingress.close()
        return tracer.records, ingress

    records, ingress = asyncio.run(run())
    assert [r["tool"]["tool_call_id"] for r in records] == ["good"]
    assert ingress.rejected == {"frame_count": 2, "msgpack": 3, "not_a_map": 1,
                                "tool_missing": 1, "event_source": 1, "agent_context": 1,
                                "event_time": 1, "oversized": 1}
    assert ingress.accepted == 1


def test_close_then_the_port_is_free_again():
    async def run():
        ingress = await started(CollectingTracer())
        endpoint = ingress.bound_endpoint
        await ingress.close()
        again = ToolEventIngress(endpoint, CollectingTracer())
        await again.start()
        await again.close()
    asyncio.run(run())
