"""Rank 0's forward inputs, broadcast to the other ranks so they run the same forward on their shards.

Rank 0's model gets a forward pre-hook (Leader) that sends, before each forward, a fixed header (what
runs, the shapes) and one int64 payload: tokens, positions and, with the paged cache, the layout the
runner bound for this step (write slots, block tables, key positions, context and rope lengths) and
the rows whose logits are wanted. recv() is the other side. STOP ends a worker's loop.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass

import torch
import torch.distributed as dist

FORWARD, STOP = 1, 0
HEADER = 8  # [op, B, T, S, nb, cached, has_rope, has_index]


@dataclass(slots=True)
class Step:
    tokens: torch.Tensor  # [B, T]
    positions: torch.Tensor  # [B, T]
    logit_index: torch.Tensor | None  # [B]
    layout: tuple | None  # PagedKVCache.bind's arguments, or None: a forward without the cache


def send(tokens: torch.Tensor, positions: torch.Tensor, cache, logit_index: torch.Tensor | None) -> None:
    """Broadcast one forward's inputs from rank 0 (cache: a bound PagedKVCache, or None)."""
    B, T = tokens.shape
    positions = positions.expand(B, T)
    parts = [tokens, positions]
    S = nb = 0
    rope = None
    if cache is not None:
        S, nb, rope = cache.key_pos.shape[1], cache.tables.shape[1], cache.rope_lengths
        parts += [cache.write_slots, cache.tables, cache.key_pos, cache.ctx] + ([rope] if rope is not None else [])
    if logit_index is not None:
        parts.append(logit_index)
    dev = tokens.device
    head = torch.tensor([FORWARD, B, T, S, nb, cache is not None, rope is not None, logit_index is not None],
                        dtype=torch.int64, device=dev)
    dist.broadcast(head, 0)
    dist.broadcast(torch.cat([t.reshape(-1).to(device=dev, dtype=torch.int64) for t in parts]), 0)


def send_stop(device: torch.device) -> None:
    dist.broadcast(torch.tensor([STOP] + [0] * (HEADER - 1), dtype=torch.int64, device=device), 0)


def recv(device: torch.device) -> Step | None:
    """The next forward's inputs from rank 0; None when rank 0 says stop."""
    head = torch.empty(HEADER, dtype=torch.int64, device=device)
    dist.broadcast(head, 0)
    op, B, T, S, nb, cached, has_rope, has_index = head.tolist()
    if op == STOP:
        return None
    sizes = [B * T, B * T] + ([B * T, B * nb, B * S, B] + [B] * has_rope if cached else []) + [B] * has_index
    flat = torch.empty(sum(sizes), dtype=torch.int64, device=device)
    dist.broadcast(flat, 0)
    parts = list(flat.split(sizes))
    tokens, positions = parts.pop(0).view(B, T), parts.pop(0).view(B, T)
    layout = None
    if cached:
        write, tables, key_pos, ctx = parts.pop(0).view(B, T), parts.pop(0).view(B, nb), parts.pop(0).view(B, S), \
            parts.pop(0)
        layout = (write, tables, key_pos, ctx, parts.pop(0) if has_rope else None)
    return Step(tokens, positions, parts.pop(0) if has_index else None, layout)


class Leader:
    """Rank 0's hooks: broadcast each forward's inputs before it runs. A lock spans the forward (released by
    an always-called forward hook), so stopping the workers never interleaves with a forward's collectives."""

    def __init__(self, model: torch.nn.Module):
        self.lock, self.stopped, self.owner = threading.Lock(), False, None
        model.register_forward_pre_hook(self._pre, with_kwargs=True)
        model.register_forward_hook(self._post, always_call=True)

    def _pre(self, module, args: tuple, kwargs: dict) -> None:
        named = dict(zip(("tokens", "positions", "cache", "logit_index"), args)) | kwargs
        self.lock.acquire()
        try:
            if self.stopped:  # the other ranks are gone
                raise RuntimeError("the tensor-parallel group is closed")
            send(named["tokens"], named["positions"], named.get("cache"), named.get("logit_index"))
        except BaseException:
            self.lock.release()
            raise
        self.owner = threading.get_ident()

    def _post(self, module, args, output) -> None:
        if self.owner == threading.get_ident():  # this thread's forward (not one whose pre-hook failed)
            self.owner = None
            self.lock.release()

    def stop(self, device: torch.device) -> None:
        with self.lock:
            self.stopped = True
            send_stop(device)
