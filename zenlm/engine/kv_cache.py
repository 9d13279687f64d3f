"""BlockManager: paged KV block bookkeeping with reference counts and hash-chained prefix caching.

Pure Python (no torch, no tensors): it hands out physical block ids 0..num_blocks-1 to sequences and
remembers, for every full block whose KV has been computed, a hash chained over all tokens up to and
including that block, so a later sequence with the same prefix reuses the block instead of computing
it again. Freed blocks keep their hash (LRU order) until they are taken for new content. It does
not own the KV tensors (the runner does) and does not decide who runs (scheduler.py does).
"""

from __future__ import annotations

import hashlib
from array import array
from collections import OrderedDict
from dataclasses import dataclass
from typing import Any, Protocol


class SeqLike(Protocol):
    """What the block manager and scheduler read and write on a sequence (engine/sequence.py's Sequence)."""

    seq_id: int
    prompt_ids: list[int]
    block_table: list[int]  # physical block ids, one per block_size tokens of all_ids
    num_cached_tokens: int  # prompt tokens found in the prefix cache at the last allocate()
    num_computed_tokens: int  # tokens of all_ids whose KV is in the cache
    rope_epoch: int  # the rope its K/V turn with: it salts the block hashes (K/V of another rope differ)
    status: Any  # scheduler.SequenceStatus
    params: Any  # .max_tokens

    @property
    def all_ids(self) -> list[int]: ...  # prompt + generated tokens

    @property
    def finished(self) -> bool: ...

    def append(self, token: int) -> Any: ...  # record a sampled token (scheduler.postprocess calls it)


def chain_start(seq: SeqLike) -> bytes:
    """Where a sequence's hash chain starts: nothing, or its rope epoch (scheduler.py) when it has one."""
    return seq.rope_epoch.to_bytes(8, "little") if seq.rope_epoch else b""


def chain_hash(prev: bytes, tokens: list[int]) -> bytes:
    """The hash of one full block: sha256 over the previous block's hash and this block's token ids."""
    return hashlib.sha256(prev + array("q", tokens).tobytes()).digest()


@dataclass(slots=True)
class Block:
    block_id: int
    ref_count: int = 0
    hash: bytes | None = None  # set once the block is full and its KV computed; None for new content


@dataclass(slots=True)
class PrefixCacheStats:
    """Counters for metrics: how much of the allocated prompts the prefix cache already held."""

    queries: int = 0  # allocate() calls
    hit_queries: int = 0  # allocate() calls that reused at least one block
    query_tokens: int = 0  # tokens looked up
    hit_tokens: int = 0  # tokens found (counted as cached)


