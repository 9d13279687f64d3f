"""`zen quantize --format gguf` / write_gguf: tiny HF models (dense and MoE, tied and untied) written as every
file type, read back by gguf.GGUFReader (keys and their types) and by zenlm (logits, tokenizer); the mix
rules; and the default model written as q8_0 and q4_k_m.

llama.cpp's side (its quantizer's bytes, its greedy tokens on a written file) is benchmarks/gguf_llamacpp.py.
"""

import gguf
import numpy as np
import pytest
import torch
from gguf import GGMLQuantizationType as T
from gguf import GGUFValueType as V
from tokenizers import AddedToken, Regex, decoders, models, normalizers, pre_tokenizers
from tokenizers import Tokenizer as HFTokenizer

from zenlm.cli import main
from zenlm.config import Config
from zenlm.model import Transformer
from zenlm.quant.gguf_mix import FILE_TYPES, ModelShape, file_type, tensor_types
from zenlm.quant.gguf_write import write_gguf
from zenlm.tokenizer import Tokenizer
from zenlm.tokenizer.bpe import QWEN2_SPLIT, bytes_to_unicode
from zenlm.weights.gguf_reader import read_gguf
from zenlm.weights.load import load

SPECIALS = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]
MERGES = [("h", "e"), ("l", "l"), ("he", "ll"), ("Ġ", "t"), ("Ġt", "he"), ("o", "r"), ("Ġ", "w"), ("Ġw", "or")]
TEMPLATE = "{% for m in messages %}<|im_start|>{{ m.role }}\n{{ m.content }}<|im_end|>\n{% endfor %}"
GENERATION = {"temperature": 0.7, "top_p": 0.8, "top_k": 20, "repetition_penalty": 1.05, "do_sample": True}


def bpe_tokenizer() -> Tokenizer:
    """Byte-level BPE with a few merges, Qwen2's split regex and the ChatML specials (ids 264-266)."""
    vocab = {ch: i for i, ch in enumerate(bytes_to_unicode().values())}
    for a, b in MERGES:
        vocab[a + b] = len(vocab)
    tk = HFTokenizer(models.BPE(vocab=vocab, merges=MERGES, fuse_unk=False))
    tk.normalizer = normalizers.NFC()
    tk.pre_tokenizer = pre_tokenizers.Sequence([
        pre_tokenizers.Split(Regex(QWEN2_SPLIT), behavior="isolated"),
        pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)])
    tk.decoder = decoders.ByteLevel()
    tk.add_special_tokens([AddedToken(s, special=True, normalized=False) for s in SPECIALS])
    ids = {s: tk.token_to_id(s) for s in SPECIALS}
    return Tokenizer(tk, eos_token_ids=[ids["<|im_end|>"]], pad_token_id=ids["<|endoftext|>"],
                     bos_token_id=ids["<|endoftext|>"], chat_template=TEMPLATE)


def tiny(**over) -> Config:
    """Widths that take every block type (256 | hidden, intermediate); 300 embeddings for 267 tokens."""
    base = dict(name="tiny", vocab_size=300, hidden_size=256, intermediate_size=512, num_layers=2, num_heads=4,
                num_kv_heads=2, head_dim=64, context_length=512, rope_theta=10000.0, tie_word_embeddings=False)
    return Config(**(base | over))


def hf_dir(path, seed=0, **over):
    from zenlm.train.export import save_model_dir

    torch.manual_seed(seed)
    model = Transformer(tiny(**over))
    return save_model_dir(path, model.config, model.state_dict(), bpe_tokenizer(), GENERATION)


def logits(path, tokens: torch.Tensor) -> torch.Tensor:
    m = load(str(path), progress=False).model
    with torch.no_grad():
        return m(tokens, torch.arange(tokens.shape[1]).expand_as(tokens))


