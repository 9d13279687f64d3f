"""SamplingParams and a batched next-token sampler over last-position logits.

Order as in transformers' generate(): repetition penalty (prompt + output), then OpenAI
presence/frequency penalties (output only), then temperature, top_k, top_p, min_p, softmax, draw.
Temperature 0 is greedy. Before all of them: logit_bias, then each request's logits processors
(e.g. a grammar mask). Knows nothing of stop strings, EOS or detokenization: sequence.py does.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from dataclasses import dataclass, field

import torch

import zenlm.kernels as kernels

# What a None field means when neither the request nor the model's generation_config sets it.
NEUTRAL = {"temperature": 1.0, "top_p": 1.0, "top_k": 0, "min_p": 0.0, "repetition_penalty": 1.0}
MAX_LOGPROBS = 20  # top alternatives a request may ask for per token (OpenAI's limit)

# (output ids so far, logits [V] of the next token) -> logits [V]; may keep state keyed on len(output_ids)
LogitsProcessor = Callable[[list[int], torch.Tensor], torch.Tensor]


@dataclass(slots=True)
class SamplingParams:
    """One request's sampling settings; None means "take the model's default" (see resolved())."""

    max_tokens: int = 256
    temperature: float | None = None  # 0 = greedy
    top_p: float | None = None
    top_k: int | None = None  # 0 = off
    min_p: float | None = None
    repetition_penalty: float | None = None
    presence_penalty: float = 0.0
    frequency_penalty: float = 0.0
    seed: int | None = None
    stop: list[str] = field(default_factory=list)
    stop_token_ids: list[int] = field(default_factory=list)
    ignore_eos: bool = False
    logit_bias: dict[int, float] = field(default_factory=dict)  # token id -> added to its logit
    logprobs: int | None = None  # None: off; k: the chosen token's logprob and the k most likely
    logits_processors: list[LogitsProcessor] = field(default_factory=list)
    speculative: bool | None = None  # None: as the engine is configured; False: never draft for this request

    def __post_init__(self):
        self.stop = [self.stop] if isinstance(self.stop, str) else list(self.stop or [])
        self.stop_token_ids = list(self.stop_token_ids or [])
        self.logit_bias = {int(t): float(b) for t, b in (self.logit_bias or {}).items()}
        self.logits_processors = list(self.logits_processors or [])

    def resolved(self, defaults: dict) -> SamplingParams:
        """A copy with None fields filled from a generation_config dict, then from NEUTRAL."""
        fill = {}
        for name, neutral in NEUTRAL.items():
            if getattr(self, name) is None:
                value = defaults.get(name)
                fill[name] = neutral if value is None else value
        if self.temperature is None and defaults.get("do_sample") is False:
            fill["temperature"] = 0.0
        return dataclasses.replace(self, **fill)

    def validate(self) -> SamplingParams:
        """Raise ValueError naming the first bad field; return self so calls can chain."""
        checks = [  # (field, ok, requirement); `not (a <= x)` forms also reject NaN
            ("max_tokens", self.max_tokens >= 1, ">= 1"),
            ("temperature", self.temperature is None or self.temperature >= 0, ">= 0"),
            ("top_p", self.top_p is None or 0 < self.top_p <= 1, "in (0, 1]"),
            ("top_k", self.top_k is None or self.top_k >= 0, ">= 0 (0 = off)"),
            ("min_p", self.min_p is None or 0 <= self.min_p <= 1, "in [0, 1]"),
            ("repetition_penalty", self.repetition_penalty is None or self.repetition_penalty > 0, "> 0"),
            ("presence_penalty", -2 <= self.presence_penalty <= 2, "in [-2, 2]"),
            ("frequency_penalty", -2 <= self.frequency_penalty <= 2, "in [-2, 2]"),
            ("logprobs", self.logprobs is None or 0 <= self.logprobs <= MAX_LOGPROBS, f"in [0, {MAX_LOGPROBS}]"),
            ("logit_bias", all(-100 <= b <= 100 for b in self.logit_bias.values()), "values in [-100, 100]"),
        ]
        for name, ok, need in checks:
            if not ok:
                raise ValueError(f"{name} must be {need}, got {getattr(self, name)!r}")
        return self


