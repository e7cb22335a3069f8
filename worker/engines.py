"""The registry of engine kinds a worker can host (`python -m worker --engine NAME`).

Each entry names the module attribute holding its `EngineKind` (flags + factory); modules are
imported only when chosen, so a mock worker never imports a real engine's client code.
"""

from __future__ import annotations

import importlib

from worker.engine import EngineKind

ENGINE_KINDS: dict[str, str] = {
    "mock": "mocker.realtime:MOCK_ENGINE",
    "vllm": "worker.vllm:VLLM_ENGINE",
    "sglang": "worker.sglang:SGLANG_ENGINE",
}


def load_engine_kind(name: str) -> EngineKind:
    try:
        target = ENGINE_KINDS[name]
    except KeyError:
        raise ValueError(f"--engine must be one of {', '.join(ENGINE_KINDS)}, got {name!r}") from None
    module, _, attribute = target.partition(":")
    return getattr(importlib.import_module(module), attribute)
