"""Training data: files -> token rows -> batches, for pretraining (packed text), SFT (chat) and DPO (pairs).

Pretraining packs documents end to end into rows of seq_len tokens; SFT packs rendered chats first-fit
decreasing. Either way each token carries its document id and a position that restarts per document,
so attention is block-causal and labels never cross a document. DPO rows are padded pairs. The Loader
walks rows in a seeded order and its state (epoch, cursor) is saved with checkpoints for exact resume.
"""

from __future__ import annotations

import json
import random
from dataclasses import dataclass, field
from pathlib import Path

import torch

IGNORE = -100  # label of a token that carries no loss
TEXT_SUFFIXES = (".txt", ".md", ".py", ".rst", ".text")


@dataclass(slots=True)
class Row:
    """One training row: token ids, labels (IGNORE = no loss), positions and document ids, each [T]."""
    tokens: list[int]
    labels: list[int]
    positions: list[int]
    docs: list[int]


@dataclass(slots=True)
class Batch:
    tokens: torch.Tensor  # [B, T]
    labels: torch.Tensor  # [B, T], IGNORE where no loss
    positions: torch.Tensor  # [B, T], restart at 0 for every document
    docs: torch.Tensor | None  # [B, T] document ids; None = one causal sequence per row
    pairs: int = 0  # DPO: rows [:pairs] are chosen, [pairs:] rejected

    def to(self, device) -> Batch:
        d = None if self.docs is None else self.docs.to(device)
        return Batch(self.tokens.to(device), self.labels.to(device), self.positions.to(device), d, self.pairs)

    @property
    def valid_tokens(self) -> int:
        return int((self.labels != IGNORE).sum())


# ---- reading files ---------------------------------------------------------------------------
def expand_files(paths: list[str | Path]) -> list[Path]:
    """Files as given; directories expand (sorted, recursively) to their text and jsonl files."""
    out: list[Path] = []
    for p in map(Path, paths):
        if p.is_dir():
            out += sorted(f for f in p.rglob("*") if f.is_file() and f.suffix in (*TEXT_SUFFIXES, ".jsonl"))
        elif p.is_file():
            out.append(p)
        else:
            raise ValueError(f"data file {p} does not exist")
    if not out:
        raise ValueError(f"no data files found in {[str(p) for p in paths]}")
    return out


def read_jsonl(path: Path) -> list[dict]:
    rows = []
    for n, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
        if line.strip():
            try:
                rows.append(json.loads(line))
            except json.JSONDecodeError as e:
                raise ValueError(f"{path}:{n}: not JSON ({e.msg})") from None
    return rows


def read_documents(paths: list[str | Path]) -> list[str]:
    """Pretraining documents: a text file is one document, a jsonl line's "text" is one document."""
    docs = []
    for f in expand_files(paths):
        if f.suffix == ".jsonl":
            for n, rec in enumerate(read_jsonl(f), 1):
                if not isinstance(rec.get("text"), str):
                    raise ValueError(f"{f}:{n}: a pretraining jsonl line needs a string 'text' field")
                docs.append(rec["text"])
        else:
            docs.append(f.read_text(encoding="utf-8", errors="replace"))
    return [d for d in docs if d]


# ---- pretraining -----------------------------------------------------------------------------
def pack_documents(docs: list[list[int]], seq_len: int, eos_id: int) -> list[Row]:
    """Concatenate documents (each followed by eos) and split into rows of seq_len tokens.

    A label is the next token of the same document (the eos of a document predicts nothing);
    a document cut by a row boundary continues in the next row as a new segment at position 0.
    The last, partial row is dropped.
    """
    flat: list[int] = []
    ids: list[int] = []
    for d, doc in enumerate(docs):
        flat += doc + [eos_id]
        ids += [d] * (len(doc) + 1)
    rows = []
    for start in range(0, len(flat) - seq_len + 1, seq_len):
        end = start + seq_len
        toks, doc = flat[start:end], ids[start:end]
        nxt = flat[start + 1:end + 1] + [IGNORE] * (end + 1 - len(flat))
        nxt_doc = ids[start + 1:end + 1] + [-1] * (end + 1 - len(flat))
        labels = [t if a == b else IGNORE for t, a, b in zip(nxt, doc, nxt_doc)]
        positions, pos = [], 0
        for i in range(seq_len):
            pos = 0 if i == 0 or doc[i] != doc[i - 1] else pos + 1
            positions.append(pos)
        rows.append(Row(toks, labels, positions, doc))
    return rows


def pretrain_rows(paths: list[str | Path], tokenizer, seq_len: int) -> list[Row]:
    eos = tokenizer.token_to_id("<|endoftext|>")
    eos = tokenizer.eos_token_ids[0] if eos is None else eos
    rows = pack_documents([tokenizer.encode(d) for d in read_documents(paths)], seq_len, eos)
    if not rows:
        raise ValueError(f"the data holds fewer than seq_len={seq_len} tokens")
    return rows


# ---- SFT -------------------------------------------------------------------------------------
def sft_example(tokenizer, record: dict) -> tuple[list[int], list[int]]:
    """(tokens, labels) of one chat: labels are the next token where it is an assistant token."""
    messages = record.get("messages")
    if not isinstance(messages, list) or not messages:
        raise ValueError("an SFT record needs a non-empty 'messages' list (OpenAI format)")
    ids, mask = tokenizer.render_ids(messages, record.get("tools"))
    if not any(mask):
        raise ValueError("an SFT record has no assistant tokens to learn from")
    labels = [t if m else IGNORE for t, m in zip(ids[1:], mask[1:])] + [IGNORE]
    return ids, labels


