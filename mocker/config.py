"""The mock engine's knobs, each declared once (DESIGN.md §9; flag spellings are Dynamo's mocker's).

`MockEngineArgs.add_arguments(parser)` adds every flag, `from_args(namespace)` builds the value and
applies `--extra-engine-args` (a JSON object, inline or in a file, keyed by field name), and
`validate()` raises ValueError naming the offending flag. `to_argv()` turns a value back into flags,
which is how `python -m mocker` hands the same engine to every worker process.
"""

from __future__ import annotations

import argparse
import math
from dataclasses import dataclass, field, fields, replace
from pathlib import Path
from typing import Any

from mocker.timing import ProfileTiming
from router.config import load_json_object

SCHEDULING_POLICY_NAMES = ("fcfs", "priority")   # mocker/scheduling.py holds the implementations
EVICTION_POLICY_NAMES = ("lru", "priority")      # mocker/kv_cache.py holds the implementations


def _knob(default: Any, flag: str, kind: type, help: str, choices: tuple[str, ...] | None = None,
          metavar: str | None = None) -> Any:
    return field(default=default, metadata={"flag": flag, "kind": kind, "help": help,
                                            "choices": choices, "metavar": metavar})


@dataclass(frozen=True)
class MockEngineArgs:
    num_gpu_blocks: int = _knob(
        16384, "--num-gpu-blocks-override", int, "KV cache size in blocks")
    block_size: int = _knob(
        64, "--block-size", int, "tokens per KV block (the block size the router hashes with)")
    max_num_seqs: int = _knob(
        256, "--max-num-seqs", int, "most requests running at once")
    max_num_batched_tokens: int = _knob(
        8192, "--max-num-batched-tokens", int,
        "token budget of one engine pass (decode tokens + prefill tokens); at least --max-num-seqs")
    speedup_ratio: float = _knob(
        1.0, "--speedup-ratio", float, "divide every pass duration by this (1: modelled GPU speed)")
    decode_speedup_ratio: float = _knob(
        1.0, "--decode-speedup-ratio", float,
        "further divide the decode part of a pass by this (speculative decoding and the like)")
    enable_prefix_caching: bool = _knob(
        True, "--enable-prefix-caching", bool,
        "reuse cached prompt blocks and publish KV events (--no-enable-prefix-caching: neither)")
    enable_chunked_prefill: bool = _knob(
        True, "--enable-chunked-prefill", bool,
        "split prompts larger than the pass budget over several passes (without it a prompt must fit "
        "one pass: prompt + max_tokens - 1 <= --max-num-batched-tokens)")
    scheduling_policy: str = _knob(
        "fcfs", "--scheduling-policy", str,
        "order of waiting requests: fcfs (arrival), or priority (higher priority first, ties by "
        "arrival; the lowest-priority running request is the one preempted)",
        choices=SCHEDULING_POLICY_NAMES)
    eviction_policy: str = _knob(
        "lru", "--eviction-policy", str,
        "order in which cached inactive blocks are evicted: lru, or priority (blocks of "
        "lower-priority requests first, LRU within a priority)", choices=EVICTION_POLICY_NAMES)
    profile: str | None = _knob(
        None, "--profile", str,
        'timing profile JSON replacing the default polynomials: {"prefill": {"tokens": [...], '
        '"ms": [...]}, "decode": {"kv_usage": [0..1 ...], "ms": [...]}}, interpolated linearly',
        metavar="FILE")
    script: str | None = _knob(
        None, "--script", str,
        "scripted replies (JSON): text and/or tool calls keyed by x-request-id or by turn; see "
        "mocker/script.py", metavar="FILE")
    output_token_seed: int = _knob(
        0, "--output-token-seed", int,
        "seed of the generated output token ids (ids 1000-1999, deterministic per request id)")

    # -- command line ----------------------------------------------------------------------

    @classmethod
    def add_arguments(cls, parser: argparse.ArgumentParser | argparse._ArgumentGroup) -> None:
        for f in fields(cls):
            meta = f.metadata
            default = f.default
            help_text = f"{meta['help']} (default: {default})"
            if meta["kind"] is bool:
                parser.add_argument(meta["flag"], dest=f.name, default=default,
                                    action=argparse.BooleanOptionalAction, help=meta["help"]
                                    + f" (default: {'on' if default else 'off'})")
            else:
                parser.add_argument(meta["flag"], dest=f.name, default=default, type=meta["kind"],
                                    choices=meta["choices"], metavar=meta["metavar"],
                                    help=help_text)
        parser.add_argument(
            "--extra-engine-args", dest="extra_engine_args", default=None, metavar="FILE|JSON",
            help="JSON object (inline, or a file holding one) overriding any of the options above, "
                 'keyed by field name, e.g. \'{"num_gpu_blocks": 2048, "speedup_ratio": 10}\'')

    @classmethod
    def from_args(cls, namespace: argparse.Namespace) -> "MockEngineArgs":
        """The parsed flags with `--extra-engine-args` applied on top. Raises ValueError."""
        args = cls(**{f.name: getattr(namespace, f.name) for f in fields(cls)})
        extra = getattr(namespace, "extra_engine_args", None)
        return args.with_overrides(load_json_object(extra, "--extra-engine-args")) if extra else args

    def with_overrides(self, overrides: dict[str, Any]) -> "MockEngineArgs":
        known = {f.name: f for f in fields(self)}
        changes: dict[str, Any] = {}
        for key, value in overrides.items():
            f = known.get(key)
            if f is None:
                raise ValueError(f"--extra-engine-args: unknown key {key!r}; known keys: "
                                 f"{', '.join(known)}")
            changes[key] = _coerce(value, f.metadata["kind"], key)
        return replace(self, **changes)

    def to_argv(self) -> list[str]:
        argv: list[str] = []
        for f in fields(self):
            flag, value = f.metadata["flag"], getattr(self, f.name)
            if f.metadata["kind"] is bool:
                argv.append(flag if value else "--no-" + flag[2:])
            elif value is not None:
                argv += [flag, str(value)]
        return argv

    # -- checks ----------------------------------------------------------------------------

    def validate(self) -> "MockEngineArgs":
        _check_range("--num-gpu-blocks-override", self.num_gpu_blocks, 1, 1 << 22)
        _check_range("--block-size", self.block_size, 1, 4096)
        _check_range("--max-num-seqs", self.max_num_seqs, 1, 1 << 16)
        _check_range("--max-num-batched-tokens", self.max_num_batched_tokens, self.max_num_seqs,
                     1 << 24, "(at least --max-num-seqs)")
        for flag, ratio in (("--speedup-ratio", self.speedup_ratio),
                            ("--decode-speedup-ratio", self.decode_speedup_ratio)):
            if not (math.isfinite(ratio) and 1e-6 <= ratio <= 1e9):
                raise ValueError(f"{flag} must be a number between 1e-6 and 1e9, got {ratio}")
        if self.scheduling_policy not in SCHEDULING_POLICY_NAMES:
            raise ValueError(f"--scheduling-policy must be one of {', '.join(SCHEDULING_POLICY_NAMES)}"
                             f", got {self.scheduling_policy!r}")
        if self.eviction_policy not in EVICTION_POLICY_NAMES:
            raise ValueError(f"--eviction-policy must be one of {', '.join(EVICTION_POLICY_NAMES)}, "
                             f"got {self.eviction_policy!r}")
        for flag, path in (("--profile", self.profile), ("--script", self.script)):
            if path is not None and not Path(path).is_file():
                raise ValueError(f"{flag}: no such file: {path}")
        if self.profile is not None:
            ProfileTiming.load(self.profile)   # parse errors name --profile
        _check_range("--output-token-seed", self.output_token_seed, 0, (1 << 64) - 1)
        return self


def _check_range(flag: str, value: int, lo: int, hi: int, why: str = "") -> None:
    if isinstance(value, bool) or not isinstance(value, int) or not lo <= value <= hi:
        raise ValueError(f"{flag} must be an integer between {lo} and {hi}{' ' + why if why else ''}"
                         f", got {value!r}")


def _coerce(value: Any, kind: type, key: str) -> Any:
    if value is None and key in ("profile", "script"):
        return None
    if kind is float and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    if isinstance(value, kind) and not (kind is int and isinstance(value, bool)):
        return value
    raise ValueError(f"--extra-engine-args: {key} must be {kind.__name__}, got {value!r}")
