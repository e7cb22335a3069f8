"""Event-plane types: KV events in the engines' format and in the router's, and load reports.

Two KV event formats (DESIGN.md §4.3), each defined once here:

* Engine format: what vLLM, SGLang and the mock engine publish. A batch is
  `[timestamp, [events...], data_parallel_rank]`; each event is a msgpack map with a `type` key
  (vLLM 0.32) or a tagged array (older vLLM, SGLang):
      ["BlockStored", block_hashes, parent_block_hash, token_ids, block_size, lora_id, medium, lora_name]
      ["BlockRemoved", block_hashes, medium]
      ["AllBlocksCleared"]
  Engine block hashes are opaque (signed or unsigned 64-bit ints, or 32-byte binaries).
* Router format: what a worker's relay sends to frontends, one msgpack map per event,
  `{worker_id, dp_rank, event_id, kind, parent_hash?, blocks?|hashes?}`, with local hashes
  recomputed by the relay (router/hashing.py) so the index navigates by hashes it can trust.

In one process (replay, tests) these objects are passed as they are, never through msgpack. There
a `BlockStored` may hold its tokens in any sequence (the mock engine passes `array('I')` slices of
trace prompts) and may carry the producer's `local_hashes`, computed with router/hashing.py, which
the relay then uses instead of hashing the tokens again. Neither reaches the wire: `token_ids` is
sent as a list, and `local_hashes` is never sent nor read from it.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, Literal, Union

import msgpack

EngineHash = Union[int, bytes]

DEVICE_MEDIA = frozenset({None, "GPU", "DEVICE", "gpu", "device"})


# ---------------------------------------------------------------------------------------------
# Engine format


@dataclass(slots=True)
class BlockStored:
    block_hashes: list[EngineHash]
    parent_block_hash: EngineHash | None
    token_ids: Sequence[int]      # all stored blocks' tokens, flat
    block_size: int
    lora_id: int | None = None
    medium: str | None = "GPU"
    lora_name: str | None = None
    group_idx: int | None = None  # hybrid models: which KV cache group; None means full attention
    # in process only: the local hash of each full block, from router/hashing.py (module doc)
    local_hashes: list[int] | None = field(default=None, compare=False, repr=False)


@dataclass(slots=True)
class BlockRemoved:
    block_hashes: list[EngineHash]
    medium: str | None = "GPU"
    group_idx: int | None = None


@dataclass(slots=True)
class AllBlocksCleared:
    pass


EngineEvent = Union[BlockStored, BlockRemoved, AllBlocksCleared]


@dataclass(slots=True)
class EngineEventBatch:
    timestamp: float
    events: list[EngineEvent]
    dp_rank: int = 0


def encode_engine_batch(batch: EngineEventBatch, tagged: bool = False) -> bytes:
    """msgpack payload of one engine batch: vLLM 0.32 maps, or SGLang-style tagged arrays."""
    return msgpack.packb([batch.timestamp, [_engine_event_to_wire(e, tagged) for e in batch.events],
                          batch.dp_rank], use_bin_type=True)


def decode_engine_batch(payload: bytes) -> EngineEventBatch:
    """Parse an engine batch in either encoding. Raises ValueError on anything malformed."""
    try:
        raw = msgpack.unpackb(payload, raw=False, strict_map_key=False)
        timestamp, events, dp_rank = raw[0], raw[1], (raw[2] if len(raw) > 2 else 0)
        return EngineEventBatch(float(timestamp), [_engine_event_from_wire(e) for e in events],
                                int(dp_rank or 0))
    except (ValueError, TypeError, IndexError, KeyError, msgpack.UnpackException) as exc:
        raise ValueError(f"malformed engine KV event batch: {exc}") from exc


def _engine_event_to_wire(event: EngineEvent, tagged: bool) -> Any:
    if isinstance(event, BlockStored):
        fields = {"block_hashes": event.block_hashes, "parent_block_hash": event.parent_block_hash,
                  "token_ids": list(event.token_ids), "block_size": event.block_size,
                  "lora_id": event.lora_id, "medium": event.medium, "lora_name": event.lora_name}
        kind = "BlockStored"
    elif isinstance(event, BlockRemoved):
        fields = {"block_hashes": event.block_hashes, "medium": event.medium}
        kind = "BlockRemoved"
    else:
        fields, kind = {}, "AllBlocksCleared"
    if tagged:
        return [kind, *fields.values()]
    return {"type": kind, **fields}


def _engine_event_from_wire(raw: Any) -> EngineEvent:
    fields: dict[str, Any]
    if isinstance(raw, dict):
        kind, fields = raw["type"], raw
    else:
        kind, values = raw[0], raw[1:]
        names = _TAGGED_FIELDS.get(kind)
        if names is None:
            raise ValueError(f"unknown engine KV event type {kind!r}")
        fields = dict(zip(names, values))
    get = fields.get
    if kind == "BlockStored":
        return BlockStored(list(fields["block_hashes"]), get("parent_block_hash"),
                           list(fields["token_ids"]), int(fields["block_size"]), get("lora_id"),
                           get("medium"), get("lora_name"), get("group_idx"))
    if kind == "BlockRemoved":
        return BlockRemoved(list(fields["block_hashes"]), get("medium"), get("group_idx"))
    if kind == "AllBlocksCleared":
        return AllBlocksCleared()
    raise ValueError(f"unknown engine KV event type {kind!r}")


_TAGGED_FIELDS = {
    "BlockStored": ("block_hashes", "parent_block_hash", "token_ids", "block_size", "lora_id",
                    "medium", "lora_name"),
    "BlockRemoved": ("block_hashes", "medium"),
    "AllBlocksCleared": (),
}


# ---------------------------------------------------------------------------------------------
# Router format

RouterEventKind = Literal["stored", "removed", "cleared"]


@dataclass(slots=True)
class RouterEvent:
    """One KV event as the router applies it, numbered per worker from 1 by the worker's relay."""

    worker_id: int
    dp_rank: int
    event_id: int
    kind: RouterEventKind
    parent_hash: EngineHash | None = None
    # stored: (engine_hash, local_hash) per block, parent first; removed: engine hashes
    blocks: list[tuple[EngineHash, int]] = field(default_factory=list)
    hashes: list[EngineHash] = field(default_factory=list)

    def to_wire(self) -> dict[str, Any]:
        msg: dict[str, Any] = {"worker_id": self.worker_id, "dp_rank": self.dp_rank,
                               "event_id": self.event_id, "kind": self.kind}
        if self.kind == "stored":
            msg["parent_hash"] = self.parent_hash
            msg["blocks"] = [list(b) for b in self.blocks]
        elif self.kind == "removed":
            msg["hashes"] = self.hashes
        return msg

    @classmethod
    def from_wire(cls, msg: dict[str, Any]) -> "RouterEvent":
        kind = msg["kind"]
        if kind not in ("stored", "removed", "cleared"):
            raise ValueError(f"unknown router event kind {kind!r}")
        return cls(int(msg["worker_id"]), int(msg.get("dp_rank", 0)), int(msg["event_id"]), kind,
                   msg.get("parent_hash"), [(b[0], int(b[1])) for b in msg.get("blocks", ())],
                   list(msg.get("hashes", ())))


# ---------------------------------------------------------------------------------------------
# Load reports (event-plane topic `load`)


@dataclass(slots=True)
class LoadReport:
    worker_id: int
    dp_rank: int
    kv_used_blocks: int
    kv_total_blocks: int
    num_running: int
    num_waiting: int

    def to_wire(self) -> dict[str, Any]:
        return {"worker_id": self.worker_id, "dp_rank": self.dp_rank,
                "kv_used_blocks": self.kv_used_blocks, "kv_total_blocks": self.kv_total_blocks,
                "num_running": self.num_running, "num_waiting": self.num_waiting}

    @classmethod
    def from_wire(cls, msg: dict[str, Any]) -> "LoadReport":
        return cls(int(msg["worker_id"]), int(msg.get("dp_rank", 0)), int(msg["kv_used_blocks"]),
                   int(msg["kv_total_blocks"]), int(msg["num_running"]), int(msg["num_waiting"]))
