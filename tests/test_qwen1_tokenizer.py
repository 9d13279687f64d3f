"""Qwen v1's tokenizer (qwen.tiktoken read by tiktoken) and chat format: ids against BPE computed from its
definition on a mixed corpus, v1's 208 specials, NFC, offsets, decoding, the chat template with v1's default
system prompt; and, on the real vocabulary (the default GGUF's 151,643 ranks), ids equal to zenlm's
`tokenizers`-based Qwen2 tokenizer and the published test vectors.
"""

import base64
import json

import pytest

from tests.qwen1_files import CORPUS, reference_encode, train_ranks, write_tiktoken
from zenlm.tokenizer import Tokenizer
from zenlm.tokenizer.bpe import bytes_to_unicode
from zenlm.tokenizer.tiktoken_bpe import SPECIALS, read_ranks

MIXED = [
    "Hello world", " Hello world", "hello there, world.\n\n", "def fibonacci(n):\n    return n  # done\n",
    "通义千问是阿里云研发的大语言模型。", "Привет, мир! Les élèves; die Straße 123456789",
    "tabs\tand\r\nnewlines\n\n\n  trailing   ", "emoji 🙂👍 and math ∑x² ≤ 10", "don't I'LL we've",
    "<|im_start|>user\nhi<|im_end|>\n<|endoftext|><|extra_0|><|extra_204|>", "", "   ",
]


@pytest.fixture(scope="module")
def ranks():
    return train_ranks()


@pytest.fixture(scope="module")
def tok(ranks, tmp_path_factory):
    return Tokenizer.from_tiktoken(write_tiktoken(tmp_path_factory.mktemp("tk") / "qwen.tiktoken", ranks))


@pytest.mark.parametrize("text", MIXED + CORPUS.splitlines(keepends=True))
def test_ids_are_bpe_by_definition_and_decode_back(tok, ranks, text):
    ids = tok.encode(text)
    assert ids == reference_encode(text, ranks)
    assert tok.decode(ids) == text
    got, offsets = tok.encode_with_offsets(text)
    assert got == ids and "".join(text[a:b] for a, b in offsets) == text


def test_the_trained_vocabulary_merges(tok, ranks):
    assert len(tok.encode("fibonacci")) < len("fibonacci")  # merges apply, bytes are not all one can get
    assert max(tok.encode(CORPUS)) >= 256


def test_v1_specials_follow_the_ranks(tok, ranks):
    n = len(ranks)
    assert len(SPECIALS) == 208 and tok.vocab_size == n + 208
    assert [tok.token_to_id(s) for s in ("<|endoftext|>", "<|im_start|>", "<|im_end|>", "<|extra_0|>",
                                         "<|extra_204|>")] == [n, n + 1, n + 2, n + 3, n + 207]
    assert tok.id_to_token(n + 2) == "<|im_end|>" and tok.id_to_token(n + 208) is None
    assert tok.encode("<|im_end|>") == [n + 2]


def test_token_spelling_nfc_and_decoding_edges(tok, ranks):
    spell = bytes_to_unicode()
    for token, rank in list(ranks.items())[250:300]:
        name = "".join(spell[b] for b in token)
        assert tok.id_to_token(rank) == name and tok.token_to_id(name) == rank
    assert tok.token_to_id("no such token at all") is None
    assert tok.encode("e\u0301t\u00e9") == tok.encode("\u00e9t\u00e9")  # NFC first, as v1 does
    n = len(ranks)
    ids = tok.encode("hello") + [n, n + 2]
    assert tok.decode(ids + [n + 300, 10**6]) == "hello<|endoftext|><|im_end|>"  # padding rows dropped
    assert tok.decode(ids, skip_special_tokens=True) == "hello"
    text = "通义 🙂 ok"
    stream = tok.stream()
    assert "".join(stream.push(i) for i in tok.encode(text)) + stream.flush() == text


def test_bad_tiktoken_files(tmp_path):
    (tmp_path / "gap.tiktoken").write_bytes(b"YQ== 0\nYg== 2\n")
    with pytest.raises(ValueError, match="ranks are not 0..1"):
        read_ranks(tmp_path / "gap.tiktoken")
    (tmp_path / "bad.tiktoken").write_bytes(b"YQ== 0\nnot base64 at all\n")
    with pytest.raises(ValueError, match="bad.tiktoken:2: not a 'base64-token rank' line"):
        read_ranks(tmp_path / "bad.tiktoken")


