"""LoRA, QLoRA and DPO on tiny models: merged == unmerged, adapter-only save/load, 4-bit bases, DPO at step 1.

The DPO loss at the first step is log 2 (policy == reference), both with a frozen copy and with
LoRA's adapters-disabled reference, and DPO training raises the chosen answers over the rejected.
"""

import copy
import math

import pytest
import torch

from tests.tiny_train import byte_tokenizer, tiny_model
from zenlm.train.data import Loader, collate, collate_pairs, dpo_pair, pack_documents
from zenlm.train.lora import (
    Linear4bit,
    LoRAConfig,
    LoRALinear,
    adapter_state_dict,
    adapter_tensors,
    adapters_disabled,
    apply_lora,
    load_adapter,
    merge_lora,
    save_adapter,
)
from zenlm.train.losses import DPO, CrossEntropy, dpo_loss
from zenlm.train.trainer import TrainConfig, Trainer, hidden_states

TOKENS = torch.randint(0, 300, (2, 20), generator=torch.Generator().manual_seed(0))
POS = torch.arange(20).expand(2, 20)


def perturb_adapters(model, seed=1):
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, LoRALinear):
                for B in m.lora_B.values():
                    B.copy_(torch.randn(B.shape, generator=g) * 0.1)


def test_lora_starts_as_base_and_merges_exactly():
    base = tiny_model().eval()
    ref = base(TOKENS, POS)
    model = apply_lora(copy.deepcopy(base), LoRAConfig(rank=4, alpha=8))
    torch.testing.assert_close(model(TOKENS, POS), ref)  # B = 0
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    assert trainable and all(".lora_" in n for n in trainable)
    lora = [m for m in model.modules() if isinstance(m, LoRALinear)]
    assert len(lora) == 2 * 4 and sum(len(m.lora_A) for m in lora) == 2 * 7  # q/k/v and gate/up: one pair each
    perturb_adapters(model)
    unmerged = model(TOKENS, POS)
    assert (unmerged - ref).abs().max() > 1e-3
    with adapters_disabled(model):
        torch.testing.assert_close(model(TOKENS, POS), ref)
    merge_lora(model)
    assert not any(isinstance(m, LoRALinear) for m in model.modules())
    torch.testing.assert_close(model(TOKENS, POS), unmerged, atol=1e-5, rtol=1e-5)


def test_adapter_only_save_and_load(tmp_path):
    model = apply_lora(tiny_model(), LoRAConfig(rank=4, alpha=8, targets=("q_proj", "v_proj", "down_proj")))
    perturb_adapters(model)
    save_adapter(model, tmp_path, LoRAConfig(rank=4, alpha=8, targets=("q_proj", "v_proj", "down_proj")))
    files = {p.name for p in tmp_path.iterdir()}
    assert files == {"adapter_model.safetensors", "adapter_config.json"}
    assert (tmp_path / "adapter_model.safetensors").stat().st_size < 100_000  # adapters only, not the base
    fresh = tiny_model()
    cfg = load_adapter(fresh, tmp_path)
    assert cfg.targets == ("q_proj", "v_proj", "down_proj")
    torch.testing.assert_close(fresh(TOKENS, POS), model(TOKENS, POS))


def test_adapter_saved_from_a_gathered_state_dict(tmp_path):
    cfg = LoRAConfig(rank=4, alpha=8)
    model = apply_lora(tiny_model(), cfg)
    perturb_adapters(model)
    tensors = adapter_tensors(model.state_dict())  # what rank 0 has after gathering FSDP's shards
    own = adapter_state_dict(model)
    assert tensors.keys() == own.keys() and len(tensors) == 2 * 7 * 2
    save_adapter(None, tmp_path, cfg, tensors)
    fresh = tiny_model()
    load_adapter(fresh, tmp_path)
    torch.testing.assert_close(fresh(TOKENS, POS), model(TOKENS, POS))
    with pytest.raises(ValueError, match="no LoRA adapter tensors"):
        save_adapter(None, tmp_path, cfg, adapter_tensors(tiny_model().state_dict()))


