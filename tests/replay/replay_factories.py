"""Factories for replay tests: rows, a simple timing profile, engine args, trace subsets."""

from __future__ import annotations

import itertools
import json
from pathlib import Path

from mocker.config import MockEngineArgs

ROOT = Path(__file__).resolve().parents[2]
TRACES = ROOT.parent / "shared" / "traces"
CONVERSATION = TRACES / "conversation_trace.jsonl"
PREFIX_GROUPS = TRACES / "prefix_groups_10k.jsonl"

# prefill 0.1 ms per new token, decode 10 ms per step whatever the KV usage: easy to do by hand
SIMPLE_PROFILE = {"prefill": {"tokens": [0, 1000], "ms": [0.0, 100.0]},
                  "decode": {"kv_usage": [0.0, 1.0], "ms": [10.0, 10.0]}}


def write_profile(tmp_path: Path) -> str:
    path = tmp_path / "profile.json"
    path.write_text(json.dumps(SIMPLE_PROFILE))
    return str(path)


def make_engine(tmp_path: Path | None = None, **overrides) -> MockEngineArgs:
    """A small engine (block 16, budget 64, 4 seqs); with `tmp_path`, the simple profile."""
    fields = {"block_size": 16, "num_gpu_blocks": 256, "max_num_seqs": 4,
              "max_num_batched_tokens": 64}
    if tmp_path is not None:
        fields["profile"] = write_profile(tmp_path)
    fields.update(overrides)
    return MockEngineArgs().with_overrides(fields).validate()


def row(timestamp: float, hash_ids: list[int], input_length: int, output_length: int,
        **extra) -> dict:
    return {"timestamp": timestamp, "input_length": input_length,
            "output_length": output_length, "hash_ids": hash_ids, **extra}


def trace_rows(path: Path, limit: int) -> list[dict]:
    with open(path, encoding="utf-8") as fh:
        return [json.loads(line) for line in itertools.islice(fh, limit)]
