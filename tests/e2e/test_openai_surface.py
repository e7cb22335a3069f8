"""The OpenAI surface through the real stack: what clients such as the Pi agent send and rely on."""

from __future__ import annotations

import asyncio
import threading
import time

import openai
import pytest
from prometheus_client.parser import text_string_to_metric_families

from frontend.tokenizer import Tokenizer
from tests.conftest import http_json

PI_TOOLS = [{"type": "function", "function": {
    "name": name, "description": f"{name} a file or run a command",
    "parameters": {"type": "object", "properties": {"command": {"type": "string"}},
                   "required": ["command"]}, "strict": False}} for name in ("read", "bash")]
PI_MESSAGES = [
    {"role": "system", "content": "You are a coding agent. Tools: read, bash. Today is 2026-11-21."},
    {"role": "user", "content": [{"type": "text", "text": "Say hi using bash"}]},
    {"role": "assistant", "content": None, "tool_calls": [
        {"id": "call_1", "type": "function",
         "function": {"name": "bash", "arguments": '{"command":"echo hi"}'}}]},
    {"role": "tool", "content": "hi\n", "tool_call_id": "call_1"},
]


@pytest.fixture(scope="module")
def stack(tmp_path_factory):
    from tests.conftest import Stack
    stack = Stack(tmp_path_factory.mktemp("surface"))
    try:
        stack.start_worker()
        stack.start_worker()
        stack.start_frontend()
        stack.wait_for_workers(2)
        yield stack
    finally:
        stack.stop()


def client_for(stack) -> openai.OpenAI:
    return openai.OpenAI(base_url=stack.url + "/v1", api_key="sk-pi", max_retries=0, timeout=30)


def test_pi_shaped_request_and_its_prompt_tokens(stack):
    stream = client_for(stack).chat.completions.create(
        model="rotor-mock", messages=PI_MESSAGES, tools=PI_TOOLS, stream=True,
        stream_options={"include_usage": True}, store=False, max_completion_tokens=12,
        extra_headers={"x-stainless-retry-count": "0"},
        extra_body={"reasoning_effort": "low", "chat_template_kwargs": {}})
    chunks = list(stream)
    assert "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert [c.choices[0].finish_reason for c in chunks if c.choices and
            c.choices[0].finish_reason] == ["length"]
    tokenizer = Tokenizer.load(None)
    rendered = tokenizer.apply_chat_template(PI_MESSAGES, tools=PI_TOOLS,
                                             add_generation_prompt=True)
    assert chunks[-1].usage.prompt_tokens == len(tokenizer.encode(rendered))
    assert chunks[-1].usage.completion_tokens == 12


def test_finish_reasons_are_what_pi_accepts(stack):
    for max_tokens in (1, 3):
        response = client_for(stack).chat.completions.create(
            model="rotor-mock", max_tokens=max_tokens, messages=PI_MESSAGES[:2])
        assert response.choices[0].finish_reason in ("stop", "length", "tool_calls")


def test_metrics_parse_and_count_requests(stack):
    client_for(stack).chat.completions.create(model="rotor-mock", max_tokens=2,
                                              messages=[{"role": "user", "content": "count me"}])
    families = {f.name: f for f in text_string_to_metric_families(stack.metrics())}
    for name in ("rotor_frontend_requests", "rotor_frontend_time_to_first_token_seconds",
                 "rotor_frontend_inter_token_latency_seconds", "rotor_frontend_inflight_requests",
                 "rotor_router_kv_hit_rate", "rotor_router_overhead_ms",
                 "rotor_frontend_worker_active_decode_blocks",
                 "rotor_frontend_router_queue_pending_requests"):
        assert name in families, name
    successes = sum(s.value for s in families["rotor_frontend_requests"].samples
                    if s.name.endswith("_total") and s.labels["status"] == "success")
    assert successes >= 1


def test_hundred_concurrent_streams_complete_with_correct_usage(stack):
    async def one(client: openai.AsyncOpenAI, i: int) -> tuple[int, int, str]:
        stream = await client.chat.completions.create(
            model="rotor-mock", max_tokens=5 + i % 7, stream=True,
            stream_options={"include_usage": True},
            messages=[{"role": "user", "content": f"stream number {i}"}])
        text, usage = "", None
        async for chunk in stream:
            if chunk.choices:
                text += chunk.choices[0].delta.content or ""
            if chunk.usage:
                usage = chunk.usage
        return i, usage.completion_tokens, text

    async def all_of_them():
        async with openai.AsyncOpenAI(base_url=stack.url + "/v1", api_key="x", max_retries=0,
                                      timeout=60) as client:
            return await asyncio.gather(*(one(client, i) for i in range(100)))

    results = asyncio.run(all_of_them())
    assert len(results) == 100
    for i, completion_tokens, text in results:
        assert completion_tokens == 5 + i % 7 and text


def test_bad_nvext_fields_are_named(stack):
    for nvext, param in (({"agent_hints": {"priority": "high"}}, "nvext.agent_hints.priority"),
                         ({"agent_hints": {"osl": -1}}, "nvext.agent_hints.osl"),
                         ({"session_control": {"session_id": "s", "action": "sleep"}},
                          "nvext.session_control"),
                         ({"extra_fields": "worker_id"}, "nvext.extra_fields"),
                         ("nope", "nvext")):
        status, body = http_json(stack.url + "/v1/chat/completions", {
            "model": "rotor-mock", "max_tokens": 1, "nvext": nvext,
            "messages": [{"role": "user", "content": "x"}]})
        assert status == 400 and body["error"]["param"] == param, (nvext, body)


def test_shed_requests_get_503_with_retry_after(stack_factory):
    stack = stack_factory()
    stack.start_worker()
    stack.start_frontend("--router-queue-threshold", "0.01", "--max-queue-depth", "0")
    stack.wait_for_workers(1)
    client = client_for(stack)
    long_prompt = [{"role": "user", "content": "busy " * 20000}]   # seconds of prefill
    busy = threading.Thread(target=lambda: client.chat.completions.create(
        model="rotor-mock", max_tokens=1, messages=long_prompt))
    busy.start()
    try:
        deadline = time.monotonic() + 10
        while not any(w["in_flight"] for w in stack.health()[1]["workers"]):
            assert time.monotonic() < deadline
            time.sleep(0.01)
        with pytest.raises(openai.APIStatusError) as exc:
            client.chat.completions.create(model="rotor-mock", max_tokens=1,
                                           messages=[{"role": "user", "content": "me too"}])
    finally:
        busy.join()
    assert exc.value.status_code == 503
    assert exc.value.response.headers["retry-after"] == "1"
    assert exc.value.body["type"] == "service_unavailable"


def test_unsupported_features_are_refused_clearly(stack):
    for body, param in (({"logprobs": True, "top_logprobs": 2}, "logprobs"),
                        ({"n": 3}, "n")):
        status, answer = http_json(stack.url + "/v1/chat/completions", {
            "model": "rotor-mock", "max_tokens": 1, **body,
            "messages": [{"role": "user", "content": "x"}]})
        assert status == 400 and answer["error"]["param"] == param, answer
    status, answer = http_json(stack.url + "/v1/completions", {
        "model": "rotor-mock", "max_tokens": 1, "prompt": ["one", "two"]})
    assert status == 400 and answer["error"]["param"] == "prompt"
