"""Reward models: a scalar head on the transformer backbone, the pairwise Bradley-Terry loss, and the scorer.

A conversation's reward is the head applied to the final hidden state of its last answer token (the
assistant's end-of-turn token). Training takes the DPO data format (prompt, chosen, rejected):
loss = -log sigmoid(r_chosen - r_rejected), log 2 when both score the same. The exported directory is
an HF model directory (the backbone, readable by zenlm) plus `reward_head/head.safetensors` and `reward.json`;
`load_scorer(dir).score(messages)` gives the reward of a conversation.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from zenlm.train.data import IGNORE, Batch
from zenlm.train.losses import Forward, LossOut

HEAD_FILE, META_FILE = "reward_head/head.safetensors", "reward.json"  # a subfolder: loaders read *.safetensors


def scalar_head(hidden_size: int) -> nn.Linear:
    """hidden [.., C] -> one number; zero-initialised, so every reward starts at 0."""
    head = nn.Linear(hidden_size, 1)
    nn.init.zeros_(head.weight)
    nn.init.zeros_(head.bias)
    return head


def last_answer_index(labels: torch.Tensor) -> torch.Tensor:
    """[B, T] labels -> [B] index of each row's last answer token: one past its last labelled position
    (the label at position i is token i + 1)."""
    T = labels.shape[1]
    pos = torch.arange(T, device=labels.device).expand_as(labels)
    last = torch.where(labels != IGNORE, pos, -1).amax(dim=1)
    if bool((last < 0).any()):
        raise ValueError("a reward-model row has no answer tokens")
    return (last + 1).clamp_max(T - 1)


def rewards(hidden: torch.Tensor, head: nn.Module, index: torch.Tensor) -> torch.Tensor:
    """hidden [B, T, C], index [B] -> rewards [B] (float32)."""
    h = hidden[torch.arange(hidden.shape[0], device=hidden.device), index]
    return head(h).float()[:, 0]


def bradley_terry_loss(chosen: torch.Tensor, rejected: torch.Tensor) -> torch.Tensor:
    """Per pair -log sigmoid(r_chosen - r_rejected)."""
    return -F.logsigmoid(chosen - rejected)


class BradleyTerry:
    """Pairwise reward-model loss on a DPO-format batch (chosen rows, then rejected rows); counts pairs.
    Metrics: accuracy (chosen scored higher) and margin, summed over pairs."""

    def __init__(self, head: nn.Module):
        self.head = head

    def count(self, batch: Batch) -> int:
        return batch.pairs

    def __call__(self, forward: Forward, lm_head: torch.Tensor, batch: Batch) -> LossOut:
        P = batch.pairs
        if P * 2 != batch.tokens.shape[0]:
            raise ValueError("a reward-model batch is chosen rows then rejected rows")
        r = rewards(forward(batch), self.head, last_answer_index(batch.labels))
        chosen, rejected = r[:P], r[P:]
        margin = (chosen - rejected).detach()
        return LossOut(bradley_terry_loss(chosen, rejected).sum(),
                       {"accuracy": float((margin > 0).float().sum()), "margin": float(margin.sum())})


# ---- export and scoring ----------------------------------------------------------------------
def save_head(directory: str | Path, head: nn.Module) -> None:
    from safetensors.torch import save_file

    path = Path(directory)
    (path / HEAD_FILE).parent.mkdir(parents=True, exist_ok=True)
    save_file({k: v.detach().float().contiguous().cpu() for k, v in head.state_dict().items()}, path / HEAD_FILE)
    (path / META_FILE).write_text(json.dumps({"kind": "reward_model", "head": HEAD_FILE,
                                              "position": "last answer token"}, indent=2) + "\n")


def is_reward_model(directory: str | Path) -> bool:
    return (Path(directory) / META_FILE).is_file()


class Scorer:
    """A trained reward model: score(messages) -> float, the reward of a conversation ending in an answer."""

    def __init__(self, model: nn.Module, head: nn.Module, tokenizer, device: torch.device | str = "cpu"):
        self.model, self.head, self.tokenizer = model.eval(), head.eval(), tokenizer
        self.device = torch.device(device)

    def ids(self, messages: list[dict]) -> tuple[list[int], int]:
        """The rendered conversation and the index it is scored at (its last answer token)."""
        if not messages or messages[-1].get("role") != "assistant":
            raise ValueError("a scored conversation must end with an assistant message")
        ids, mask = self.tokenizer.render_ids(messages)
        marked = [i for i, m in enumerate(mask) if m]
        return ids, (marked[-1] if marked else len(ids) - 1)

    @torch.no_grad()
    def score_ids(self, rows: list[tuple[list[int], int]]) -> list[float]:
        """Rewards of (token ids, index) rows, one forward each (no padding to reason about)."""
        from zenlm.train.trainer import hidden_states

        out = []
        for ids, index in rows:
            t = torch.tensor([ids], device=self.device)
            b = Batch(t, t, torch.arange(len(ids), device=self.device)[None], None)
            out.append(float(rewards(hidden_states(self.model, b), self.head,
                                     torch.tensor([index], device=self.device))[0]))
        return out

    def score(self, messages: list[dict]) -> float:
        return self.score_ids([self.ids(messages)])[0]

    def score_many(self, conversations: list[list[dict]]) -> list[float]:
        return self.score_ids([self.ids(m) for m in conversations])


def load_scorer(directory: str | Path, device: str = "cpu") -> Scorer:
    """The scorer of a directory written by `zen train rm`."""
    from safetensors.torch import load_file

    from zenlm.weights.load import load

    path = Path(directory)
    if not is_reward_model(path):
        raise ValueError(f"{path} is not a reward model directory (no {META_FILE})")
    loaded = load(str(path), dtype=torch.float32, device=device, progress=False)
    head = scalar_head(loaded.config.hidden_size)
    head.load_state_dict(load_file(path / HEAD_FILE))
    return Scorer(loaded.model, head.to(device), loaded.tokenizer, device)
