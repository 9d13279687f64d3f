"""LoRA and QLoRA by swapping linears in place: y = base(x) + (dropout(x) @ A.T @ B.T) * alpha / r.

`apply_lora` wraps the linears holding the chosen projections (q, k, v, o, gate, up, down, by HF name;
q/k/v and gate/up are shards of the model's fused linears, each with its own A/B) and freezes the rest;
with `quantize="nf4"` (or "int4") the frozen base weight is stored in 4 bits (QLoRA) and dequantized
per matmul. `merge_lora` folds adapters back into plain nn.Linear; adapters save and load alone
(PEFT's tensor names and adapter_config.json). `adapters_disabled` gives the base model (DPO reference).
"""

from __future__ import annotations

import json
import math
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from safetensors.torch import load_file, save_file
from torch import nn

from zenlm.model import PackedLinear, SwiGLULinear, swiglu

TARGETS = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")
# The 16 NF4 levels: quantiles of N(0, 1) scaled to [-1, 1] (Dettmers et al., QLoRA, appendix E).
NF4 = torch.tensor([-1.0, -0.6961928009986877, -0.5250730514526367, -0.39491748809814453,
                    -0.28444138169288635, -0.18477343022823334, -0.09105003625154495, 0.0,
                    0.07958029955625534, 0.16093020141124725, 0.24611230194568634, 0.33791524171829224,
                    0.44070982933044434, 0.5626170039176941, 0.7229568362236023, 1.0])

_NF4_MIDS = (NF4[1:] + NF4[:-1]) / 2


@dataclass(slots=True)
class LoRAConfig:
    rank: int = 16
    alpha: float = 32.0
    dropout: float = 0.0
    targets: tuple[str, ...] = TARGETS
    quantize: str | None = None  # None | "nf4" | "int4": QLoRA's frozen 4-bit base

    def __post_init__(self) -> None:
        if self.rank < 1:
            raise ValueError(f"LoRA rank must be >= 1, got {self.rank}")
        bad = set(self.targets) - set(TARGETS)
        if bad:
            raise ValueError(f"unknown LoRA targets {sorted(bad)}; choose from {', '.join(TARGETS)}")
        if self.quantize not in (None, "nf4", "int4"):
            raise ValueError(f"QLoRA quantization must be nf4 or int4, got {self.quantize!r}")


ROWS = 256  # rows quantized at a time: the float rows of one chunk are all that exist beside the codes