TOKENS = torch.randint(0, 267, (2, 24), generator=torch.Generator().manual_seed(0))
# Relative RMS error of the written model's logits against the source's: about 1.4x what each type measures
# on this random model (whose Gaussian weights are harder to quantize than a trained model's).
LOGIT_BOUND = {"f32": 0.0, "f16": 1e-3, "bf16": 8e-3, "q8_0": 0.025, "q6_k": 0.07, "q5_k_m": 0.13, "q5_k_s": 0.13,
               "q5_1": 0.14, "q5_0": 0.15, "q4_k_m": 0.23, "q4_k_s": 0.23, "q4_1": 0.28, "q4_0": 0.3, "q3_k_l": 0.3,
               "q3_k_m": 0.32, "q3_k_s": 0.5, "q2_k": 0.65}


@pytest.fixture(scope="module")
def source(tmp_path_factory):
    path = hf_dir(tmp_path_factory.mktemp("hf") / "tiny")
    return path, logits(path, TOKENS)


@pytest.mark.parametrize("name", list(FILE_TYPES))
def test_every_file_type_loads_in_zenlm_close_to_its_source(tmp_path, source, name):
    src, ref = source
    out = write_gguf(str(src), tmp_path / f"tiny-{name}.gguf", name, progress=False)
    meta, tensors = read_gguf(out)
    assert meta["general.file_type"] == int(FILE_TYPES[name].ftype)
    expected = tensor_types({n: t.shape for n, t in tensors.items()}, file_type(name), ModelShape(2, 4, 2))
    assert {n: t.qtype for n, t in tensors.items()} == expected
    got = logits(out, TOKENS)
    rel = float((got - ref).pow(2).mean().sqrt() / ref.pow(2).mean().sqrt())
    assert rel <= LOGIT_BOUND[name], rel
    if name != "f32":
        assert rel > 0


def test_q4_k_m_gives_more_bits_where_llama_cpp_does(tmp_path, source):
    """2 layers: use_more_bits picks layer 1 (the last eighth), so its attn_v and ffn_down are Q6_K; the head Q6_K."""
    _, tensors = read_gguf(write_gguf(str(source[0]), tmp_path / "m.gguf", "q4_k_m", progress=False))
    types = {n: t.qtype for n, t in tensors.items()}
    assert types["output.weight"] == T.Q6_K and types["token_embd.weight"] == T.Q4_K
    assert types["blk.1.attn_v.weight"] == types["blk.1.ffn_down.weight"] == T.Q6_K
    assert types["blk.0.attn_v.weight"] == types["blk.0.ffn_down.weight"] == types["blk.1.ffn_up.weight"] == T.Q4_K
    assert types["blk.0.attn_norm.weight"] == types["blk.0.attn_q.bias"] == T.F32


def test_metadata_opens_in_gguf_reader_with_llama_cpps_types(tmp_path, source):
    out = write_gguf(str(source[0]), tmp_path / "m.gguf", "q8_0", progress=False)
    fields = gguf.GGUFReader(out).fields

    def value(key):
        return fields[key].contents()

    def kind(key):
        return list(fields[key].types)

    assert value("general.architecture") == "qwen2" and value("general.name") == "tiny"
    for key, want in [("block_count", 2), ("context_length", 512), ("embedding_length", 256),
                      ("feed_forward_length", 512), ("attention.head_count", 4), ("attention.head_count_kv", 2)]:
        assert value(f"qwen2.{key}") == want and kind(f"qwen2.{key}") == [V.UINT32]
    assert value("qwen2.rope.freq_base") == 10000.0 and kind("qwen2.rope.freq_base") == [V.FLOAT32]
    assert kind("qwen2.attention.layer_norm_rms_epsilon") == [V.FLOAT32]
    assert value("general.file_type") == 7 and value("general.quantization_version") == 2
    tokens, types = value("tokenizer.ggml.tokens"), value("tokenizer.ggml.token_type")
    assert kind("tokenizer.ggml.token_type") == [V.ARRAY, V.INT32]
    assert kind("tokenizer.ggml.tokens") == kind("tokenizer.ggml.merges") == [V.ARRAY, V.STRING]
    assert len(tokens) == len(types) == 300
    assert tokens[264:267] == SPECIALS and types[264:267] == [3, 3, 3]  # CONTROL
    assert tokens[267] == "[PAD267]" and set(types[267:]) == {5}  # UNUSED padding up to the embedding count
    assert value("tokenizer.ggml.merges") == [f"{a} {b}" for a, b in MERGES]
    assert value("tokenizer.ggml.model") == "gpt2" and value("tokenizer.ggml.pre") == "qwen2"
    assert (value("tokenizer.ggml.eos_token_id"), value("tokenizer.ggml.padding_token_id"),
            value("tokenizer.ggml.bos_token_id")) == (266, 264, 264)
    assert kind("tokenizer.ggml.eos_token_id") == [V.UINT32] and value("tokenizer.ggml.add_bos_token") is False
    assert value("tokenizer.chat_template") == TEMPLATE
    assert value("general.sampling.top_k") == 20 and kind("general.sampling.top_k") == [V.INT32]
    assert value("general.sampling.temp") == pytest.approx(0.7) and value("general.sampling.penalty_repeat") == (
        pytest.approx(1.05))


