"""Runner: a scheduled Batch -> padded tensors -> one model forward -> logits of the sampled rows.

PagedKVCache holds the K/V tensors of every physical block, one flat slot per token
(slot = block_id * block_size + offset) plus a scratch slot that padding writes to and reads from.
The block bookkeeping is kv_cache.BlockManager's; the choice of what runs is the scheduler's.
"""

from __future__ import annotations

import torch

from zenlm.config import Config
from zenlm.engine.scheduler import Batch
from zenlm.model import Transformer
from zenlm.quant.native import lib

FAR = 1 << 30  # the position given to padding keys: above every query, so always masked


class PagedKVCache:
    """K/V for num_blocks * block_size token slots per layer, [slots + 1, KV, D] (the last is scratch).

    With `native`, a decode step's rope, cache write and attention run in zenlm's C kernel
    (quant/kernels.c), which reads each row's own slots: no gather, no padding, no mask.
    """

    def __init__(self, c: Config, num_blocks: int, block_size: int, dtype: torch.dtype, device, native: bool):
        self.scratch = num_blocks * block_size
        shape = (self.scratch + 1, c.num_kv_heads, c.head_dim)
        # empty, not zeros: only written slots are read, and padding reads the scratch slot, which
        # starts at zero and afterwards only ever holds (finite) padding keys: masked, weight 0
        self.k = [torch.empty(shape, dtype=dtype, device=device) for _ in range(c.num_layers)]
        self.v = [torch.empty(shape, dtype=dtype, device=device) for _ in range(c.num_layers)]
        for t in self.k + self.v:
            t[self.scratch].zero_()
        self.heads, self.native = (c.num_heads, c.num_kv_heads, c.head_dim), native
        self.write_slots = self.read_slots = self.key_pos = self.ctx = None

    def bind(self, write_slots: torch.Tensor, read_slots: torch.Tensor, key_pos: torch.Tensor,
             ctx: torch.Tensor) -> PagedKVCache:
        """This step's layout: where each new token goes [B, T], which slots each row reads [B, S],
        the position of each read key [B, S] and each row's context length [B]."""
        self.write_slots, self.read_slots, self.key_pos, self.ctx = write_slots, read_slots, key_pos, ctx
        return self

    def update(self, layer: int, positions: torch.Tensor, k: torch.Tensor, v: torch.Tensor):
        B, KV, T, D = k.shape
        w = self.write_slots.reshape(-1)
        self.k[layer][w] = k.transpose(1, 2).reshape(B * T, KV, D).to(self.k[layer].dtype)
        self.v[layer][w] = v.transpose(1, 2).reshape(B * T, KV, D).to(self.v[layer].dtype)
        r = self.read_slots.reshape(-1)
        keys = self.k[layer].index_select(0, r).view(B, -1, KV, D).transpose(1, 2)  # [B, KV, S, D]
        values = self.v[layer].index_select(0, r).view(B, -1, KV, D).transpose(1, 2)
        return keys.to(k.dtype), values.to(v.dtype), self.key_pos

    def decode(self, layer: int, qkv: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor, window: int | None):
        if not self.native or qkv.dtype != torch.float32:
            return None
        H, KV, D = self.heads
        B, S = self.read_slots.shape
        qkv, cos, sin = qkv.contiguous(), cos.float().contiguous(), sin.float().contiguous()
        out = torch.empty(B, H * D)
        k, v = self.k[layer], self.v[layer]
        lib().zen_attn_decode(qkv.data_ptr(), B, H, KV, D, cos.data_ptr(), sin.data_ptr(), k.data_ptr(),
                              v.data_ptr(), k.dtype == torch.bfloat16, self.read_slots.data_ptr(), S,
                              self.ctx.data_ptr(), window or 0, D ** -0.5, out.data_ptr())
        return out


class Runner:
    def __init__(self, model: Transformer, num_blocks: int, block_size: int, dtype: torch.dtype, device):
        self.model, self.block_size, self.device = model, block_size, torch.device(device)
        native = self.device.type == "cpu" and dtype in (torch.float32, torch.bfloat16) and lib() is not None
        self.cache = PagedKVCache(model.config, num_blocks, block_size, dtype, device, native)

    @torch.inference_mode()
    def run(self, batch: Batch) -> torch.Tensor:
        """Compute every scheduled chunk; return float32 logits [n, V] for batch.sampled, in order."""
        entries = batch.seqs
        B = len(entries)
        T = max(e.num_tokens for e in entries)
        S = max(e.context_len for e in entries)
        bs, scratch = self.block_size, self.cache.scratch
        tokens = torch.zeros(B, T, dtype=torch.long)
        positions = torch.zeros(B, T, dtype=torch.long)
        write = torch.full((B, T), scratch, dtype=torch.long)
        read = torch.full((B, S), scratch, dtype=torch.long)
        key_pos = torch.full((B, S), FAR, dtype=torch.long)
        for i, e in enumerate(entries):
            n, ctx = e.num_tokens, e.context_len
            tokens[i, :n] = torch.tensor(e.token_ids)
            positions[i, :n] = torch.arange(e.start, e.start + n)
            write[i, :n] = torch.tensor(e.slot_mapping)
            table = torch.tensor(e.block_table, dtype=torch.long)
            p = torch.arange(ctx)
            read[i, :ctx] = table[p // bs] * bs + p % bs
            key_pos[i, :ctx] = p
        last = torch.tensor([e.num_tokens - 1 for e in entries])
        ctx = torch.tensor([e.context_len for e in entries])
        dev = self.device
        cache = self.cache.bind(write.to(dev), read.to(dev), key_pos.to(dev), ctx.to(dev))
        logits = self.model(tokens.to(dev), positions.to(dev), cache, logit_index=last.to(dev))  # [B, V]
        rows = [i for i, e in enumerate(entries) if e.sample]
        return logits[rows].float()
