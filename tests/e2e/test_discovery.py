"""Discovery end to end: late workers are picked up, leaving ones dropped, mismatched ones refused."""

from __future__ import annotations

import json
import shutil
import time

from frontend.tokenizer import resolve_model_path


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
