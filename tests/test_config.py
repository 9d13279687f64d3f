"""Config: presets for every announced model, parameter counts against the published figures, readers."""

import pytest

from zenlm.config import PRESETS, Config, param_counts, preset

# Published counts in billions (reference/models.md section 2): total, non-embedding, active.
PUBLISHED = {
    "zen-0.5b": (0.49, 0.36, None), "zen-1.5b": (1.54, 1.31, None), "zen-3b": (3.09, 2.77, None),
    "zen-7b": (7.61, 6.53, None), "zen-14b": (14.7, 13.1, None), "zen-32b": (32.5, 31.0, None),
    "zen-72b": (72.7, 70.0, None), "zen-coder-0.5b": (0.49, 0.36, None), "zen-coder-7b": (7.61, 6.53, None),
    "qwen1.5-7b": (7.7, 6.5, None), "qwen1.5-moe-a2.7b": (14.3, None, 2.7),
}
ANNOUNCED = ([f"zen-{s}" for s in ("0.5b", "1.5b", "3b", "7b", "14b", "32b", "72b")]
             + [f"zen-coder-{s}" for s in ("0.5b", "1.5b", "7b", "32b")]
             + [f"zen-math-{s}" for s in ("1.5b", "7b", "72b")]
             + [f"qwen1.5-{s}" for s in ("0.5b", "1.8b", "4b", "7b", "14b", "32b", "72b", "110b")]
             + [f"qwen-{s}" for s in ("1.8b", "7b", "14b", "72b")]
             + ["qwen1.5-moe-a2.7b", "zen-tiny"])


def test_every_announced_model_has_a_preset():
    assert sorted(ANNOUNCED) == sorted(PRESETS)


@pytest.mark.parametrize("name", PUBLISHED)
def test_param_counts_match_published(name):
    total, non_emb, active = PUBLISHED[name]
    counts = param_counts(preset(name))
    # the published figures are rounded to 2-3 significant digits; 1% covers the rounding (and 14B/32B's)
    assert counts["params_total"] / 1e9 == pytest.approx(total, rel=0.01)
    if non_emb:
        assert counts["params_non_embedding"] / 1e9 == pytest.approx(non_emb, rel=0.011)
    if active:
        assert counts["params_active"] / 1e9 == pytest.approx(active, rel=0.01)
    assert ("params_active" in counts) == preset(name).is_moe


def test_exact_counts():
    assert param_counts(preset("zen-0.5b")) == {"params_total": 494_032_768, "params_non_embedding": 357_898_112}
    assert 10e6 <= param_counts(preset("zen-tiny"))["params_total"] <= 30e6


def test_long_context_presets_use_yarn():
    c = preset("zen-7b")
    assert c.context_length == 131072 and c.rope_scaling["type"] == "yarn" and c.rope_scaling["factor"] == 4.0
    assert preset("zen-0.5b").rope_scaling is None
    assert preset("zen-math-7b").rope_theta == 10000.0 and preset("zen-math-7b").context_length == 4096


def test_preset_is_a_copy_and_unknown_is_an_error():
    preset("zen-0.5b").num_layers = 1
    assert PRESETS["zen-0.5b"].num_layers == 24
    with pytest.raises(ValueError, match="unknown preset 'zen-9b'"):
        preset("zen-9b")


QWEN25_7B_INSTRUCT = {  # the release's config.json (transformers 4.x layout)
    "architectures": ["Qwen2ForCausalLM"], "attention_dropout": 0.0, "bos_token_id": 151643,
    "eos_token_id": 151645, "hidden_act": "silu", "hidden_size": 3584, "initializer_range": 0.02,
    "intermediate_size": 18944, "max_position_embeddings": 32768, "max_window_layers": 28,
    "model_type": "qwen2", "num_attention_heads": 28, "num_hidden_layers": 28, "num_key_value_heads": 4,
    "rms_norm_eps": 1e-06, "rope_theta": 1000000.0, "sliding_window": 131072, "tie_word_embeddings": False,
    "torch_dtype": "bfloat16", "use_cache": True, "use_sliding_window": False, "vocab_size": 152064,
    "rope_scaling": {"factor": 4.0, "original_max_position_embeddings": 32768, "type": "yarn"},
}


def test_from_hf_reads_a_release_config():
    c = Config.from_hf(QWEN25_7B_INSTRUCT)
    shape = preset("zen-7b")
    for f in ("hidden_size", "num_layers", "num_heads", "num_kv_heads", "head_dim", "intermediate_size",
              "vocab_size", "rope_theta", "tie_word_embeddings", "rope_scaling"):
        assert getattr(c, f) == getattr(shape, f), f
    assert c.sliding_window is None  # use_sliding_window is false
    assert c.context_length == 32768


def test_from_hf_v5_rope_parameters_and_sliding_window():
    d = QWEN25_7B_INSTRUCT | {"rope_parameters": {"rope_type": "default", "rope_theta": 5e6},
                              "use_sliding_window": True, "sliding_window": 4096, "max_window_layers": 20}
    d.pop("rope_theta")
    d.pop("rope_scaling")
    c = Config.from_hf(d)
    assert c.rope_theta == 5e6 and c.rope_scaling is None
    assert c.layer_window(19) is None and c.layer_window(20) == 4096


def test_from_hf_moe():
    d = {"model_type": "qwen2_moe", "hidden_size": 2048, "num_hidden_layers": 24, "num_attention_heads": 16,
         "num_key_value_heads": 16, "intermediate_size": 5632, "vocab_size": 151936, "num_experts": 60,
         "num_experts_per_tok": 4, "moe_intermediate_size": 1408, "shared_expert_intermediate_size": 5632,
         "norm_topk_prob": False, "decoder_sparse_step": 1, "tie_word_embeddings": False,
         "max_position_embeddings": 8192, "rope_theta": 1e6}
    c = Config.from_hf(d)
    assert param_counts(c) == param_counts(preset("qwen1.5-moe-a2.7b"))


def test_unknown_model_type():
    with pytest.raises(ValueError, match="unsupported model_type 'llama'"):
        Config.from_hf({"model_type": "llama"})


def test_from_gguf_default_model(gguf_meta):
    c = Config.from_gguf(gguf_meta, has_output=True)
    shape = (c.arch, c.hidden_size, c.num_layers, c.num_heads, c.num_kv_heads, c.head_dim)
    assert shape == ("qwen2", 896, 24, 14, 2, 64)
    assert (c.intermediate_size, c.vocab_size, c.rope_theta, c.rms_norm_eps) == (4864, 151936, 1e6, 1e-6)
    assert c.context_length == 32768 and not c.tie_word_embeddings
