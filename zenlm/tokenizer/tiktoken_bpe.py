"""Qwen v1's tokenizer: the byte-level BPE ranks of `qwen.tiktoken`, run by the `tiktoken` package.

`TiktokenBPE` reads the file (one `base64(token bytes) rank` line per token), puts v1's 208 special
tokens right after the ranks (<|endoftext|>, <|im_start|>, <|im_end|>, <|extra_0|>..<|extra_204|>: ids
151643.. for the released file) and answers the calls bpe.Tokenizer makes on its backend, so one
Tokenizer class serves both formats. Text is NFC-normalized first, as v1's tokenizer does. It renders no
chats (chat.py) and cannot give a tokenizer.json (grammar-constrained decoding needs one).
"""

from __future__ import annotations

import base64
import unicodedata
from dataclasses import dataclass
from pathlib import Path

import tiktoken

from zenlm.tokenizer.bpe import QWEN2_SPLIT, bytes_to_unicode

FILE = "qwen.tiktoken"
# v1's special tokens, in id order after the last rank (Qwen-Agent tokenization_qwen.py; models.md section 5).
SPECIALS = ("<|endoftext|>", "<|im_start|>", "<|im_end|>", *(f"<|extra_{i}|>" for i in range(205)))
# v1's pre-tokenizer regex is Qwen2's (models.md section 5: the same string as tokenization_qwen.py's PAT_STR).
PATTERN = QWEN2_SPLIT


def read_ranks(path: str | Path) -> dict[bytes, int]:
    """{token bytes: rank} from a .tiktoken file; ranks must be 0..n-1, each once."""
    path = Path(path)
    ranks: dict[bytes, int] = {}
    for n, line in enumerate(path.read_bytes().splitlines(), 1):
        if not line.strip():
            continue
        try:
            token, rank = line.split()
            ranks[base64.b64decode(token, validate=True)] = int(rank)
        except ValueError:
            raise ValueError(f"{path}:{n}: not a 'base64-token rank' line: {line[:60]!r}") from None
    if sorted(ranks.values()) != list(range(len(ranks))):
        raise ValueError(f"{path}: ranks are not 0..{len(ranks) - 1}, each once")
    return ranks


@dataclass(slots=True)
class Encoded:
    """What tokenizers.Tokenizer.encode returns, as far as bpe.Tokenizer reads it."""

    ids: list[int]
    offsets: list[tuple[int, int]]


class TiktokenBPE:
    """A tiktoken Encoding behind the backend calls of bpe.Tokenizer (encode, decode, token <-> id)."""

    def __init__(self, ranks: dict[bytes, int], name: str = "qwen"):
        n = len(ranks)
        self.specials = {tok: n + i for i, tok in enumerate(SPECIALS)}
        self.encoding = tiktoken.Encoding(name, pat_str=PATTERN, mergeable_ranks=ranks, special_tokens=self.specials)
        self.num_ranks = n
        self._spell = bytes_to_unicode()
        self._unspell = {ch: b for b, ch in self._spell.items()}
        self._special_names = {i: tok for tok, i in self.specials.items()}

    @classmethod
    def from_file(cls, path: str | Path) -> TiktokenBPE:
        return cls(read_ranks(path))

    # ---- what bpe.Tokenizer calls ---------------------------------------------------------------
    def encode(self, text: str, add_special_tokens: bool = False) -> Encoded:
        """Ids of NFC(text), special-token strings as their ids, with each token's character span in
        NFC(text) (the same as in text unless normalization changed it)."""
        text = unicodedata.normalize("NFC", text)
        ids = self.encoding.encode(text, allowed_special="all", disallowed_special=())
        _, starts = self.encoding.decode_with_offsets(ids)
        ends = starts[1:] + [len(text)]
        return Encoded(ids, list(zip(starts, ends)))

    def decode(self, ids: list[int], skip_special_tokens: bool = False) -> str:
        """Text of ids; ids past the vocabulary (an embedding's padding rows) are dropped, as are the
        special tokens with skip_special_tokens; bytes that are not UTF-8 become U+FFFD."""
        top = self.num_ranks if skip_special_tokens else self.get_vocab_size()
        return self.encoding.decode([i for i in ids if 0 <= i < top], errors="replace")

    def token_to_id(self, token: str) -> int | None:
        """The id of a special token, or of a token spelled in GPT-2's byte alphabet (as in tokenizer.json)."""
        if token in self.specials:
            return self.specials[token]
        if not all(ch in self._unspell for ch in token):
            return None
        try:
            return self.encoding.encode_single_token(bytes(self._unspell[ch] for ch in token))
        except KeyError:
            return None

    def id_to_token(self, token_id: int) -> str | None:
        if token_id in self._special_names:
            return self._special_names[token_id]
        if not 0 <= token_id < self.num_ranks:
            return None
        return "".join(self._spell[b] for b in self.encoding.decode_single_token_bytes(token_id))

    def get_vocab_size(self, with_added_tokens: bool = True) -> int:
        return self.num_ranks + (len(self.specials) if with_added_tokens else 0)

    def to_str(self) -> str:
        raise ValueError("a tiktoken (Qwen v1) tokenizer has no tokenizer.json form; "
                         "grammar-constrained decoding is not available for it")

    def save(self, path: str | Path) -> None:
        """Write the ranks as a .tiktoken file (specials are implied by the rank count)."""
        ranks = self.encoding._mergeable_ranks  # tiktoken keeps no public accessor for them
        lines = (base64.b64encode(tok) + b" " + str(rank).encode() for tok, rank in
                 sorted(ranks.items(), key=lambda kv: kv[1]))
        Path(path).write_bytes(b"\n".join(lines) + b"\n")
