"""A client that goes away frees everything at once: its queue entry, its router bookings, and
its KV on the worker, whether it was queued, in prefill or in decode."""

from __future__ import annotations

import http.client
import json
import time

import pytest
from prometheus_client.parser import text_string_to_metric_families

from tests.conftest import Stack

HUGE = "prefill " * 30000          # ~30k tokens: seconds of prefill at speedup 1


@pytest.fixture(scope="module")
def stack(tmp_path_factory):
    stack = Stack(tmp_path_factory.mktemp("cancel"))
    try:
        stack.start_worker()
        # a worker is busy once it has ~80 unprefilled prompt tokens: later requests queue
        stack.start_frontend("--router-queue-threshold", "0.01")
        stack.wait_for_workers(1)
        yield stack
    finally:
        stack.stop()


def open_request(stack: Stack, content: str, max_tokens: int, stream: bool = False):
    connection = http.client.HTTPConnection("127.0.0.1", stack.port, timeout=30)
    connection.request("POST", "/v1/chat/completions", headers={"Content-Type": "application/json"},
                       body=json.dumps({"model": "rotor-mock", "max_tokens": max_tokens,
                                        "stream": stream, "ignore_eos": True,
                                        "messages": [{"role": "user", "content": content}]}))
    return connection


def state(stack: Stack) -> dict:
    (worker,) = stack.health()[1]["workers"]
    load = worker["load"] or {}
    router = {}
    for family in text_string_to_metric_families(stack.metrics()):
        for sample in family.samples:
            if sample.name in ("rotor_frontend_worker_active_prefill_tokens",
                               "rotor_frontend_worker_active_decode_blocks",
                               "rotor_frontend_router_queue_pending_requests"):
                router[sample.name.removeprefix("rotor_frontend_")] = sample.value
    return {"in_flight": worker["in_flight"], "running": load.get("num_running"),
            "waiting": load.get("num_waiting"), "kv_used_blocks": load.get("kv_used_blocks"),
            **router}


IDLE = {"in_flight": 0, "running": 0, "waiting": 0, "kv_used_blocks": 0,
        "worker_active_prefill_tokens": 0, "worker_active_decode_blocks": 0,
        "router_queue_pending_requests": 0}


def wait_for(stack: Stack, predicate, timeout: float = 10) -> dict:
    deadline = time.monotonic() + timeout
    while True:
        current = state(stack)
        if predicate(current):
            return current
        assert time.monotonic() < deadline, current
        time.sleep(0.02)


def test_cancel_in_prefill_frees_the_worker(stack):
    wait_for(stack, lambda s: s == IDLE)
    connection = open_request(stack, HUGE, max_tokens=1)
    wait_for(stack, lambda s: s["running"] == 1 and s["kv_used_blocks"] > 0)
    connection.close()                                     # the client goes away mid-prefill
    closed = time.monotonic()
    wait_for(stack, lambda s: s == IDLE)
    assert time.monotonic() - closed < 2


def test_cancel_in_decode_frees_the_worker(stack):
    wait_for(stack, lambda s: s == IDLE)
    connection = open_request(stack, "tell me a very long story", max_tokens=100000, stream=True)
    response = connection.getresponse()
    for _ in range(5):
        assert response.readline()                          # tokens are flowing
    wait_for(stack, lambda s: s["running"] == 1)
    connection.close()
    closed = time.monotonic()
    wait_for(stack, lambda s: s == IDLE)
    assert time.monotonic() - closed < 2


def test_cancel_while_queued_leaves_the_queue_at_once(stack):
    wait_for(stack, lambda s: s == IDLE)
    before = cancellations(stack)
    busy = open_request(stack, HUGE, max_tokens=1)
    wait_for(stack, lambda s: s["running"] == 1)
    queued = open_request(stack, "me next", max_tokens=5)
    wait_for(stack, lambda s: s["router_queue_pending_requests"] == 1)
    assert state(stack)["running"] == 1                     # it never reached the worker
    queued.close()
    wait_for(stack, lambda s: s["router_queue_pending_requests"] == 0, timeout=2)
    busy.close()
    wait_for(stack, lambda s: s == IDLE)
    assert cancellations(stack) == before + 2


def cancellations(stack: Stack) -> float:
    return sum(s.value for f in text_string_to_metric_families(stack.metrics())
               if f.name == "rotor_frontend_model_cancellation" for s in f.samples
               if s.name.endswith("_total"))
