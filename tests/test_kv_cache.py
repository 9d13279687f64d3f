"""BlockManager: allocation and freeing, reference counts, hash-chained prefix hits, LRU eviction, appends."""

import pytest
from fake_sequence import Seq

from zenlm.engine.kv_cache import BlockManager

BS = 4


def computed(bm: BlockManager, seq: Seq) -> Seq:
    """Pretend the runner computed every token's KV (as postprocess does after the last chunk)."""
    seq.num_computed_tokens = len(seq.all_ids)
    bm.cache_blocks(seq)
    return seq


def admit(bm: BlockManager, seq: Seq) -> Seq:
    assert bm.can_allocate(seq)
    bm.allocate(seq)
    return seq


def check(bm: BlockManager, live: list[Seq]) -> None:
    """Reference counts equal table membership; only registered cached blocks are shared; free + used == total."""
    counts = [0] * bm.num_blocks
    for s in live:
        for b in s.block_table:
            counts[b] += 1
    for block in bm.blocks:
        assert block.ref_count == counts[block.block_id], block
        assert (block.ref_count == 0) == (block.block_id in bm.free), block
        if block.ref_count > 1:
            assert block.hash is not None and bm.cached[block.hash] == block.block_id, block
    for h, b in bm.cached.items():
        assert bm.blocks[b].hash == h
    used = sum(1 for c in counts if c)
    assert used + bm.num_free_blocks == bm.num_blocks
    assert bm.usage == pytest.approx(used / bm.num_blocks)


def test_allocate_and_free():
    bm = BlockManager(8, BS)
    seq = admit(bm, Seq(0, list(range(10))))
    assert len(seq.block_table) == 3 and len(set(seq.block_table)) == 3
    assert seq.num_cached_tokens == 0 and seq.num_computed_tokens == 0
    assert bm.num_free_blocks == 5 and bm.usage == pytest.approx(3 / 8)
    check(bm, [seq])
    bm.deallocate(seq)
    assert seq.block_table == [] and seq.num_cached_tokens == 0
    assert bm.num_free_blocks == 8 and bm.usage == 0
    check(bm, [])


def test_can_allocate_counts_free_blocks():
    bm = BlockManager(3, BS)
    a = admit(bm, Seq(0, list(range(8))))
    assert not bm.can_allocate(Seq(1, list(range(100, 108))))
    assert bm.can_allocate(Seq(1, list(range(100, 104))))
    with pytest.raises(ValueError, match="can_allocate"):
        bm.allocate(Seq(2, list(range(100, 112))))
    with pytest.raises(ValueError):
        BlockManager(0, BS)
    check(bm, [a])


def test_shared_prefix_hits_the_same_physical_blocks():
    bm = BlockManager(16, BS)
    prefix = list(range(2 * BS))
    a = computed(bm, admit(bm, Seq(0, prefix + [100, 101, 102])))
    b = admit(bm, Seq(1, prefix + [200, 201]))
    assert b.num_cached_tokens == b.num_computed_tokens == 2 * BS
    assert b.block_table[:2] == a.block_table[:2] and b.block_table[2] != a.block_table[2]
    assert [bm.blocks[x].ref_count for x in b.block_table] == [2, 2, 1]
    assert bm.stats.hit_tokens == 2 * BS and bm.stats.hit_queries == 1 and bm.stats.queries == 2
    assert bm.stats.query_tokens == 11 + 10
    check(bm, [a, b])
    bm.deallocate(a)
    assert [bm.blocks[x].ref_count for x in b.block_table] == [1, 1, 1]
    check(bm, [b])
    bm.deallocate(b)
    assert bm.num_free_blocks == 16
    check(bm, [])


def test_a_different_first_block_breaks_the_chain():
    bm = BlockManager(16, BS)
    computed(bm, admit(bm, Seq(0, [1, 2, 3, 4, 5, 6, 7, 8, 9])))
    b = admit(bm, Seq(1, [0, 2, 3, 4, 5, 6, 7, 8, 9]))  # same second block, different history
    assert b.num_cached_tokens == 0


def test_uncomputed_blocks_are_not_shared():
    bm = BlockManager(16, BS)
    a = admit(bm, Seq(0, list(range(9))))  # allocated, KV not yet written
    b = admit(bm, Seq(1, list(range(9))))
    assert b.num_cached_tokens == 0 and not set(a.block_table) & set(b.block_table)
    check(bm, [a, b])


