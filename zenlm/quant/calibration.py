"""Calibration for GPTQ and AWQ: token samples from text files, and a dense model run block by block.

`calibration_tokens` cuts the tokenized text into non-overlapping windows and takes up to N of them,
spread evenly over the text. `Blocks` keeps the hidden states of every sample at one block boundary and
runs a block's parts (attention, MLP) over them in chunks of samples, with hooks that catch a linear's
input; the quantizers advance it one block at a time, feeding each block's quantized output forward.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import torch
from torch import nn

from zenlm.model import Block, Transformer, swiglu


def calibration_files(calib: Path) -> list[Path]:
    """A text file, or every file (recursively, sorted) in a directory."""
    calib = Path(calib)
    if calib.is_dir():
        files = sorted(p for p in calib.rglob("*") if p.is_file())
    elif calib.is_file():
        files = [calib]
    else:
        raise ValueError(f"calibration data {calib} does not exist")
    if not files:
        raise ValueError(f"calibration directory {calib} holds no files")
    return files


def calibration_tokens(tokenizer, files: list[Path], samples: int, seq_len: int) -> torch.Tensor:
    """Up to `samples` windows of seq_len tokens [S, L], non-overlapping, spread evenly over the text."""
    if samples < 1 or seq_len < 2:
        raise ValueError(f"calibration needs at least one sample of 2 tokens, got {samples} x {seq_len}")
    text = "\n\n".join(f.read_text(encoding="utf-8", errors="replace") for f in files)
    ids = torch.tensor(tokenizer.encode(text), dtype=torch.long)
    windows = ids.numel() // seq_len
    if windows == 0:
        raise ValueError(f"the calibration text has {ids.numel()} tokens, fewer than one sample of {seq_len}")
    n = min(samples, windows)
    picks = torch.arange(n) * windows // n
    return ids[:windows * seq_len].view(windows, seq_len)[picks]


@contextmanager
def capture(module: nn.Module) -> Iterator[list[torch.Tensor]]:
    """The inputs a module is called with, while inside the block."""
    seen: list[torch.Tensor] = []
    handle = module.register_forward_pre_hook(lambda _, args: seen.append(args[0].detach()))
    try:
        yield seen
    finally:
        handle.remove()


class Blocks:
    """The hidden states x [S, L, C] of every calibration sample at one block boundary of a dense model."""

    def __init__(self, model: Transformer, tokens: torch.Tensor, chunk: int = 8):
        if model.config.is_moe:
            raise ValueError("GPTQ and AWQ calibration run dense models only (a MoE model can use rtn)")
        self.model, self.chunk = model, max(1, chunk)
        S, L = tokens.shape
        with torch.no_grad():
            self.x = torch.cat([model.model.embed_tokens(tokens[i:i + self.chunk]).float()
                                for i in range(0, S, self.chunk)])
        positions = torch.arange(L).expand(min(S, self.chunk), L)
        self.positions = positions
        self.cos, self.sin = model.rotary(positions, torch.float32)

    def spans(self, limit: int | None = None) -> Iterator[slice]:
        """Chunks of samples (the first `limit` samples only, if given)."""
        S = self.x.shape[0] if limit is None else min(limit, self.x.shape[0])
        for i in range(0, S, self.chunk):
            yield slice(i, min(i + self.chunk, S))

    def _rope(self, n: int):
        return self.cos[:n], self.sin[:n], self.positions[:n]

    def attention(self, block: Block, h: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """The attention of normed inputs h [n, L, C]: (o_proj's input, the output)."""
        cos, sin, pos = self._rope(h.shape[0])
        with capture(block.self_attn.o_proj) as seen:
            out = block.self_attn(h, cos, sin, pos, None)
        return seen[0], out

    def block_output(self, block: Block, x: torch.Tensor) -> torch.Tensor:
        cos, sin, pos = self._rope(x.shape[0])
        return block(x, cos, sin, pos, None)

    @torch.no_grad()
    def advance(self, block: Block) -> None:
        """x <- block(x), with the block's weights as they are now (quantized, once its quantizer is done)."""
        self.x = torch.cat([self.block_output(block, self.x[s]) for s in self.spans()])


def mlp_input(block: Block, h: torch.Tensor) -> torch.Tensor:
    """The down projection's input silu(gate) * up for normed inputs h."""
    return swiglu(block.mlp.gate_up_proj(h))


class Gram:
    """Running sum of x^T x over the rows of inputs [..., K] (GPTQ's Hessian up to a factor) and row count."""

    def __init__(self, K: int):
        self.H, self.n = torch.zeros(K, K), 0

    def add(self, x: torch.Tensor) -> None:
        x = x.reshape(-1, x.shape[-1]).float()
        self.H.addmm_(x.T, x)
        self.n += x.shape[0]

    def hessian(self) -> torch.Tensor:
        """2/n X^T X, as GPTQ defines it."""
        return self.H * (2 / max(self.n, 1))
