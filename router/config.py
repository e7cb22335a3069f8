"""Router configuration: every knob declared once (DESIGN.md §9, Dynamo's spellings).

Each field carries its command-line flag and help text (with units) in its metadata;
`add_arguments` builds the flags from them, `from_args` reads them back and applies
`--router-config` (JSON text or a JSON file: field name -> value, on top of the flags), and
`validate` checks ranges. Replay builds a `RouterConfig` directly or from the same JSON.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from router.policies import ROUTER_MODES
from router.queue import QUEUE_POLICIES


def _knob(default: Any, flag: str, help: str, **argparse_kwargs: Any) -> Any:
    return field(default=default, metadata={"flag": flag, "help": help, **argparse_kwargs})


def _optional_float(text: str) -> float | None:
    return None if text.lower() == "none" else float(text)


@dataclass
class RouterConfig:
    router_mode: str = _knob("kv", "--router-mode",
                             "worker selection: kv, round-robin, random or least-loaded",
                             type=str, choices=ROUTER_MODES)
    router_kv_overlap_score_weight: float = _knob(
        1.0, "--router-kv-overlap-score-weight",
        "weight of prefill blocks against decode blocks in the kv cost (blocks per block)",
        type=float)
    router_temperature: float = _knob(
        0.0, "--router-temperature",
        "softmax temperature over range-normalised kv costs; 0 picks the lowest cost",
        type=float)
    router_priority_cache_scale: float = _knob(
        0.25, "--router-priority-cache-scale",
        "k in the cache-miss weight 2^(-k*priority) of the kv cost: high priority weighs load "
        "more, low priority weighs cache more; 0 ignores priority in selection", type=float)
    router_kv_events: bool = _knob(
        True, "--router-kv-events",
        "follow workers' KV events; --no-router-kv-events credits routed prompts for "
        "--router-ttl-secs instead", action=argparse.BooleanOptionalAction)
    router_ttl_secs: float = _knob(
        120.0, "--router-ttl-secs", "approximate mode: seconds a routed prompt stays credited",
        type=float)
    kv_cache_block_size: int | None = _knob(
        None, "--kv-cache-block-size", "tokens per KV block; unset: the workers' block size",
        type=int)
    router_queue_threshold: float | None = _knob(
        4.0, "--router-queue-threshold",
        "a worker is busy past this many times its max_num_batched_tokens of unprefilled "
        "prompt tokens; 'none' disables queueing", type=_optional_float)
    router_queue_policy: str = _knob("fcfs", "--router-queue-policy",
                                     "admission queue order: fcfs, lcfs or wspt",
                                     type=str, choices=sorted(QUEUE_POLICIES))
    busy_kv_fraction: float = _knob(
        0.95, "--busy-kv-fraction", "a worker is busy past this fraction of its KV blocks in use",
        type=float)
    max_queue_depth: int = _knob(
        1024, "--max-queue-depth", "requests waiting beyond this many are shed with 503", type=int)
    max_queue_wait_ms: float = _knob(
        30000.0, "--max-queue-wait-ms", "requests waiting longer than this (ms) are shed with 503",
        type=float)
    kv_query_timeout_secs: float = _knob(
        1.0, "--router-kv-query-timeout-secs",
        "seconds before an unanswered kv_query (gap range or dump) is sent again", type=float)

    def validate(self) -> "RouterConfig":
        """Raise ValueError naming the first bad field; returns self."""
        if self.router_mode not in ROUTER_MODES:
            raise ValueError(f"router_mode must be one of {ROUTER_MODES}, got {self.router_mode!r}")
        if self.router_queue_policy not in QUEUE_POLICIES:
            raise ValueError(f"router_queue_policy must be one of {sorted(QUEUE_POLICIES)}, "
                             f"got {self.router_queue_policy!r}")
        for name in ("router_kv_overlap_score_weight", "router_temperature",
                     "router_priority_cache_scale"):
            if getattr(self, name) < 0:
                raise ValueError(f"{name} must be >= 0, got {getattr(self, name)}")
        for name in ("router_ttl_secs", "max_queue_wait_ms", "kv_query_timeout_secs"):
            if getattr(self, name) <= 0:
                raise ValueError(f"{name} must be > 0, got {getattr(self, name)}")
        if self.kv_cache_block_size is not None and self.kv_cache_block_size <= 0:
            raise ValueError(f"kv_cache_block_size must be > 0, got {self.kv_cache_block_size}")
        if self.router_queue_threshold is not None and self.router_queue_threshold <= 0:
            raise ValueError(f"router_queue_threshold must be > 0 or None, "
                             f"got {self.router_queue_threshold}")
        if not 0 < self.busy_kv_fraction <= 1:
            raise ValueError(f"busy_kv_fraction must be in (0, 1], got {self.busy_kv_fraction}")
        if self.max_queue_depth < 0:
            raise ValueError(f"max_queue_depth must be >= 0, got {self.max_queue_depth}")
        return self

    def with_overrides(self, overrides: dict[str, Any]) -> "RouterConfig":
        """A copy with fields replaced by name (unknown names are a ValueError)."""
        known = {f.name for f in dataclasses.fields(self)}
        unknown = sorted(set(overrides) - known)
        if unknown:
            raise ValueError(f"router config has no field(s) {unknown}")
        return dataclasses.replace(self, **overrides)

    @staticmethod
    def add_arguments(parser: argparse.ArgumentParser) -> None:
        group = parser.add_argument_group("router")
        for f in dataclasses.fields(RouterConfig):
            meta = dict(f.metadata)
            flag, help_text = meta.pop("flag"), meta.pop("help")
            group.add_argument(flag, dest=f.name, default=f.default,
                               help=f"{help_text} (default: {f.default})", **meta)
        group.add_argument("--router-config", dest="router_config", default=None,
                           help="JSON object or path to a JSON file: router config field -> "
                                "value, applied over the flags")

    @classmethod
    def from_args(cls, ns: argparse.Namespace) -> "RouterConfig":
        config = cls(**{f.name: getattr(ns, f.name) for f in dataclasses.fields(cls)})
        if getattr(ns, "router_config", None):
            config = config.with_overrides(load_overrides(ns.router_config))
        return config.validate()


def load_json_object(text_or_path: str, flag: str) -> dict[str, Any]:
    """A JSON object given inline or as the path of a file holding it (`--router-config`,
    `--extra-engine-args`). ValueError naming `flag` when it is neither."""
    text = text_or_path
    if not text_or_path.lstrip().startswith(("{", "[")):
        try:
            text = Path(text_or_path).read_text()
        except OSError as exc:
            raise ValueError(f"{flag}: not a JSON object and not a readable file: "
                             f"{text_or_path!r} ({exc.strerror})") from exc
    try:
        value = json.loads(text)
    except json.JSONDecodeError as exc:
        raise ValueError(f"{flag}: invalid JSON: {exc}") from exc
    if not isinstance(value, dict):
        raise ValueError(f"{flag}: must be a JSON object of field -> value")
    return value


def load_overrides(text_or_path: str) -> dict[str, Any]:
    """`--router-config`: JSON text, or the path of a file holding it."""
    return load_json_object(text_or_path, "--router-config")
