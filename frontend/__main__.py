"""`python -m frontend`: serve the OpenAI API in front of the workers of one namespace."""

from __future__ import annotations

import argparse
import logging
import os
import sys

from aiohttp import web

from frontend.app import create_app
from frontend.config import FrontendConfig
from frontend.tokenizer import Tokenizer
from router.config import RouterConfig
from tracing.config import TraceConfig

log = logging.getLogger("rotor.frontend")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m frontend",
        description="Rotor's HTTP frontend: the OpenAI API (chat and text completions, models, "
                    "health) in front of the workers discovered in one namespace.")
    FrontendConfig.add_arguments(parser)
    RouterConfig.add_arguments(parser)
    args = parser.parse_args(argv)
    try:
        config = FrontendConfig.from_args(args)
        router_config = RouterConfig.from_args(args)
    except ValueError as exc:
        parser.error(str(exc))
    logging.basicConfig(level=config.log_level.upper(),
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    try:
        tokenizer = Tokenizer.load(config.model_path) if config.model_path else None
    except (OSError, ValueError) as exc:
        log.error("cannot load --model-path: %s", exc)
        return 2
    try:
        trace_config = TraceConfig.from_env(os.environ)
    except ValueError as exc:
        log.error("bad tracing environment: %s", exc)
        return 2
    app = create_app(config, router_config, trace_config, tokenizer=tokenizer)
    log.info("serving the OpenAI API on http://%s:%d (namespace %r, router mode %s)",
             config.http_host, config.http_port, config.namespace, router_config.router_mode)
    web.run_app(app, host=config.http_host, port=config.http_port, handler_cancellation=True,
                print=None, access_log=None)
    return 0


if __name__ == "__main__":
    sys.exit(main())
