"""The whole stack as separate processes on 127.0.0.1, driven by the official openai client."""

from __future__ import annotations

import os
import time

import openai
import pytest

from router.discovery import namespace_dir
from tests.conftest import http_json


@pytest.fixture
def stack(stack_factory):
    stack = stack_factory()
    stack.start_worker()
    stack.start_worker()
    stack.start_frontend("--router-mode", "round-robin")
    stack.wait_for_workers(2)
    return stack


def client_for(stack, **kwargs) -> openai.OpenAI:
    return openai.OpenAI(base_url=stack.url + "/v1", api_key="unused", max_retries=0,
                         timeout=kwargs.pop("timeout", 30), **kwargs)


def served_by(response) -> int:
    extension = response.model_extra["nvext"]["worker_id"]
    assert extension["prefill_worker_id"] == extension["decode_worker_id"]
    return extension["decode_worker_id"]


def test_models_lists_the_mock_model_with_its_context_length(stack):
    models = client_for(stack).models.list().data
    assert [m.id for m in models] == ["rotor-mock"]
    assert models[0].model_extra["context_length"] > 0


def test_unary_chat_and_both_workers_are_used(stack):
    client = client_for(stack)
    workers = set()
    for i in range(4):
        response = client.chat.completions.create(
            model="rotor-mock", max_tokens=7, messages=[{"role": "user", "content": f"hi {i}"}],
            extra_body={"nvext": {"extra_fields": ["worker_id"]}})
        assert response.choices[0].finish_reason == "length"
        assert response.usage.completion_tokens == 7
        assert response.usage.prompt_tokens > 3
        assert response.choices[0].message.content
        assert response.id.startswith("chatcmpl-")
        workers.add(served_by(response))
    health_ids = {w["worker_id"] for w in stack.health()[1]["workers"]}
    assert workers == health_ids and len(workers) == 2


def test_streaming_chat_with_usage(stack):
    stream = client_for(stack).chat.completions.create(
        model="rotor-mock", max_tokens=20, stream=True, stream_options={"include_usage": True},
        messages=[{"role": "system", "content": "Be brief."},
                  {"role": "user", "content": [{"type": "text", "text": "Hello there"}]}])
    chunks = list(stream)
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    finishes = [c.choices[0].finish_reason for c in chunks if c.choices and c.choices[0].finish_reason]
    assert finishes == ["length"]
    assert chunks[0].choices[0].delta.role == "assistant"
    assert chunks[-1].choices == [] and chunks[-1].usage.completion_tokens == 20
    assert text


def test_completions_text_and_token_ids(stack):
    client = client_for(stack)
    response = client.completions.create(model="rotor-mock", prompt="Once upon a time",
                                         max_tokens=5)
    assert response.choices[0].finish_reason == "length" and response.usage.completion_tokens == 5
    assert response.id.startswith("cmpl-")
    pieces = list(client.completions.create(model="rotor-mock", prompt=[10, 20, 30, 40],
                                            max_tokens=6, stream=True))
    assert sum(1 for p in pieces if p.choices[0].finish_reason == "length") == 1
    assert "".join(p.choices[0].text for p in pieces)


def test_x_request_id_is_echoed(stack):
    raw = client_for(stack).chat.completions.with_raw_response.create(
        model="rotor-mock", max_tokens=2, messages=[{"role": "user", "content": "x"}],
        extra_headers={"x-request-id": "call-0042"})
    assert raw.headers["x-request-id"] == "call-0042"


def test_errors_are_openai_shaped(stack):
    client = client_for(stack)
    with pytest.raises(openai.NotFoundError) as exc:
        client.chat.completions.create(model="nope", messages=[{"role": "user", "content": "x"}])
    assert "nope" in exc.value.body["message"] and exc.value.body["param"] == "model"
    with pytest.raises(openai.BadRequestError) as exc:
        client.chat.completions.create(model="rotor-mock", messages=[{"role": "user", "content": "x"}],
                                       n=2)
    assert exc.value.body["param"] == "n"
    status, body = http_json(stack.url + "/v1/chat/completions", None)
    assert status == 405 and body["error"]["code"] == 405
    import urllib.request
    request = urllib.request.Request(stack.url + "/v1/chat/completions", data=b"{nope",
                                     headers={"Content-Type": "application/json"})
    try:
        urllib.request.urlopen(request, timeout=5)
    except urllib.error.HTTPError as err:
        assert err.code == 400 and "JSON" in __import__("json").load(err)["error"]["message"]
    else:
        pytest.fail("malformed JSON was accepted")
    status, body = http_json(stack.url + "/v2/nothing", {})
    assert status == 404 and body["error"]["type"] == "not_found_error"


def test_oversized_body_is_413_json(stack_factory):
    stack = stack_factory()
    stack.start_worker()
    stack.start_frontend("--max-body-mb", "0.01")
    stack.wait_for_workers(1)
    status, body = http_json(stack.url + "/v1/completions",
                             {"model": "rotor-mock", "prompt": "x" * 20000})
    assert status == 413 and "too large" in body["error"]["message"]


def test_sigkilled_worker_fails_its_stream_fast_and_others_continue(stack):
    client = client_for(stack)
    stream = client.chat.completions.create(
        model="rotor-mock", max_tokens=3000, stream=True, extra_body={"ignore_eos": True},
        messages=[{"role": "user", "content": "a long story please"}])
    iterator = iter(stream)
    for _ in range(5):
        next(iterator)
    busy = [w for w in stack.health()[1]["workers"] if w["in_flight"] == 1]
    assert len(busy) == 1
    killed_at = time.monotonic()
    stack.kill(busy[0]["pid"])
    with pytest.raises(openai.APIError):
        for _ in iterator:
            pass
    assert time.monotonic() - killed_at < 1.5
    survivor = {w["worker_id"] for w in stack.health()[1]["workers"]} - {busy[0]["worker_id"]}
    for _ in range(3):
        response = client.chat.completions.create(
            model="rotor-mock", max_tokens=3, messages=[{"role": "user", "content": "again"}],
            extra_body={"nvext": {"extra_fields": ["worker_id"]}})
        assert served_by(response) in survivor
    stack.wait_for_workers(1, timeout=10)   # discovery drops the dead worker's stale record


def test_a_connected_worker_whose_record_goes_stale_stays_and_a_dead_one_leaves(stack):
    """A live worker starved of CPU can miss its discovery heartbeats (two vLLM engines on two
    cores once stalled one for ~5 s); while its connection is up the frontend keeps it."""
    records = sorted(namespace_dir(stack.namespace).glob("*.json"))
    assert len(records) == 2
    stale_id = int(records[0].stem)
    age_until = time.monotonic() + 2.5      # ten frontend scans see the record > 5 s old
    while time.monotonic() < age_until:
        try:
            os.utime(records[0], (time.time() - 60, time.time() - 60))
        except FileNotFoundError:
            pass                            # the heartbeat is replacing it this instant
        time.sleep(0.02)
    ids = {w["worker_id"] for w in stack.health()[1]["workers"]}
    assert stale_id in ids and len(ids) == 2
    assert "record is stale or gone but its connection is up" in stack.logs()
    pid = next(w["pid"] for w in stack.health()[1]["workers"] if w["worker_id"] == stale_id)
    stack.kill(pid)                         # its connection drops, its record goes stale
    body = stack.wait_for_workers(1, timeout=10)
    assert stale_id not in {w["worker_id"] for w in body["workers"]}
