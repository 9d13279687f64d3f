"""A stand-in for engine/sequence.py's Sequence, for the pure-Python block manager and scheduler tests."""

from dataclasses import dataclass, field

EOS = 0


@dataclass
class Params:
    max_tokens: int = 8


@dataclass
class Seq:
    """A stand-in for engine/sequence.py's Sequence: finishes at max_tokens (or at EOS when use_eos)."""

    seq_id: int
    prompt_ids: list[int]
    params: Params = field(default_factory=Params)
    use_eos: bool = False
    output_ids: list[int] = field(default_factory=list)
    block_table: list[int] = field(default_factory=list)
    num_cached_tokens: int = 0
    num_computed_tokens: int = 0
    status: object = None
    rope_epoch: int = 0

    @property
    def all_ids(self) -> list[int]:
        return self.prompt_ids + self.output_ids

    @property
    def finished(self) -> bool:
        eos = self.use_eos and bool(self.output_ids) and self.output_ids[-1] == EOS
        return eos or len(self.output_ids) >= self.params.max_tokens

    def append(self, token: int) -> str:
        self.output_ids.append(token)
        return f"<{token}>"
