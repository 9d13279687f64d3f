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

FAR = 1 << 30  # the position given to padding keys: above every query, so always masked


class PagedKVCache:
    """K/V for num_blocks * block_size token slots per layer, [slots + 1, KV, D] (the last is scratch)."""

    def __init__(self, c: Config, num_blocks: int, block_size: int, dtype: torch.dtype, device):
        self.scratch = num_blocks * block_size
        shape = (self.scratch + 1, c.num_kv_heads, c.head_dim)
        # empty, not zeros: only written slots are read, and padding reads the scratch slot, which
        # starts at zero and afterwards only ever holds (finite) padding keys: masked, weight 0
        self.k = [torch.empty(shape, dtype=dtype, device=device) for _ in range(c.num_layers)]
        self.v = [torch.empty(shape, dtype=dtype, device=device) for _ in range(c.num_layers)]
        for t in self.k + self.v:
            t[self.scratch].zero_()
        self.write_slots = self.read_slots = self.key_pos = None

    def bind(self, write_slots: torch.Tensor, read_slots: torch.Tensor, key_pos: torch.Tensor) -> PagedKVCache:
        """This step's layout: where each new token goes [B, T], which slots each row reads [B, S]."""
        self.write_slots, self.read_slots, self.key_pos = write_slots, read_slots, key_pos
        return self

    def update(self, layer: int, positions: torch.Tensor, k: torch.Tensor, v: torch.Tensor):
        B, KV, T, D = k.shape
        w = self.write_slots.reshape(-1)
        self.k[layer][w] = k.transpose(1, 2).reshape(B * T, KV, D)
        self.v[layer][w] = v.transpose(1, 2).reshape(B * T, KV, D)
        keys = self.k[layer][self.read_slots].permute(0, 2, 1, 3)  # [B, S, KV, D] -> [B, KV, S, D]
        values = self.v[layer][self.read_slots].permute(0, 2, 1, 3)
        return keys, values, self.key_pos


class Runner:
    def __init__(self, model: Transformer, num_blocks: int, block_size: int, dtype: torch.dtype, device):
        self.model, self.block_size, self.device = model, block_size, torch.device(device)
        self.cache = PagedKVCache(model.config, num_blocks, block_size, dtype, device)

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
        dev = self.device
        cache = self.cache.bind(write.to(dev), read.to(dev), key_pos.to(dev))
        logits = self.model(tokens.to(dev), positions.to(dev), cache, logit_index=last.to(dev))  # [B, V]
        rows = [i for i, e in enumerate(entries) if e.sample]
        return logits[rows].float()
