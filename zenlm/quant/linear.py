"""Weight-only quantized linears for fast CPU inference, swapped into a model in place.

Int8Linear: int8 per output channel (torch's `_weight_int8pack_mm`). Int4Linear: int4 in groups of
32 along the input, asymmetric (torch's `_weight_int4pack_mm_for_cpu`). Both take bfloat16
activations and keep the bias in bfloat16. `quantize_model` replaces nn.Linear modules; the
embedding stays as it is (a lookup reads one row per token). Training-time quantization (QLoRA) is not here.
"""

from __future__ import annotations

import torch
from torch import nn

GROUP = 32


class Int8Linear(nn.Module):
    def __init__(self, linear: nn.Linear):
        super().__init__()
        w = linear.weight.detach().float()  # [N, K]
        scale = (w.abs().amax(dim=1) / 127).clamp(min=1e-12)  # [N]
        self.register_buffer("weight", (w / scale[:, None]).round().clamp(-128, 127).to(torch.int8))
        self.register_buffer("scale", scale.to(torch.bfloat16))
        self.register_buffer("bias", None if linear.bias is None else linear.bias.detach().to(torch.bfloat16))
        self.in_features, self.out_features = w.shape[1], w.shape[0]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        shape = x.shape
        y = torch.ops.aten._weight_int8pack_mm(x.reshape(-1, shape[-1]).to(torch.bfloat16), self.weight, self.scale)
        if self.bias is not None:
            y = y + self.bias
        return y.view(*shape[:-1], self.out_features)


class Int4Linear(nn.Module):
    def __init__(self, linear: nn.Linear, group: int = GROUP):
        super().__init__()
        w = linear.weight.detach().float()  # [N, K]
        N, K = w.shape
        assert K % group == 0, f"in_features {K} is not a multiple of the group size {group}"
        g = w.view(N, K // group, group)
        lo, hi = g.amin(-1), g.amax(-1)  # [N, K/g]
        scale = ((hi - lo) / 15).clamp(min=1e-12)
        q = ((g - lo[..., None]) / scale[..., None]).round().clamp(0, 15).to(torch.int32).view(N, K)
        # the kernel dequantizes (q - 8) * scale + zero
        zero = lo + 8 * scale
        self.register_buffer("weight", torch.ops.aten._convert_weight_to_int4pack_for_cpu(q, 1))
        self.register_buffer("scales_zeros", torch.stack([scale, zero], -1).transpose(0, 1).contiguous()
                             .to(torch.bfloat16))  # [K/g, N, 2]
        self.register_buffer("bias", None if linear.bias is None else linear.bias.detach().to(torch.bfloat16))
        self.group, self.in_features, self.out_features = group, K, N

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        shape = x.shape
        x2 = x.reshape(-1, shape[-1]).to(torch.bfloat16)
        y = torch.ops.aten._weight_int4pack_mm_for_cpu(x2, self.weight, self.group, self.scales_zeros)
        if self.bias is not None:
            y = y + self.bias
        return y.view(*shape[:-1], self.out_features)


MODES = {"int4": Int4Linear, "int8": Int8Linear}


def is_quantized(module: nn.Module) -> bool:
    return isinstance(module, (Int4Linear, Int8Linear))


def quantize_linear(linear, mode: str) -> nn.Module:
    """A quantized copy of anything with .weight [N, K] and .bias (an nn.Linear, or loose tensors)."""
    if mode not in MODES:
        raise ValueError(f"unknown quantization {mode!r}; choose one of {', '.join(MODES)}")
    N, K = linear.weight.shape
    if mode == "int4" and (K % GROUP or N % 16):
        return Int8Linear(linear)  # the int4 kernel needs whole groups along K and N in tiles of 16
    return MODES[mode](linear)


def quantize_model(model: nn.Module, mode: str) -> nn.Module:
    """Swap every nn.Linear (lm_head included, even when tied) for a quantized one, in place."""
    for name, child in list(model.named_modules()):
        if isinstance(child, nn.Linear):
            model.set_submodule(name, quantize_linear(child, mode))
    return model