def test_hf_dir_tokenizer_chat_and_save(ranks, tmp_path):
    d = tmp_path / "v1"
    d.mkdir()
    write_tiktoken(d / "qwen.tiktoken", ranks)
    (d / "tokenizer_config.json").write_text(json.dumps({"tokenizer_class": "QWenTokenizer"}))
    n = len(ranks)
    (d / "generation_config.json").write_text(json.dumps({"eos_token_id": n, "pad_token_id": n}))
    tok = Tokenizer.from_hf_dir(d)
    assert tok.eos_token_ids == [n, n + 2] and tok.pad_token_id == n  # <|endoftext|>, then <|im_end|>
    msgs = [{"role": "user", "content": "hi"}]
    assert tok.apply_chat(msgs) == ("<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n"
                                    "<|im_start|>user\nhi<|im_end|>\n<|im_start|>assistant\n")
    own = [{"role": "system", "content": "Be brief."}, *msgs, {"role": "assistant", "content": "hello"}]
    text = tok.apply_chat(own, add_generation_prompt=False)
    assert text.startswith("<|im_start|>system\nBe brief.<|im_end|>\n") and text.endswith("hello<|im_end|>\n")
    ids, mask = tok.render_ids(own)
    assert ids == tok.encode(text)
    assert tok.decode([i for i, m in zip(ids, mask) if m]) == "hello<|im_end|>"
    with pytest.raises(ValueError, match="no tools"):
        tok.apply_chat(msgs, tools=[{"type": "function", "function": {"name": "f"}}])
    tok.save(tmp_path / "saved")
    assert (tmp_path / "saved" / "qwen.tiktoken").read_bytes() == (d / "qwen.tiktoken").read_bytes()
    again = Tokenizer.from_hf_dir(tmp_path / "saved")
    assert again.encode(CORPUS) == tok.encode(CORPUS) and again.apply_chat(msgs) == tok.apply_chat(msgs)
    with pytest.raises(ValueError, match="no tokenizer.json form"):
        tok.to_json()


def test_directory_without_any_tokenizer(tmp_path):
    with pytest.raises(ValueError, match=r"no tokenizer.json \(or qwen.tiktoken\)"):
        Tokenizer.from_hf_dir(tmp_path)


# ---- the real vocabulary ---------------------------------------------------------------------------------
REAL = MIXED + [
    "import numpy as np\nclass Foo(Bar):\n    def __init__(self, x: int = 0) -> None:\n        self.x = x\n",
    "SELECT * FROM users WHERE id = 42;", "    if (x != null && y >= 3) { return x->y; }",
    "日本語のテキストと한국어 텍스트", "Ελληνικά και العربية و עברית", "ภาษาไทย và tiếng Việt",
]


@pytest.fixture(scope="module")
def real(gguf_meta, tmp_path_factory):
    """qwen.tiktoken rebuilt from the default GGUF: Qwen2's first 151,643 ids are v1's ranks (models.md
    section 5: the family shares one BPE), spelled in GPT-2's byte alphabet there."""
    unspell = {ch: b for b, ch in bytes_to_unicode().items()}
    tokens = gguf_meta["tokenizer.ggml.tokens"][:151643]
    path = tmp_path_factory.mktemp("real") / "qwen.tiktoken"
    path.write_bytes(b"".join(base64.b64encode(bytes(unspell[ch] for ch in t)) + b" %d\n" % i
                              for i, t in enumerate(tokens)))
    return Tokenizer.from_tiktoken(path), Tokenizer.from_gguf(gguf_meta)


def test_real_vocabulary_matches_qwen2s_tokenizer_and_the_published_ids(real):
    v1, qwen2 = real
    assert v1.encode("Hello world") == [9707, 1879] and v1.encode(" Hello world") == [21927, 1879]
    assert v1.vocab_size == 151851
    assert [v1.token_to_id(s) for s in ("<|endoftext|>", "<|im_start|>", "<|im_end|>", "<|extra_204|>")] == [
        151643, 151644, 151645, 151850]
    for text in REAL:
        if "<|extra" in text:  # Qwen2.5's ids past 151645 are other tokens
            text = text.replace("<|extra_0|><|extra_204|>", "")
        assert v1.encode(text) == qwen2.encode(text), text
        assert v1.decode(v1.encode(text)) == text
