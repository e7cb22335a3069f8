"""launch/*.sh: serve, then stop every child on Ctrl-C or when any child dies."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import time
import uuid
from pathlib import Path

import openai
import pytest

from router.discovery import namespace_dir
from tests.conftest import ROOT, free_port, http_json


def processes_with(marker: str) -> list[int]:
    pids = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                if marker in (entry / "cmdline").read_bytes().decode(errors="replace"):
                    pids.append(int(entry.name))
            except OSError:
                pass
    return pids


@pytest.fixture
def launch(tmp_path):
    started: list[subprocess.Popen] = []
    namespaces: list[str] = []

    def start(script: str, *args: str) -> tuple[subprocess.Popen, int, str]:
        port, namespace = free_port(), f"test-launch-{uuid.uuid4().hex[:8]}"
        namespaces.append(namespace)
        log = open(tmp_path / f"{script}.log", "w")
        # SIGINT as a terminal delivers it: a pytest started in the background (nohup, `&` in a
        # script) hands its children SIGINT ignored, which bash can then neither trap nor reset
        proc = subprocess.Popen(["bash", str(ROOT / "launch" / script), "--http-port", str(port),
                                 "--namespace", namespace, *args], stdout=log,
                                stderr=subprocess.STDOUT, start_new_session=True,
                                preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),
                                env={**os.environ, "PYTHON": os.environ.get("PYTHON", "")
                                     or str(Path(os.sys.executable))})
        started.append(proc)
        deadline = time.monotonic() + 60
        while "[launch] serving on" not in (tmp_path / f"{script}.log").read_text():
            assert proc.poll() is None and time.monotonic() < deadline, \
                (tmp_path / f"{script}.log").read_text()
            time.sleep(0.2)
        return proc, port, namespace

    yield start
    for proc in started:               # a test that failed early: let the script stop its children
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGTERM)
            try:
                proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
    for namespace in namespaces:       # named by the test, so the script leaves it in place
        for pid in processes_with(namespace):     # children live in their own process groups
            os.kill(pid, signal.SIGKILL)
        shutil.rmtree(namespace_dir(namespace), ignore_errors=True)


def wait_gone(namespace: str, timeout: float = 15) -> None:
    deadline = time.monotonic() + timeout
    while processes_with(namespace) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert not processes_with(namespace)


def test_agg_serves_and_ctrl_c_stops_everything(launch):
    proc, port, namespace = launch("agg.sh", "--num-workers", "2")
    assert len(http_json(f"http://127.0.0.1:{port}/health")[1]["workers"]) == 2
    client = openai.OpenAI(base_url=f"http://127.0.0.1:{port}/v1", api_key="x", max_retries=0)
    chunks = list(client.chat.completions.create(
        model="rotor-mock", max_tokens=5, stream=True,
        messages=[{"role": "user", "content": "hello"}]))
    assert chunks[-1].choices[0].finish_reason == "length"
    os.killpg(proc.pid, signal.SIGINT)           # Ctrl-C reaches the whole foreground group
    proc.wait(timeout=15)
    wait_gone(namespace)


def test_agg_router_stops_when_a_child_dies(launch):
    proc, port, namespace = launch("agg_router.sh", "--num-workers", "1")
    (frontend,) = [p for p in processes_with(namespace) if "-m\x00frontend" in
                   Path(f"/proc/{p}/cmdline").read_bytes().decode(errors="replace")]
    os.kill(frontend, signal.SIGKILL)
    proc.wait(timeout=15)
    assert proc.returncode != 0
    wait_gone(namespace)


def test_help_describes_every_flag():
    for script in ("agg.sh", "agg_router.sh"):
        text = subprocess.run(["bash", str(ROOT / "launch" / script), "--help"], check=True,
                              capture_output=True, text=True).stdout
        for flag in ("--num-workers", "--http-port", "--model-path", "--namespace", "--help"):
            assert flag in text, (script, flag)
