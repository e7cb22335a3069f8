"""Real processes on 127.0.0.1 for end-to-end tests: a private discovery namespace per stack, free
ports, every process stopped by its PID when the test ends."""

from __future__ import annotations

import importlib
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
import uuid
from pathlib import Path

import pytest

from router.discovery import namespace_dir

ROOT = Path(__file__).resolve().parent.parent


def pytest_configure(config):
    """ROTOR_EXPECT_COMPILED=1 (tests/test_compiled.py runs tests so): every module of the compiled
    build must come from its C extension, or the run would test the plain sources instead."""
    if os.environ.get("ROTOR_EXPECT_COMPILED") == "1":
        from bench.compiled import compiled_modules
        plain = [name for name in compiled_modules()
                 if not importlib.import_module(name).__file__.endswith(".so")]
        if plain:
            raise pytest.UsageError(f"ROTOR_EXPECT_COMPILED=1 but these are plain: {plain}")


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item, call):
    """A failed end-to-end test reports its processes' logs: CI keeps nothing else of them."""
    report = (yield).get_result()
    if report.failed and call.when == "call":
        values = getattr(item, "funcargs", {}).values()
        stacks = [v for v in values if isinstance(v, Stack)]
        stacks += [s for v in values for s in getattr(v, "stacks", ())]
        for stack in stacks:
            report.sections.append(("stack logs", stack.logs()))


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def http_json(url: str, body: dict | None = None, timeout: float = 10.0) -> tuple[int, dict]:
    data = None if body is None else json.dumps(body).encode()
    req = urllib.request.Request(url, data=data, headers={"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(req, timeout=timeout) as response:
            return response.status, json.load(response)
    except urllib.error.HTTPError as exc:
        return exc.code, json.load(exc)


class Stack:
    """A frontend and workers in one private namespace, as separate processes."""

    def __init__(self, log_dir: Path):
        self.namespace = f"test-{uuid.uuid4().hex[:12]}"
        self.log_dir = log_dir
        self.procs: list[subprocess.Popen] = []
        self.killed: set[int] = set()     # pids a test killed on purpose
        self.port: int | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def spawn(self, name: str, *args: str, env: dict[str, str] | None = None) -> subprocess.Popen:
        log = open(self.log_dir / f"{name}-{len(self.procs)}.log", "w")
        env = {**os.environ, "PYTHONPATH": str(ROOT), "PYTHONUNBUFFERED": "1", **(env or {})}
        proc = subprocess.Popen([sys.executable, *args], stdout=log, stderr=subprocess.STDOUT,
                                env=env, cwd=ROOT, start_new_session=True)
        log.close()
        self.procs.append(proc)
        return proc

    def start_worker(self, *extra: str) -> subprocess.Popen:
        return self.spawn("worker", "-m", "worker", "--engine", "mock", "--namespace",
                          self.namespace, *extra)

    def start_frontend(self, *extra: str, timeout: float = 20.0,
                       env: dict[str, str] | None = None) -> subprocess.Popen:
        """Start the frontend and wait until it answers /live."""
        self.port = free_port()
        proc = self.spawn("frontend", "-m", "frontend", "--http-port", str(self.port),
                          "--namespace", self.namespace, *extra, env=env)
        deadline = time.monotonic() + timeout
        while True:
            try:
                if http_json(self.url + "/live", timeout=1)[0] == 200:
                    return proc
            except OSError:
                pass
            if proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError("the frontend did not come up:\n" + self.logs())
            time.sleep(0.05)

    def metrics(self) -> str:
        """The frontend's Prometheus text."""
        with urllib.request.urlopen(self.url + "/metrics", timeout=5) as response:
            return response.read().decode()

    def health(self) -> tuple[int, dict]:
        return http_json(self.url + "/health", timeout=2)

    def wait_for_workers(self, count: int, timeout: float = 30.0) -> dict:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            for proc in self.procs:
                if proc.poll() is not None and proc.pid not in self.killed:
                    raise RuntimeError(f"process {proc.args} exited with {proc.returncode}:\n"
                                       + self.logs())
            try:
                status, body = self.health()
                if len(body.get("workers", ())) == count:
                    return body
            except (OSError, ValueError):
                pass
            time.sleep(0.1)
        raise TimeoutError(f"{count} worker(s) not served within {timeout}s:\n" + self.logs())

    def kill(self, pid: int, sig: int = signal.SIGKILL) -> None:
        """Kill one of this stack's processes on purpose."""
        assert pid in {p.pid for p in self.procs}, f"pid {pid} is not this stack's"
        self.killed.add(pid)
        os.kill(pid, sig)

    def logs(self) -> str:
        return "\n".join(f"--- {p.name}\n{p.read_text()[-3000:]}"
                         for p in sorted(self.log_dir.glob("*.log")))

    def stop(self) -> None:
        for proc in self.procs:
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
        deadline = time.monotonic() + 5
        for proc in self.procs:
            try:
                proc.wait(timeout=max(deadline - time.monotonic(), 0.1))
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        # the namespace is this stack's alone: drop the records its killed workers left behind
        shutil.rmtree(namespace_dir(self.namespace), ignore_errors=True)


@pytest.fixture
def stack_factory(tmp_path):
    stacks: list[Stack] = []

    def make() -> Stack:
        stack = Stack(tmp_path)
        stacks.append(stack)
        return stack

    make.stacks = stacks            # for the failure report's logs
    yield make
    for stack in stacks:
        stack.stop()
