"""Byte-level BPE tokenizer for the zen family: a thin wrapper over `tokenizers.Tokenizer`.

Builds from an HF `tokenizer.json` (+ tokenizer_config / generation_config), from GGUF metadata
(vocab + merges + token types) or, for Qwen v1, from `qwen.tiktoken` (tiktoken_bpe.py stands in for
tokenizers there); encodes text without BOS, decodes, and streams text token by token. It does not
read files other than those, and it does not render chats (chat.py does).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Iterable

from tokenizers import AddedToken, Regex, decoders, models, normalizers, pre_tokenizers
from tokenizers import Tokenizer as _HFTokenizer

from zenlm.tokenizer import chat

# Pre-tokenizer split regexes by `tokenizer.ggml.pre` (see reference/models.md section 5).
QWEN2_SPLIT = (
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}"
    r"| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"
)
GGUF_PRE_SPLITS = {"qwen2": QWEN2_SPLIT, "deepseek-r1-qwen": QWEN2_SPLIT}

# llama.cpp token types (gguf.TokenType): added tokens are CONTROL (special) and USER_DEFINED (not special).
NORMAL, CONTROL, USER_DEFINED = 1, 3, 4
END_OF_TURN = ("<|im_end|>", "<|endoftext|>")


def bytes_to_unicode() -> dict[int, str]:
    """GPT-2's byte -> printable character table used to spell byte-level BPE tokens."""
    keep = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1), *range(ord("®"), ord("ÿ") + 1)]
    table, extra = {b: chr(b) for b in keep}, 0
    for b in range(256):
        if b not in table:
            table[b] = chr(256 + extra)
            extra += 1
    return table


def _token_content(tok: Any) -> str | None:
    """A special token in tokenizer_config.json is a string or an AddedToken dict."""
    return tok.get("content") if isinstance(tok, dict) else tok


def _as_list(x: Any) -> list[int]:
    return [] if x is None else [int(i) for i in (x if isinstance(x, list) else [x])]


