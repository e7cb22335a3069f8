"""KvIndex: exact tree state after stored / removed / cleared, and find_matches.

Engine hashes are opaque ints or bytes; bytes names keep these trees readable."""

from router.index import ApplyStatus, KvIndex

A, B = (1, 0), (2, 0)


def make_index(*keys):
    index = KvIndex()
    for key in keys or (A, B):
        index.add_worker(key)
    return index


def test_find_matches_counts_leading_blocks_per_worker():
    index = make_index()
    # A: 10 -> 11 -> 12      B: 10 -> 11 -> 13, and 20 from the root
    assert index.apply_stored(A, None, [(b"a0", 10), (b"a1", 11), (b"a2", 12)]) is ApplyStatus.OK
    assert index.apply_stored(B, None, [(b"b0", 10), (b"b1", 11), (b"b3", 13)]) is ApplyStatus.OK
    assert index.apply_stored(B, None, [(b"b20", 20)]) is ApplyStatus.OK

    m = index.find_matches([10, 11, 12, 14])
    assert m.scores == {A: 3, B: 2}
    assert m.tree_sizes == {A: 3, B: 4}
    assert index.find_matches([10, 11, 13]).scores == {A: 2, B: 3}
    assert index.find_matches([10]).scores == {A: 1, B: 1}
    assert index.find_matches([20, 11]).scores == {B: 1}
    assert index.find_matches([11, 12]).scores == {}
    assert index.find_matches([]).scores == {}


def test_a_hole_in_the_prefix_ends_the_score():
    index = make_index()
    index.apply_stored(A, None, [(b"a0", 10), (b"a1", 11), (b"a2", 12)])
    index.apply_stored(B, None, [(b"b0", 10), (b"b1", 11), (b"b2", 12)])
    assert index.apply_removed(A, [b"a1"]) is ApplyStatus.OK  # no cascade: a2 stays
    assert index.find_matches([10, 11, 12]).scores == {A: 1, B: 3}
    assert index.blocks_of(A) == {b"a0": (10,), b"a2": (10, 11, 12)}


def test_stored_under_a_parent_extends_the_workers_path():
    index = make_index()
    index.apply_stored(A, None, [(b"a0", 10)])
    assert index.apply_stored(A, b"a0", [(b"a1", 11)]) is ApplyStatus.OK
    assert index.blocks_of(A) == {b"a0": (10,), b"a1": (10, 11)}
    assert index.find_matches([10, 11]).scores == {A: 2}


def test_unknown_parent_rejects_the_whole_event():
    index = make_index()
    index.apply_stored(A, None, [(b"a0", 10)])
    # B does not hold b"a0": parents are per worker
    status = index.apply_stored(B, b"a0", [(b"b1", 11), (b"b2", 12)])
    assert status is ApplyStatus.PARENT_BLOCK_NOT_FOUND
    assert index.blocks_of(B) == {}
    assert index.num_nodes() == 1


def test_repeated_or_self_parent_hash_is_invalid():
    index = make_index()
    assert index.apply_stored(A, None, [(b"x", 10), (b"x", 11)]) is ApplyStatus.INVALID_BLOCK
    index.apply_stored(A, None, [(b"a0", 10)])
    assert index.apply_stored(A, b"a0", [(b"a0", 11)]) is ApplyStatus.INVALID_BLOCK
    assert index.blocks_of(A) == {b"a0": (10,)}


def test_removed_unknown_hash_is_reported_but_the_rest_applies():
    index = make_index()
    index.apply_stored(A, None, [(b"a0", 10), (b"a1", 11)])
    assert index.apply_removed(A, [b"nope", b"a1"]) is ApplyStatus.BLOCK_NOT_FOUND
    assert index.blocks_of(A) == {b"a0": (10,)}


def test_removing_the_last_holder_prunes_empty_leaves():
    index = make_index()
    index.apply_stored(A, None, [(b"a0", 10), (b"a1", 11), (b"a2", 12)])
    index.apply_stored(B, None, [(b"b0", 10)])
    index.apply_removed(A, [b"a2", b"a1"])
    assert index.num_nodes() == 1          # 11 and 12 gone, 10 still held
    index.apply_removed(A, [b"a0"])
    assert index.num_nodes() == 1          # B holds 10
    index.apply_removed(B, [b"b0"])
    assert index.num_nodes() == 0


def test_clear_and_remove_worker_leave_others_untouched():
    index = make_index()
    index.apply_stored(A, None, [(b"a0", 10), (b"a1", 11)])
    index.apply_stored(B, None, [(b"b0", 10), (b"b1", 11)])
    index.clear(A)
    assert index.find_matches([10, 11]).scores == {B: 2}
    assert index.tree_size(A) == 0
    index.apply_stored(A, None, [(b"a0", 10)])
    index.remove_worker(B)
    assert index.find_matches([10, 11]).scores == {A: 1}
    assert index.workers() == [A]
    assert index.num_nodes() == 1


def test_find_matches_does_not_change_the_tree():
    index = make_index()
    index.apply_stored(A, None, [(b"a0", 10), (b"a1", 11)])
    before = (index.blocks_of(A), index.num_nodes())
    for _ in range(3):
        index.find_matches([10, 11, 12, 13])
        index.find_matches([99])
    assert (index.blocks_of(A), index.num_nodes()) == before


def test_engine_hash_reused_for_another_block_moves_it():
    index = make_index()
    index.apply_stored(A, None, [(b"h", 10)])
    index.apply_stored(A, None, [(b"h", 20)])
    assert index.blocks_of(A) == {b"h": (20,)}
    assert index.num_nodes() == 1


def test_worker_slots_are_reused_after_removal():
    index = make_index(*[(w, 0) for w in range(70)])  # more workers than 64 bits: ints grow
    index.apply_stored((69, 0), None, [(b"x", 10)])
    index.remove_worker((3, 0))
    index.add_worker((100, 0))
    index.apply_stored((100, 0), None, [(b"y", 10), (b"z", 11)])
    assert index.find_matches([10, 11]).scores == {(69, 0): 1, (100, 0): 2}


def test_two_engine_hashes_naming_one_block_hold_it_until_both_go():
    index = make_index()
    index.apply_stored(A, None, [(b"h1", 10)])
    index.apply_stored(A, None, [(b"h2", 10)])     # same tokens, same parent: same node
    index.apply_removed(A, [b"h1"])
    assert index.find_matches([10]).scores == {A: 1}
    index.apply_removed(A, [b"h2"])
    assert index.find_matches([10]).scores == {}
    assert index.num_nodes() == 0
