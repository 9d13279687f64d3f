"""Parity of zenlm.model with transformers' Qwen2ForCausalLM and Qwen2MoeForCausalLM (fp32, tiny random configs).

Full forward, token-by-token decode through the KV cache, sliding-window layers and the MoE block.
The HF weights go in through the loader (into the fused q/k/v and gate/up). transformers is only the oracle.
"""

from pathlib import Path

import pytest
import torch

from zenlm.config import Config
from zenlm.model import KVCache, checkpoint_state_dict
from zenlm.weights.load import build

transformers = pytest.importorskip("transformers")

DENSE = dict(vocab_size=300, hidden_size=64, intermediate_size=160, num_hidden_layers=3, num_attention_heads=4,
             num_key_value_heads=2, max_position_embeddings=256, rope_theta=10000.0, rms_norm_eps=1e-6)
MOE = dict(DENSE, num_experts=8, num_experts_per_tok=2, moe_intermediate_size=48,
           shared_expert_intermediate_size=96, decoder_sparse_step=1)


def hf_pair(kind: str, **over):
    """A random HF model and the zenlm model holding the same weights."""
    torch.manual_seed(0)
    if kind == "moe":
        cfg = transformers.Qwen2MoeConfig(**(MOE | over))
        hf = transformers.Qwen2MoeForCausalLM(cfg)
    else:
        cfg = transformers.Qwen2Config(**(DENSE | over))
        hf = transformers.Qwen2ForCausalLM(cfg)
    hf = hf.float().eval()
    with torch.no_grad():  # random biases and norms, so nothing is trivially zero or one
        for name, p in hf.named_parameters():
            if name.endswith("bias") or "norm" in name:
                p.normal_(0, 0.5 if "norm" in name else 0.1).add_(1.0 if "norm" in name else 0.0)
    c = Config.from_hf(cfg.to_dict())
    ours = build(c, iter(hf_state_dict(hf, c).items()), Path("hf"))  # strict: every tensor has its place
    assert ours.model.layers[0].self_attn.qkv_proj.weight.shape[0] == (c.num_heads + 2 * c.num_kv_heads) * c.head_dim
    return hf, ours


def hf_state_dict(hf, c: Config) -> dict:
    """transformers v5 fuses MoE experts (gate_up_proj [E, 2I, C]); checkpoints keep one module per expert."""
    sd = {}
    for k, v in hf.state_dict().items():
        if k.endswith("experts.gate_up_proj"):
            for e in range(v.shape[0]):
                gate, up = v[e].chunk(2, dim=0)
                sd[k.replace("gate_up_proj", f"{e}.gate_proj.weight")] = gate
                sd[k.replace("gate_up_proj", f"{e}.up_proj.weight")] = up
        elif k.endswith("experts.down_proj"):
            for e in range(v.shape[0]):
                sd[k.replace("down_proj", f"{e}.down_proj.weight")] = v[e]
        else:
            sd[k] = v
    return sd


@pytest.mark.parametrize("kind,over", [
    ("dense", {}),
    ("dense", {"tie_word_embeddings": True}),
    ("dense", {"use_sliding_window": True, "sliding_window": 5, "max_window_layers": 1}),
    ("dense", {"rope_scaling": {"rope_type": "yarn", "factor": 4.0, "original_max_position_embeddings": 64}}),
    ("moe", {}),
    ("moe", {"norm_topk_prob": True, "decoder_sparse_step": 2}),
])
def test_forward_and_decode_match_transformers(kind, over):
    hf, ours = hf_pair(kind, **over)
    tokens = torch.randint(0, 300, (2, 12))
    positions = torch.arange(12).expand(2, 12)
    with torch.no_grad():
        ref = hf(tokens).logits
        full = ours(tokens, positions)
        torch.testing.assert_close(full, ref, rtol=1e-4, atol=1e-4)
        # prefill 5 tokens, then decode one at a time through the cache
        cache = KVCache(ours.config, batch=2, max_len=32, dtype=torch.float32, device="cpu")
        steps = [ours(tokens[:, :5], positions[:, :5], cache)]
        for t in range(5, 12):
            steps.append(ours(tokens[:, t:t + 1], positions[:, t:t + 1], cache))
        torch.testing.assert_close(torch.cat(steps, 1), ref, rtol=1e-4, atol=1e-4)


def test_logit_index_selects_one_position_per_row():
    _, ours = hf_pair("dense")
    tokens = torch.randint(0, 300, (2, 7))
    pos = torch.arange(7).expand(2, 7)
    with torch.no_grad():
        full = ours(tokens, pos)
        torch.testing.assert_close(ours(tokens, pos, logit_index=torch.tensor([6, 2])), full[[0, 1], [6, 2]])


def test_cache_overflow_is_a_clear_error():
    _, ours = hf_pair("dense")
    cache = KVCache(ours.config, batch=1, max_len=4, dtype=torch.float32, device="cpu")
    with pytest.raises(ValueError, match="past the cache length 4"):
        ours(torch.zeros(1, 5, dtype=torch.long), torch.arange(5)[None], cache)


def test_dynamic_ntk_forward_matches_transformers():
    """Past its context (8 here), dynamic NTK stretches the base; transformers' full forward is the oracle."""
    hf, ours = hf_pair("dense", max_position_embeddings=8, rope_scaling={"rope_type": "dynamic", "factor": 2.0})
    tokens = torch.randint(0, 300, (1, 12))
    with torch.no_grad():
        torch.testing.assert_close(ours(tokens, torch.arange(12)[None]), hf(tokens).logits, rtol=1e-4, atol=1e-4)


def test_checkpoint_names_round_trip_through_the_fused_modules():
    """checkpoint_state_dict gives back exactly the HF tensors the loader was given, member by member."""
    hf, ours = hf_pair("moe")
    want = hf_state_dict(hf, ours.config)
    got = checkpoint_state_dict(ours)
    assert set(got) == set(want)
    for k, v in want.items():
        torch.testing.assert_close(got[k], v, rtol=0, atol=0)
    assert "model.layers.0.self_attn.q_proj.weight" in got and not any("qkv_proj" in k for k in got)
