"""A tiny supervisor between a worker and its engine subprocess, so no engine outlives its worker.

    worker ──spawns──► engine_guard (own process group, PR_SET_PDEATHSIG=SIGTERM, child subreaper)
                          └─► engine server (e.g. vLLM's API server) ─► its own children
                              (EngineCore, ...) all in the guard's process group

* The worker dies (even by SIGKILL): the kernel sends the guard SIGTERM (parent-death signal).
* The worker stops it: SIGTERM to the guard.
* The engine server dies: its orphans are re-parented to the guard (subreaper).
In every case the guard sends SIGTERM to the engine, waits up to `--grace` seconds, then SIGTERMs
and finally SIGKILLs the whole process group, reaps it, and exits with the engine's exit status
(128 + signal number if it was killed). With `--remove-dir`, it then deletes the engine's private
directory (sockets, TMPDIR), which a SIGKILLed worker cannot. Standard library only: it starts in
~50 ms.

    python -m worker.engine_guard --parent PID [--grace S] [--remove-dir DIR] -- CMD...
"""

from __future__ import annotations

import argparse
import ctypes
import os
import shutil
import signal
import subprocess
import sys
import time

PR_SET_PDEATHSIG = 1
PR_SET_CHILD_SUBREAPER = 36


def prctl(option: int, value: int) -> None:
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.prctl(option, value, 0, 0, 0) != 0:
        raise OSError(ctypes.get_errno(), f"prctl({option}) failed")


def set_parent_death_signal(sig: int = signal.SIGTERM) -> None:
    """For a subprocess's preexec_fn: deliver `sig` to this process when its parent dies."""
    prctl(PR_SET_PDEATHSIG, sig)


def _reap_group(deadline: float) -> None:
    """Reap every child (adopted orphans included) until none is left or the deadline passes."""
    while time.monotonic() < deadline:
        try:
            pid, _ = os.waitpid(-1, os.WNOHANG)
        except ChildProcessError:
            return
        if pid == 0:
            time.sleep(0.05)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m worker.engine_guard")
    parser.add_argument("--parent", type=int, required=True, help="the worker's pid")
    parser.add_argument("--grace", type=float, default=10.0,
                        help="seconds the engine gets to stop after SIGTERM (default: 10)")
    parser.add_argument("--remove-dir", metavar="DIR",
                        help="directory to delete once the engine's whole group is gone")
    parser.add_argument("command", nargs=argparse.REMAINDER,
                        help="the engine command to supervise, after --")
    args = parser.parse_args(argv)
    command = args.command[1:] if args.command[:1] == ["--"] else args.command
    if not command:
        parser.error("no engine command after --")

    stopping = False

    def on_signal(signum: int, frame: object) -> None:
        nonlocal stopping
        stopping = True

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    prctl(PR_SET_CHILD_SUBREAPER, 1)
    if os.getppid() != args.parent:          # the worker died before the parent-death signal was set
        return 1
    engine = subprocess.Popen(command)       # same process group as the guard
    while engine.poll() is None and not stopping:
        time.sleep(0.1)
    if engine.poll() is None:
        engine.terminate()
        try:
            engine.wait(timeout=args.grace)
        except subprocess.TimeoutExpired:
            engine.kill()
            engine.wait()
    # Stragglers (the server's own children) go with the group; the guard ignores its own signal.
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    os.killpg(os.getpgrp(), signal.SIGTERM)
    _reap_group(time.monotonic() + 3.0)
    for pid in _other_group_members():      # SIGKILL to the group would take the guard too
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
    _reap_group(time.monotonic() + 1.0)
    if args.remove_dir:
        shutil.rmtree(args.remove_dir, ignore_errors=True)
    code = engine.returncode               # set above, before any reaping of the group
    return code if code >= 0 else 128 - code


def _other_group_members() -> list[int]:
    """Live processes of the guard's process group other than the guard itself."""
    me, group = os.getpid(), os.getpgrp()
    members = []
    for entry in os.listdir("/proc"):
        if entry.isdigit() and int(entry) != me:
            try:
                with open(f"/proc/{entry}/stat") as f:
                    fields = f.read().rsplit(")", 1)[1].split()
            except OSError:
                continue
            if int(fields[2]) == group and fields[0] != "Z":
                members.append(int(entry))
    return members


if __name__ == "__main__":
    sys.exit(main())
