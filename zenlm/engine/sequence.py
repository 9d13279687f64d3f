"""One request's state: prompt, generated tokens, streamed text, stop conditions, finish reason.

Pure Python bookkeeping (no model, no tensors): it takes each sampled token, decides whether the
request is finished (end-of-turn token, stop token, stop string, max_tokens) and which text may be
streamed now, holding back any tail that could still become a stop string. With params.logprobs set it
keeps one (logprob, top alternatives) entry per output token, which the engine hands in before append.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from zenlm.engine.sampling import SamplingParams

if TYPE_CHECKING:
    import torch

    from zenlm.engine.scheduler import SequenceStatus
    from zenlm.tokenizer import StreamDecoder


@dataclass(slots=True)
class Completion:
    text: str
    token_ids: list[int]
    finish_reason: str  # "stop" | "length"
    prompt_tokens: int
    cached_tokens: int = 0  # prompt tokens found in the prefix cache
    logprobs: list[tuple[int, float, list[tuple[int, float]]]] | None = None  # (id, logprob, top) per token


@dataclass(slots=True)
class Sequence:
    prompt_ids: list[int]
    params: SamplingParams  # resolved
    eos_ids: set[int]
    stream: StreamDecoder  # the tokenizer's incremental detokenizer (push(id) -> str, flush() -> str)
    seq_id: int = 0
    generator: torch.Generator | None = None  # for a seeded request
    output_ids: list[int] = field(default_factory=list)
    all_ids: list[int] = field(default_factory=list)  # prompt + output, kept in step (filled in post_init)
    text: str = ""  # all decoded output text so far (stop string not included once found)
    sent: int = 0  # characters of `text` already handed out
    finish_reason: str | None = None
    logprobs: list[tuple[int, float, list[tuple[int, float]]]] = field(default_factory=list)
    next_logprob: tuple[float, list[tuple[int, float]]] | None = None  # for the token append() gets next
    cached_tokens: int | None = None  # num_cached_tokens at the first sampled token (before any preemption)
    # KV bookkeeping, owned by the scheduler and block manager
    status: SequenceStatus | None = None
    block_table: list[int] = field(default_factory=list)
    num_cached_tokens: int = 0
    num_computed_tokens: int = 0
    rope_epoch: int = 0  # the rope its cached K/V turn with (scheduler.py; 0: a rope that never changes)

    def __post_init__(self):
        self.all_ids = list(self.prompt_ids)

    @property
    def finished(self) -> bool:
        return self.finish_reason is not None

    def append(self, token: int) -> str:
        """Record a sampled token; return the text that may be streamed now."""
        p = self.params
        if self.cached_tokens is None:
            self.cached_tokens = self.num_cached_tokens
        entry, self.next_logprob = self.next_logprob, None
        if (token in self.eos_ids and not p.ignore_eos) or token in p.stop_token_ids:
            return self.finish("stop")
        self.output_ids.append(token)
        self.all_ids.append(token)
        if entry is not None:
            self.logprobs.append((token, *entry))
        self.text += self.stream.push(token)
        if p.stop:
            # only the new tail can complete a stop string
            start = max(0, self.sent - max(map(len, p.stop)))
            hits = [i for i in (self.text.find(s, start) for s in p.stop) if i >= 0]
            if hits:
                self.text = self.text[:min(hits)]
                self.finish_reason = "stop"
                return self._release(final=True)
        if len(self.output_ids) >= p.max_tokens:
            return self.finish("length")
        return self._release(final=False)

    def finish(self, reason: str) -> str:
        """End the sequence (end of turn, max_tokens, context full); return the text held back."""
        self.finish_reason = reason
        self.text += self.stream.flush()
        return self._release(final=True)

    def _release(self, final: bool) -> str:
        end = len(self.text)
        if not final and self.params.stop:  # hold back a tail that may still grow into a stop string
            hold = max(len(s) for s in self.params.stop) - 1
            for n in range(min(hold, end), 0, -1):
                if any(s.startswith(self.text[end - n:]) for s in self.params.stop):
                    end -= n
                    break
        end = max(end, self.sent)
        out, self.sent = self.text[self.sent:end], end
        return out

    def result(self) -> Completion:
        return Completion(self.text, list(self.output_ids), self.finish_reason or "length", len(self.prompt_ids),
                          self.cached_tokens or 0, list(self.logprobs) if self.params.logprobs is not None else None)