def test_config_tokenizer_and_generation_defaults_survive(tmp_path, source):
    out = write_gguf(str(source[0]), tmp_path / "m.gguf", "q4_k_m", progress=False)
    loaded, original = load(str(out), progress=False), load(str(source[0]), progress=False)
    same = dict(name="x", max_window_layers=0)  # (no sliding window either way)
    assert loaded.config.replace(**same) == original.config.replace(**same)
    assert loaded.generation_config == pytest.approx({"temperature": 0.7, "top_p": 0.8, "top_k": 20})
    text = "<|im_start|>user\nhello there world<|im_end|>\n the wor"
    assert loaded.tokenizer.encode(text) == original.tokenizer.encode(text)
    assert len(original.tokenizer.encode("hell the")) == 2  # the merges are in use
    assert loaded.tokenizer.eos_token_ids[0] == 266 and loaded.tokenizer.chat_template == TEMPLATE
    messages = [{"role": "user", "content": "hi"}]
    assert loaded.tokenizer.apply_chat(messages) == original.tokenizer.apply_chat(messages)


def test_tied_embeddings_write_no_head_and_quantize_the_table_like_one(tmp_path):
    src = hf_dir(tmp_path / "tied", tie_word_embeddings=True)
    out = write_gguf(str(src), tmp_path / "t.gguf", "q4_k_m", progress=False)
    _, tensors = read_gguf(out)
    assert "output.weight" not in tensors and tensors["token_embd.weight"].qtype == T.Q6_K
    ref = logits(src, TOKENS)
    got = logits(out, TOKENS)
    assert float((got - ref).pow(2).mean().sqrt() / ref.pow(2).mean().sqrt()) < LOGIT_BOUND["q4_k_m"]


def test_moe_experts_are_stacked_and_load_back_exactly(tmp_path):
    over = dict(arch="qwen2_moe", num_experts=4, num_experts_per_tok=2, moe_intermediate_size=256,
                shared_expert_intermediate_size=512)
    src = hf_dir(tmp_path / "moe", **over)
    out = write_gguf(str(src), tmp_path / "moe.gguf", "f32", progress=False)
    meta, tensors = read_gguf(out)
    assert meta["general.architecture"] == "qwen2moe" and meta["qwen2moe.expert_count"] == 4
    assert meta["qwen2moe.expert_feed_forward_length"] == 256
    assert tensors["blk.0.ffn_gate_exps.weight"].shape == (4, 256, 256)
    assert tensors["blk.1.ffn_down_exps.weight"].shape == (4, 256, 256)
    torch.testing.assert_close(logits(out, TOKENS), logits(src, TOKENS), rtol=0, atol=0)
    _, quantized = read_gguf(write_gguf(str(src), tmp_path / "moe-q.gguf", "q4_k_m", progress=False))
    assert quantized["blk.0.ffn_gate_inp.weight"].qtype == T.F32  # the router stays in float
    assert quantized["blk.1.ffn_down_exps.weight"].qtype == T.Q6_K  # layer 1 by its name: more bits
    assert quantized["blk.0.ffn_down_exps.weight"].qtype == T.Q4_K


