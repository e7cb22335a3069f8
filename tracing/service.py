"""Tracing as the frontend runs it: the tracer and, when configured, the tool-event ingress,
started together and stopped in the right order (ingress first, so tool events that arrive
during shutdown are still written; then the tracer, which drains and flushes every sink).

    async def _run_tracing(app):                     # an aiohttp cleanup_ctx
        async with open_tracing(TraceConfig.from_env(os.environ)) as tracing:
            app[TRACING] = tracing
            yield                                    # shutdown (SIGTERM/SIGINT) resumes here
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import TextIO

from tracing.config import TraceConfig
from tracing.ingress import ToolEventIngress
from tracing.tracer import Tracer


@dataclass(slots=True)
class Tracing:
    config: TraceConfig
    tracer: Tracer
    ingress: ToolEventIngress | None     # None unless tracing is on and an endpoint is set

    @property
    def enabled(self) -> bool:
        return self.tracer.enabled


@contextlib.asynccontextmanager
async def open_tracing(config: TraceConfig, *,
                       stderr: TextIO | None = None) -> AsyncIterator[Tracing]:
    """Start the sinks (and bind the ingress); on exit close both. Raises RuntimeError with the
    path or endpoint when a sink cannot open or the endpoint cannot be bound."""
    tracer = Tracer(config, stderr=stderr)
    await tracer.start()
    ingress: ToolEventIngress | None = None
    try:
        if config.enabled and config.tool_events_endpoint:
            ingress = ToolEventIngress(config.tool_events_endpoint, tracer,
                                       topic=config.tool_events_topic)
            await ingress.start()
        yield Tracing(config, tracer, ingress)
    finally:
        try:
            if ingress is not None:
                await ingress.close()
        finally:
            await tracer.close()
