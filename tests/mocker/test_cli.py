"""`python -m mocker`: flags, forwarding to workers, and stopping the workers."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

import pytest

from mocker import __main__ as launcher
from mocker.config import MockEngineArgs


def test_help_documents_every_engine_flag():
    out = subprocess.run([sys.executable, "-m", "mocker", "--help"], capture_output=True,
                         text=True, check=True).stdout
    for flag in ("--num-workers", "--namespace", "--model-path", "--num-gpu-blocks-override",
                 "--block-size", "--max-num-seqs", "--max-num-batched-tokens", "--speedup-ratio",
                 "--decode-speedup-ratio", "--enable-prefix-caching", "--enable-chunked-prefill",
                 "--scheduling-policy", "--eviction-policy", "--profile", "--script",
                 "--extra-engine-args"):
        assert flag in out


@pytest.mark.parametrize("argv, message", [
    (["--block-size", "0"], "--block-size"),
    (["--num-workers", "0"], "--num-workers"),
    (["--speedup-ratio", "-1"], "--speedup-ratio"),
    (["--extra-engine-args", "{not json"], "--extra-engine-args"),
])
def test_absurd_flags_exit_2_naming_the_flag(argv, message):
    result = subprocess.run([sys.executable, "-m", "mocker", *argv], capture_output=True, text=True)
    assert result.returncode == 2 and message in result.stderr


def test_workers_get_the_resolved_engine_flags():
    ns = launcher.build_parser().parse_args(
        ["--namespace", "ns1", "--model-name", "m", "--extra-engine-args", '{"block_size": 16}'])
    command = launcher.worker_command(ns, MockEngineArgs.from_args(ns))
    assert command[1:9] == ["-m", "worker", "--engine", "mock", "--namespace", "ns1", "--host",
                            "127.0.0.1"]
    assert command[command.index("--block-size") + 1] == "16"
    assert "--extra-engine-args" not in command and "--model-name" in command


def test_a_dying_worker_stops_the_launcher_with_its_exit_code(monkeypatch):
    monkeypatch.setattr(launcher, "worker_command",
                        lambda ns, engine: [sys.executable, "-c", "import sys; sys.exit(3)"])
    assert launcher.main(["--num-workers", "2"]) == 3


def test_sigterm_stops_every_worker():
    code = ("import sys; import mocker.__main__ as m; "
            "m.worker_command = lambda ns, e: [sys.executable, '-c', 'import time; time.sleep(60)']; "
            "sys.exit(m.main(['--num-workers', '2']))")
    proc = subprocess.Popen([sys.executable, "-c", code], stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline and len(children(proc.pid)) < 2:
            time.sleep(0.05)
        workers = children(proc.pid)
        assert len(workers) == 2
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=10) == 0
        for pid in workers:
            assert not os.path.exists(f"/proc/{pid}") or zombie(pid)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


def children(pid: int) -> list[int]:
    try:
        with open(f"/proc/{pid}/task/{pid}/children") as f:
            return [int(p) for p in f.read().split()]
    except FileNotFoundError:
        return []


def zombie(pid: int) -> bool:
    with open(f"/proc/{pid}/stat") as f:
        return f.read().split(") ")[1].startswith("Z")
