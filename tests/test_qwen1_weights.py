"""Qwen v1 checkpoints and presets: a release's config.json, the four presets' parameter counts against the
released checkpoints, `zen info qwen-7b`, a tiny v1 HF directory (safetensors under v1's names + qwen.tiktoken)
and the same weights as a GGUF of architecture `qwen` (plain, Q8_0 kept as blocks), and their bad-file errors.
"""

import json

import gguf
import pytest
import torch
from safetensors.torch import save_file

from tests.qwen1_files import random_weights, reference_logits, tiny_config, train_ranks, write_gguf, write_hf_dir
from zenlm.cli import main
from zenlm.config import Config, param_counts, preset
from zenlm.weights.hub_names import parse, select
from zenlm.weights.load import load

VOCAB = 560
QWEN_7B = {  # Qwen/Qwen-7B config.json (models.md 1.5), minus auto_map
    "architectures": ["QWenLMHeadModel"], "attn_dropout_prob": 0.0, "bf16": False, "emb_dropout_prob": 0.0,
    "fp16": False, "fp32": False, "hidden_size": 4096, "initializer_range": 0.02, "intermediate_size": 22016,
    "kv_channels": 128, "layer_norm_epsilon": 1e-06, "max_position_embeddings": 32768, "model_type": "qwen",
    "no_bias": True, "num_attention_heads": 32, "num_hidden_layers": 32, "onnx_safe": None,
    "rotary_emb_base": 10000, "rotary_pct": 1.0, "scale_attn_weights": True, "seq_length": 8192,
    "tie_word_embeddings": False, "tokenizer_class": "QWenTokenizer", "use_cache": True, "use_dynamic_ntk": True,
    "use_flash_attn": "auto", "use_logn_attn": True, "vocab_size": 151936,
}


def test_a_release_config_is_the_preset():
    c = Config.from_hf(QWEN_7B)
    p = preset("qwen-7b")
    for f in ("arch", "hidden_size", "num_layers", "num_heads", "num_kv_heads", "head_dim", "intermediate_size",
              "vocab_size", "rope_theta", "rms_norm_eps", "tie_word_embeddings", "context_length", "seq_length",
              "use_logn_attn", "use_dynamic_ntk", "qkv_bias"):
        assert getattr(c, f) == getattr(p, f), f
    assert c.intermediate_size == 11008 and c.num_kv_heads == 32 and c.rope_scaling is None


@pytest.mark.parametrize("change, message", [({"rotary_pct": 0.5}, "rotary_pct 0.5"),
                                             ({"no_bias": False}, "no_bias false"),
                                             ({"kv_channels": 64}, "kv_channels 64 x 32 heads")])
def test_unsupported_v1_configs(change, message):
    with pytest.raises(ValueError, match=message):
        Config.from_hf(QWEN_7B | change)


# Released checkpoints: 7B 7,721,324,544 (its model.safetensors.index.json total_size, 15,442,649,088 bytes of
# bf16, and third-party parameter tables: "Qwen-7B 7.72B 7721324544"); 1.8B 1,836,828,672 (3,673,657,344 bf16
# bytes, a third-party loader's weight_bytes for qwen-1_8b); 14B 14.17B (a third-party table of v1 configs);
# 72B: "72B" only (its model card). The 14B and 72B exact figures are this shape arithmetic (models.md 2 [CALC]).
RELEASED = {"qwen-1.8b": 1_836_828_672, "qwen-7b": 7_721_324_544, "qwen-14b": 14.17e9, "qwen-72b": 72e9}


@pytest.mark.parametrize("name", RELEASED)
def test_preset_parameter_counts(name):
    counts = param_counts(preset(name))
    published = RELEASED[name]
    if isinstance(published, int):
        assert counts["params_total"] == published
    else:
        assert counts["params_total"] == pytest.approx(published, rel=0.005)
    assert counts["params_total"] - counts["params_non_embedding"] == 2 * preset(name).vocab_size * \
        preset(name).hidden_size  # untied: embedding and head


def test_presets_extension_settings():
    assert preset("qwen-7b").seq_length == 8192 and preset("qwen-7b").context_length == 32768
    assert preset("qwen-14b").seq_length == 2048 and preset("qwen-14b").use_logn_attn
    c72 = preset("qwen-72b")
    assert c72.rope_theta == 1e6 and not c72.use_dynamic_ntk and not c72.use_logn_attn


def test_zen_info_qwen_7b(capsys):
    assert main(["info", "qwen-7b"]) == 0
    out = capsys.readouterr().out
    assert "7,721,324,544" in out and "qwen" in out and "seq_length" in out


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    root = tmp_path_factory.mktemp("v1files")
    c, ranks = tiny_config(VOCAB), train_ranks()
    sd = random_weights(c, seed=7)
    return c, sd, write_hf_dir(root / "tiny-qwen", c, sd, ranks), write_gguf(root / "tiny-qwen.gguf", c, sd, ranks)


