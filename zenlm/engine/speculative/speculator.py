"""Speculator: drafts for a scheduled batch's decode rows, and the verified tokens back from the target's logits.

propose() appends up to k drafted tokens to each eligible decode entry (slots reserved past the sequence's
tokens), so the runner computes [last token + drafts] in one forward and returns logits for every one of
them; verify() turns those rows into each entry's accepted tokens (rejection.py), applying the request's
own logit_bias, penalties and warpers exactly as sampling.sample() does, with the drafts so far in the
history. Rows with logprobs or logits processors (grammars keep state per token) never speculate.
Adaptive: a row whose recent acceptance is low drafts nothing for a while, then probes again.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from zenlm.engine.sampling import apply_penalties, apply_processors, apply_warpers, argmax
from zenlm.engine.speculative.rejection import accept_greedy, accept_sampled

MIN_RATE = 0.3  # below this recent acceptance (accepted / proposed) a row stops drafting for a while
COOLDOWN = 8  # plain decode steps before such a row probes again (doubling per failed probe, up to 8x)


@dataclass(slots=True)
class SpecStats:
    """Counters for /metrics and `zen bench`."""

    proposed: int = 0  # draft tokens verified
    accepted: int = 0  # of those, kept
    rows: int = 0  # speculative row-steps (each also yields one token of the target's own)

    @property
    def acceptance(self) -> float:
        return self.accepted / self.proposed if self.proposed else 0.0


@dataclass(slots=True)
class _Row:
    rate: float = 1.0  # running acceptance (exponential average)
    wait: int = 0  # steps left before drafting again
    fails: int = 0  # cooldowns in a row


class Speculator:
    def __init__(self, proposer, num_tokens: int, adaptive: bool = True):
        if num_tokens < 1:
            raise ValueError(f"num_speculative_tokens must be >= 1, got {num_tokens}")
        self.proposer, self.k, self.adaptive = proposer, num_tokens, adaptive
        self.stats = SpecStats()
        self.rows: dict[int, _Row] = {}
        self.q: dict[int, torch.Tensor | None] = {}  # seq_id -> this step's draft probabilities

    @staticmethod
    def eligible(seq) -> bool:
        p = seq.params
        return p.speculative is not False and p.logprobs is None and not p.logits_processors

    def propose(self, batch, blocks, token_budget: int) -> None:
        """Append drafts to the batch's decode entries, within what the step's token budget leaves."""
        live = {e.seq.seq_id for e in batch.seqs}
        for sid in [s for s in self.rows if s not in live]:
            del self.rows[sid]
        self.proposer.release(live)
        self.q.clear()
        left = token_budget - batch.num_tokens
        for e in batch.seqs:
            seq = e.seq
            if e.num_tokens != 1 or not e.sample or not self.eligible(seq) or left < 1:
                continue
            row = self.rows.setdefault(seq.seq_id, _Row())
            if row.wait:
                row.wait -= 1
                continue
            k = min(self.k, seq.params.max_tokens - len(seq.output_ids) - 1, left)
            if k < 1:
                continue
            drafts, q = self.proposer.propose(seq, k)
            if not drafts or not blocks.reserve(seq, e.start + 1 + len(drafts)):
                continue
            bs, table = blocks.block_size, seq.block_table
            e.slot_mapping += [table[t // bs] * bs + t % bs for t in range(e.start + 1, e.start + 1 + len(drafts))]
            e.token_ids += drafts
            e.block_table = list(table)
            e.num_draft = len(drafts)
            self.q[seq.seq_id] = q
            left -= len(drafts)

    def verify(self, entries, logits: torch.Tensor) -> tuple[torch.Tensor, dict[int, list[int]]]:
        """logits: the runner's rows for `entries` (batch.sampled). Returns the plain entries' logits [n, V]
        (to sample as usual) and, per speculative entry's seq_id, its accepted drafts + the next token."""
        plain, spec, r = [], [], 0
        for e in entries:
            if e.num_draft:
                spec.append((e, r))
            else:
                plain.append(r)
            r += 1 + e.num_draft
        out = {e.seq.seq_id: self._verify(e, logits[a:a + 1 + e.num_draft]) for e, a in spec}
        return logits[plain], out

    def _verify(self, e, rows: torch.Tensor) -> list[int]:
        seq, k = e.seq, e.num_draft
        drafts, p, n = e.token_ids[1:], seq.params, len(seq.prompt_ids)
        histories = [seq.all_ids + drafts[:j] for j in range(k + 1)]
        params, lens = [p] * (k + 1), [n] * (k + 1)
        rows = apply_penalties(apply_processors(rows.float(), params, histories, lens), params, histories, lens)
        if p.temperature == 0:
            tokens = accept_greedy(argmax(rows).tolist(), drafts)
        else:
            probs = apply_warpers(rows, params).softmax(dim=-1)  # [k + 1, V]
            tokens = accept_sampled(probs, drafts, self.q.get(seq.seq_id), seq.generator)
        accepted = len(tokens) - 1
        st = self.stats
        st.proposed, st.accepted, st.rows = st.proposed + k, st.accepted + accepted, st.rows + 1
        row = self.rows.setdefault(seq.seq_id, _Row())
        row.rate = 0.5 * row.rate + 0.5 * accepted / k
        if self.adaptive and row.rate < MIN_RATE:  # probe again after a cooldown, from the threshold
            row.wait, row.rate, row.fails = COOLDOWN << min(row.fails, 3), MIN_RATE, row.fails + 1
        elif row.rate >= MIN_RATE:
            row.fails = 0
        return tokens
