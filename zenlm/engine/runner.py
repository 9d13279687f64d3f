"""Runner: a scheduled Batch -> tensors -> model forwards -> logits of the sampled rows.

PagedKVCache holds the K/V tensors of every physical block (a token's slot is block_id * block_size
+ offset) plus a scratch block that rows with fewer blocks than others in a batch point at.
The block bookkeeping is kv_cache.BlockManager's; the choice of what runs is the scheduler's.
"""

from __future__ import annotations

import torch

import zenlm.kernels as kernels
from zenlm.config import Config
from zenlm.engine.cuda_graphs import DecodeGraphs, graph_safe
from zenlm.engine.scheduler import Batch
from zenlm.model import Transformer

FAR = 1 << 30  # the position given to padding keys: above every query, so always masked


class PagedKVCache:
    """K/V for num_blocks blocks of block_size tokens per layer, plus one scratch block.

    K is [blocks + 1, KV, D/P, bs, P] (transposed inside a block), V is [blocks + 1, KV, bs/P, D, P],
    with P = 2 values side by side in a bfloat16 cache and 1 in a float32 one: the layout zenlm's C
    attention kernel (kernels/csrc/attention.c) reads directly, one row's own blocks at a time, with no
    gather, padding or mask. The torch path (off the CPU, or `native` off) gathers
    each row's blocks into [B, KV, S, D] and masks what lies past the row's context.
    """

    def __init__(self, c: Config, num_blocks: int, block_size: int, dtype: torch.dtype, device, native: bool):
        KV, D, bs = c.num_kv_heads, c.head_dim, block_size
        P = 2 if dtype == torch.bfloat16 and bs % 2 == 0 and D % 2 == 0 else 1
        # empty, not zeros (untouched pages cost no memory): the torch path zeroes what it gathers from
        # past a row's context before attending (masked weights are 0, and 0 * NaN would not be)
        blocks, layers = num_blocks + 1, range(c.num_layers)
        self.k = [torch.empty(blocks, KV, D // P, bs, P, dtype=dtype, device=device) for _ in layers]
        self.v = [torch.empty(blocks, KV, bs // P, D, P, dtype=dtype, device=device) for _ in layers]
        self.scratch, self.block_size, self.pairs = num_blocks, bs, P
        self.heads, self.native = (c.num_heads, KV, D), native and (P == 2) == (dtype == torch.bfloat16)
        self.write_slots = self.tables = self.key_pos = self.ctx = self.rope_lengths = None

    def bind(self, write_slots: torch.Tensor, tables: torch.Tensor, key_pos: torch.Tensor,
             ctx: torch.Tensor, rope_lengths: torch.Tensor | None = None) -> PagedKVCache:
        """This step's layout: the slot of each new token [B, T] (block * bs + offset), each row's
        blocks [B, nb], the position of each key they hold up to the longest context [B, S] (FAR past
        the row's own), each row's context length [B] and the length its rope follows (model.Cache)."""
        self.write_slots, self.tables, self.key_pos, self.ctx = write_slots, tables, key_pos, ctx
        self.rope_lengths = rope_lengths
        return self

    def update(self, layer: int, positions: torch.Tensor, k: torch.Tensor, v: torch.Tensor):
        B, KV, T, D = k.shape
        P, bs = self.pairs, self.block_size
        w = self.write_slots.reshape(-1)
        blk, off = w // bs, w % bs
        K, V = self.k[layer], self.v[layer]
        K[blk, :, :, off] = k.transpose(1, 2).reshape(B * T, KV, D // P, P).to(K.dtype)
        V[blk, :, off // P, :, off % P] = v.transpose(1, 2).reshape(B * T, KV, D).to(V.dtype)
        t = self.tables
        S = self.key_pos.shape[1]  # the longest context: a lone row attends to exactly its own keys
        # [B, nb, KV, D/P, bs, P] -> [B, KV, nb, bs, D/P, P] and [B, nb, KV, bs/P, D, P] -> [B, KV, nb, bs/P, P, D]
        keys = K[t].permute(0, 2, 1, 4, 3, 5).reshape(B, KV, -1, D)[:, :, :S]
        values = V[t].permute(0, 2, 1, 3, 5, 4).reshape(B, KV, -1, D)[:, :, :S]
        pad = (self.key_pos == FAR)[:, None, :, None]  # past a row's context: never-written memory
        return keys.masked_fill_(pad, 0).to(k.dtype), values.masked_fill_(pad, 0).to(v.dtype), self.key_pos

    def attend(self, layer: int, qkv: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor, window: int | None):
        """Rope, cache write and attention in the C kernel, for rows that all add T tokens (a decode
        batch, or one prefill chunk: the runner never pads under `native`); None: take torch's path."""
        if not self.native or qkv.dtype != torch.float32:
            return None
        qkv, cos, sin = qkv.contiguous(), cos.float().contiguous(), sin.float().contiguous()
        return kernels.attention(qkv, cos, sin, self.k[layer], self.v[layer], self.tables, self.ctx, self.heads,
                                 self.block_size, window or 0, self.heads[2] ** -0.5)


class Runner:
    def __init__(self, model: Transformer, num_blocks: int, block_size: int, dtype: torch.dtype, device,
                 cuda_graphs: bool = True):
        self.model, self.block_size, self.device = model, block_size, torch.device(device)
        native = self.device.type == "cpu" and dtype in (torch.float32, torch.bfloat16) and kernels.available()
        self.cache = PagedKVCache(model.config, num_blocks, block_size, dtype, device, native)
        self.graphs = DecodeGraphs(self) if cuda_graphs and graph_safe(model, self.device) else None

    @torch.inference_mode()
    def run(self, batch: Batch) -> torch.Tensor:
        """Compute every scheduled chunk; return float32 logits [n, V] for batch.sampled, in order: one row
        per entry, and for a speculative entry (num_draft k) k + 1 rows, one per token it fed.

        The decode rows (one token each) run together as one forward, and so do speculative rows of the same
        length; each prefill chunk runs on its own, so no row is ever padded to another's length."""
        entries = batch.seqs
        decodes = [i for i, e in enumerate(entries) if e.num_tokens == 1]
        drafted: dict[int, list[int]] = {}
        for i, e in enumerate(entries):
            if e.num_draft:
                drafted.setdefault(e.num_tokens, []).append(i)
        groups = ([decodes] if decodes else []) + list(drafted.values())
        groups += [[i] for i, e in enumerate(entries) if e.num_tokens > 1 and not e.num_draft]
        sampled = [i for i, e in enumerate(entries) if e.sample]
        if len(groups) == 1 and len(sampled) == len(entries) and not drafted:  # a plain decode step: no copies
            return self._forward(entries).float()
        logits: list[torch.Tensor | None] = [None] * len(entries)
        for g in groups:
            every = entries[g[0]].num_draft > 0
            for i, rows in zip(g, self._forward([entries[i] for i in g], every)):
                logits[i] = rows if every else rows[None]  # [rows, V]
        if not sampled:  # only partial prefill chunks this step
            return torch.empty(0, self.model.config.vocab_size)
        return torch.cat([logits[i] for i in sampled]).float()

    def _forward(self, entries: list, every: bool = False) -> torch.Tensor:
        """One model forward over rows that all add the same number of tokens: logits [B, V] of each
        row's last token, or with `every` of all of them [B, T, V] (a decode step on CUDA replays a captured
        graph: cuda_graphs.py)."""
        if self.graphs is not None and entries[0].num_tokens == 1 and not every:
            out = self.graphs.forward(entries)
            if out is not None:
                return out
        return self.call({k: v.to(self.device) for k, v in self.inputs(entries).items()}, every)

    def inputs(self, entries: list, rows: int = 0, blocks: int = 0) -> dict[str, torch.Tensor]:
        """A forward's input tensors, on the CPU. rows and blocks pad the batch and each row's block table to a
        fixed shape (cuda_graphs.py): a padding row adds one token at the scratch block's first slot and
        sees only that key; padded keys lie at FAR, so they are masked."""
        B, bs = len(entries), self.block_size
        T = entries[0].num_tokens
        assert all(e.num_tokens == T for e in entries), "rows of one forward add the same number of tokens"
        pad, scratch, ctx_lens = max(rows - B, 0), self.cache.scratch, [e.context_len for e in entries]
        used = [-(-c // bs) for c in ctx_lens]  # blocks each row's context fills; the rest point at scratch
        nb = max(blocks, *used)
        S = blocks * bs if blocks else max(ctx_lens)
        fill = [[0] * T] * pad
        key_pos = torch.arange(S).repeat(B + pad, 1)
        key_pos[key_pos >= torch.tensor(ctx_lens + [1] * pad)[:, None]] = FAR  # past a row's own context
        return {  # one tensor per field, built from lists
            "tokens": torch.tensor([e.token_ids for e in entries] + fill),  # [B, T]
            "positions": torch.tensor([list(range(e.start, e.start + T)) for e in entries] + fill),
            "write": torch.tensor([e.slot_mapping for e in entries] + [[scratch * bs] * T] * pad),
            "tables": torch.tensor([e.block_table[:u] + [scratch] * (nb - u) for e, u in zip(entries, used)]
                                   + [[scratch] * nb] * pad),
            "key_pos": key_pos,
            "ctx": torch.tensor(ctx_lens + [1] * pad),
            # a prefill chunk turns as its whole prompt
            "rope": torch.tensor([len(e.seq.all_ids) for e in entries] + [1] * pad),
            "last": torch.full((B + pad,), T - 1),
        }

    def call(self, x: dict[str, torch.Tensor], every: bool = False) -> torch.Tensor:
        """The model on inputs() already on the device: logits [B, V], or with `every` [B, T, V]."""
        cache = self.cache.bind(x["write"], x["tables"], x["key_pos"], x["ctx"], x["rope"])
        return self.model(x["tokens"], x["positions"], cache, logit_index=None if every else x["last"])
