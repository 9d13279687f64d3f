"""TPPlan: which heads, MLP columns and vocabulary rows one rank of a tensor-parallel group holds.

Megatron's split: q/k/v and gate/up by output rows (heads, MLP columns), o_proj and down_proj by input
columns. KV heads are partitioned when num_kv_heads % tp == 0, else replicated (tp % num_kv_heads == 0:
every rank keeps the one KV head its query heads read). An invalid degree is one ValueError.
Pure arithmetic on the Config: no torch.distributed.
"""

from __future__ import annotations

from dataclasses import dataclass

from zenlm.config import Config


@dataclass(slots=True, frozen=True)
class TPPlan:
    tp: int
    rank: int
    heads: int  # query heads on this rank
    kv_heads: int  # KV heads on this rank (its share, or one replicated head)
    group: int  # query heads per KV head (the model's, GQA)
    inter: int  # MLP columns on this rank
    vocab: int  # the full vocabulary
    vocab_rows: int  # the head's rows per rank (the last rank may hold fewer)

    @property
    def head_range(self) -> range:
        return range(self.rank * self.heads, (self.rank + 1) * self.heads)

    @property
    def kv_range(self) -> range:
        """The KV heads this rank keeps: its share, or (replicated) the one its query heads map to."""
        first = self.head_range.start // self.group
        return range(first, first + self.kv_heads)

    @property
    def inter_range(self) -> range:
        return range(self.rank * self.inter, (self.rank + 1) * self.inter)

    @property
    def vocab_range(self) -> range:
        return range(min(self.rank * self.vocab_rows, self.vocab), min((self.rank + 1) * self.vocab_rows, self.vocab))

    def local_config(self, c: Config) -> Config:
        """The config one rank's shard runs as: its own head and MLP widths (the KV cache follows it)."""
        return c.replace(num_heads=self.heads, num_kv_heads=self.kv_heads, intermediate_size=self.inter)


def check(c: Config, tp: int) -> None:
    """ValueError unless `tp` ranks can split this model (Megatron's constraints, with GQA's)."""
    if isinstance(tp, bool) or not isinstance(tp, int) or tp < 1:
        raise ValueError(f"tp must be a whole number >= 1, got {tp!r}")
    if tp == 1:
        return
    if c.is_moe:
        raise ValueError(f"tensor parallelism covers dense models; {c.name} is a mixture of experts")
    h, kv = c.num_heads, c.num_kv_heads
    if h % tp:
        raise ValueError(f"tp={tp} does not divide the {h} attention heads of {c.name}")
    if kv % tp and tp % kv:
        raise ValueError(f"tp={tp} neither divides nor is a multiple of the {kv} KV heads of {c.name}")
    if c.intermediate_size % tp:
        raise ValueError(f"tp={tp} does not divide the MLP width {c.intermediate_size} of {c.name}")


def plan(c: Config, tp: int, rank: int) -> TPPlan:
    check(c, tp)
    kv = c.num_kv_heads // tp if c.num_kv_heads % tp == 0 else 1
    return TPPlan(tp, rank, c.num_heads // tp, kv, c.num_heads // c.num_kv_heads, c.intermediate_size // tp,
                  c.vocab_size, -(-c.vocab_size // tp))