def make_generator(seed: int | None, device: torch.device | str = "cpu") -> torch.Generator | None:
    """A generator seeded for one request, or None to use torch's global RNG."""
    if seed is None:
        return None
    g = torch.Generator(device=device)
    g.manual_seed(seed)
    return g


def logprobs(logits: torch.Tensor) -> torch.Tensor:
    """log_softmax over the vocabulary, in float32."""
    return torch.log_softmax(logits.float(), dim=-1)


def top_logprobs(lp: torch.Tensor, tokens: torch.Tensor, ks: list[int | None]) -> list[tuple | None]:
    """Per row: None where ks[i] is None, else (chosen logprob, [(id, logprob)] of the ks[i] most likely)."""
    chosen = lp.gather(1, tokens[:, None].to(lp.device))[:, 0].tolist()  # [B]
    k_max = max((k for k in ks if k), default=0)
    top = lp.topk(k_max, dim=-1) if k_max else None
    out = []
    for i, k in enumerate(ks):
        if k is None:
            out.append(None)
            continue
        alts = list(zip(top.indices[i, :k].tolist(), top.values[i, :k].tolist())) if k else []
        out.append((chosen[i], alts))
    return out


def apply_processors(logits: torch.Tensor, params: list[SamplingParams], histories: list[list[int]],
                     prompt_lens: list[int], failed: dict[int, Exception] | None = None) -> torch.Tensor:
    """logit_bias, then each row's logits processors (given that row's output ids). [B, V]

    With `failed`, a processor that raises is that row's failure alone: recorded as failed[row], the
    other rows go on; without it, the error propagates."""
    rows = [i for i, p in enumerate(params) if p.logit_bias or p.logits_processors]
    if not rows:
        return logits
    logits = logits.clone()
    V = logits.shape[1]
    for i in rows:
        p = params[i]
        if p.logit_bias:
            ids = torch.tensor([t for t in p.logit_bias if 0 <= t < V], dtype=torch.long, device=logits.device)
            bias = torch.tensor([b for t, b in p.logit_bias.items() if 0 <= t < V], device=logits.device)
            logits[i, ids] += bias.to(logits.dtype)
        try:
            for proc in p.logits_processors:
                logits[i] = proc(histories[i][prompt_lens[i]:], logits[i])
        except Exception as e:
            if failed is None:
                raise
            failed[i] = e
            logits[i] = 0  # whatever the processor left, the row must still sample without error
    return logits


def _counts(seqs: list[list[int]], V: int, device) -> torch.Tensor:
    """How often each token id occurs in each sequence: [B, V] float32 (ids >= V are dropped)."""
    L = max((len(s) for s in seqs), default=0)
    ids = torch.tensor([s + [V] * (L - len(s)) for s in seqs], dtype=torch.long, device=device)  # [B, L]
    ids = ids.reshape(len(seqs), L).clamp_(max=V)
    counts = torch.zeros(len(seqs), V + 1, device=device)  # [B, V+1]; column V absorbs padding
    counts.scatter_add_(1, ids, torch.ones_like(ids, dtype=counts.dtype))
    return counts[:, :V]


def _column(values: list, like: torch.Tensor) -> torch.Tensor:
    return torch.tensor(values, dtype=like.dtype, device=like.device)[:, None]  # [B, 1]


def apply_penalties(
    logits: torch.Tensor, params: list[SamplingParams], histories: list[list[int]], prompt_lens: list[int]
) -> torch.Tensor:
    """Repetition penalty over the whole history, presence/frequency over generated tokens. [B, V]"""
    B, V = logits.shape
    rep = [p.repetition_penalty for p in params]
    if any(r != 1.0 for r in rep):  # touch only the ids each row has seen: O(B*L), not O(B*V)
        L = max(1, max(len(h) for h in histories))
        ids = torch.tensor([h + (h[:1] or [0]) * (L - len(h)) for h in histories], dtype=torch.long,
                           device=logits.device)  # [B, L]; padding repeats a seen id
        ids = torch.where(ids < V, ids, ids[:, :1]).clamp_(max=V - 1)  # ids past the vocabulary count as none
        r = _column([r if h else 1.0 for r, h in zip(rep, histories)], logits)  # an empty history: no penalty
        seen = logits.gather(1, ids)  # [B, L]
        logits = logits.scatter(1, ids, torch.where(seen < 0, seen * r, seen / r))  # repeats write equal values
    if any(p.presence_penalty or p.frequency_penalty for p in params):
        counts = _counts([h[n:] for h, n in zip(histories, prompt_lens)], V, logits.device)  # [B, V]
        presence = _column([p.presence_penalty for p in params], logits)
        frequency = _column([p.frequency_penalty for p in params], logits)
        logits = logits - presence * (counts > 0) - frequency * counts
    return logits


