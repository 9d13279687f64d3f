"""Rotary frequencies for the zen long-context settings equal transformers' own computation."""

import pytest
import torch

from zenlm.config import Config, preset
from zenlm.model import rope_frequencies

rope_utils = pytest.importorskip("transformers.modeling_rope_utils")
transformers = pytest.importorskip("transformers")


def hf_config(c: Config, scaling: dict):
    return transformers.Qwen2Config(
        hidden_size=c.hidden_size, num_attention_heads=c.num_heads, num_key_value_heads=c.num_kv_heads,
        max_position_embeddings=c.context_length, rope_parameters={"rope_theta": c.rope_theta} | scaling)


YARN = {"type": "yarn", "factor": 4.0, "original_max_position_embeddings": 32768}


@pytest.mark.parametrize("name", ["zen-7b", "zen-72b", "zen-0.5b"])
def test_yarn_matches_transformers(name):
    c = preset(name).replace(rope_scaling=dict(YARN), context_length=131072)
    inv, attn = rope_frequencies(c)
    hf = hf_config(c, {"rope_type": "yarn", "factor": 4.0, "original_max_position_embeddings": 32768})
    ref_inv, ref_attn = rope_utils._compute_yarn_parameters(hf, "cpu")
    torch.testing.assert_close(inv, ref_inv, rtol=0, atol=0)
    assert attn == pytest.approx(ref_attn) and attn == pytest.approx(1.138629, abs=1e-6)


def test_yarn_band_for_head_dim_128():
    """models.md: d=128, theta 1e6, L=32768, s=4 keeps indices < 23 and divides indices > 40 by 4."""
    c = preset("zen-7b")
    inv, _ = rope_frequencies(c)
    plain, _ = rope_frequencies(c.replace(rope_scaling=None))
    torch.testing.assert_close(inv[:23], plain[:23])
    torch.testing.assert_close(inv[40:], plain[40:] / 4)


@pytest.mark.parametrize("seq_len", [1000, 32768, 40000, 131072])
def test_dynamic_ntk_matches_transformers(seq_len):
    c = preset("zen-0.5b").replace(rope_scaling={"type": "dynamic", "factor": 2.0})
    inv, attn = rope_frequencies(c, seq_len)
    hf = hf_config(c, {"rope_type": "dynamic", "factor": 2.0})
    ref_inv, _ = rope_utils._compute_dynamic_ntk_parameters(hf, "cpu", seq_len=seq_len)
    torch.testing.assert_close(inv, ref_inv, rtol=1e-6, atol=0)
    assert attn == 1.0
    if seq_len <= 32768:
        torch.testing.assert_close(inv, rope_frequencies(c.replace(rope_scaling=None))[0])
