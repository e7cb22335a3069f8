"""open_tracing: a tool event pushed by a harness and a request_end from the frontend both land
in the gzip segment once tracing closes."""

import asyncio
import socket
import struct

import msgpack
import pytest
import zmq
import zmq.asyncio

from tests.tracing.trace_factories import context, read_envelopes, tool_record
from tracing.config import TraceConfig
from tracing.records import AgentContext, RequestClock, RequestEnd
from tracing.service import open_tracing


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_tool_events_and_request_ends_reach_the_sink(tmp_path):
    endpoint = f"tcp://127.0.0.1:{free_port()}"
    config = TraceConfig.from_env({"DYN_AGENT_TRACE": "1",
                                   "DYN_AGENT_TRACE_OUTPUT_PATH": str(tmp_path / "trace"),
                                   "DYN_AGENT_TRACE_TOOL_EVENTS_ZMQ_ENDPOINT": endpoint,
                                   "DYN_AGENT_TRACE_TOOL_EVENTS_ZMQ_TOPIC": "agent-tool-events"})

    async def run():
        async with open_tracing(config) as tracing:
            assert tracing.enabled and tracing.ingress is not None
            ctx = zmq.asyncio.Context()
            push = ctx.socket(zmq.PUSH)
            push.connect(endpoint)
            record = {**tool_record(), "schema": "dynamo.request.trace.v1"}
            await push.send_multipart([b"agent-tool-events", struct.pack(">Q", 0),
                                       msgpack.packb(record)])
            clock = RequestClock()
            clock.mark_end()
            end = RequestEnd.build(agent_context=AgentContext.from_mapping(context()),
                                   request_id="r1", model="m", clock=clock)
            tracing.tracer.emit(end.to_record())
            for _ in range(500):
                if tracing.ingress.accepted:
                    break
                await asyncio.sleep(0.01)
            push.close(linger=0)
            ctx.term()
        return tracing

    tracing = asyncio.run(run())
    events = [e["event"] for e in read_envelopes(tmp_path / "trace.000000.jsonl.gz")]
    assert sorted(e["event_type"] for e in events) == ["request_end", "tool_end"]
    assert all(e["schema"] == "dynamo.agent.trace.v1" for e in events)
    assert tracing.tracer.written == 2


def test_no_ingress_without_an_endpoint_and_nothing_when_off(tmp_path):
    async def run(env):
        async with open_tracing(TraceConfig.from_env(env)) as tracing:
            return tracing.enabled, tracing.ingress
    assert asyncio.run(run({})) == (False, None)
    on = {"DYN_AGENT_TRACE": "1", "DYN_AGENT_TRACE_OUTPUT_PATH": str(tmp_path / "t")}
    assert asyncio.run(run(on)) == (True, None)


def test_a_taken_endpoint_fails_start_and_closes_the_tracer(tmp_path):
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        config = TraceConfig.from_env({
            "DYN_AGENT_TRACE": "1", "DYN_AGENT_TRACE_OUTPUT_PATH": str(tmp_path / "t"),
            "DYN_AGENT_TRACE_TOOL_EVENTS_ZMQ_ENDPOINT":
                f"tcp://127.0.0.1:{taken.getsockname()[1]}"})

        async def run():
            async with open_tracing(config):
                pass
        with pytest.raises(RuntimeError, match="cannot bind"):
            asyncio.run(run())
