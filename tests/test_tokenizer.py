"""Tokenizer parity: zenlm.tokenizer.Tokenizer against transformers' tokenizer for the same GGUF.

Covers ids on a multilingual/code/emoji/whitespace/special-token corpus, the Qwen docstring vectors,
decode round trips (hypothesis), the streaming detokenizer, both construction paths (GGUF metadata
and an HF dir), and the edge errors. A tiny synthetic vocabulary covers what needs no model file.
"""

import json
import unicodedata

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from zenlm.tokenizer import Tokenizer
from zenlm.tokenizer.bpe import bytes_to_unicode

SPECIALS = ["<|endoftext|>", "<|im_start|>", "<|im_end|>", "<tool_call>", "</tool_call>",
            "<|fim_prefix|>", "<|fim_middle|>", "<|fim_suffix|>", "<|file_sep|>", "<|repo_name|>"]

CORPUS = [
    "Hello world", " Hello world", "", " ", "a", "I'm sure they'll say it's fine, we'd've gone. DON'T SHOUT",
    "The quick brown fox jumps over the lazy dog.\n\nSecond paragraph.   Trailing spaces   ",
    "通义千问是阿里云研发的大语言模型。你好，世界！",
    "日本語のテキスト：こんにちは、世界。カタカナとひらがな、漢字。",
    "Voilà l'été : où est le café ? Ça coûte 3,50 € — « très cher ».",
    "def fib(n):\n    if n < 2:\n        return n\n    return fib(n - 1) + fib(n - 2)\n",
    "class A:\n\tdef f(self):\r\n\t\treturn {'k': [1, 2, 3]}\r\n\r\n",
    "for (int i = 0; i < 10; ++i) { sum += a[i] * b[i]; }  // dot\n",
    "x = 12345678901234567890 + 3.14159e-10 - 0x1F",
    "emoji 😀😃 family 👨‍👩‍👧‍👦 flags 🇯🇵🇫🇷🇺🇸 skin 👍🏽 heart ❤️ keycap 1️⃣",
    "   leading\n\n\n   \t\t  mixed \r\n  whitespace runs          \n",
    "\n", "\n\n", "\r\n", "\t", "    ", "a\u00a0b\u2003c\u3000d",
    "<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n<|im_start|>user\nhi<|im_end|>\n",
    "text<|endoftext|>more<tool_call>\n{\"name\": \"f\"}\n</tool_call>",
    "<|fim_prefix|>def f():\n    <|fim_suffix|>\n    return x<|fim_middle|>",
    "<|im_start <|im_end| |> <| not special",
    "[PAD151665] looks like a token but is plain text",
    "Ελληνικά, русский текст, العربية, עברית, हिन्दी, 한국어 텍스트",
    "ｆｕｌｌｗｉｄｔｈ ＡＢＣ and ligature ﬁ and Å (U+212B) and e\u0301",  # not NFC: see test_nfc
]
NFC_CORPUS = [s for s in CORPUS if unicodedata.is_normalized("NFC", s)]


@pytest.fixture(scope="module")
def meta(gguf_meta):
    return gguf_meta


@pytest.fixture(scope="module")
def tok(meta):
    return Tokenizer.from_gguf(meta)


@pytest.fixture(scope="module")
def ref(hf_tokenizer):
    return hf_tokenizer


@pytest.fixture(scope="module")
def tok_hf(hf_tokenizer_dir):
    return Tokenizer.from_hf_dir(hf_tokenizer_dir)


# ---- real model -------------------------------------------------------------------------------

def test_docstring_vectors(tok):
    assert tok.encode("Hello world") == [9707, 1879]
    assert tok.encode(" Hello world") == [21927, 1879]


def test_metadata(tok):
    assert tok.vocab_size == 151936
    assert tok.eos_token_ids == [151645, 151643]
    assert tok.pad_token_id == 151643
    assert tok.token_to_id("<|im_start|>") == 151644 and tok.id_to_token(151645) == "<|im_end|>"
    assert tok.token_to_id("no such token") is None
    assert tok.chat_template is not None and "<|im_start|>" in tok.chat_template


def test_special_tokens_encode_whole(tok):
    for s in SPECIALS:
        assert tok.encode(s) == [tok.token_to_id(s)], s
    assert tok.encode("<|im_start|>user\n") == [151644, 872, 198]


def test_corpus_matches_reference(tok, ref):
    for s in NFC_CORPUS:
        ids = ref.encode(s, add_special_tokens=False)
        assert tok.encode(s) == ids, s
        assert tok.decode(ids) == ref.decode(ids, skip_special_tokens=False) == s
        assert tok.decode(ids, skip_special_tokens=True) == ref.decode(ids, skip_special_tokens=True), s


def test_nfc(tok, tok_hf, ref):
    # The GGUF path normalizes to NFC like the official Qwen2 tokenizer.json (and Qwen2Tokenizer);
    # transformers' GGUF conversion (and so the dir it saves) has no normalizer. They differ only on
    # text that is not NFC, where we tokenize the NFC form.
    s = "e\u0301 Å ﬁ"  # decomposed é, U+212B ANGSTROM SIGN; the ligature is NFC-stable
    assert not unicodedata.is_normalized("NFC", s)
    nfc = unicodedata.normalize("NFC", s)
    assert tok.encode(s) == ref.encode(nfc, add_special_tokens=False)
    assert tok_hf.encode(s) == ref.encode(s, add_special_tokens=False) != tok.encode(s)
    assert tok.decode(tok.encode(s)) == nfc


