"""Discovery end to end: late workers are picked up, leaving ones dropped, mismatched ones refused."""

from __future__ import annotations

import json
import os
import shutil
import signal
import threading
import time

from frontend.tokenizer import resolve_model_path
from router.discovery import namespace_dir
from tests.conftest import http_json


def test_late_worker_is_picked_up_and_a_stopped_one_dropped(stack_factory):
    stack = stack_factory()
    stack.start_frontend()
    status, body = stack.health()
    assert status == 503 and body["status"] == "no_workers"
    first = stack.start_worker()
    stack.wait_for_workers(1)
    stack.start_worker()
    stack.wait_for_workers(2)
    stopped_at = time.monotonic()
    stack.kill(first.pid, sig=15)                # clean exit removes its record at once
    stack.wait_for_workers(1, timeout=5)
    assert time.monotonic() - stopped_at < 3


def test_a_request_waits_for_a_discovered_worker_to_finish_connecting(stack_factory):
    """The frontend lists a worker as soon as discovery shows it, before the request-plane
    handshake is done; a request in that window waits for the handshake instead of a 503.
    The window is held open by freezing the worker (SIGSTOP) before the frontend starts, while
    the test keeps its discovery record fresh."""
    stack = stack_factory()
    worker = stack.start_worker()
    records = namespace_dir(stack.namespace)
    deadline = time.monotonic() + 20
    while not list(records.glob("[0-9]*.json")):
        assert time.monotonic() < deadline, stack.logs()
        time.sleep(0.05)
    os.kill(worker.pid, signal.SIGSTOP)
    frozen = threading.Event()
    frozen.set()

    def keep_records_fresh() -> None:
        while frozen.is_set():
            for path in records.glob("[0-9]*.json"):
                os.utime(path)
            time.sleep(0.3)

    toucher = threading.Thread(target=keep_records_fresh, daemon=True)
    toucher.start()
    try:
        stack.start_frontend()
        body = stack.wait_for_workers(1)
        assert body["workers"][0]["connected"] is False
        result: list = []
        request = threading.Thread(target=lambda: result.append(http_json(
            stack.url + "/v1/completions",
            {"model": "rotor-mock", "prompt": "hello", "max_tokens": 3}, timeout=30)))
        request.start()
        time.sleep(1.5)
        assert request.is_alive() and not result      # waiting, not failed
    finally:
        frozen.clear()
        os.kill(worker.pid, signal.SIGCONT)
    request.join(timeout=30)
    assert result, "the request did not finish within 30 s of the worker resuming"
    status, reply = result[0]
    assert status == 200, reply
    assert reply["usage"]["completion_tokens"] == 3


def test_worker_with_another_tokenizer_is_refused(stack_factory, tmp_path):
    other = tmp_path / "rotor-mock"
    shutil.copytree(resolve_model_path(None), other)
    config_path = other / "tokenizer_config.json"
    config = json.loads(config_path.read_text())
    config["chat_template"] = "{{ 'different' }}" + config["chat_template"]
    config_path.write_text(json.dumps(config))

    stack = stack_factory()
    stack.start_frontend()
    stack.start_worker()
    stack.wait_for_workers(1)
    odd = stack.start_worker("--model-path", str(other))
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        refused = stack.health()[1]["refused_workers"]
        if refused:
            break
        time.sleep(0.1)
    assert len(refused) == 1 and "tokenizer" in refused[0]["reason"]
    assert len(stack.health()[1]["workers"]) == 1
    stack.kill(odd.pid, sig=15)
    deadline = time.monotonic() + 5
    while stack.health()[1]["refused_workers"] and time.monotonic() < deadline:
        time.sleep(0.1)
    assert stack.health()[1]["refused_workers"] == []
