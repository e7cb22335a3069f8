"""Random and mutated JSON at both endpoints: every answer is a well-formed OpenAI error or
success, never a 5xx, and the server keeps answering."""

from __future__ import annotations

import http.client
import json

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tests.conftest import Stack

JSON_SCALARS = st.one_of(st.none(), st.booleans(), st.integers(-2**70, 2**70),
                         st.floats(allow_nan=False), st.text(max_size=20))
JSON_VALUES = st.recursive(JSON_SCALARS, lambda inner: st.one_of(
    st.lists(inner, max_size=4), st.dictionaries(st.text(max_size=8), inner, max_size=4)),
    max_leaves=12)
# Output lengths stay small (or are not integers at all) so valid bodies finish fast: an
# arbitrary JSON integer once asked for 8190 tokens, a minute at real speed. Everything else is
# arbitrary.
SMALL_COUNTS = st.one_of(st.integers(-3, 6), JSON_VALUES.filter(lambda v: not isinstance(v, int)))
KEYS = ["model", "messages", "prompt", "max_tokens", "max_completion_tokens", "temperature",
        "top_p", "n", "stop", "seed", "stream", "stream_options", "ignore_eos", "tools", "user",
        "nvext", "store", "metadata"]
MESSAGES = st.lists(st.fixed_dictionaries(
    {"role": st.sampled_from(["system", "user", "assistant", "tool", "developer", "bogus"])},
    optional={"content": st.one_of(st.text(max_size=30), st.none(), JSON_VALUES),
              "tool_calls": JSON_VALUES, "tool_call_id": JSON_VALUES}), max_size=3)


def valid_body(endpoint: str) -> dict:
    body = {"model": "rotor-mock", "max_tokens": 3}
    if endpoint == "chat":
        body["messages"] = [{"role": "user", "content": "hi"}]
    else:
        body["prompt"] = "hi"
    return body


@st.composite
def bodies(draw, endpoint: str) -> bytes:
    kind = draw(st.sampled_from(["mutated", "mutated", "random", "bytes"]))
    if kind == "bytes":
        return draw(st.binary(max_size=64))
    if kind == "random":
        return json.dumps(draw(JSON_VALUES)).encode()
    body = valid_body(endpoint)
    for _ in range(draw(st.integers(1, 3))):
        key = draw(st.sampled_from(KEYS))
        if draw(st.booleans()) and key in body:
            del body[key]
        elif key in ("max_tokens", "max_completion_tokens", "n"):
            body[key] = draw(SMALL_COUNTS)
        elif key == "messages":
            body[key] = draw(st.one_of(MESSAGES, JSON_VALUES))
        else:
            body[key] = draw(JSON_VALUES)
    if isinstance(body.get("stream"), bool) and body["stream"] and "max_tokens" not in body:
        body["max_tokens"] = 2
    return json.dumps(body).encode()


@pytest.fixture(scope="module")
def stack(tmp_path_factory):
    stack = Stack(tmp_path_factory.mktemp("fuzz"))
    try:
        stack.start_worker("--speedup-ratio", "100")
        stack.start_frontend("--default-max-tokens", "4")
        stack.wait_for_workers(1)
        yield stack
    finally:
        stack.stop()


def post(stack: Stack, path: str, raw: bytes) -> tuple[int, str, bytes]:
    connection = http.client.HTTPConnection("127.0.0.1", stack.port, timeout=30)
    try:
        connection.request("POST", path, body=raw, headers={"Content-Type": "application/json"})
        response = connection.getresponse()
        return response.status, response.getheader("Content-Type", ""), response.read()
    finally:
        connection.close()


def check_answer(status: int, content_type: str, payload: bytes) -> None:
    assert status < 500, (status, payload[:300])
    if content_type.startswith("text/event-stream"):
        frames = [f for f in payload.split(b"\n\n") if f.strip()]
        assert frames[-1] == b"data: [DONE]" or frames[-1].startswith(b"event: error"), frames[-1]
        for frame in frames[:-1]:
            assert json.loads(frame.removeprefix(b"data: "))["choices"] is not None
        return
    body = json.loads(payload)
    if status == 200:
        assert body["choices"][0]["finish_reason"] in ("stop", "length", "tool_calls")
        assert body["usage"]["completion_tokens"] >= 0
    else:
        error = body["error"]
        assert set(error) == {"message", "type", "code", "param"} and error["message"]


FUZZ = settings(max_examples=1500, deadline=None, derandomize=True,
                suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])


@FUZZ
@given(raw=bodies("chat"))
def test_fuzz_chat_completions(stack, raw):
    check_answer(*post(stack, "/v1/chat/completions", raw))


@FUZZ
@given(raw=bodies("completions"))
def test_fuzz_completions(stack, raw):
    check_answer(*post(stack, "/v1/completions", raw))


def test_server_answers_after_the_fuzzing(stack):
    status, _, payload = post(stack, "/v1/chat/completions", json.dumps(valid_body("chat")).encode())
    assert status == 200 and json.loads(payload)["usage"]["completion_tokens"] == 3
