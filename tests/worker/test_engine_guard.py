"""The engine guard on its own: a stand-in worker spawns it over a stand-in engine, then dies."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import time

# A stand-in worker: starts the guard as the real worker does (parent-death signal set), with a
# sleeping "engine" that records its pid in the private directory, then waits to be killed.
WORKER = textwrap.dedent("""
    import os, subprocess, sys, time
    from worker.engine_guard import set_parent_death_signal
    private = sys.argv[1]
    engine = (f"import os, time; open({private!r} + '/engine.pid', 'w').write(str(os.getpid()));"
              " time.sleep(60)")
    subprocess.Popen([sys.executable, "-m", "worker.engine_guard", "--parent", str(os.getpid()),
                      "--grace", "1", "--remove-dir", private, "--", sys.executable, "-c", engine],
                     start_new_session=True, preexec_fn=set_parent_death_signal)
    time.sleep(60)
""")


def _alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


def _wait(predicate, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.05)


def test_a_sigkilled_worker_leaves_no_engine_and_no_private_directory(tmp_path):
    private = tmp_path / "rotor-engine-private"
    private.mkdir()
    (private / "socket-or-tmp-file").write_text("x")
    root = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    worker = subprocess.Popen([sys.executable, "-c", WORKER, str(private)],
                              env={**os.environ, "PYTHONPATH": root})
    try:
        pid_file = private / "engine.pid"
        _wait(lambda: pid_file.exists() and pid_file.read_text(), 20, "the engine to start")
        engine = int(pid_file.read_text())
        assert _alive(engine)
        worker.send_signal(signal.SIGKILL)
        worker.wait(5)
        _wait(lambda: not _alive(engine), 15, "the engine to be stopped")
        _wait(lambda: not private.exists(), 15, "the private directory to be removed")
    finally:
        if worker.poll() is None:
            worker.kill()
            worker.wait()