def test_cached_prefix_survives_its_owner():
    bm = BlockManager(8, BS)
    prefix = list(range(2 * BS))
    a = computed(bm, admit(bm, Seq(0, prefix + [100])))
    head = a.block_table[:2]
    bm.deallocate(a)
    assert bm.num_free_blocks == 8
    c = admit(bm, Seq(2, prefix + [300, 301, 302, 303, 304]))
    assert c.num_cached_tokens == 2 * BS and c.block_table[:2] == head
    assert [bm.blocks[x].ref_count for x in c.block_table] == [1, 1, 1, 1]
    assert bm.num_free_blocks == 4
    check(bm, [c])


def test_partial_blocks_are_never_shared():
    bm = BlockManager(16, BS)
    ids = list(range(BS + 2))
    a = computed(bm, admit(bm, Seq(0, ids)))
    assert bm.blocks[a.block_table[1]].hash is None  # the partial block is not registered
    b = admit(bm, Seq(1, list(ids)))
    assert b.num_cached_tokens == BS and b.block_table[0] == a.block_table[0]
    assert b.block_table[1] != a.block_table[1]
    check(bm, [a, b])


def test_a_fully_cached_prompt_recomputes_its_last_block():
    bm = BlockManager(16, BS)
    ids = list(range(2 * BS))
    a = computed(bm, admit(bm, Seq(0, ids)))
    b = admit(bm, Seq(1, list(ids)))
    assert b.num_cached_tokens == BS  # not 2 * BS: the last token needs logits, so its block is fresh
    assert b.block_table[0] == a.block_table[0] and b.block_table[1] != a.block_table[1]
    computed(bm, b)  # an identical block: the first stays the cached one
    assert bm.cached[bm.blocks[a.block_table[1]].hash] == a.block_table[1]
    check(bm, [a, b])
    bm.deallocate(a)
    bm.deallocate(b)
    assert bm.num_free_blocks == 16
    check(bm, [])


def test_lru_eviction_takes_uncached_blocks_first_then_the_oldest_cached():
    bm = BlockManager(4, BS)
    a = computed(bm, admit(bm, Seq(0, list(range(BS)) + [50])))  # block 0 cached, block 1 partial
    b = computed(bm, admit(bm, Seq(1, list(range(10, 10 + BS)) + [60])))
    a_head, b_head = a.block_table[0], b.block_table[0]
    bm.deallocate(a)
    bm.deallocate(b)
    # a new 2-block request takes the two partial blocks, not the cached heads
    c = admit(bm, Seq(2, list(range(100, 100 + 2 * BS))))
    assert set(c.block_table).isdisjoint({a_head, b_head})
    # the next one must evict: a's head was freed first, so it goes first and b's head survives
    d = admit(bm, Seq(3, [7, 7]))
    assert d.block_table == [a_head]
    bm.deallocate(c)
    bm.deallocate(d)
    e = admit(bm, Seq(4, list(range(BS)) + [50]))  # a's prefix was evicted
    f = admit(bm, Seq(5, list(range(10, 10 + BS)) + [60]))  # b's is still there
    assert e.num_cached_tokens == 0 and f.num_cached_tokens == BS and f.block_table[0] == b_head
    check(bm, [e, f])

def test_hit_on_a_free_cached_block_claims_it_from_the_free_pool():
    bm = BlockManager(3, BS)
    a = computed(bm, admit(bm, Seq(0, list(range(BS)) + [9])))
    head = a.block_table[0]
    bm.deallocate(a)
    b = Seq(1, list(range(BS)) + list(range(20, 20 + BS)) + [9])  # needs 3 blocks; the head is a hit
    assert bm.can_allocate(b)
    admit(bm, b)
    assert b.block_table[0] == head and b.num_cached_tokens == BS and bm.num_free_blocks == 0
    check(bm, [b])


def test_append_adds_a_block_when_the_last_is_full_and_hashes_it_once_computed():
    bm = BlockManager(3, BS)
    s = admit(bm, Seq(0, list(range(BS))))
    s.num_computed_tokens = BS - 1  # prefill chunk computed all but the last token so far
    bm.cache_blocks(s)
    assert bm.blocks[s.block_table[0]].hash is None
    s.num_computed_tokens = BS
    bm.cache_blocks(s)
    assert bm.blocks[s.block_table[0]].hash is not None
    s.output_ids.append(99)  # sampled token: the next decode computes it at position BS
    assert bm.can_append(s) and len(s.block_table) == 1
    bm.may_append(s)
    assert len(s.block_table) == 2 and bm.num_free_blocks == 1
    bm.may_append(s)  # idempotent while the table covers every token
    assert len(s.block_table) == 2
    other = admit(bm, Seq(1, [5]))
    s.output_ids.extend(range(BS))  # now needs a third block, and none is free
    assert not bm.can_append(s)
    check(bm, [s, other])
