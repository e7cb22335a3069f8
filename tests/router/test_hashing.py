"""Block hashing against DESIGN.md §4.1's test vectors (shared with NVIDIA Dynamo)."""

import random

import pytest
import xxhash

from router.hashing import (SEED, Prompt, chain_hash, local_hashes, lora_seed, sequence_hashes,
                            token_bytes)

TOKENS = list(range(1, 13))
LOCAL = [14643705804678351452, 16777012769546811212, 483935686894639516]
SEQUENCE = [14643705804678351452, 4945711292740353085, 12583592247330656132]


def test_xxh3_seed_vector():
    assert xxhash.xxh3_64_intdigest(b"test data", SEED) == 13226331709069118873


def test_local_and_sequence_vectors():
    assert local_hashes(TOKENS, 4) == LOCAL
    assert sequence_hashes(LOCAL) == SEQUENCE
    assert chain_hash(SEQUENCE[0], LOCAL[1]) == SEQUENCE[1]


def test_tokens_are_little_endian_u32():
    assert token_bytes([1, 256]) == b"\x01\x00\x00\x00\x00\x01\x00\x00"


def test_partial_block_is_not_hashed_for_routing():
    prompt = Prompt(TOKENS + [13, 14], block_size=4)
    assert prompt.num_full_blocks == 3
    assert prompt.local_hashes == LOCAL
    assert prompt.sequence_hashes == SEQUENCE


def test_replay_hashes_include_the_partial_tail():
    prompt = Prompt(TOKENS + [13, 14], block_size=4)
    tail = local_hashes([13, 14], 4, include_partial=True)[0]
    assert prompt.replay_hashes == SEQUENCE + [chain_hash(SEQUENCE[-1], tail)]
    assert Prompt(TOKENS, 4).replay_hashes == SEQUENCE
    assert Prompt([7], 4).replay_hashes == local_hashes([7], 4, include_partial=True)
    assert Prompt([], 4).replay_hashes == []


def test_replay_hashes_count_is_ceil_of_blocks():
    prompt = Prompt(list(range(131072)), 64)
    assert len(prompt.replay_hashes) == 2048


def test_lora_changes_the_seed_not_the_bytes():
    assert lora_seed(None) == lora_seed("") == SEED
    assert local_hashes([1, 2, 3, 4], 4, lora_seed("my-adapter")) == [15633847640104431966]
    assert Prompt([1, 2, 3, 4], 4, lora_name="my-adapter").local_hashes == [15633847640104431966]


def test_shared_prefix_shares_leading_hashes_and_hashes_are_positional():
    rng = random.Random(0)
    prefix = [rng.randrange(50000) for _ in range(64 * 3)]
    a = Prompt(prefix + [1] * 64, 64).sequence_hashes
    b = Prompt(prefix + [2] * 64, 64).sequence_hashes
    assert a[:3] == b[:3] and a[3] != b[3]
    # the same block at another position has the same local but a different sequence hash
    block = [5] * 64
    p = Prompt(block + block, 64)
    assert p.local_hashes[0] == p.local_hashes[1]
    assert p.sequence_hashes[0] != p.sequence_hashes[1]


def test_sequence_hashes_continue_a_chain():
    assert sequence_hashes(LOCAL[1:], parent=SEQUENCE[0]) == SEQUENCE[1:]


def test_block_size_must_be_positive():
    with pytest.raises(ValueError, match="block_size"):
        Prompt([1, 2], 0)
