"""Request-plane message codecs."""

import msgpack
import pytest

from worker import protocol
from worker.engine import EngineRequest, RequestOutput, Timings


def test_generate_round_trip_sets_receipt_time():
    request = EngineRequest(request_id="r1", token_ids=[1, 2, 3], max_tokens=5, received_at=0.0,
                            priority=2, ignore_eos=True, temperature=0.5, stop_token_ids=[0],
                            x_request_id="x", body=b'{"messages": []}')
    message = protocol.unpack(protocol.generate_message(42, request))
    assert message["type"] == "generate" and message["worker_id"] == 42
    decoded = protocol.request_from_message(message, received_at=12.5)
    assert decoded.received_at == 12.5
    request.received_at = 12.5
    assert decoded == request


def test_outputs_round_trip():
    outputs = [RequestOutput("a", 0, [1000]),
               RequestOutput("b", 3, [1001, 1002], "length",
                             timings=Timings(1.0, 2.0, 3.0, 4.0, 64)),
               RequestOutput("c", 0, [], "error", error=protocol.ERROR_SHUTDOWN),
               RequestOutput("d", 1, [], None, tool_call_deltas=[{"index": 0, "id": "call-1"}])]
    message = protocol.unpack(protocol.outputs_message(7, outputs))
    assert protocol.outputs_from_message(message) == outputs


@pytest.mark.parametrize("frame", [b"\xc1", msgpack.packb([1, 2]), msgpack.packb({"a": 1})])
def test_malformed_frames_raise_value_error(frame):
    with pytest.raises(ValueError):
        protocol.unpack(frame)


@pytest.mark.parametrize("fields,match", [
    ({"request_id": "", "token_ids": [], "max_tokens": 1}, "request_id"),
    ({"request_id": "r", "token_ids": "abc", "max_tokens": 1}, "token_ids"),
    ({"request_id": "r", "token_ids": [1], "max_tokens": "9"}, "max_tokens"),
    ({"request_id": "r", "token_ids": [1]}, "max_tokens"),
    ({"request_id": "r", "token_ids": [1], "max_tokens": True}, "max_tokens"),
    ({"request_id": "r", "token_ids": [1], "max_tokens": 2.5}, "max_tokens"),
    ({"request_id": "r", "token_ids": [1], "max_tokens": 1, "priority": None}, "priority"),
    ({"request_id": "r", "token_ids": [1], "max_tokens": 1, "priority": 1.5}, "priority"),
])
def test_bad_generate_fields_are_named(fields, match):
    with pytest.raises(ValueError, match=match):
        protocol.request_from_message({"type": "generate", "request": fields}, 0.0)


def test_engine_text_travels_with_its_tokens():
    output = RequestOutput("r", 4, [11, 12], text="hel", tool_call_deltas=[{"index": 0}])
    (decoded,) = protocol.outputs_from_message(protocol.unpack(protocol.outputs_message(1, [output])))
    assert decoded == output and decoded.text == "hel"
