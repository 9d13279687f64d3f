"""Scheduler: continuous batching over a BlockManager, with a token budget, chunked prefill and preemption.

Pure Python (no model, no tensors). Each step: schedule() -> the runner computes the Batch ->
postprocess() records the sampled tokens. Decode tokens (one per running sequence) are scheduled
first, then prefill chunks fill what is left of the token budget, so a long prompt never stalls the
streams already decoding. When KV blocks run out, the most recently admitted sequence is preempted:
its blocks are freed and it waits at the front of the queue to be recomputed (prompt + generated).
A model whose rope depends on the context length (Qwen v1's dynamic NTK) gives rope_epoch (context
length -> which rope): a sequence about to step into another epoch is recomputed the same way, since
its cached K/V turned with the old one (at most a few times: v1's epochs double in length).
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from enum import Enum

from zenlm.engine.kv_cache import BlockManager, SeqLike


class SequenceStatus(Enum):
    WAITING = "waiting"  # no KV blocks (new, or preempted)
    RUNNING = "running"  # holds KV blocks: prefilling or decoding
    FINISHED = "finished"  # done or aborted; blocks released


@dataclass(slots=True)
class ScheduledSeq:
    """One sequence's work in a step: compute all_ids[start:start + num_tokens] into slot_mapping."""

    seq: SeqLike
    start: int  # index into seq.all_ids of the first token to compute (== its num_computed_tokens)
    token_ids: list[int]  # seq.all_ids[start:start + num_tokens]
    slot_mapping: list[int]  # block_id * block_size + offset, where each token's K and V are written
    block_table: list[int]  # a copy of the sequence's table: attention reads positions 0..context_len-1
    sample: bool  # this chunk reaches the last token: the runner samples the next token from its logits
    num_draft: int = 0  # speculative tokens appended to token_ids (engine/speculative/): verified, maybe rolled back

    @property
    def num_tokens(self) -> int:
        return len(self.token_ids)

    @property
    def positions(self) -> list[int]:
        return list(range(self.start, self.start + len(self.token_ids)))

    @property
    def context_len(self) -> int:
        """Tokens whose KV the attention of this chunk sees (cached + computed before + this chunk)."""
        return self.start + len(self.token_ids)


@dataclass(slots=True)
class Batch:
    seqs: list[ScheduledSeq] = field(default_factory=list)  # decodes first, then prefill chunks
    preempted: list[int] = field(default_factory=list)  # seq ids preempted while building this batch

    @property
    def num_tokens(self) -> int:
        return sum(len(s.token_ids) for s in self.seqs)

    @property
    def sampled(self) -> list[ScheduledSeq]:
        """The entries the runner samples a token for, in batch order (the order of a new_tokens list)."""
        return [s for s in self.seqs if s.sample]


