"""`python -m mocker`: start N mock workers, each `python -m worker --engine mock`, with the same
engine flags (DESIGN.md §9).

Every worker is its own process (its own request and event sockets, its own discovery record). The
launcher stops them all on SIGINT/SIGTERM, and when any of them exits (then exiting non-zero itself).
Workers die with the launcher even if it is killed outright (Linux parent-death signal).

`python -m mocker --serve-openai ...` instead runs one mock engine behind an engine-compatible OpenAI
server (mocker/serve_openai.py), the stand-in the vLLM and SGLang adapters are tested against.
"""

from __future__ import annotations

import argparse
import ctypes
import logging
import signal
import subprocess
import sys
import threading

from mocker.config import MockEngineArgs

log = logging.getLogger("rotor.mocker")

MAX_WORKERS = 256
STOP_GRACE_S = 5.0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m mocker",
        description="Start mock engine workers (a simulated GPU engine with a paged prefix cache, "
                    "continuous batching and Dynamo's mocker timing) that Rotor frontends discover "
                    "and route to.")
    parser.add_argument("--num-workers", type=int, default=1,
                        help=f"worker processes to start, 1 to {MAX_WORKERS} (default: 1)")
    parser.add_argument("--namespace", default="default",
                        help="discovery namespace shared with the frontend (default: default)")
    parser.add_argument("--model-path", default=None,
                        help="local Hugging Face model folder (default: Rotor's shipped mock model)")
    parser.add_argument("--model-name", default=None,
                        help="name the model is served under (default: the model folder's name)")
    parser.add_argument("--host", default="127.0.0.1",
                        help="address the workers' sockets bind to (default: 127.0.0.1)")
    parser.add_argument("--serve-openai", action="store_true",
                        help="instead of workers, run ONE mock engine behind an engine-compatible "
                             "OpenAI server (vLLM's endpoints, SGLang's /generate) publishing KV "
                             "events in vLLM's wire format, for testing the vLLM and SGLang worker "
                             "adapters; see `python -m mocker --serve-openai --help` for its flags")
    MockEngineArgs.add_arguments(parser.add_argument_group("engine options (every worker)"))
    return parser


def worker_command(ns: argparse.Namespace, engine: MockEngineArgs) -> list[str]:
    """The command line of one worker: the launcher's options plus the resolved engine flags."""
    argv = [sys.executable, "-m", "worker", "--engine", "mock", "--namespace", ns.namespace,
            "--host", ns.host]
    if ns.model_path:
        argv += ["--model-path", ns.model_path]
    if ns.model_name:
        argv += ["--model-name", ns.model_name]
    return argv + engine.to_argv()


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    if "--serve-openai" in argv:
        from mocker import serve_openai
        return serve_openai.main([a for a in argv if a != "--serve-openai"])
    parser = build_parser()
    ns = parser.parse_args(argv)
    try:
        engine = MockEngineArgs.from_args(ns).validate()
        if not 1 <= ns.num_workers <= MAX_WORKERS:
            raise ValueError(f"--num-workers must be between 1 and {MAX_WORKERS}, got {ns.num_workers}")
    except ValueError as exc:
        parser.error(str(exc))
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")

    stop = threading.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: stop.set())
    command = worker_command(ns, engine)
    children = [subprocess.Popen(command, preexec_fn=_die_with_parent)
                for _ in range(ns.num_workers)]
    log.info("started %d mock worker(s) in namespace %r: %s", len(children), ns.namespace,
             " ".join(command[1:]))
    code = 0
    while not stop.wait(0.2):
        dead = next((c for c in children if c.poll() is not None), None)
        if dead is not None:
            log.error("worker pid %d exited with %s; stopping the others", dead.pid, dead.returncode)
            code = dead.returncode or 1
            break
    _stop_all(children)
    return code


def _stop_all(children: list[subprocess.Popen]) -> None:
    for child in children:
        if child.poll() is None:
            child.send_signal(signal.SIGTERM)
    for child in children:
        try:
            child.wait(timeout=STOP_GRACE_S)
        except subprocess.TimeoutExpired:
            log.warning("worker pid %d ignored SIGTERM; killing it", child.pid)
            child.kill()
            child.wait()


def _die_with_parent() -> None:
    """In the child, before exec: receive SIGTERM when the launcher dies (Linux only)."""
    if sys.platform == "linux":
        ctypes.CDLL(None).prctl(1, signal.SIGTERM)   # PR_SET_PDEATHSIG


if __name__ == "__main__":
    sys.exit(main())