def test_a_gguf_source_keeps_bytes_of_the_types_it_keeps(tmp_path, source):
    first = write_gguf(str(source[0]), tmp_path / "a.gguf", "q8_0", progress=False)
    again = write_gguf(str(first), tmp_path / "b.gguf", "q8_0", progress=False)
    ma, ta = read_gguf(first)
    mb, tb = read_gguf(again)
    assert list(ta) == list(tb) and all(np.array_equal(ta[n].data, tb[n].data) for n in ta)
    assert ma == mb  # every key carried over
    smaller = write_gguf(str(first), tmp_path / "c.gguf", "q4_0", progress=False)  # re-encoded from the q8_0 values
    rel = (logits(smaller, TOKENS) - source[1]).pow(2).mean().sqrt() / source[1].pow(2).mean().sqrt()
    assert 0 < float(rel) < LOGIT_BOUND["q4_0"] * 1.2


def test_mix_rules_on_the_default_models_shapes(gguf_meta, gguf_path):
    """llama.cpp's Q4_K_M on Qwen2.5-0.5B: rows of 896 cannot take K-quants, so they fall back (Q4_K -> Q5_0,
    Q6_K -> Q8_0); ffn_down (rows of 4864) keeps Q4_K, and 12 of 24 layers get Q6_K by use_more_bits."""
    shapes = {n: t.shape for n, t in read_gguf(gguf_path)[1].items()}
    types = tensor_types(shapes, file_type("q4_k_m"), ModelShape(24, 14, 2))
    more = [i for i in range(24) if types[f"blk.{i}.ffn_down.weight"] == T.Q6_K]
    assert more == [0, 1, 2, 5, 8, 11, 14, 17, 20, 21, 22, 23]
    assert all(types[f"blk.{i}.attn_v.weight"] == (T.Q8_0 if i in more else T.Q5_0) for i in range(24))
    assert types["output.weight"] == T.Q8_0 and types["token_embd.weight"] == T.Q5_0
    assert {types[f"blk.{i}.{p}.weight"] for i in range(24) for p in ("attn_q", "attn_k", "ffn_up")} == {T.Q5_0}
    q5 = tensor_types(shapes, file_type("q5_k_m"), ModelShape(24, 14, 2))
    assert q5["blk.3.ffn_down.weight"] == T.Q5_K and q5["blk.2.ffn_down.weight"] == T.Q6_K
    assert q5["blk.3.attn_q.weight"] == T.Q5_1  # Q5_K's fallback


def test_bad_requests_are_one_clear_error(tmp_path, source):
    with pytest.raises(ValueError, match="unknown GGUF type 'q9_k'; choose one of f32, f16"):
        write_gguf(str(source[0]), tmp_path / "x.gguf", "q9_k", progress=False)
    with pytest.raises(ValueError, match="zen-tiny is a preset"):
        write_gguf("zen-tiny", tmp_path / "x.gguf", "q8_0", progress=False)
    with pytest.raises(ValueError, match="is a directory"):
        write_gguf(str(source[0]), tmp_path, "q8_0", progress=False)
    first = write_gguf(str(source[0]), tmp_path / "a.gguf", "q8_0", progress=False)
    with pytest.raises(ValueError, match="is the source model"):
        write_gguf(str(first), first, "q4_0", progress=False)
    assert not list(tmp_path.glob("*.part"))