class Scheduler:
    def __init__(self, block_manager: BlockManager, max_num_seqs: int, max_num_batched_tokens: int,
                 chunk_size: int | None = None, rope_epoch: Callable[[int], int] | None = None):
        """chunk_size caps one sequence's prefill tokens per step (None: only the step's budget does);
        rope_epoch: context length -> the rope its K/V turn with (None: one rope for every length)."""
        if max_num_seqs < 1:
            raise ValueError(f"max_num_seqs must be >= 1, got {max_num_seqs}")
        if max_num_batched_tokens < max_num_seqs:
            raise ValueError(f"max_num_batched_tokens ({max_num_batched_tokens}) must be >= max_num_seqs "
                             f"({max_num_seqs}) so that every running sequence can decode each step")
        if chunk_size is not None and chunk_size < 1:
            raise ValueError(f"chunk_size must be >= 1 or None, got {chunk_size}")
        self.bm = block_manager
        self.max_num_seqs, self.max_num_batched_tokens = max_num_seqs, max_num_batched_tokens
        self.chunk_size = chunk_size
        self.rope_epoch = rope_epoch
        self.num_rope_recomputes = 0
        self.waiting: deque[SeqLike] = deque()  # FIFO; preempted sequences go back to the front
        self.running: list[SeqLike] = []  # in admission order: the last one is preempted first
        self.seqs: dict[int, SeqLike] = {}  # live (waiting or running) sequences by id
        self.num_preemptions = 0

    @property
    def has_work(self) -> bool:
        return bool(self.waiting or self.running)

    def add(self, seq: SeqLike) -> None:
        if seq.seq_id in self.seqs:
            raise ValueError(f"sequence id {seq.seq_id} is already scheduled")
        if not seq.prompt_ids:
            raise ValueError(f"sequence {seq.seq_id} has an empty prompt")
        # the last sampled token's KV is never computed: prompt + max_tokens - 1 slots at most
        need = self.bm.blocks_for(len(seq.prompt_ids) + seq.params.max_tokens - 1)
        if need > self.bm.num_blocks:
            raise ValueError(
                f"request {seq.seq_id} can never fit: {len(seq.prompt_ids)} prompt tokens + max_tokens "
                f"{seq.params.max_tokens} need {need} KV blocks of {self.bm.block_size} tokens, "
                f"and there are only {self.bm.num_blocks}")
        seq.status = SequenceStatus.WAITING
        seq.block_table, seq.num_cached_tokens, seq.num_computed_tokens = [], 0, 0
        self._set_epoch(seq)
        self.waiting.append(seq)
        self.seqs[seq.seq_id] = seq

    def abort(self, seq_id: int) -> SeqLike | None:
        """Drop a request now, releasing its blocks; returns it, or None if it is not live (finished, unknown)."""
        seq = self.seqs.pop(seq_id, None)
        if seq is None:
            return None
        if seq.status is SequenceStatus.RUNNING:
            self.running.remove(seq)
        else:
            self.waiting.remove(seq)
        self.bm.deallocate(seq)
        seq.status = SequenceStatus.FINISHED
        return seq

    def schedule(self) -> Batch:
        batch = Batch()
        budget = self.max_num_batched_tokens
        # 1. decodes (one token to compute, then sample), oldest first; preempt the newest when short of blocks
        i = 0
        while i < len(self.running):
            seq = self.running[i]
            if len(seq.all_ids) - seq.num_computed_tokens != 1:
                i += 1
                continue
            if self.rope_epoch is not None and self.rope_epoch(len(seq.all_ids)) != seq.rope_epoch:
                self._requeue(seq)  # its K/V turned with another rope: recompute it all (admitted below)
                self.num_rope_recomputes += 1
                continue
            while not self.bm.can_append(seq):
                victim = self.running[-1]  # never an already scheduled one: those all sit before i
                self._preempt(victim)
                batch.preempted.append(victim.seq_id)
                if victim is seq:
                    break
            else:
                self.bm.may_append(seq)
                batch.seqs.append(self._chunk(seq, 1))
                budget -= 1
                i += 1
        assert budget >= 0, "more decodes than the token budget: max_num_batched_tokens < max_num_seqs"
        # 2. prefill chunks of admitted sequences (their blocks were allocated at admission)
        for seq in self.running:
            remaining = len(seq.all_ids) - seq.num_computed_tokens
            if remaining > 1 and budget > 0:
                n = self._chunk_len(remaining, budget)
                batch.seqs.append(self._chunk(seq, n))
                budget -= n
        # 3. admit waiting sequences in FIFO order, unless this step had to preempt (it would thrash)
        while (self.waiting and budget > 0 and not batch.preempted and len(self.running) < self.max_num_seqs
               and self.bm.can_allocate(self.waiting[0])):
            seq = self.waiting.popleft()
            self.bm.allocate(seq)
            seq.status = SequenceStatus.RUNNING
            self.running.append(seq)
            n = self._chunk_len(len(seq.all_ids) - seq.num_computed_tokens, budget)
            batch.seqs.append(self._chunk(seq, n))
            budget -= n
        assert batch.seqs or not self.has_work, "the scheduler stalled with work left"
        return batch

    def postprocess(self, batch: Batch, new_tokens: dict[int, int | list[int]] | list[int | list[int]]
                    ) -> list[tuple[SeqLike, object]]:
        """Record a step's results: new_tokens maps seq_id -> token, or lists them in batch.sampled order.
        A speculative entry gets a list (its accepted drafts and one more token): it appends them until the
        sequence finishes, keeps the K/V of the tokens that were fed and kept, and frees the blocks past them.

        Returns (sequence, what seq.append(token) returned) for each sequence that got a token; the
        finished ones have already released their blocks. Sequences aborted since schedule() are skipped.
        """
        if not isinstance(new_tokens, dict):
            sampled = batch.sampled
            if len(new_tokens) != len(sampled):
                raise ValueError(f"got {len(new_tokens)} tokens for {len(sampled)} sampled sequences")
            new_tokens = {s.seq.seq_id: t for s, t in zip(sampled, new_tokens)}
        missing = [s.seq.seq_id for s in batch.sampled
                   if s.seq.status is SequenceStatus.RUNNING and s.seq.seq_id not in new_tokens]
        if missing:
            raise ValueError(f"no sampled token for sequences {missing}")
        out = []
        for s in batch.seqs:
            seq = s.seq
            if seq.status is not SequenceStatus.RUNNING:  # aborted between schedule() and now
                continue
            assert seq.num_computed_tokens == s.start, f"sequence {seq.seq_id} changed under its batch"
            if s.num_draft:
                out.append((seq, self._accept(seq, s, new_tokens[seq.seq_id])))
            else:
                seq.num_computed_tokens += len(s.token_ids)
                self.bm.cache_blocks(seq)
                if s.sample:
                    out.append((seq, seq.append(new_tokens[seq.seq_id])))
            if seq.finished:
                self.running.remove(seq)
                del self.seqs[seq.seq_id]
                self.bm.deallocate(seq)
                seq.status = SequenceStatus.FINISHED
        return out

    # ---- internals ---------------------------------------------------------------------------------
    def _accept(self, seq: SeqLike, s: ScheduledSeq, tokens: list[int]) -> object:
        """A verified speculative entry: append tokens in order (stopping where the sequence finishes);
        the K/V stays valid for the fed tokens that match what the sequence now holds, the rest is rolled back."""
        pieces = []
        for t in tokens:
            pieces.append(seq.append(t))
            if seq.finished:
                break
        ids, kept = seq.all_ids, 0
        while kept < len(s.token_ids) and s.start + kept < len(ids) and ids[s.start + kept] == s.token_ids[kept]:
            kept += 1
        seq.num_computed_tokens = s.start + kept
        if not seq.finished:
            self.bm.truncate(seq, len(ids))
        self.bm.cache_blocks(seq)  # only over kept tokens: the hashes never cover a rejected draft
        return "".join(p for p in pieces if p)

    def _chunk_len(self, remaining: int, budget: int) -> int:
        n = min(remaining, budget)
        return n if self.chunk_size is None else min(n, self.chunk_size)

    def _chunk(self, seq: SeqLike, n: int) -> ScheduledSeq:
        ids, start, bs, table = seq.all_ids, seq.num_computed_tokens, self.bm.block_size, seq.block_table
        assert 0 < n <= len(ids) - start, f"bad chunk of {n} tokens for sequence {seq.seq_id}"
        assert len(table) * bs >= start + n, f"sequence {seq.seq_id} has no slots for its chunk"
        slots = [table[p // bs] * bs + p % bs for p in range(start, start + n)]
        return ScheduledSeq(seq, start, ids[start:start + n], slots, list(table), start + n == len(ids))

    def _preempt(self, seq: SeqLike) -> None:
        """Free the sequence's blocks and queue it first in line, to be recomputed (prompt + generated)."""
        self._requeue(seq)
        self.num_preemptions += 1

    def _requeue(self, seq: SeqLike) -> None:
        self.running.remove(seq)
        self.bm.deallocate(seq)
        seq.status = SequenceStatus.WAITING
        self._set_epoch(seq)
        self.waiting.appendleft(seq)

    def _set_epoch(self, seq: SeqLike) -> None:
        """A waiting sequence's tokens are fixed until it runs: its K/V will turn with their length's rope."""
        seq.rope_epoch = 0 if self.rope_epoch is None else self.rope_epoch(len(seq.all_ids))
