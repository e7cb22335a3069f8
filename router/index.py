"""The KV index: which worker holds which prompt blocks (DESIGN.md §4.2).

A prefix tree over *local* block hashes. A node stands for one block together with its whole
prefix (its path from the root), and records the workers holding it as a bitmask of worker slots:

    root ── L0 {w0,w1} ── L1 {w0,w1} ── L2 {w0}
                       └─ L7 {w1}    ── L8 {w1}

    find_matches([L0, L1, L2, L9]) -> scores {w0: 3, w1: 2}

Per worker, a map from the engine's own block hash (opaque: int or bytes) to that worker's node;
stored events navigate to their parent through it, removed events find their blocks through it.

* stored: extend the worker's path from its parent block (no parent: from the root). An unknown
  parent rejects the whole event; so does a block hash repeated within the event.
* removed: drop the worker from those nodes, without cascading to descendants. A node nobody holds
  and with no children is pruned, with any ancestors left in the same state.
* cleared / remove_worker: drop every block of that worker.

`find_matches` never changes the tree. A worker's score is the number of *leading* blocks of the
prompt it holds (contiguous from the first block).
"""

from __future__ import annotations

import enum
from collections.abc import Iterable, Sequence

from router.events import EngineHash

WorkerKey = tuple[int, int]  # (worker_id, dp_rank)


class ApplyStatus(enum.StrEnum):
    """Outcome of applying one KV event (the `status` label of Dynamo's events-applied counter;
    each member is that label string)."""

    OK = "ok"
    PARENT_BLOCK_NOT_FOUND = "parent_block_not_found"  # whole stored event rejected
    BLOCK_NOT_FOUND = "block_not_found"                # some removed hashes unknown; rest applied
    INVALID_BLOCK = "invalid_block"                    # duplicate / self-parent hash: rejected


class OverlapScores:
    """Result of `KvIndex.find_matches`: leading blocks held per worker, and each worker's size.

    `scores` lists only workers with at least one leading block; `tree_sizes` lists every worker
    the index knows (blocks it holds), so ties can go to the smaller tree.
    """

    __slots__ = ("scores", "tree_sizes")

    def __init__(self, scores: dict[WorkerKey, int], tree_sizes: dict[WorkerKey, int]):
        self.scores = scores
        self.tree_sizes = tree_sizes

    def overlap(self, key: WorkerKey) -> int:
        return self.scores.get(key, 0)

    def tree_size(self, key: WorkerKey) -> int:
        return self.tree_sizes.get(key, 0)

    def best(self) -> int:
        return max(self.scores.values(), default=0)

    def __repr__(self) -> str:
        return f"OverlapScores(scores={self.scores}, tree_sizes={self.tree_sizes})"


class _Node:
    __slots__ = ("children", "mask", "parent", "local")

    def __init__(self, parent: _Node | None, local: int, mask: int):
        self.children: dict[int, _Node] = {}  # local hash -> child
        self.mask = mask                      # bit i set: worker slot i holds this block
        self.parent = parent
        self.local = local


def _slots_of(mask: int) -> Iterable[int]:
    while mask:
        low = mask & -mask
        yield low.bit_length() - 1
        mask ^= low


