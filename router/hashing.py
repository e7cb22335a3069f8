"""Block hashing: the one definition in Rotor (DESIGN.md §4.1), byte-exact with NVIDIA Dynamo.

A prompt is cut into blocks of `block_size` tokens. Each full block gets a *local* hash of its own
tokens; *sequence* hashes chain the local hashes so that a block's sequence hash names the block
together with everything before it:

    tokens   [t0 ........ t63][t64 ....... t127][t128 .. t150]
    local     L0               L1                (partial: not hashed for routing)
    sequence  S0 = L0          S1 = H(S0 ‖ L1)

    H(x)  = XXH3-64(x, seed=1337)
    L_i   = XXH3-64(token ids of block i as little-endian u32, seed)   seed = 1337 (+ LoRA, below)
    S_i   = H(le_u64(S_{i-1}) ‖ le_u64(L_i))                            always seed 1337

Router, worker relay, mock engine and trace replay hashes all import from here; nothing else in
Rotor hashes blocks.
"""

from __future__ import annotations

import struct
import sys
from array import array
from collections.abc import Sequence
from functools import cached_property

import xxhash

SEED = 1337
_U64 = (1 << 64) - 1
_PAIR = struct.Struct("<QQ")
_xxh3 = xxhash.xxh3_64_intdigest


def lora_seed(lora_name: str | None) -> int:
    """Seed for local hashes: 1337 for the base model, 1337 + XXH3-64(name) (wrapping) for a LoRA."""
    if not lora_name:
        return SEED
    return (SEED + _xxh3(lora_name.encode())) & _U64


def token_bytes(token_ids: Sequence[int]) -> bytes:
    """Token ids packed as little-endian u32, the bytes every local hash is taken over."""
    packed = array("I", token_ids)
    if sys.byteorder != "little":
        packed.byteswap()
    return packed.tobytes()


def local_hashes(token_ids: Sequence[int], block_size: int, seed: int = SEED,
                 include_partial: bool = False) -> list[int]:
    """Local hash of every full block (and of the trailing partial block if `include_partial`)."""
    if block_size <= 0:
        raise ValueError(f"block_size must be positive, got {block_size}")
    data = token_bytes(token_ids)
    step = 4 * block_size
    end = len(data) if include_partial else (len(token_ids) // block_size) * step
    return [_xxh3(data[i:i + step], seed) for i in range(0, end, step)]


def chain_hash(parent: int, local: int) -> int:
    """Sequence hash of a block whose predecessor has sequence hash `parent`."""
    return _xxh3(_PAIR.pack(parent, local), SEED)


def sequence_hashes(local: Sequence[int], parent: int | None = None) -> list[int]:
    """Chain local hashes into sequence hashes; `parent` continues an existing chain."""
    out: list[int] = []
    for h in local:
        parent = h if parent is None else chain_hash(parent, h)
        out.append(parent)
    return out


class Prompt:
    """A prompt's token ids with their block hashes at one block size, each computed once.

    The frontend builds one per request; the router, the trace's replay hashes and (in process)
    the mock engine read the same hashes from it instead of hashing the same blocks again.
    """

    __slots__ = ("token_ids", "block_size", "seed", "__dict__")

    def __init__(self, token_ids: Sequence[int], block_size: int, lora_name: str | None = None):
        if block_size <= 0:
            raise ValueError(f"block_size must be positive, got {block_size}")
        self.token_ids = token_ids
        self.block_size = block_size
        self.seed = lora_seed(lora_name)

    def __len__(self) -> int:
        return len(self.token_ids)

    @property
    def num_full_blocks(self) -> int:
        return len(self.token_ids) // self.block_size

    @cached_property
    def local_hashes(self) -> list[int]:
        """Local hashes of the full blocks only (routing never looks at the partial tail)."""
        return local_hashes(self.token_ids, self.block_size, self.seed)

    @cached_property
    def sequence_hashes(self) -> list[int]:
        return sequence_hashes(self.local_hashes)

    @cached_property
    def replay_hashes(self) -> list[int]:
        """Sequence hashes including the partial tail: ceil(len / block_size) of them (trace rows)."""
        tail = len(self.token_ids) % self.block_size
        if not tail:
            return self.sequence_hashes
        start = self.num_full_blocks * self.block_size
        (tail_local,) = local_hashes(self.token_ids[start:], self.block_size, self.seed,
                                     include_partial=True)
        parent = self.sequence_hashes[-1] if self.sequence_hashes else None
        return self.sequence_hashes + sequence_hashes([tail_local], parent)
