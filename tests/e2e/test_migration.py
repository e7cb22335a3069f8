"""Migration: a request whose worker dies continues on another worker, invisibly to the client."""

from __future__ import annotations

import os
import signal
import time

import openai


def test_sigkilled_worker_under_migration_yields_one_complete_stream(stack_factory):
    stack, stream, chunks, busy = _streaming_on_one_of_two(stack_factory, migration_limit=2)
    stack.kill(busy["pid"])
    chunks += [next(stream) for _ in range(30)]  # no error: the stream continues elsewhere
    # mid-stream on the survivor, its booking already released the continuation's prefill load
    assert prefill_tokens_booked(stack) == 0
    chunks += list(stream)
    finishes = [c.choices[0].finish_reason for c in chunks if c.choices and c.choices[0].finish_reason]
    assert finishes == ["length"]
    assert chunks[-1].usage.completion_tokens == 300
    survivor = [w for w in stack.health()[1]["workers"] if w["pid"] != busy["pid"]]
    assert survivor and survivor[0]["in_flight"] == 0
    assert 'migration_type="ongoing_request"' in stack.metrics()


def test_a_stopping_worker_gets_no_continuation_of_its_own_requests(stack_factory):
    """A worker stopped with SIGTERM fails its requests with engine_shutdown while its connection
    is still up. The KV router would pick it again (it holds the prompt's blocks): it must not, so
    one migration is enough."""
    stack, stream, chunks, busy = _streaming_on_one_of_two(stack_factory, migration_limit=1)
    stack.kill(busy["pid"], signal.SIGTERM)
    chunks += list(stream)
    assert chunks[-1].usage.completion_tokens == 300
    assert 'model_migration_total{migration_type="ongoing_request",model="rotor-mock"} 1.0' in (
        stack.metrics())
    # The failure arrives while the connection is up (the worker drains before it closes); on a
    # badly overloaded machine the disconnect may still come first, which is as good.
    logs = stack.logs()
    assert (f"worker {busy['worker_id']} is stopping or gone: not routing to it" in logs
            or f"worker {busy['worker_id']} disconnected: not routing to it" in logs)


def test_a_request_waits_out_a_stall_of_the_only_worker_left(stack_factory):
    """The worker that takes over is frozen (SIGSTOP) for 8 s, longer than both its request-plane
    heartbeat and its discovery record last (5 s each): the frontend drops it, then re-adds it
    when it runs again, and the migrated request waits for it instead of failing."""
    stack, stream, chunks, busy = _streaming_on_one_of_two(stack_factory, migration_limit=3)
    (survivor,) = [w for w in stack.health()[1]["workers"] if w["pid"] != busy["pid"]]
    os.kill(survivor["pid"], signal.SIGSTOP)
    try:
        stack.kill(busy["pid"])
        time.sleep(8)
    finally:
        os.kill(survivor["pid"], signal.SIGCONT)
    chunks += list(stream)
    assert chunks[-1].usage.completion_tokens == 300
    # it really was dropped, and came back
    assert f"removed worker {survivor['worker_id']}: worker left discovery" in stack.logs()


def test_without_migration_the_stream_fails(stack_factory):
    stack = stack_factory()
    stack.start_worker()
    stack.start_worker()
    stack.start_frontend()
    stack.wait_for_workers(2)
    client = openai.OpenAI(base_url=stack.url + "/v1", api_key="x", max_retries=0, timeout=60)
    stream = iter(client.chat.completions.create(
        model="rotor-mock", max_tokens=300, stream=True, extra_body={"ignore_eos": True},
        messages=[{"role": "user", "content": "keep going"}]))
    for _ in range(5):
        next(stream)
    (busy,) = [w for w in stack.health()[1]["workers"] if w["in_flight"]]
    stack.kill(busy["pid"])
    try:
        list(stream)
    except openai.APIError as exc:
        assert "worker" in str(exc)
    else:
        raise AssertionError("the stream should have failed")


def prefill_tokens_booked(stack) -> float:
    return sum(float(line.rsplit(" ", 1)[1]) for line in stack.metrics().splitlines()
               if line.startswith("rotor_frontend_worker_active_prefill_tokens{"))


def _streaming_on_one_of_two(stack_factory, migration_limit: int):
    """Two mock workers behind a frontend that migrates, and a 300-token stream 20 chunks in:
    the stack, the stream, those chunks and the /health entry of the worker serving it."""
    stack = stack_factory()
    stack.start_worker()
    stack.start_worker()
    stack.start_frontend("--migration-limit", str(migration_limit))
    stack.wait_for_workers(2)
    client = openai.OpenAI(base_url=stack.url + "/v1", api_key="x", max_retries=0, timeout=60)
    stream = iter(client.chat.completions.create(
        model="rotor-mock", max_tokens=300, stream=True, stream_options={"include_usage": True},
        extra_body={"ignore_eos": True}, messages=[{"role": "user", "content": "keep going"}]))
    chunks = [next(stream) for _ in range(20)]
    (busy,) = [w for w in stack.health()[1]["workers"] if w["in_flight"]]
    return stack, stream, chunks, busy