def test_adapter_is_peft_shaped_per_hf_linear():
    """Targets on shards of the fused linears save as PEFT adapters on the HF linears, and PEFT's own
    formula on the HF weights (W + B @ A * alpha / r per adapted linear) gives the LoRA model's logits."""
    from pathlib import Path

    from zenlm.model import checkpoint_state_dict
    from zenlm.train.lora import adapter_state_dict
    from zenlm.weights.load import build

    base = tiny_model()
    hf = {k: v.clone() for k, v in checkpoint_state_dict(base).items()}
    model = apply_lora(copy.deepcopy(base), LoRAConfig(rank=4, alpha=8, targets=("k_proj", "up_proj", "o_proj")))
    perturb_adapters(model)
    sd = adapter_state_dict(model)
    names = {k.removeprefix("base_model.model.").rsplit(".", 2)[0] for k in sd}
    assert names == {f"model.layers.{i}.{m}" for i in range(2) for m in ("self_attn.k_proj", "mlp.up_proj",
                                                                          "self_attn.o_proj")}
    assert sd["base_model.model.model.layers.0.self_attn.k_proj.lora_B.weight"].shape == (32, 4)
    assert sd["base_model.model.model.layers.0.mlp.up_proj.lora_A.weight"].shape == (4, 64)
    for name in names:
        A, B = (sd[f"base_model.model.{name}.lora_{x}.weight"] for x in "AB")
        hf[f"{name}.weight"] = hf[f"{name}.weight"] + B @ A * 2.0
    peft_style = build(base.config, iter(hf.items()), Path("peft"))
    with torch.no_grad():
        torch.testing.assert_close(peft_style(TOKENS, POS), model(TOKENS, POS), atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("kind,tol", [("nf4", 0.12), ("int4", 0.12)])
def test_4bit_base_is_close_and_qlora_trains(tmp_path, kind, tol):
    lin = torch.nn.Linear(128, 64)
    q = Linear4bit(lin, kind)
    assert q.packed.dtype == torch.uint8 and q.packed.shape == (64, 64)
    err = (q.dequantize() - lin.weight).norm() / lin.weight.norm()
    assert err < tol, err
    model = apply_lora(tiny_model(hidden_size=64), LoRAConfig(rank=4, alpha=8, quantize=kind))
    wrapped = [m for n, m in model.named_modules() if n.endswith(("qkv_proj", "gate_up_proj", "down_proj"))]
    assert len(wrapped) == 6 and all(isinstance(m, LoRALinear) and isinstance(m.base, Linear4bit) for m in wrapped)
    rows = pack_documents([list(range(i, i + 30)) for i in range(0, 200, 10)], 32, 256)
    tr = Trainer(model, CrossEntropy(), Loader(rows[:2], 2, shuffle=False), collate,
                 TrainConfig(output=str(tmp_path), max_steps=15, batch_size=2, lr=1e-2, warmup_steps=1,
                             bf16=False, progress=False))
    hist = tr.fit()
    assert hist[-1]["loss"] < hist[0]["loss"] - 0.5


def test_dpo_loss_formula():
    z = torch.tensor([0.0, 1.0, -2.0])
    got = dpo_loss(z, torch.zeros(3), torch.zeros(3), torch.zeros(3), beta=0.5)
    torch.testing.assert_close(got, -torch.nn.functional.logsigmoid(0.5 * z))
    assert float(dpo_loss(torch.tensor(1.0), torch.tensor(0.0), torch.tensor(1.0), torch.tensor(0.0), 0.1)) \
        == pytest.approx(math.log(2))


def dpo_pairs():
    tok = byte_tokenizer()
    recs = [{"prompt": "Say yes", "chosen": "yes", "rejected": "no way"},
            {"prompt": [{"role": "user", "content": "Pick a colour"}], "chosen": "green", "rejected": "mauve"}]
    return [dpo_pair(tok, r, 48) for r in recs]


@pytest.mark.parametrize("lora", [False, True])
def test_dpo_first_step_is_log2_and_training_prefers_chosen(tmp_path, lora):
    model = tiny_model()
    if lora:
        apply_lora(model, LoRAConfig(rank=4, alpha=8))

        def reference(b):
            with adapters_disabled(model):
                return hidden_states(model, b), model.lm_head.weight
    else:
        frozen = copy.deepcopy(model).requires_grad_(False)

        def reference(b):
            return hidden_states(frozen, b), frozen.lm_head.weight
    tr = Trainer(model, DPO(reference, beta=0.5), Loader(dpo_pairs(), 2, shuffle=False), collate_pairs,
                 TrainConfig(output=str(tmp_path), max_steps=12, batch_size=2, lr=5e-3, warmup_steps=1,
                             bf16=False, progress=False))
    hist = tr.fit()
    assert hist[0]["loss"] == pytest.approx(math.log(2), abs=1e-6)
    assert hist[0]["rewards_chosen"] == pytest.approx(0.0, abs=1e-6)
    assert hist[-1]["loss"] < 0.5 * math.log(2)
    assert hist[-1]["reward_accuracy"] == 1.0
    assert hist[-1]["rewards_chosen"] > hist[-1]["rewards_rejected"]
