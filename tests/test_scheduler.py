"""Scheduler: continuous batching, token budget, chunked prefill, preemption and resume, abort, prefix reuse.

A fake model stands in for the runner: it writes a chained "KV state" into the slots the batch names,
reads earlier positions back through the block table (as attention would), fails on any slot that
holds the wrong history, and samples a token from the state, so outputs depend only on token history.
"""

import random

import pytest
from fake_sequence import EOS, Params, Seq

from zenlm.engine.kv_cache import BlockManager
from zenlm.engine.scheduler import Batch, Scheduler, SequenceStatus

VOCAB = 50


def mix(state: int, token: int) -> int:
    return hash((state, token)) & 0xFFFFFFFF


def next_token(state: int) -> int:
    return state % VOCAB


def expected(prompt: list[int], max_tokens: int, use_eos: bool = False) -> list[int]:
    """What a lone, uncached, never-preempted run produces."""
    state = 0
    for t in prompt:
        state = mix(state, t)
    out = []
    while len(out) < max_tokens and not (use_eos and out and out[-1] == EOS):
        out.append(next_token(state))
        state = mix(state, out[-1])
    return out


class FakeModel:
    def __init__(self, bm: BlockManager):
        self.bm, self.kv = bm, {}  # slot -> (position, state)

    def read(self, table: list[int], pos: int):
        bs = self.bm.block_size
        return self.kv.get(table[pos // bs] * bs + pos % bs)

    def run(self, batch: Batch) -> dict[int, int]:
        bs, out, written = self.bm.block_size, {}, set()
        for s in batch.seqs:
            ids = s.seq.all_ids
            assert s.token_ids == ids[s.start:s.context_len] and s.block_table == s.seq.block_table
            assert s.positions == list(range(s.start, s.context_len))
            assert s.sample == (s.context_len == len(ids)), "only a sequence's last chunk samples"
            truth = 0
            for p in range(s.start):  # the cached and earlier-computed context, read through the table
                truth = mix(truth, ids[p])
                assert self.read(s.block_table, p) == (p, truth), f"seq {s.seq.seq_id}: bad KV at {p}"
            for tok, pos, slot in zip(s.token_ids, s.positions, s.slot_mapping):
                block = self.bm.blocks[slot // bs]
                assert slot == s.block_table[pos // bs] * bs + pos % bs
                assert block.ref_count == 1 and block.hash is None, "write into a shared or cached block"
                assert slot not in written
                written.add(slot)
                truth = mix(truth, tok)
                self.kv[slot] = (pos, truth)
            if s.sample:
                out[s.seq.seq_id] = next_token(truth)
        return out


def check(sched: Scheduler) -> None:
    """Block accounting and queue state are consistent."""
    bm = sched.bm
    counts = [0] * bm.num_blocks
    for s in sched.running:
        assert s.status is SequenceStatus.RUNNING
        assert bm.blocks_for(s.num_computed_tokens) <= len(s.block_table) <= bm.blocks_for(len(s.all_ids))
        for b in s.block_table:
            counts[b] += 1
    for s in sched.waiting:
        assert s.status is SequenceStatus.WAITING and s.block_table == [] and s.num_computed_tokens == 0
    assert {s.seq_id for s in [*sched.running, *sched.waiting]} == set(sched.seqs)
    assert len(sched.running) <= sched.max_num_seqs
    for block in bm.blocks:
        assert block.ref_count == counts[block.block_id], block
        assert (block.ref_count == 0) == (block.block_id in bm.free), block
        if block.ref_count > 1:  # shared: only a registered, computed full block
            assert block.hash is not None and bm.cached[block.hash] == block.block_id, block
    assert sum(1 for c in counts if c) + bm.num_free_blocks == bm.num_blocks


class Engine:
    """schedule -> run -> postprocess, checking the budget, decode fairness and the accounting each step."""

    def __init__(self, num_blocks: int, block_size: int, max_num_seqs: int = 4, budget: int = 16,
                 chunk_size: int | None = None):
        self.bm = BlockManager(num_blocks, block_size)
        self.sched = Scheduler(self.bm, max_num_seqs, budget, chunk_size)
        self.model, self.batches = FakeModel(self.bm), []

    def step(self) -> Batch:
        sched = self.sched
        decoding = {s.seq_id for s in sched.running if len(s.all_ids) - s.num_computed_tokens == 1}
        batch = sched.schedule()
        assert batch.num_tokens <= sched.max_num_batched_tokens and len(batch.seqs) <= sched.max_num_seqs
        assert decoding <= {s.seq.seq_id for s in batch.seqs} | set(batch.preempted), "a decode was stalled"
        if sched.chunk_size is not None:
            assert all(s.num_tokens <= sched.chunk_size for s in batch.seqs)
        assert not batch.preempted or all(s.seq.seq_id not in batch.preempted for s in batch.seqs)
        sched.postprocess(batch, self.model.run(batch))
        check(sched)
        self.batches.append(batch)
        return batch

    def run(self, max_steps: int = 10_000) -> None:
        while self.sched.has_work:
            self.step()
            assert len(self.batches) < max_steps, "no progress"


def test_chunked_prefill_respects_the_budget_and_decodes_every_step():
    eng = Engine(64, 4, max_num_seqs=4, budget=8)
    a = Seq(0, [1, 2, 3], Params(max_tokens=20))
    eng.sched.add(a)
    eng.step()
    assert len(a.output_ids) == 1
    b = Seq(1, list(range(1, 31)), Params(max_tokens=3))  # joins the running batch between steps
    eng.sched.add(b)
    chunks = []
    while not b.output_ids:
        batch = eng.step()
        assert batch.seqs[0].seq is a and batch.seqs[0].num_tokens == 1  # the decode goes first
        chunks.append(batch.seqs[1].num_tokens)
        assert batch.num_tokens <= 8
    assert chunks == [7, 7, 7, 7, 2]  # prompt split across steps; b samples only after its last chunk
    assert len(a.output_ids) == 1 + 5
    eng.run()
    assert a.output_ids == expected(a.prompt_ids, 20) and b.output_ids == expected(b.prompt_ids, 3)
    assert eng.bm.num_free_blocks == 64 and not eng.sched.seqs


def test_chunk_size_caps_each_prefill():
    eng = Engine(64, 4, max_num_seqs=4, budget=16, chunk_size=5)
    seqs = [Seq(i, list(range(10 * i + 1, 10 * i + 13)), Params(max_tokens=2)) for i in range(2)]
    for s in seqs:
        eng.sched.add(s)
    assert [x.num_tokens for x in eng.step().seqs] == [5, 5]
    eng.run()
    assert all(s.output_ids == expected(s.prompt_ids, 2) for s in seqs)


def test_preemption_under_memory_pressure_then_resume_with_the_same_tokens():
    # 6 blocks of 4 = 24 slots; each request needs up to 5 + 10 - 1 = 14 slots (4 blocks) on its own
    eng = Engine(6, 4, max_num_seqs=4, budget=16)
    seqs = [Seq(i, [i + 1] * 3 + [i + 7, i + 9], Params(max_tokens=10)) for i in range(4)]
    for s in seqs:
        eng.sched.add(s)
    eng.run()
    assert eng.sched.num_preemptions > 0
    assert any(b.preempted for b in eng.batches)
    for s in seqs:
        assert s.status is SequenceStatus.FINISHED and s.output_ids == expected(s.prompt_ids, 10)
    assert eng.bm.num_free_blocks == 6 and not eng.sched.has_work


def test_the_newest_sequence_is_preempted_and_waits_first_in_line():
    eng = Engine(4, 2, max_num_seqs=4, budget=8)
    a, b, c = (Seq(i, [10 * i + 1, 10 * i + 2, 10 * i + 3], Params(max_tokens=5)) for i in range(3))
    for s in (a, b, c):
        eng.sched.add(s)
    eng.step()  # a and b admitted (2 blocks each); c waits for memory
    assert [s.seq_id for s in eng.sched.running] == [0, 1] and list(eng.sched.waiting) == [c]
    assert not eng.step().preempted  # both decode the token at position 3 in their second block
    batch = eng.step()  # a needs a third block for position 4: b, the newest, is preempted
    assert batch.preempted == [1] and [s.seq.seq_id for s in batch.seqs] == [0]
    assert b.status is SequenceStatus.WAITING and list(eng.sched.waiting) == [b, c]
    assert b.block_table == [] and len(b.output_ids) == 2  # its tokens are kept, to be recomputed
    eng.run()
    for s in (a, b, c):
        assert s.output_ids == expected(s.prompt_ids, 5)
    assert eng.bm.num_free_blocks == 4


def test_a_resumed_sequence_reuses_its_own_cached_blocks():
    eng = Engine(7, 2, max_num_seqs=2, budget=8)
    a = Seq(0, [1, 2, 3], Params(max_tokens=9))  # up to 11 slots: 6 blocks
    b = Seq(1, [4, 5, 6, 7, 8], Params(max_tokens=6))  # up to 10 slots: 5 blocks
    eng.sched.add(a)
    eng.sched.add(b)
    while not eng.sched.num_preemptions:
        eng.step()
    assert eng.batches[-1].preempted == [1]
    eng.run()
    i = next(i for i, bt in enumerate(eng.batches) if bt.preempted)
    resumed = next(s for bt in eng.batches[i + 1:] for s in bt.seqs if s.seq is b)
    assert resumed.start > 0 and resumed.start % 2 == 0  # its freed full blocks were still cached
    assert b.output_ids == expected(b.prompt_ids, 6) and a.output_ids == expected(a.prompt_ids, 9)


def test_abort_frees_blocks_at_once():
    eng = Engine(16, 4, max_num_seqs=2, budget=16)
    seqs = [Seq(i, list(range(1, 10)), Params(max_tokens=50)) for i in range(3)]
    for s in seqs:
        eng.sched.add(s)
    eng.step()
    running, waiting = seqs[0], seqs[2]
    assert running.status is SequenceStatus.RUNNING and waiting.status is SequenceStatus.WAITING
    used = eng.bm.num_blocks - eng.bm.num_free_blocks
    assert eng.sched.abort(running.seq_id) is running
    assert running.status is SequenceStatus.FINISHED and running.block_table == []
    assert eng.bm.num_blocks - eng.bm.num_free_blocks == used - 3
    assert eng.sched.abort(waiting.seq_id) is waiting and waiting not in eng.sched.waiting
    assert eng.sched.abort(waiting.seq_id) is None and eng.sched.abort(12345) is None
    check(eng.sched)
    batch = eng.sched.schedule()  # abort while the runner computes: postprocess() drops the result
    tokens = eng.model.run(batch)
    assert eng.sched.abort(seqs[1].seq_id) is seqs[1]
    assert eng.sched.postprocess(batch, tokens) == []
    assert eng.bm.num_free_blocks == 16 and not eng.sched.has_work
    check(eng.sched)


def test_a_request_that_can_never_fit_is_refused_at_add():
    eng = Engine(4, 4, max_num_seqs=2, budget=8)
    with pytest.raises(ValueError, match="can never fit"):
        eng.sched.add(Seq(0, list(range(1, 11)), Params(max_tokens=8)))  # 10 + 8 - 1 = 17 > 16 slots
    edge = Seq(1, list(range(1, 11)), Params(max_tokens=7))  # exactly 16 slots
    other = Seq(2, [5, 6, 7], Params(max_tokens=6))
    eng.sched.add(edge)
    eng.sched.add(other)
    eng.run()
    assert edge.output_ids == expected(edge.prompt_ids, 7) and other.output_ids == expected(other.prompt_ids, 6)
    assert eng.bm.num_free_blocks == 4


def test_argument_and_protocol_errors():
    bm = BlockManager(8, 4)
    with pytest.raises(ValueError):
        Scheduler(bm, 0, 8)
    with pytest.raises(ValueError, match="max_num_batched_tokens"):
        Scheduler(bm, 8, 4)
    with pytest.raises(ValueError, match="chunk_size"):
        Scheduler(bm, 2, 8, chunk_size=0)
    sched = Scheduler(bm, 2, 8)
    sched.add(Seq(0, [1, 2]))
    with pytest.raises(ValueError, match="already"):
        sched.add(Seq(0, [3]))
    with pytest.raises(ValueError, match="empty"):
        sched.add(Seq(1, []))
    batch = sched.schedule()
    with pytest.raises(ValueError, match="tokens for"):
        sched.postprocess(batch, [1, 2])
    with pytest.raises(ValueError, match="no sampled token"):
        sched.postprocess(batch, {})
    assert [text for _, text in sched.postprocess(batch, [7])] == ["<7>"]


def test_a_shared_prefix_is_computed_once_and_counted_as_cached():
    eng = Engine(32, 4, max_num_seqs=4, budget=64)
    system = list(range(1, 13))  # 3 full blocks
    a = Seq(0, system + [40, 41], Params(max_tokens=3))
    eng.sched.add(a)
    eng.run()
    b = Seq(1, system + [42], Params(max_tokens=3))
    eng.sched.add(b)
    first = eng.step().seqs[0]
    assert b.num_cached_tokens == 12 and first.start == 12 and first.token_ids == [42]
    assert eng.bm.stats.hit_tokens == 12 and eng.bm.stats.hit_queries == 1
    eng.run()
    assert b.output_ids == expected(b.prompt_ids, 3)  # the model checked every cached slot it read


def test_generated_tokens_extend_the_cached_prefix_for_the_next_turn():
    eng = Engine(32, 4, max_num_seqs=2, budget=64)
    a = Seq(0, list(range(1, 7)), Params(max_tokens=7))
    eng.sched.add(a)
    eng.run()
    turn2 = Seq(1, a.all_ids[:12] + [45, 46], Params(max_tokens=2))  # history incl. the reply
    eng.sched.add(turn2)
    eng.step()
    assert turn2.num_cached_tokens == 12  # decode-time blocks were hashed as they filled
    eng.run()
    assert turn2.output_ids == expected(turn2.prompt_ids, 2)


@pytest.mark.parametrize("seed", range(25))
def test_random_workload_keeps_every_invariant(seed):
    rng = random.Random(seed)
    bs = rng.choice([1, 2, 4, 8])
    num_blocks = rng.randint(3, 12) * 8 // bs
    max_seqs = rng.randint(1, 6)
    eng = Engine(num_blocks, bs, max_num_seqs=max_seqs, budget=rng.randint(max_seqs, 24),
                 chunk_size=rng.choice([None, 1, 3, 8]))
    prefixes = [[rng.randrange(1, VOCAB) for _ in range(rng.randint(1, 12))] for _ in range(3)]
    pending, seqs, aborted = [], [], set()
    for i in range(rng.randint(5, 25)):
        prompt = rng.choice(prefixes + [[]]) + [rng.randrange(1, VOCAB) for _ in range(rng.randint(1, 10))]
        cap = num_blocks * bs - len(prompt) + 1  # the largest max_tokens that fits
        if cap < 1:
            prompt, cap = prompt[:num_blocks * bs], 1
        s = Seq(i, prompt, Params(max_tokens=rng.randint(1, min(cap, 30))), use_eos=rng.random() < 0.3)
        pending.append((rng.randint(0, 30), s))
        seqs.append(s)
    step = 0
    while pending or eng.sched.has_work:
        for s in [s for t, s in pending if t <= step]:
            eng.sched.add(s)
        pending = [(t, s) for t, s in pending if t > step]
        if eng.sched.seqs and rng.random() < 0.03:
            victim = rng.choice(sorted(eng.sched.seqs))
            eng.sched.abort(victim)
            aborted.add(victim)
            check(eng.sched)
        if eng.sched.has_work:
            eng.step()
        step += 1
        assert step < 5000, "no progress"
    for s in seqs:
        assert s.status is SequenceStatus.FINISHED and s.block_table == []
        if s.seq_id not in aborted:
            assert s.output_ids == expected(s.prompt_ids, s.params.max_tokens, s.use_eos)
    assert eng.bm.num_free_blocks == num_blocks