class KvIndex:
    """Prefix tree of every worker's cached blocks. Single-threaded; callers serialise access."""

    def __init__(self) -> None:
        self._root = _Node(None, 0, 0)
        self._slot_of: dict[WorkerKey, int] = {}
        self._key_of: dict[int, WorkerKey] = {}
        self._free_slots: list[int] = []
        # slot -> {engine hash -> node}; len() is the worker's tree size
        self._lookup: dict[int, dict[EngineHash, _Node]] = {}
        # slot -> {node -> engine hashes beyond the first mapping to it}. Rare: two engine
        # blocks with equal tokens under one parent (e.g. multimodal placeholders). The worker
        # holds the node until its last such hash is removed.
        self._extra: dict[int, dict[_Node, int]] = {}

    # -- workers -----------------------------------------------------------------------------

    def add_worker(self, key: WorkerKey) -> None:
        """Make `key` known (idempotent); stored events for unknown workers are a caller bug."""
        if key in self._slot_of:
            return
        slot = self._free_slots.pop() if self._free_slots else len(self._slot_of)
        self._slot_of[key] = slot
        self._key_of[slot] = key
        self._lookup[slot] = {}
        self._extra[slot] = {}

    def remove_worker(self, key: WorkerKey) -> None:
        """Forget `key` and every block it holds; unknown keys are ignored."""
        slot = self._slot_of.pop(key, None)
        if slot is None:
            return
        self._drop_all(slot)
        del self._lookup[slot], self._key_of[slot], self._extra[slot]
        self._free_slots.append(slot)

    def workers(self) -> list[WorkerKey]:
        return list(self._slot_of)

    # -- events ------------------------------------------------------------------------------

    def apply_stored(self, key: WorkerKey, parent_hash: EngineHash | None,
                     blocks: Sequence[tuple[EngineHash, int]]) -> ApplyStatus:
        """Add blocks `[(engine_hash, local_hash), ...]` (parent first) under `parent_hash`."""
        slot = self._slot_of[key]
        lookup = self._lookup[slot]
        if parent_hash is None:
            node = self._root
        else:
            parent = lookup.get(parent_hash)
            if parent is None:
                return ApplyStatus.PARENT_BLOCK_NOT_FOUND
            node = parent
        if len(blocks) == 1:
            hashes = [blocks[0][0]]
            if hashes[0] == parent_hash:
                return ApplyStatus.INVALID_BLOCK
        elif blocks:
            hashes = [h for h, _ in blocks]
            unique = set(hashes)
            if len(unique) != len(hashes) or parent_hash in unique:
                return ApplyStatus.INVALID_BLOCK
        else:
            return ApplyStatus.OK
        bit = 1 << slot
        children = node.children
        if blocks[0][1] not in children and lookup.keys().isdisjoint(hashes):
            # the usual case: a new branch of blocks this worker has no other name for
            for engine_hash, local in blocks:
                node = children[local] = lookup[engine_hash] = _Node(node, local, bit)
                children = node.children
            return ApplyStatus.OK
        for engine_hash, local in blocks:
            child = node.children.get(local)
            if child is None:
                child = node.children[local] = _Node(node, local, 0)
            previous = lookup.get(engine_hash)
            if previous is not child:
                if previous is not None:  # the engine reused a hash for another block
                    self._unhold(slot, previous)
                if child.mask & bit:      # another of the worker's hashes names this block
                    extra = self._extra[slot]
                    extra[child] = extra.get(child, 0) + 1
                lookup[engine_hash] = child
            child.mask |= bit
            node = child
        return ApplyStatus.OK

    def apply_removed(self, key: WorkerKey, hashes: Iterable[EngineHash]) -> ApplyStatus:
        slot = self._slot_of[key]
        lookup = self._lookup[slot]
        extra = self._extra[slot]
        keep = ~(1 << slot)
        status = ApplyStatus.OK
        for engine_hash in hashes:
            node = lookup.pop(engine_hash, None)
            if node is None:
                status = ApplyStatus.BLOCK_NOT_FOUND
            elif extra:
                self._unhold(slot, node)
            else:  # `_unhold` inlined for the common case: no duplicate hashes
                node.mask &= keep
                while not node.mask and not node.children and node.parent is not None:
                    parent = node.parent
                    del parent.children[node.local]
                    node.parent = None
                    node = parent
        return status

    def clear(self, key: WorkerKey) -> None:
        """Drop every block `key` holds; the worker stays known."""
        self._drop_all(self._slot_of[key])

    def _drop_all(self, slot: int) -> None:
        lookup = self._lookup[slot]
        self._extra[slot].clear()
        for node in lookup.values():
            self._unhold(slot, node)
        lookup.clear()

    def _unhold(self, slot: int, node: _Node) -> None:
        """One of the worker's engine hashes no longer names `node`."""
        extra = self._extra[slot]
        if extra and node in extra:
            if extra[node] == 1:
                del extra[node]
            else:
                extra[node] -= 1
            return
        node.mask &= ~(1 << slot)
        # prune nodes nobody holds that lead nowhere; the root is never pruned
        while not node.mask and not node.children and node.parent is not None:
            parent = node.parent
            del parent.children[node.local]
            node.parent = None
            node = parent

    # -- lookups -----------------------------------------------------------------------------

    def find_matches(self, local_hashes: Sequence[int]) -> OverlapScores:
        """Leading blocks of `local_hashes` held by each worker. Never changes the tree."""
        key_of = self._key_of
        tree_sizes = {key_of[slot]: len(lookup) for slot, lookup in self._lookup.items()}
        scores: dict[WorkerKey, int] = {}
        if not local_hashes:
            return OverlapScores(scores, tree_sizes)
        node = self._root.children.get(local_hashes[0])
        if node is None or not node.mask:
            return OverlapScores(scores, tree_sizes)
        active, depth = node.mask, 1
        for h in local_hashes[1:]:
            child = node.children.get(h)
            if child is None:
                break
            node = child
            held = node.mask & active
            if held != active:
                for slot in _slots_of(active ^ held):
                    scores[key_of[slot]] = depth
                active = held
                if not active:
                    break
            depth += 1
        for slot in _slots_of(active):
            scores[key_of[slot]] = depth
        return OverlapScores(scores, tree_sizes)

    def tree_size(self, key: WorkerKey) -> int:
        return len(self._lookup[self._slot_of[key]])

    def blocks_of(self, key: WorkerKey) -> dict[EngineHash, tuple[int, ...]]:
        """{engine hash: local-hash path from the root} for every block `key` holds.

        For tests and debugging (linear in the worker's blocks times their depth): two indexes
        hold the same state for a worker exactly when these maps are equal.
        """
        out = {}
        for engine_hash, node in self._lookup[self._slot_of[key]].items():
            path = []
            while node.parent is not None:
                path.append(node.local)
                node = node.parent
            out[engine_hash] = tuple(reversed(path))
        return out

    def num_nodes(self) -> int:
        """Nodes in the tree, root excluded (pruning keeps this at the blocks someone can reach)."""
        count, stack = 0, [self._root]
        while stack:
            node = stack.pop()
            count += len(node.children)
            stack.extend(node.children.values())
        return count
