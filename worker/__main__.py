"""`python -m worker`: host one engine and serve it to frontends (DESIGN.md §2, §9)."""

from __future__ import annotations

import argparse
import asyncio
import logging
import signal
import sys
from pathlib import Path

from frontend.tokenizer import Tokenizer
from router.discovery import FileDiscovery, new_worker_id
from worker.engine import EngineContext
from worker.engines import ENGINE_KINDS, load_engine_kind
from worker.server import WorkerIdentity, WorkerServer

log = logging.getLogger("rotor.worker")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m worker",
        description="Host one engine (mock, vLLM or SGLang) and serve it to Rotor frontends over "
                    "the request plane, publishing load and KV events on the event plane. Flags "
                    "after -- go to a subprocess engine (vLLM, SGLang) unchanged.")
    parser.add_argument("--engine", default="mock", choices=sorted(ENGINE_KINDS),
                        help="which engine to host (default: mock)")
    parser.add_argument("--namespace", default="default",
                        help="discovery namespace: workers and frontends of one namespace see each "
                             "other; a folder under $TMPDIR/rotor/ (default: default)")
    parser.add_argument("--model-path", default=None,
                        help="local Hugging Face model folder (tokenizer.json, tokenizer_config.json, "
                             "config.json); default: Rotor's shipped mock model")
    parser.add_argument("--model-name", default=None,
                        help="name the model is served under (default: the model folder's name)")
    parser.add_argument("--host", default="127.0.0.1",
                        help="address the request and event sockets bind to (default: 127.0.0.1)")
    parser.add_argument("--log-level", default="INFO", help="logging level (default: INFO)")
    return parser


def parse_args(argv: list[str] | None) -> tuple[argparse.Namespace, object]:
    """The worker's and its engine kind's flags; everything after `--` goes to a subprocess
    engine unparsed, as `args.engine_args`."""
    argv = list(sys.argv[1:] if argv is None else argv)
    engine_args: list[str] = []
    if "--" in argv:
        argv, engine_args = argv[:argv.index("--")], argv[argv.index("--") + 1:]
    pre = argparse.ArgumentParser(add_help=False)
    pre.add_argument("--engine", default="mock", choices=sorted(ENGINE_KINDS))
    kind = load_engine_kind(pre.parse_known_args(argv)[0].engine)
    parser = build_parser()
    kind.add_arguments(parser.add_argument_group(f"{kind.name} engine options"))
    args = parser.parse_args(argv)
    args.engine_args = engine_args
    return args, kind


async def run(args: argparse.Namespace, kind) -> None:
    tokenizer = await asyncio.to_thread(Tokenizer.load, args.model_path)
    model_path = str(tokenizer.model_path)
    model_name = args.model_name or Path(model_path).name
    context = EngineContext(model_path=model_path, model_name=model_name,
                            context_length=tokenizer.context_length)
    engine = kind.create(args, context)
    identity = WorkerIdentity(worker_id=new_worker_id(), model=model_name, model_path=model_path,
                              tokenizer_sha256=tokenizer.sha256,
                              context_length=tokenizer.context_length, engine=kind.name,
                              host=args.host)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    await WorkerServer(engine, identity, FileDiscovery(args.namespace)).serve(stop)


def main(argv: list[str] | None = None) -> int:
    args, kind = parse_args(argv)
    logging.basicConfig(level=args.log_level.upper(),
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    try:
        asyncio.run(run(args, kind))
    except (ValueError, FileNotFoundError) as exc:
        log.error("%s", exc)
        return 2
    except RuntimeError as exc:         # the engine failed to start or died
        log.error("%s", exc)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