class BlockManager:
    def __init__(self, num_blocks: int, block_size: int):
        if num_blocks < 1 or block_size < 1:
            raise ValueError(f"num_blocks and block_size must be >= 1, got {num_blocks} and {block_size}")
        self.num_blocks, self.block_size = num_blocks, block_size
        self.blocks = [Block(i) for i in range(num_blocks)]
        self.cached: dict[bytes, int] = {}  # hash -> block id holding that computed prefix block
        # ref_count == 0 blocks; taken from the front: blocks without a valid hash first, then cached
        # blocks, least recently freed first (LRU eviction).
        self.free: OrderedDict[int, None] = OrderedDict.fromkeys(range(num_blocks))
        self.stats = PrefixCacheStats()
        self._memo: tuple[object, int, list[bytes]] = (None, 0, [])  # (sequence, num tokens, chain hashes)

    # ---- queries -----------------------------------------------------------------------------------
    @property
    def num_free_blocks(self) -> int:
        return len(self.free)

    @property
    def usage(self) -> float:
        """Fraction of blocks held by live sequences (free cached blocks count as free)."""
        return 1.0 - len(self.free) / self.num_blocks

    def blocks_for(self, num_tokens: int) -> int:
        return -(-num_tokens // self.block_size)

    # ---- waiting -> running ------------------------------------------------------------------------
    def can_allocate(self, seq: SeqLike) -> bool:
        hits = self._match(seq, seq.all_ids)
        live_hits = sum(1 for b in hits if self.blocks[b].ref_count > 0)  # these cost no free block
        return self.blocks_for(len(seq.all_ids)) - live_hits <= len(self.free)

    def allocate(self, seq: SeqLike) -> None:
        """Give a sequence without blocks a table for all its current tokens, reusing cached full blocks.

        Sets num_cached_tokens (and num_computed_tokens) to the tokens found; at least the last token
        is always left to compute, so a prompt made only of cached full blocks recomputes its last block.
        """
        assert not seq.block_table, f"sequence {seq.seq_id} already holds blocks"
        ids = seq.all_ids
        if not ids:
            raise ValueError(f"sequence {seq.seq_id} has no tokens to allocate blocks for")
        if not self.can_allocate(seq):
            raise ValueError(f"not enough free KV blocks for sequence {seq.seq_id}; call can_allocate first")
        hits = self._match(seq, ids)
        for b in hits:  # claim the hits first, so that taking fresh blocks cannot evict them
            block = self.blocks[b]
            if block.ref_count == 0:
                del self.free[b]
            block.ref_count += 1
        seq.block_table = hits + [self._take() for _ in range(self.blocks_for(len(ids)) - len(hits))]
        seq.num_cached_tokens = seq.num_computed_tokens = len(hits) * self.block_size
        st = self.stats
        st.queries += 1
        st.hit_queries += bool(hits)
        st.query_tokens += len(ids)
        st.hit_tokens += seq.num_cached_tokens

    # ---- decode ------------------------------------------------------------------------------------
    def can_append(self, seq: SeqLike) -> bool:
        """Whether the sequence's table can be made to cover all its tokens (the next one to compute)."""
        return self.blocks_for(len(seq.all_ids)) - len(seq.block_table) <= len(self.free)

    def may_append(self, seq: SeqLike) -> None:
        """Before a step: add blocks so that every token of all_ids has a slot (one new block at most in decode)."""
        need = self.blocks_for(len(seq.all_ids)) - len(seq.block_table)
        assert need <= len(self.free), f"sequence {seq.seq_id} needs {need} blocks; call can_append first"
        seq.block_table.extend(self._take() for _ in range(need))

    def cache_blocks(self, seq: SeqLike) -> None:
        """After a step: hash every block that is now full of computed tokens, so later requests hit it.

        Only computed blocks are registered: a block allocated but not yet written is never shared.
        """
        bs, table = self.block_size, seq.block_table
        full = min(seq.num_computed_tokens // bs, len(table))
        first = full
        while first > 0 and self.blocks[table[first - 1]].hash is None:  # hashes are set in chain order
            first -= 1
        if first == full:
            return
        ids = seq.all_ids
        prev = self.blocks[table[first - 1]].hash if first else chain_start(seq)
        for i in range(first, full):
            block = self.blocks[table[i]]
            assert block.ref_count == 1, f"block {block.block_id} is shared but was never hashed"
            prev = block.hash = chain_hash(prev, ids[i * bs:(i + 1) * bs])
            # an identical block computed by another sequence may already be cached: keep that one
            self.cached.setdefault(prev, block.block_id)

    def reserve(self, seq: SeqLike, num_tokens: int) -> bool:
        """Extend the table to hold num_tokens (speculative slots past all_ids); False if blocks are short."""
        need = self.blocks_for(num_tokens) - len(seq.block_table)
        if need > len(self.free):
            return False
        seq.block_table.extend(self._take() for _ in range(need))
        return True

    def truncate(self, seq: SeqLike, num_tokens: int) -> None:
        """Free the blocks past those num_tokens need (speculative slots a rejected draft held); a freed
        block was never hashed (only computed, kept tokens are), so it goes first in line for reuse."""
        keep = self.blocks_for(num_tokens)
        for b in reversed(seq.block_table[keep:]):
            block = self.blocks[b]
            assert block.ref_count == 1 and block.hash is None, f"block {b} past the kept tokens is shared or hashed"
            block.ref_count = 0
            self.free[b] = None
            self.free.move_to_end(b, last=False)
        del seq.block_table[keep:]

    # ---- release -----------------------------------------------------------------------------------
    def deallocate(self, seq: SeqLike) -> None:
        """Release the sequence's blocks; cached ones stay findable until they are taken for new content."""
        for b in reversed(seq.block_table):  # a prefix's tail is evicted before its head
            block = self.blocks[b]
            assert block.ref_count > 0, f"block {b} of sequence {seq.seq_id} is already free"
            block.ref_count -= 1
            if block.ref_count == 0:
                self.free[b] = None
                if block.hash is None or self.cached.get(block.hash) != b:
                    block.hash = None  # nothing can find it: reuse it before any cached block
                    self.free.move_to_end(b, last=False)
        seq.block_table = []
        seq.num_cached_tokens = seq.num_computed_tokens = 0

    # ---- internals ---------------------------------------------------------------------------------
    def _take(self) -> int:
        b, _ = self.free.popitem(last=False)
        block = self.blocks[b]
        assert block.ref_count == 0, f"free block {b} has ref_count {block.ref_count}"
        if block.hash is not None and self.cached.get(block.hash) == b:
            del self.cached[block.hash]  # evicted: its content is about to be overwritten
        block.hash, block.ref_count = None, 1
        return b

    def _match(self, seq: SeqLike, ids: list[int]) -> list[int]:
        """Cached block ids for the longest run of leading full blocks that leaves >= 1 token to compute."""
        hits = []
        for h in self._chain(seq, ids):
            b = self.cached.get(h)
            if b is None:
                break
            hits.append(b)
        return hits

    def _chain(self, seq: SeqLike, ids: list[int]) -> list[bytes]:
        """Chain hashes of the first (len(ids) - 1) // block_size blocks, memoized for the waiting head."""
        memo_seq, memo_len, memo = self._memo
        if memo_seq is seq and memo_len == len(ids):  # a sequence's tokens only ever grow
            return memo
        bs, prev, out = self.block_size, chain_start(seq), []
        for i in range((len(ids) - 1) // bs):
            prev = chain_hash(prev, ids[i * bs:(i + 1) * bs])
            out.append(prev)
        self._memo = (seq, len(ids), out)
        return out
