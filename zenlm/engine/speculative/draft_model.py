"""A draft model proposer: a smaller model with the target's vocabulary drafts k tokens autoregressively.

Each sequence gets its own contiguous KVCache (model.py) holding the tokens it was last fed; a new call
keeps the common prefix with the sequence's tokens (rejected drafts simply fall off) and feeds the rest.
Greedy requests draft the draft model's argmax; sampled ones draw from its distribution under the
request's own penalties, temperature and top-k/p/min-p, and hand those probabilities (q) to the verifier.
Rows are drafted one at a time (no batching across sequences).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from zenlm.engine.sampling import apply_penalties, apply_processors, apply_warpers, argmax
from zenlm.model import KVCache, Transformer


@dataclass(slots=True)
class _State:
    cache: KVCache
    fed: list[int]  # the tokens whose K/V the cache holds, positions 0..len - 1


class DraftModelProposer:
    deterministic = False

    def __init__(self, model: Transformer, vocab_size: int, context_length: int, tokens: int | None = None):
        """vocab_size: the target's logits width; tokens: how many ids the shared tokenizer uses (default:
        vocab_size). Embedding tables padded past the tokenizer may differ; both must cover its ids."""
        tokens = tokens or vocab_size
        V = model.config.vocab_size
        if V < tokens or vocab_size < tokens or (V != vocab_size and tokens == vocab_size):
            raise ValueError(f"the draft model's vocabulary has {V} tokens and the target's {vocab_size}: a draft "
                             "model must share the target's tokenizer")
        self.vocab_size = vocab_size
        self.model, self.context_length = model, context_length
        self.dtype = next(p for p in model.parameters() if p.is_floating_point()).dtype
        self.device = next(model.parameters()).device
        self.states: dict[int, _State] = {}

    @torch.inference_mode()
    def propose(self, seq, k: int) -> tuple[list[int], torch.Tensor | None]:
        """Up to k drafts for seq, and for a sampled request their probabilities q [k, V]."""
        ids, p = seq.all_ids, seq.params
        st = self.states.get(seq.seq_id)
        if st is None:
            size = min(len(seq.prompt_ids) + p.max_tokens + k, self.context_length)
            st = self.states[seq.seq_id] = _State(KVCache(self.model.config, 1, size, self.dtype, self.device), [])
        k = min(k, st.cache.max_len - len(ids))
        if k < 1:
            return [], None
        keep = _common(st.fed, ids)
        keep = min(keep, len(ids) - 1)  # the last token is always fed: its logits give the first draft
        logits = self._feed(st, ids[keep:], keep)  # [V]
        history, drafts, qs = list(ids), [], []
        for j in range(k):
            x, q = self._choose(logits, seq, history)
            drafts.append(x)
            history.append(x)
            if q is not None:
                qs.append(q)
            if j < k - 1:
                logits = self._feed(st, [x], len(st.fed))
        return drafts, (torch.stack(qs) if qs else None)

    def release(self, live: set[int]) -> None:
        """Drop the caches of sequences that are no longer live."""
        for sid in [s for s in self.states if s not in live]:
            del self.states[sid]

    def _feed(self, st: _State, tokens: list[int], start: int) -> torch.Tensor:
        del st.fed[start:]
        dev = self.device
        x = torch.tensor([tokens], device=dev)
        pos = torch.arange(start, start + len(tokens), device=dev)[None]
        logits = self.model(x, pos, st.cache, logit_index=torch.tensor([len(tokens) - 1], device=dev))  # [1, V]
        st.fed.extend(tokens)
        row, V = logits[0].float(), self.vocab_size  # [V_draft] -> the target's width: padding ids never drawn
        return row[:V] if row.shape[0] >= V else torch.cat((row, row.new_full((V - row.shape[0],), -float("inf"))))

    def _choose(self, logits: torch.Tensor, seq, history: list[int]) -> tuple[int, torch.Tensor | None]:
        p, n = seq.params, len(seq.prompt_ids)
        row = apply_penalties(apply_processors(logits[None], [p], [history], [n]), [p], [history], [n])  # [1, V]
        if p.temperature == 0:
            return int(argmax(row)[0]), None
        q = apply_warpers(row, [p]).softmax(dim=-1)[0]  # [V]
        return int(torch.multinomial(q, 1, generator=seq.generator)), q


def _common(a: list[int], b: list[int]) -> int:
    """Length of the common prefix of two token lists."""
    n = min(len(a), len(b))
    if a[:n] == b[:n]:
        return n
    lo, hi = 0, n  # a[:lo] == b[:lo] and a[:hi] != b[:hi]
    while hi - lo > 1:
        mid = (lo + hi) // 2
        if a[:mid] == b[:mid]:
            lo = mid
        else:
            hi = mid
    return lo