def quantize_4bit(rows, N: int, K: int, kind: str = "nf4", block: int = 64):
    """(packed [N, K/2] uint8, scale, low [N, K/G, 1] bf16) of an [N, K] weight, quantized ROWS rows at a
    time; `rows(i, j)` gives rows i:j in any float dtype, so a caller can read them from a file lazily."""
    if K % block:
        raise ValueError(f"4-bit base needs in_features divisible by {block}, got {K}")
    packed, scales, lows = [], [], []
    for i in range(0, N, ROWS):
        wb = rows(i, min(i + ROWS, N)).float().view(-1, K // block, block)  # [n, K/G, G]
        if kind == "nf4":
            scale = wb.abs().amax(-1, keepdim=True).clamp_min(1e-12)  # [n, K/G, 1]
            codes = torch.bucketize(wb / scale, _NF4_MIDS)  # the nearest level; a tie goes to the lower one
            low = torch.zeros_like(scale)
        else:
            low = wb.amin(-1, keepdim=True)
            scale = ((wb.amax(-1, keepdim=True) - low) / 15).clamp_min(1e-12)
            codes = ((wb - low) / scale).round().clamp(0, 15)
        codes = codes.to(torch.uint8).view(-1, K)
        packed.append(codes[:, 0::2] | (codes[:, 1::2] << 4))
        scales.append(scale.to(torch.bfloat16))
        lows.append(low.to(torch.bfloat16))
        del wb, codes
    return torch.cat(packed), torch.cat(scales), torch.cat(lows)


def _byte_values(kind: str, device: torch.device) -> torch.Tensor:
    """[256, 2] float32: the two 4-bit values a packed byte holds (low nibble first)."""
    b = torch.arange(256, device=device)
    codes = torch.stack((b & 15, b >> 4), dim=-1)
    return NF4.to(device)[codes] if kind == "nf4" else codes.float()


class Linear4bit(nn.Module):
    """A frozen linear stored in 4 bits, blockwise along the input: NF4 (absmax scale) or int4 (scale, min)."""

    def __init__(self, linear: nn.Linear | None, kind: str = "nf4", block: int = 64):
        super().__init__()
        if linear is None:  # from_parts fills it
            return
        w = linear.weight.detach()
        N, K = w.shape
        self._set(*quantize_4bit(lambda i, j: w[i:j], N, K, kind, block), linear.bias, kind, block)

    @classmethod
    def from_parts(cls, parts: list[tuple[torch.Tensor, torch.Tensor, torch.Tensor]], bias: torch.Tensor | None,
                   kind: str, block: int) -> Linear4bit:
        """One linear from quantize_4bit's results for its row ranges in order (a fused q/k/v's members):
        the same codes as quantizing the whole weight at once, since blocks never cross rows."""
        out = cls(None)
        out._set(*(torch.cat(x) if len(parts) > 1 else x[0] for x in zip(*parts)), bias, kind, block)
        return out

    def _set(self, packed, scale, low, bias, kind: str, block: int) -> None:
        self.register_buffer("packed", packed)  # [N, K/2]
        self.register_buffer("scale", scale)
        self.register_buffer("low", low)
        self.bias = None if bias is None else nn.Parameter(bias.detach().clone(), requires_grad=False)
        self.kind, self.block, self.in_features, self.out_features = kind, block, 2 * packed.shape[1], packed.shape[0]

    def dequantize(self, dtype: torch.dtype = torch.float32) -> torch.Tensor:
        """The float weight [N, K] in `dtype`, made ROWS rows at a time: beside the result only one chunk's
        float32 values exist, so a matmul's transient is the weight in the compute dtype."""
        N, K, G = self.out_features, self.in_features, self.block
        table = _byte_values(self.kind, self.packed.device)
        out = torch.empty(N, K, dtype=dtype, device=self.packed.device)
        for i in range(0, N, ROWS):
            j = min(i + ROWS, N)
            idx = self.packed[i:j].reshape(-1).int()
            vals = table.index_select(0, idx).view(j - i, K // G, G).mul_(self.scale[i:j].float())
            if self.kind != "nf4":  # NF4's low is zero
                vals.add_(self.low[i:j].float())
            out[i:j] = vals.view(j - i, K)
        return out

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        dt = torch.get_autocast_dtype(x.device.type) if torch.is_autocast_enabled(x.device.type) else x.dtype
        y = _Linear4bitFn.apply(x.to(dt), self, dt)
        return y if self.bias is None else y + self.bias.to(dt)


class _Linear4bitFn(torch.autograd.Function):
    """x @ dequantize(W).T that dequantizes again in backward instead of keeping every layer's float W."""

    @staticmethod
    def forward(ctx, x, layer: Linear4bit, dt: torch.dtype):
        ctx.layer, ctx.dt = layer, dt
        return F.linear(x, layer.dequantize(dt))

    @staticmethod
    def backward(ctx, gy):
        gx = gy @ ctx.layer.dequantize(ctx.dt) if ctx.needs_input_grad[0] else None
        return gx, None, None


class LoRALinear(nn.Module):
    """base(x) + scale * B(A(dropout(x))) for each targeted member; A kaiming-uniform, B zero, so it
    starts as the base.

    `parts` are the base's checkpoint (HF) members and their rows, in order: a fused (packed) q/k/v
    has three, a plain linear one, itself by its own name. Each targeted member (all when targets is
    None) has its own pair, lora_A[member] [r, K] and lora_B[member] [rows, r], adding into its rows
    only, as PEFT's adapter on that HF linear would. With glu (an MLP's down projection) the input is
    [gate, up] and the base and the adapter both see silu(gate) * up.
    """

    def __init__(self, base: nn.Module, rank: int, alpha: float, dropout: float, parts: dict[str, int],
                 targets: tuple[str, ...] | None = None, glu: bool = False, packed: bool = False):
        super().__init__()
        self.base = base
        self.in_features, self.out_features = base.in_features, base.out_features
        self.parts = dict(parts)
        assert sum(self.parts.values()) == self.out_features, f"parts {self.parts} do not cover {self.out_features}"
        dev = base.packed.device if isinstance(base, Linear4bit) else base.weight.device
        chosen = [m for m in self.parts if targets is None or m in targets]
        self.lora_A = nn.ParameterDict({m: nn.Parameter(torch.empty(rank, self.in_features, device=dev))
                                        for m in chosen})
        self.lora_B = nn.ParameterDict({m: nn.Parameter(torch.zeros(self.parts[m], rank, device=dev))
                                        for m in chosen})
        for A in self.lora_A.values():
            nn.init.kaiming_uniform_(A, a=math.sqrt(5))
        self.scale, self.rank, self.glu, self.packed = alpha / rank, rank, glu, packed
        self.dropout = nn.Dropout(dropout) if dropout else nn.Identity()
        self.enabled = True

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.glu:
            x = swiglu(x)
        y = self.base(x)
        if not self.enabled:
            return y
        h = self.dropout(x)
        pieces = [F.linear(F.linear(h, self.lora_A[m]), self.lora_B[m]) if m in self.lora_A
                  else y.new_zeros(*y.shape[:-1], rows) for m, rows in self.parts.items()]
        return y + torch.cat(pieces, dim=-1) * self.scale

    def delta(self) -> torch.Tensor:
        """scale * B @ A of every member in its rows: the float32 change to the base weight [N, K]."""
        dev = self.base.packed.device if isinstance(self.base, Linear4bit) else self.base.weight.device
        return torch.cat([self.lora_B[m].float() @ self.lora_A[m].float() * self.scale if m in self.lora_A
                          else torch.zeros(rows, self.in_features, device=dev) for m, rows in self.parts.items()])

    def merged(self) -> nn.Linear:
        """The model's own linear (plain, fused or SwiGLU) computing base + adapter (a 4-bit base dequantized)."""
        w = self.base.dequantize() if isinstance(self.base, Linear4bit) else self.base.weight.detach().float()
        bias = self.base.bias is not None
        if self.packed:
            out = PackedLinear(self.in_features, self.parts, bias=bias, device=w.device)
        else:
            out = (SwiGLULinear if self.glu else nn.Linear)(self.in_features, self.out_features, bias, device=w.device)
        dtype = torch.float32 if isinstance(self.base, Linear4bit) else self.base.weight.dtype
        with torch.no_grad():
            out.weight.copy_(w + self.delta())
            if bias:
                out.bias.copy_(self.base.bias)
        return out.to(dtype)

    def adapters(self, name: str) -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
        """HF module name -> (A, B) for each targeted member, `name` being this module's own."""
        parent = name.rpartition(".")[0]
        return {(f"{parent}.{m}" if self.packed else name): (self.lora_A[m], self.lora_B[m]) for m in self.lora_A}


def _lora_modules(model: nn.Module) -> dict[str, LoRALinear]:
    return {n: m for n, m in model.named_modules() if isinstance(m, LoRALinear)}


def lora_linears(model: nn.Module, targets: tuple[str, ...]) -> list[str]:
    """Names of the linears holding a target (by HF name: q_proj is a shard of the fused qkv_proj)."""
    names = [n for n, m in model.named_modules() if isinstance(m, nn.Linear) and not isinstance(m, LoRALinear)
             and (set(m.shards) & set(targets) if isinstance(m, PackedLinear) else n.rpartition(".")[2] in targets)]
    if not names:
        raise ValueError(f"no linear named {', '.join(targets)} in the model")
    return names


def base_block(in_features: int) -> int:
    return 64 if in_features % 64 == 0 else 32  # 32 for widths like zen-tiny's 96


def wrap(model: nn.Module, name: str, base: nn.Module, cfg: LoRAConfig) -> None:
    """Put LoRALinear(base) in place of the model's linear `name` (whose kind says its parts and glu)."""
    lin = model.get_submodule(name)
    packed, glu = isinstance(lin, PackedLinear), isinstance(lin, SwiGLULinear)
    parts = lin.shards if packed else {name.rpartition(".")[2]: lin.out_features}
    model.set_submodule(name, LoRALinear(base, cfg.rank, cfg.alpha, cfg.dropout, parts,
                                         cfg.targets if packed else None, glu, packed))


def apply_lora(model: nn.Module, cfg: LoRAConfig) -> nn.Module:
    """Freeze the model and wrap each linear holding a target in a LoRALinear, in place; returns the model.
    (QLoRA from a checkpoint quantizes while loading instead: qlora_load.py.)"""
    model.requires_grad_(False)
    for name in lora_linears(model, cfg.targets):  # by name, so each fp32 weight is freed once its 4-bit copy exists
        lin = model.get_submodule(name)
        if cfg.quantize:
            base = Linear4bit(lin, cfg.quantize, base_block(lin.in_features))
        elif isinstance(lin, SwiGLULinear):  # the same parameters as a plain linear, fed silu(gate) * up
            base = nn.Linear(lin.in_features, lin.out_features, bias=lin.bias is not None, device="meta")
            base.weight, base.bias = lin.weight, lin.bias
        else:
            base = lin
        wrap(model, name, base, cfg)
        del lin, base
    return model


def merge_lora(model: nn.Module) -> nn.Module:
    """Replace every LoRALinear by its merged linear, in place; returns the model."""
    for name, m in _lora_modules(model).items():
        model.set_submodule(name, m.merged().requires_grad_(False))
    return model


@contextmanager
def adapters_disabled(model: nn.Module):
    """Within the block the model computes its base weights only."""
    mods = list(_lora_modules(model).values())
    for m in mods:
        m.enabled = False
    try:
        yield model
    finally:
        for m in mods:
            m.enabled = True


def has_lora(model: nn.Module) -> bool:
    return bool(_lora_modules(model))


def adapter_state_dict(model: nn.Module) -> dict[str, torch.Tensor]:
    """Adapter tensors only, under PEFT's names for the HF modules (base_model.model.<module>.lora_A.weight)."""
    out = {}
    for name, m in _lora_modules(model).items():
        for hf, (A, B) in m.adapters(name).items():
            out[f"base_model.model.{hf}.lora_A.weight"] = A.detach().contiguous()
            out[f"base_model.model.{hf}.lora_B.weight"] = B.detach().contiguous()
    return out


def adapter_tensors(state_dict: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """The adapter tensors of a full model state dict (`X.lora_A`, as gathered from FSDP) under PEFT's names."""
    out = {}
    for k, v in state_dict.items():
        module, _, rest = k.rpartition(".lora_")  # <module>.lora_A.<member>: the member is an HF linear's name
        if module and rest[:2] in ("A.", "B."):
            out[f"base_model.model.{module.rpartition('.')[0]}.{rest[2:]}.lora_{rest[0]}.weight"] = \
                v.detach().contiguous()
    return out


def save_adapter(model: nn.Module | None, directory: str | Path, cfg: LoRAConfig,
                 tensors: dict[str, torch.Tensor] | None = None) -> None:
    """adapter_model.safetensors + adapter_config.json; `tensors` (adapter_tensors of a gathered state
    dict) instead of the model's own when the model is sharded."""
    tensors = adapter_state_dict(model) if tensors is None else tensors
    if not tensors:
        raise ValueError("no LoRA adapter tensors to save")
    path = Path(directory)
    path.mkdir(parents=True, exist_ok=True)
    save_file(tensors, str(path / "adapter_model.safetensors"))
    meta = {"peft_type": "LORA", "r": cfg.rank, "lora_alpha": cfg.alpha, "lora_dropout": cfg.dropout,
            "target_modules": list(cfg.targets), "bias": "none", "task_type": "CAUSAL_LM",
            "zen_quantize": cfg.quantize}
    (path / "adapter_config.json").write_text(json.dumps(meta, indent=2) + "\n")


def load_adapter(model: nn.Module, directory: str | Path) -> LoRAConfig:
    """Apply LoRA as saved in `directory` to a base model and load the adapter weights into it."""
    path = Path(directory)
    meta = json.loads((path / "adapter_config.json").read_text())
    cfg = LoRAConfig(rank=meta["r"], alpha=meta["lora_alpha"], dropout=meta.get("lora_dropout", 0.0),
                     targets=tuple(meta["target_modules"]), quantize=meta.get("zen_quantize"))
    if not has_lora(model):
        apply_lora(model, cfg)
    tensors = load_file(str(path / "adapter_model.safetensors"))
    pairs = {hf: ab for name, m in _lora_modules(model).items() for hf, ab in m.adapters(name).items()}
    if len(tensors) != 2 * len(pairs):
        raise ValueError(f"{path}: adapter has {len(tensors)} tensors, the model {2 * len(pairs)} LoRA tensors")
    with torch.no_grad():
        for hf, (A, B) in pairs.items():
            for key, p in ((f"base_model.model.{hf}.lora_A.weight", A), (f"base_model.model.{hf}.lora_B.weight", B)):
                if key not in tensors:
                    raise ValueError(f"{path}: adapter has no tensor {key}")
                p.copy_(tensors[key])
    return cfg
