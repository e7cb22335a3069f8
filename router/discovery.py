"""Worker discovery (DESIGN.md §2.1): who serves which model, where, with what capacity.

Embedded default: one JSON file per worker in `$TMPDIR/rotor/<namespace>/`, written atomically
(write a temporary file, then rename) and rewritten every second as a heartbeat. A record whose
file has not been refreshed for `STALE_AFTER_S` is ignored, so a SIGKILLed worker disappears by
itself; a worker that exits cleanly removes its file at once.

Discovery sits behind the small `Discovery` protocol so that multi-node backends (etcd) can slot
in later; the frontend only calls `scan()` and diffs the result.
"""

from __future__ import annotations

import json
import os
import random
import tempfile
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Protocol

HEARTBEAT_INTERVAL_S = 1.0
STALE_AFTER_S = 5.0


def new_worker_id() -> int:
    """A fresh random unsigned 63-bit id, new at every worker start (Dynamo tools expect ints)."""
    return random.SystemRandom().getrandbits(63) or 1


@dataclass(frozen=True, slots=True)
class WorkerRecord:
    worker_id: int
    model: str                    # served model name
    model_path: str               # local folder with the tokenizer and config
    tokenizer_sha256: str
    context_length: int           # tokens
    kv_block_size: int            # tokens per KV block
    total_kv_blocks: int
    max_num_seqs: int
    max_num_batched_tokens: int
    engine: str                   # mock | vllm | sglang
    request_endpoint: str         # zmq ROUTER, e.g. tcp://127.0.0.1:40123
    event_endpoint: str           # zmq PUB
    started_at: float             # unix seconds
    pid: int
    # engine counters refreshed with every heartbeat: tokenization conformance and mismatches,
    # KV event gaps (subprocess engines); see Engine.stats()
    stats: dict[str, Any] = field(default_factory=dict)

    def to_json(self) -> str:
        return json.dumps(asdict(self), sort_keys=True)

    @classmethod
    def from_json(cls, text: str) -> "WorkerRecord":
        data = json.loads(text)
        return cls(**{name: data[name] for name in cls.__dataclass_fields__
                      if name in data or name != "stats"})


class Discovery(Protocol):
    def publish(self, record: WorkerRecord) -> None:
        """Register or refresh (heartbeat) a worker's record."""

    def remove(self, worker_id: int) -> None:
        """Deregister a worker (clean exit)."""

    def scan(self) -> dict[int, WorkerRecord]:
        """Every live worker's record, by worker id."""


def namespace_dir(namespace: str) -> Path:
    if not namespace or "/" in namespace or namespace.startswith("."):
        raise ValueError(f"--namespace must be a plain name, got {namespace!r}")
    return Path(tempfile.gettempdir()) / "rotor" / namespace


class FileDiscovery:
    """The embedded default: a directory of JSON files, one per worker."""

    def __init__(self, namespace: str, stale_after_s: float = STALE_AFTER_S):
        self.root = namespace_dir(namespace)
        self.root.mkdir(parents=True, exist_ok=True, mode=0o700)
        self.stale_after_s = stale_after_s

    def _path(self, worker_id: int) -> Path:
        return self.root / f"{worker_id}.json"

    def publish(self, record: WorkerRecord) -> None:
        fd, tmp = tempfile.mkstemp(dir=self.root, prefix=".tmp-", suffix=".json")
        try:
            with os.fdopen(fd, "w") as f:
                f.write(record.to_json())
            os.replace(tmp, self._path(record.worker_id))
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise

    def remove(self, worker_id: int) -> None:
        self._path(worker_id).unlink(missing_ok=True)

    def scan(self) -> dict[int, WorkerRecord]:
        now = time.time()
        records: dict[int, WorkerRecord] = {}
        for path in self.root.glob("*.json"):
            if path.name.startswith("."):
                continue
            try:
                if now - path.stat().st_mtime > self.stale_after_s:
                    continue
                record = WorkerRecord.from_json(path.read_text())
            except (OSError, ValueError, KeyError, TypeError):
                continue  # vanished between glob and read, or not a record: not a live worker
            records[record.worker_id] = record
        return records