class Tokenizer:
    """Encode/decode text for one model; knows its end-of-turn ids, pad id and chat template."""

    def __init__(self, tk: _HFTokenizer, *, eos_token_ids: Iterable[int], pad_token_id: int | None = None,
                 bos_token_id: int | None = None, chat_template: str | None = None):
        self._tk = tk
        self.chat_template = chat_template
        self.pad_token_id = pad_token_id
        self.bos_token_id = bos_token_id  # known, never prepended by encode()
        eos = [*eos_token_ids, *(i for t in END_OF_TURN if (i := tk.token_to_id(t)) is not None)]
        self.eos_token_ids: list[int] = list(dict.fromkeys(eos))  # first is the model's own eos

    # ---- construction ----------------------------------------------------------------------

    @classmethod
    def from_file(cls, tokenizer_json_path: str | Path, tokenizer_config: dict | None = None,
                  generation_config: dict | None = None) -> Tokenizer:
        """From an HF `tokenizer.json`; configs supply eos/pad/bos and the chat template."""
        tk = _HFTokenizer.from_file(str(tokenizer_json_path))
        tc, gc = tokenizer_config or {}, generation_config or {}
        for key, tok in sorted((tc.get("added_tokens_decoder") or {}).items(), key=lambda kv: int(kv[0])):
            content = _token_content(tok)
            if tk.token_to_id(content) is None:
                tk.add_tokens([AddedToken(content, special=bool(tok.get("special")), normalized=False)])
            if tk.token_to_id(content) != int(key):
                raise ValueError(f"added token {content!r} is id {key} in tokenizer_config.json "
                                 f"but {tk.token_to_id(content)} in {tokenizer_json_path}")

        def tid(name: str) -> int | None:
            content = _token_content(tc.get(name))
            return None if content is None else tk.token_to_id(content)

        eos = [i for i in [tid("eos_token")] if i is not None] + _as_list(gc.get("eos_token_id"))
        pad = tid("pad_token")
        bos = tid("bos_token")
        template = tc.get("chat_template")
        if isinstance(template, list):  # [{"name": "default", "template": ...}, {"name": "tool_use", ...}]
            named = {t["name"]: t["template"] for t in template}
            template = named.get("default", next(iter(named.values()), None))
        return cls(tk, eos_token_ids=eos, chat_template=template,
                   pad_token_id=pad if pad is not None else gc.get("pad_token_id"),
                   bos_token_id=bos if bos is not None else gc.get("bos_token_id"))

    @classmethod
    def from_hf_dir(cls, path: str | Path) -> Tokenizer:
        """From an HF model directory: tokenizer.json (or Qwen v1's qwen.tiktoken), tokenizer_config.json,
        chat_template.jinja, generation_config.json (all but the first optional)."""
        path = Path(path)
        tiktoken_file = path / "qwen.tiktoken"
        if not (path / "tokenizer.json").is_file() and not tiktoken_file.is_file():
            raise ValueError(f"no tokenizer.json (or qwen.tiktoken) in {path}")

        def load(name: str) -> dict:
            f = path / name
            return json.loads(f.read_text(encoding="utf-8")) if f.is_file() else {}

        tc = load("tokenizer_config.json")
        if (path / "chat_template.jinja").is_file():  # transformers >= 4.50 saves the template here
            tc["chat_template"] = (path / "chat_template.jinja").read_text(encoding="utf-8")
        elif "chat_template" in (ct := load("chat_template.json")):
            tc["chat_template"] = ct["chat_template"]
        if not (path / "tokenizer.json").is_file():
            return cls.from_tiktoken(tiktoken_file, tc, load("generation_config.json"))
        return cls.from_file(path / "tokenizer.json", tc, load("generation_config.json"))

    @classmethod
    def from_tiktoken(cls, path: str | Path, tokenizer_config: dict | None = None,
                      generation_config: dict | None = None) -> Tokenizer:
        """Qwen v1's tokenizer from its qwen.tiktoken; without a chat template, v1's ChatML
        (chat.QWEN1_CHAT_TEMPLATE, with its default system prompt). v1's tokenizer_config names no
        special tokens: eos and pad come from generation_config (<|endoftext|> in the releases)."""
        from zenlm.tokenizer.tiktoken_bpe import TiktokenBPE

        tc, gc = tokenizer_config or {}, generation_config or {}
        return cls(TiktokenBPE.from_file(path), eos_token_ids=_as_list(gc.get("eos_token_id")),
                   pad_token_id=gc.get("pad_token_id"), bos_token_id=gc.get("bos_token_id"),
                   chat_template=tc.get("chat_template") or chat.QWEN1_CHAT_TEMPLATE)

    def save(self, directory: str | Path) -> None:
        """Write tokenizer.json and tokenizer_config.json (with the chat template) into an HF directory."""
        path = Path(directory)
        path.mkdir(parents=True, exist_ok=True)
        from zenlm.tokenizer.tiktoken_bpe import FILE, TiktokenBPE

        self._tk.save(str(path / (FILE if isinstance(self._tk, TiktokenBPE) else "tokenizer.json")))
        name = self._tk.id_to_token
        config = {"eos_token": name(self.eos_token_ids[0]) if self.eos_token_ids else None,
                  "pad_token": None if self.pad_token_id is None else name(self.pad_token_id),
                  "bos_token": None if self.bos_token_id is None else name(self.bos_token_id),
                  "chat_template": self.chat_template, "add_bos_token": False}
        (path / "tokenizer_config.json").write_text(json.dumps(config, indent=2, ensure_ascii=False) + "\n")

    @classmethod
    def from_gguf(cls, meta: dict) -> Tokenizer:
        """From GGUF metadata as plain values: `{k: f.contents() for k, f in GGUFReader(p).fields.items()}`."""
        kind = meta.get("tokenizer.ggml.model")
        if kind != "gpt2":
            raise ValueError(f"GGUF tokenizer.ggml.model is {kind!r}; only byte-level BPE ('gpt2') is supported")
        pre = meta.get("tokenizer.ggml.pre")
        if pre not in GGUF_PRE_SPLITS:
            raise ValueError(f"GGUF tokenizer.ggml.pre is {pre!r}; supported: {sorted(GGUF_PRE_SPLITS)}")
        tokens, merges = meta["tokenizer.ggml.tokens"], meta.get("tokenizer.ggml.merges")
        if not merges:
            raise ValueError("GGUF has no tokenizer.ggml.merges; cannot build a BPE tokenizer")
        types = meta.get("tokenizer.ggml.token_type") or [NORMAL] * len(tokens)
        if len(types) != len(tokens):
            raise ValueError(f"GGUF has {len(tokens)} tokens but {len(types)} token types")

        # Normal tokens are spelled in GPT-2's byte alphabet; respell any that a converter stored as text.
        spell = bytes_to_unicode()
        alphabet = frozenset(spell.values())
        vocab = {}
        for i, (tok, ty) in enumerate(zip(tokens, types)):
            if ty == NORMAL and not alphabet.issuperset(tok):
                tok = "".join(spell[b] for b in tok.encode("utf-8"))
            vocab[tok] = i
        if len(vocab) != len(tokens):
            raise ValueError(f"GGUF vocabulary has duplicate tokens ({len(tokens) - len(vocab)})")

        tk = _HFTokenizer(models.BPE(vocab=vocab, merges=[tuple(m.split(" ", 1)) for m in merges],
                                     fuse_unk=False, byte_fallback=False))
        tk.normalizer = normalizers.NFC()
        tk.pre_tokenizer = pre_tokenizers.Sequence([
            pre_tokenizers.Split(Regex(GGUF_PRE_SPLITS[pre]), behavior="isolated", invert=False),
            pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
        ])
        tk.decoder = decoders.ByteLevel()
        # Matched whole in the text; CONTROL ones are skipped by decode(skip_special_tokens=True).
        added = [(tok, ty) for tok, ty in zip(tokens, types) if ty in (CONTROL, USER_DEFINED)]
        tk.add_special_tokens([AddedToken(t, special=True, normalized=False) for t, ty in added if ty == CONTROL])
        tk.add_tokens([AddedToken(t, special=False, normalized=False) for t, ty in added if ty == USER_DEFINED])
        assert tk.get_vocab_size(with_added_tokens=True) == len(tokens), "added tokens must reuse vocab ids"

        eos = [meta[k] for k in ("tokenizer.ggml.eos_token_id", "tokenizer.ggml.eot_token_id") if k in meta]
        template = meta.get("tokenizer.chat_template")
        if template is None and meta.get("general.architecture") == "qwen":  # v1 files carry none
            template = chat.QWEN1_CHAT_TEMPLATE
        return cls(tk, eos_token_ids=eos, pad_token_id=meta.get("tokenizer.ggml.padding_token_id"),
                   bos_token_id=meta.get("tokenizer.ggml.bos_token_id"), chat_template=template)

    # ---- text <-> ids ----------------------------------------------------------------------

    @property
    def vocab_size(self) -> int:
        return self._tk.get_vocab_size(with_added_tokens=True)

    def encode(self, text: str) -> list[int]:
        """Token ids of `text`; no BOS. Special-token strings in the text become their ids."""
        return self._tk.encode(text, add_special_tokens=False).ids

    def encode_with_offsets(self, text: str) -> tuple[list[int], list[tuple[int, int]]]:
        """Ids plus each token's (start, end) character span in `text`."""
        enc = self._tk.encode(text, add_special_tokens=False)
        return enc.ids, enc.offsets

    def decode(self, ids: Iterable[int], skip_special_tokens: bool = False) -> str:
        """Text of `ids`; bytes that are not valid UTF-8 become U+FFFD."""
        return self._tk.decode(list(ids), skip_special_tokens=skip_special_tokens)

    def token_to_id(self, token: str) -> int | None:
        return self._tk.token_to_id(token)

    def id_to_token(self, token_id: int) -> str | None:
        return self._tk.id_to_token(token_id)

    def to_json(self) -> str:
        """The whole tokenizer as tokenizer.json text (what grammar engines such as llguidance load)."""
        return self._tk.to_str()

    def stream(self, skip_special_tokens: bool = False) -> StreamDecoder:
        """An incremental detokenizer: push ids one at a time, get text as it completes."""
        return StreamDecoder(self, skip_special_tokens)

    @property
    def special_tokens(self) -> dict[str, str]:
        """bos/eos/pad token strings, passed to chat templates (as transformers does)."""
        ids = {"bos_token": self.bos_token_id, "eos_token": (self.eos_token_ids or [None])[0],
               "pad_token": self.pad_token_id}
        return {k: self.id_to_token(i) for k, i in ids.items() if i is not None}

    # ---- chat (delegates to chat.py) -------------------------------------------------------

    def apply_chat(self, messages: list[dict], tools: list[dict] | None = None,
                   add_generation_prompt: bool = True, **extra: Any) -> str:
        return chat.render(self.chat_template, messages, tools, add_generation_prompt,
                           **{**self.special_tokens, **extra})

    def render_ids(self, messages: list[dict], tools: list[dict] | None = None) -> tuple[list[int], list[int]]:
        return chat.render_ids(self, messages, tools)

    def __repr__(self) -> str:
        return f"Tokenizer(vocab_size={self.vocab_size}, eos_token_ids={self.eos_token_ids})"


class StreamDecoder:
    """Turns ids into text as it completes. Never emits a partial UTF-8 character: while the decoded
    tail ends in U+FFFD it holds that tail back. "".join(pushes) + flush() == decode(ids) for a
    byte-level decoder, whose output after a whole character does not depend on what came before."""

    def __init__(self, tokenizer: Tokenizer, skip_special_tokens: bool = False):
        self._tok, self._skip = tokenizer, skip_special_tokens
        self._pending: list[int] = []  # ids since the last whole-character boundary
        self._sent = 0  # characters of decode(pending) already returned

    def push(self, token_id: int) -> str:
        self._pending.append(token_id)
        text = self._tok.decode(self._pending, self._skip)
        complete = text.rstrip("\ufffd")  # text before a trailing U+FFFD run no longer changes
        out = complete[self._sent:]
        if len(complete) == len(text):
            self._pending, self._sent = [], 0
        else:
            self._sent = len(complete)
        return out

    def flush(self) -> str:
        text = self._tok.decode(self._pending, self._skip)[self._sent:]
        self._pending, self._sent = [], 0
        return text