def pack_examples(examples: list[tuple[list[int], list[int]]], seq_len: int, pad_id: int) -> list[Row]:
    """First-fit decreasing: longest examples first, each into the first row with room; truncate to seq_len."""
    order = sorted(range(len(examples)), key=lambda i: -len(examples[i][0]))
    bins: list[list[int]] = []
    room: list[int] = []
    for i in order:
        n = min(len(examples[i][0]), seq_len)
        j = next((b for b, r in enumerate(room) if r >= n), None)
        if j is None:
            bins.append([])
            room.append(seq_len)
            j = len(bins) - 1
        bins[j].append(i)
        room[j] -= n
    rows = []
    for members in bins:
        toks, labels, pos, docs = [], [], [], []
        for d, i in enumerate(members):
            t, lab = examples[i][0][:seq_len], examples[i][1][:seq_len]
            toks += t
            labels += lab
            pos += list(range(len(t)))
            docs += [d] * len(t)
        pad = seq_len - len(toks)  # padding is its own document and carries no loss
        rows.append(Row(toks + [pad_id] * pad, labels + [IGNORE] * pad, pos + list(range(pad)),
                        docs + [len(members)] * pad))
    return rows


def sft_rows(paths: list[str | Path], tokenizer, seq_len: int) -> list[Row]:
    examples = []
    for f in expand_files(paths):
        for n, rec in enumerate(read_jsonl(f), 1):
            try:
                examples.append(sft_example(tokenizer, rec))
            except ValueError as e:
                raise ValueError(f"{f}:{n}: {e}") from None
    return pack_examples(examples, seq_len, _pad_id(tokenizer))


def _pad_id(tokenizer) -> int:
    return tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_ids[0]


# ---- DPO -------------------------------------------------------------------------------------
def _answer(x, key: str) -> list[dict]:
    if isinstance(x, str):
        return [{"role": "assistant", "content": x}]
    if isinstance(x, dict):
        return [x]
    if isinstance(x, list) and x:
        return x
    raise ValueError(f"a DPO record's {key!r} must be a string, a message or a list of messages")


def dpo_pair(tokenizer, record: dict, seq_len: int) -> tuple[Row, Row]:
    """Chosen and rejected rows; labels only on the answer (what follows the prompt)."""
    prompt = record.get("prompt", record.get("messages"))
    if isinstance(prompt, str):
        prompt = [{"role": "user", "content": prompt}]
    if not isinstance(prompt, list) or not prompt:
        raise ValueError("a DPO record needs 'prompt' (a string or a list of messages)")
    tools = record.get("tools")
    n_prompt = len(tokenizer.encode(tokenizer.apply_chat(prompt, tools, add_generation_prompt=False)))
    rows = []
    for key in ("chosen", "rejected"):
        ids, mask = tokenizer.render_ids(prompt + _answer(record.get(key), key), tools)
        mask = [0] * n_prompt + mask[n_prompt:]
        labels = [t if m else IGNORE for t, m in zip(ids[1:], mask[1:])] + [IGNORE]
        ids, labels = ids[:seq_len], labels[:seq_len]
        if all(lab == IGNORE for lab in labels):
            raise ValueError(f"the {key} answer is empty or cut off by seq_len={seq_len}")
        pad = seq_len - len(ids)
        rows.append(Row(ids + [_pad_id(tokenizer)] * pad, labels + [IGNORE] * pad,
                        list(range(seq_len)), [0] * seq_len))
    return rows[0], rows[1]


def dpo_rows(paths: list[str | Path], tokenizer, seq_len: int) -> list[tuple[Row, Row]]:
    pairs = []
    for f in expand_files(paths):
        for n, rec in enumerate(read_jsonl(f), 1):
            try:
                pairs.append(dpo_pair(tokenizer, rec, seq_len))
            except ValueError as e:
                raise ValueError(f"{f}:{n}: {e}") from None
    return pairs


# ---- batching --------------------------------------------------------------------------------
def collate(rows: list[Row], packed: bool = True) -> Batch:
    t = lambda key: torch.tensor([getattr(r, key) for r in rows], dtype=torch.long)  # noqa: E731
    return Batch(t("tokens"), t("labels"), t("positions"), t("docs") if packed else None)


def collate_pairs(pairs: list[tuple[Row, Row]]) -> Batch:
    b = collate([p[0] for p in pairs] + [p[1] for p in pairs], packed=False)
    b.pairs = len(pairs)
    return b


@dataclass(slots=True)
class Loader:
    """Rows in a seeded order, epoch after epoch; each step takes `per_step` items, rank by rank.

    The position (epoch, cursor) counts items of the whole run, so a checkpoint resumes at the same
    item on any number of ranks.
    """
    items: list
    per_step: int  # items per optimizer step over all ranks and micro-batches
    seed: int = 0
    shuffle: bool = True
    epoch: int = 0
    cursor: int = 0
    _order: list[int] = field(default_factory=list)

    def __post_init__(self) -> None:
        if not self.items:
            raise ValueError("no training data")
        self._order = self._make_order()

    def _make_order(self) -> list[int]:
        order = list(range(len(self.items)))
        if self.shuffle:
            random.Random(self.seed * 1_000_003 + self.epoch).shuffle(order)
        return order

    def next_step(self) -> list:
        """The items of the next optimizer step (all ranks, all micro-batches), in a fixed order."""
        out = []
        while len(out) < self.per_step:
            if self.cursor == len(self._order):
                self.epoch, self.cursor = self.epoch + 1, 0
                self._order = self._make_order()
            out.append(self.items[self._order[self.cursor]])
            self.cursor += 1
        return out

    def state_dict(self) -> dict:
        return {"epoch": self.epoch, "cursor": self.cursor, "seed": self.seed}

    def load_state_dict(self, s: dict) -> None:
        self.epoch, self.cursor, self.seed = s["epoch"], s["cursor"], s["seed"]
        self._order = self._make_order()