nfc_text = st.text().map(lambda s: unicodedata.normalize("NFC", s))
text_with_specials = st.lists(st.one_of(nfc_text, st.sampled_from(SPECIALS)), max_size=6).map("".join)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(s=text_with_specials)
def test_roundtrip_and_parity_property(tok, ref, s):
    # NFC input only: the normalizer maps other text to its NFC form, so it cannot round-trip.
    ids = tok.encode(s)
    assert tok.decode(ids) == s
    assert ids == ref.encode(s, add_special_tokens=False)


def test_streaming_corpus(tok):
    for s in CORPUS + ["".join(CORPUS)]:
        ids = tok.encode(s)
        stream = tok.stream()
        pieces = [stream.push(i) for i in ids]
        assert all("\ufffd" not in p for p in pieces), s  # valid text never shows a partial character
        assert "".join(pieces) + stream.flush() == tok.decode(ids)


ids_strategy = st.lists(st.one_of(st.integers(0, 255), st.integers(151640, 151935), st.integers(0, 151935)),
                        max_size=40)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(ids=ids_strategy, skip=st.booleans())
def test_streaming_property(tok, ids, skip):
    # Arbitrary ids: partial and invalid UTF-8 (the first 256 ids are single bytes), specials, padding.
    stream = tok.stream(skip_special_tokens=skip)
    out = "".join(stream.push(i) for i in ids) + stream.flush()
    assert out == tok.decode(ids, skip_special_tokens=skip)


def test_streaming_holds_partial_character(tok):
    ids = tok.encode("中")  # one token; spell it as its three byte tokens instead
    byte_ids = [tok.token_to_id(bytes_to_unicode()[b]) for b in "中文".encode()]
    assert len(ids) == 1 and len(byte_ids) == 6
    stream = tok.stream()
    assert [stream.push(i) for i in byte_ids] == ["", "", "中", "", "", "文"]
    assert stream.flush() == ""
    stream.push(byte_ids[0])
    assert stream.flush() == "\ufffd"  # a dangling byte is emitted on flush, as decode() shows it


def test_hf_dir_agrees_with_gguf(tok, tok_hf):
    assert tok_hf.vocab_size == tok.vocab_size
    assert all(tok.id_to_token(i) == tok_hf.id_to_token(i) for i in range(tok.vocab_size))
    assert (tok_hf.eos_token_ids, tok_hf.pad_token_id) == (tok.eos_token_ids, tok.pad_token_id)
    assert tok_hf.chat_template == tok.chat_template
    for s in NFC_CORPUS:
        assert tok_hf.encode(s) == tok.encode(s), s


def test_from_file_reads_configs(hf_tokenizer_dir):
    tc = json.loads((hf_tokenizer_dir / "tokenizer_config.json").read_text())
    tc["chat_template"] = [{"name": "default", "template": "D"}, {"name": "tool_use", "template": "T"}]
    t = Tokenizer.from_file(hf_tokenizer_dir / "tokenizer.json", tc,
                            {"eos_token_id": [151643, 151645], "pad_token_id": 0})
    assert t.chat_template == "D"
    assert t.eos_token_ids == [151645, 151643]  # tokenizer_config eos first, deduplicated
    assert t.pad_token_id == 151643  # tokenizer_config's pad_token wins over generation_config
    bare = Tokenizer.from_file(hf_tokenizer_dir / "tokenizer.json")
    assert bare.chat_template is None and bare.eos_token_ids == [151645, 151643]


# ---- synthetic (no model file) ----------------------------------------------------------------

def tiny_meta(**overrides) -> dict:
    spell = bytes_to_unicode()
    tokens = [spell[b] for b in range(256)] + ["he", "hel", "hell", "hello", "Ġw", "<|im_end|>", "<x>"]
    meta = {
        "tokenizer.ggml.model": "gpt2", "tokenizer.ggml.pre": "qwen2", "tokenizer.ggml.tokens": tokens,
        "tokenizer.ggml.token_type": [1] * 261 + [3, 4],
        "tokenizer.ggml.merges": ["h e", "he l", "hel l", "hell o", "Ġ w"],
        "tokenizer.ggml.eos_token_id": 261, "tokenizer.chat_template": None,
    }
    return {**meta, **overrides}


def test_tiny_vocab():
    t = Tokenizer.from_gguf(tiny_meta())
    ids = t.encode("hello world<|im_end|><x>")
    assert ids[:2] == [259, 260] and ids[-2:] == [261, 262]
    assert t.decode(ids) == "hello world<|im_end|><x>"
    assert t.decode(ids, skip_special_tokens=True) == "hello world<x>"  # <x> is user-defined, not special
    assert t.eos_token_ids == [261] and t.pad_token_id is None and t.vocab_size == 263


def test_tiny_vocab_respells_text_tokens():
    meta = tiny_meta()
    meta["tokenizer.ggml.tokens"] = meta["tokenizer.ggml.tokens"][:-3] + [" w", "<|im_end|>", "<x>"]
    assert Tokenizer.from_gguf(meta).encode(" w") == [260]


@pytest.mark.parametrize("key,value,match", [
    ("tokenizer.ggml.model", "llama", "'llama'"),
    ("tokenizer.ggml.pre", "llama-bpe", "'llama-bpe'"),
    ("tokenizer.ggml.merges", [], "merges"),
    ("tokenizer.ggml.token_type", [1, 1], "token types"),
])
def test_gguf_errors(key, value, match):
    with pytest.raises(ValueError, match=match):
        Tokenizer.from_gguf(tiny_meta(**{key: value}))


def test_hf_dir_missing(tmp_path):
    with pytest.raises(ValueError, match="tokenizer.json"):
        Tokenizer.from_hf_dir(tmp_path)
