"""CUDA graphs of the decode step: a batch of one-token rows replays a captured graph instead of launching
every kernel of the forward from Python.

A graph has fixed shapes, so a step is padded to a bucket: its rows to the next of BATCHES (at least 2, so
the model never takes its one-row path, which attends to every key it is given), its block tables to the
next power of two (the runner's inputs(): padding rows write to the scratch block, padded keys are masked).
Each (rows, blocks) bucket is captured once, on first use, into one shared memory pool; a step past the
largest bucket runs eagerly. Models whose forward reads values back to the host (Qwen v1's dynamic NTK and
logn scaling, dynamic rope scaling, MoE routing) always run eagerly, and so does a tensor-parallel model.
"""

from __future__ import annotations

import torch
from torch import nn

BATCHES = (2, 4, 8, 16, 32, 64, 128, 256)


def graph_safe(model: nn.Module, device: torch.device) -> bool:
    """Whether the decode forward of this model can be captured on this device. Hooks on the model (tensor
    parallelism's step broadcast, zenlm/parallel/step.py) must run at every step, so they rule it out too."""
    c = model.config
    dynamic = (c.rope_scaling or {}).get("type") == "dynamic"
    hooked = model._forward_pre_hooks or model._forward_hooks
    return device.type == "cuda" and not (c.use_dynamic_ntk or c.use_logn_attn or dynamic or c.num_experts or hooked)


class DecodeGraphs:
    def __init__(self, runner):
        self.runner = runner
        self.graphs: dict[tuple[int, int], tuple[torch.cuda.CUDAGraph, dict, torch.Tensor]] = {}
        self.pool = None

    def forward(self, entries: list) -> torch.Tensor | None:
        """Logits [B, V] of a decode step, or None when it fits no bucket (the runner then runs it eagerly)."""
        B, bs = len(entries), self.runner.block_size
        need = max(-(-e.context_len // bs) for e in entries)
        rows = next((b for b in BATCHES if b >= B), None)
        if rows is None:
            return None
        blocks = 1 << (need - 1).bit_length()
        x = self.runner.inputs(entries, rows, blocks)
        if (rows, blocks) not in self.graphs:
            self.graphs[rows, blocks] = self._capture(x)
        graph, static, out = self.graphs[rows, blocks]
        for name, t in x.items():
            static[name].copy_(t, non_blocking=True)
        graph.replay()
        return out[:B]

    def _capture(self, x: dict[str, torch.Tensor]):
        static = {name: t.to(self.runner.device) for name, t in x.items()}
        side = torch.cuda.Stream()
        side.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(side):  # a warm-up: Triton builds its kernels, quantized linears repack
            self.runner.call(static)
        torch.cuda.current_stream().wait_stream(side)
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph, pool=self.pool):
            out = self.runner.call(static)
        self.pool = graph.pool()
        return graph, static, out