def test_zen_quantize_command(tmp_path, source, capsys):
    out = tmp_path / "cli.gguf"
    assert main(["quantize", str(source[0]), "--type", "q5_k_m", "--output", str(out)]) == 0
    assert read_gguf(out)[0]["general.file_type"] == 17
    assert f"wrote {out}" in capsys.readouterr().err
    assert main(["quantize", str(source[0]), "--type", "q4_k_x", "--output", str(out)]) == 1
    assert "unknown GGUF type 'q4_k_x'" in capsys.readouterr().err
    assert main(["quantize", str(source[0]), "--method", "gptq", "--output", str(out)]) == 1
    assert "--method belong to --format hf" in capsys.readouterr().err


@pytest.fixture(scope="module")
def default_q8_0(gguf_path, tmp_path_factory):
    return write_gguf("default", tmp_path_factory.mktemp("q8") / "default-q8_0.gguf", "q8_0", progress=False)


CHATS = [("Write a Python function that checks whether a string is a palindrome.",
          "def is_palindrome(s: str) -> bool:\n    s = ''.join(c.lower() for c in s if c.isalnum())\n"
          "    return s == s[::-1]\n"),
         ("What does the `yield` keyword do in Python?",
          "`yield` turns a function into a generator: each call to next() runs it to the next yield and "
          "returns that value, keeping the function's state between calls."),
         ("Write a SQL query that returns the ten customers with the highest total order value.",
          "SELECT customer_id, SUM(amount) AS total FROM orders GROUP BY customer_id ORDER BY total DESC LIMIT 10;")]


def test_default_model_as_q8_0_keeps_every_key_and_its_predictions(gguf_path, default_q8_0):
    """The zenlm side of the llama.cpp check: the q8_0 file has every key of the source with its type (plus
    the sampling defaults), Q8_0 matrices and F32 norms, and in zenlm (float32) it predicts the same next
    token as the source at nearly every position of three chats."""
    fields, original = gguf.GGUFReader(default_q8_0).fields, gguf.GGUFReader(gguf_path).fields
    for key, field in original.items():
        if not key.startswith("GGUF.") and key != "general.file_type":
            assert key in fields and fields[key].types == field.types, key
            if field.types[0] != V.ARRAY:
                assert fields[key].contents() == field.contents(), key
    assert fields["general.file_type"].contents() == 7 and fields["general.sampling.top_k"].contents() == 20
    assert {t.qtype for t in read_gguf(default_q8_0)[1].values()} == {T.Q8_0, T.F32}
    source, written = load("default", progress=False), load(str(default_q8_0), progress=False)
    same = total = 0
    for question, answer in CHATS:
        chat = [{"role": "user", "content": question}, {"role": "assistant", "content": answer}]
        ids = torch.tensor([source.tokenizer.encode(source.tokenizer.apply_chat(chat, add_generation_prompt=False))])
        assert written.tokenizer.encode(source.tokenizer.decode(ids[0].tolist())) == ids[0].tolist()
        pos = torch.arange(ids.shape[1])[None]
        with torch.no_grad():
            a, b = source.model(ids, pos)[0].argmax(-1), written.model(ids, pos)[0].argmax(-1)
        same, total = same + int((a == b).sum()), total + ids.shape[1]
    assert same / total >= 0.97, (same, total)


def test_default_model_as_q4_k_m_follows_todays_llama_cpp(default_q8_0, tmp_path):
    """From the q8_0 file (so every matrix is re-encoded), q4_k_m has the mix of test_mix_rules and loads."""
    out = write_gguf(str(default_q8_0), tmp_path / "q4km.gguf", "q4_k_m", progress=False)
    meta, tensors = read_gguf(out)
    assert meta["general.file_type"] == 15 and tensors["blk.2.ffn_down.weight"].qtype == T.Q6_K
    assert tensors["blk.3.ffn_down.weight"].qtype == T.Q4_K and tensors["output.weight"].qtype == T.Q8_0
    assert meta["tokenizer.chat_template"] == read_gguf(default_q8_0)[0]["tokenizer.chat_template"]
    assert out.stat().st_size < 0.8 * default_q8_0.stat().st_size