TOKENS = torch.randint(0, 300, (100,), generator=torch.Generator().manual_seed(2)).tolist()


def logits(model, tokens=TOKENS) -> torch.Tensor:
    with torch.no_grad():
        return model(torch.tensor([tokens]), torch.arange(len(tokens))[None])[0]


def test_hf_directory_loads_with_logn_and_ntk(files):
    c, sd, path, _ = files
    m = load(path, progress=False)
    assert m.config.arch == "qwen" and m.config.seq_length == 32 and m.config.use_logn_attn
    assert m.config.intermediate_size == c.intermediate_size and m.generation_config["top_p"] == 0.8
    torch.testing.assert_close(logits(m.model), reference_logits(c, sd, TOKENS), rtol=0, atol=2e-5)
    assert m.tokenizer.encode("hello world") and m.tokenizer.eos_token_ids[0] == 256 + 80


def test_gguf_qwen_loads_as_llama_cpp_reads_it(files):
    """A `qwen` GGUF carries no seq_length: it runs with plain rope and no logn, as llama.cpp runs it."""
    c, sd, path, gguf_path = files
    g = load(gguf_path, progress=False)
    assert g.config.arch == "qwen" and g.config.intermediate_size == c.intermediate_size
    assert g.config.num_kv_heads == c.num_heads and not g.config.use_logn_attn and not g.config.use_dynamic_ntk
    plain = c.replace(use_logn_attn=False, use_dynamic_ntk=False)
    torch.testing.assert_close(logits(g.model), reference_logits(plain, sd, TOKENS), rtol=0, atol=2e-5)
    hf = load(path, progress=False)  # within seq_length both are the same model
    torch.testing.assert_close(logits(g.model, TOKENS[:32]), logits(hf.model, TOKENS[:32]), rtol=0, atol=1e-5)
    assert g.tokenizer.encode("hello world") == hf.tokenizer.encode("hello world")
    assert g.tokenizer.apply_chat([{"role": "user", "content": "hi"}]).startswith(
        "<|im_start|>system\nYou are a helpful assistant.<|im_end|>")


def test_q8_0_gguf_keeps_its_blocks(files, tmp_path, monkeypatch):
    monkeypatch.setenv("ZEN_CACHE", str(tmp_path / "cache"))  # the quantized copy auto makes
    c, sd, _, _ = files
    path = write_gguf(tmp_path / "q8.gguf", c, sd, train_ranks(), qtype=gguf.GGMLQuantizationType.Q8_0)
    exact = load(path, progress=False)  # dequantized to float32
    kept = load(path, progress=False, quant="auto")  # Q8_0 blocks carried over, fused c_attn included
    torch.testing.assert_close(logits(kept.model), logits(exact.model), rtol=0, atol=3e-2)


def test_bad_v1_directories(files, tmp_path):
    c, sd, path, _ = files
    missing = write_hf_dir(tmp_path / "missing", c, {k: v for k, v in sd.items() if "h.1.attn.c_attn" not in k},
                           train_ranks())
    with pytest.raises(ValueError, match="missing tensors transformer.h.1.attn.c_attn"):
        load(missing, progress=False)
    extra = write_hf_dir(tmp_path / "extra", c, sd, train_ranks())
    save_file({"transformer.h.0.attn.rotary.inv_freq": torch.zeros(8)}, str(extra / "more.safetensors"))
    with pytest.raises(ValueError, match="unexpected tensor 'transformer.h.0.attn.rotary.inv_freq'"):
        load(extra, progress=False)
    (tmp_path / "qwen2-names").mkdir()
    (tmp_path / "qwen2-names" / "config.json").write_text(json.dumps({"model_type": "qwen3"}))
    with pytest.raises(ValueError, match="unsupported model_type 'qwen3'"):
        load(tmp_path / "qwen2-names", progress=False)


def test_a_v1_hub_repository_selects_its_tiktoken_file():
    files = ["LICENSE", "README.md", "assets/logo.jpg", "config.json", "configuration_qwen.py", "cpp_kernels.py",
             "generation_config.json", "model.safetensors.index.json", "modeling_qwen.py", "qwen.tiktoken",
             "qwen_generation_utils.py", "tokenization_qwen.py", "tokenizer_config.json",
             *(f"model-0000{i}-of-00008.safetensors" for i in range(1, 9))]
    sel = select(parse("Qwen/Qwen-7B"), files)
    assert sel.kind == "hf" and "qwen.tiktoken" in sel.files and "tokenizer_config.json" in sel.files
    assert not any(f.endswith(".py") for f in sel.files) and len([f for f in sel.files if "model-" in f]) == 8
