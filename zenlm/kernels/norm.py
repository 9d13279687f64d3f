"""RMSNorm on zenlm's C kernel: one call instead of five torch ops per norm in a decode step.

The loader swaps it in for model.RMSNorm in quantized models (same `weight`, same math up to float
rounding); off the CPU, outside float32 or without the kernels it runs F.rms_norm.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from zenlm.kernels import ops


class NativeRMSNorm(nn.Module):
    def __init__(self, weight: nn.Parameter, eps: float):
        super().__init__()
        self.weight, self.eps = weight, eps

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not ops.available() or x.device.type != "cpu" or x.dtype != torch.float32 or self.weight.dtype != x.dtype:
            return F.rms_norm(x, self.weight.shape, self.weight, self.eps)
        return ops.rmsnorm(x.contiguous(), self.weight, self.eps)