def apply_warpers(logits: torch.Tensor, params: list[SamplingParams]) -> torch.Tensor:
    """Temperature, top_k, top_p, min_p (transformers' order); filtered entries become -inf. [B, V]"""
    assert all(p.temperature > 0 for p in params), "apply_warpers is for sampled rows (temperature > 0)"
    B, V = logits.shape
    logits = logits / _column([p.temperature for p in params], logits)
    if any(p.top_k > 0 for p in params):
        k = torch.tensor([p.top_k if 0 < p.top_k < V else V for p in params], device=logits.device)
        kth = logits.sort(dim=-1, descending=True).values.gather(1, k[:, None] - 1)  # [B, 1]
        logits = logits.masked_fill(logits < kth, -float("inf"))  # ties with the k-th stay
    if any(p.top_p < 1 for p in params):
        sorted_logits, order = logits.sort(dim=-1)  # ascending, as transformers does
        cum = sorted_logits.softmax(dim=-1).cumsum(dim=-1)  # [B, V]
        drop = cum <= _column([1 - p.top_p for p in params], cum)
        drop[:, -1] = False  # the most likely token always stays
        drop &= _column([p.top_p < 1 for p in params], cum).bool()
        logits = logits.masked_fill(drop.scatter(1, order, drop), -float("inf"))
    if any(p.min_p > 0 for p in params):
        probs = logits.softmax(dim=-1)  # [B, V]
        floor = _column([p.min_p for p in params], probs) * probs.amax(dim=-1, keepdim=True)
        logits = logits.masked_fill(probs < floor, -float("inf"))
    return logits


def argmax(logits: torch.Tensor) -> torch.Tensor:
    """logits.argmax(-1) for float32 [B, V]; on the CPU in zenlm's C kernel, a row per thread."""
    if logits.device.type != "cpu" or logits.dtype != torch.float32 or logits.dim() != 2 or not kernels.available():
        return logits.argmax(dim=-1)
    return kernels.argmax(logits.contiguous())


def sample(
    logits: torch.Tensor,
    params: list[SamplingParams],
    histories: list[list[int]],
    prompt_lens: list[int],
    generators: list[torch.Generator | None],
    failed: dict[int, Exception] | None = None,
) -> torch.Tensor:
    """Next token per row from last-position logits [B, V], with resolved params. Returns [B] int64.
    With `failed`, rows whose logits processor raised are recorded there (their token is meaningless)."""
    B = logits.shape[0]
    assert len(params) == len(histories) == len(prompt_lens) == len(generators) == B, "batch size mismatch"
    assert all(p.temperature is not None for p in params), "sample() needs resolved SamplingParams"
    logits = apply_processors(logits.float(), params, histories, prompt_lens, failed)  # [B, V]
    logits = apply_penalties(logits, params, histories, prompt_lens)
    tokens = argmax(logits)  # [B]; the answer for greedy rows
    rows = [i for i, p in enumerate(params) if p.temperature > 0]
    if not rows:
        return tokens
    idx = torch.tensor(rows, device=logits.device)
    probs = apply_warpers(logits[idx], [params[i] for i in rows]).softmax(dim=-1)  # [S, V]
    drawn = torch.empty(len(rows), dtype=torch.long, device=logits.device)  # [S]
    free = [j for j, i in enumerate(rows) if generators[i] is None]
    if free:  # rows without a seed share one draw from the global RNG
        drawn[free] = torch.multinomial(probs[free], 1).squeeze(1)
    for j, i in enumerate(rows):  # seeded rows draw alone, so their stream ignores batch makeup
        if generators[i] is not None:
            drawn[j] = torch.multinomial(probs[j], 1, generator=generators[i])[0]
    tokens[idx] = drawn
    return tokens
