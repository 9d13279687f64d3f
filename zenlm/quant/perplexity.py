"""Perplexity of a text over non-overlapping windows, and top-1 agreement with a reference model.

The text is tokenized once and cut into windows of ctx tokens (the last, shorter one dropped unless it
is the only one); each window is scored on its own: every token but its first is predicted from the
tokens before it in the window. Perplexity is exp of the mean negative log-likelihood over all scored
tokens. With a reference model, agreement is the share of those positions where both models' most
likely next token is the same. Models are given already loaded (the CLI loads them: cli/perplexity.py).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from tqdm import tqdm


@dataclass(slots=True)
class Result:
    perplexity: float
    nll: float  # mean nats per scored token
    tokens: int  # tokens scored
    windows: int
    reference_perplexity: float | None = None
    agreement: float | None = None  # top-1, over the same tokens
    kl: float | None = None  # mean KL(reference || model), nats per token


def windows(ids: list[int], ctx: int, max_tokens: int | None = None) -> torch.Tensor:
    """The token ids [W, T] in non-overlapping windows of ctx (T = all of them when fewer than ctx)."""
    if ctx < 2:
        raise ValueError(f"the context must be at least 2 tokens, got {ctx}")
    ids = ids[:max_tokens] if max_tokens is not None else ids
    if len(ids) < 2:
        raise ValueError(f"the text has {len(ids)} tokens; perplexity needs at least 2")
    if len(ids) < ctx:
        return torch.tensor([ids])
    n = len(ids) // ctx
    return torch.tensor(ids[:n * ctx]).view(n, ctx)


@torch.no_grad()
def _logits(model, x: torch.Tensor) -> torch.Tensor:
    device = next(iter(model.state_dict().values())).device
    positions = torch.arange(x.shape[1]).expand_as(x)
    return model(x.to(device), positions.to(device))[:, :-1].float().cpu()


@torch.no_grad()
def perplexity(model, tokens: torch.Tensor, reference=None, progress: bool = False) -> Result:
    """Score tokens [W, T] window by window with model (and reference, if given): forward(tokens, positions)."""
    nll = ref_nll = kl = 0.0
    same = 0
    for x in tqdm(tokens, desc="perplexity", unit="window", disable=not progress):
        x = x[None]
        target = x[:, 1:].reshape(-1)
        logits = _logits(model, x)
        nll += F.cross_entropy(logits.view(-1, logits.shape[-1]), target, reduction="sum").item()
        if reference is not None:
            ref = _logits(reference, x)
            ref_nll += F.cross_entropy(ref.view(-1, ref.shape[-1]), target, reduction="sum").item()
            same += int((ref.argmax(-1) == logits.argmax(-1)).sum())
            kl += F.kl_div(logits.log_softmax(-1), ref.log_softmax(-1), log_target=True, reduction="sum").item()
            del ref
        del logits
    n = tokens.shape[0] * (tokens.shape[1] - 1)
    out = Result(math.exp(nll / n), nll / n, n, tokens.shape[0])
    if reference is not None:
        out.reference_perplexity, out.agreement, out.kl = math.exp(ref_nll / n), same / n, kl / n
    return out
