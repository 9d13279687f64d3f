"""`zen train` end to end and its output: an HF directory that transformers and zenlm load with equal logits.

Runs the CLI in-process on tiny HF directories (SFT with LoRA merged on export, DPO, a YAML config),
the zen-tiny preset from scratch, and checks the exported files.
"""

import json

import pytest
import torch

from tests.tiny_train import CHATS, write_model_dir
from zenlm.cli import main

transformers = pytest.importorskip("transformers")


def zen_logits(path, tokens):
    from zenlm.weights.load import load

    m = load(str(path), progress=False).model
    return m(tokens, torch.arange(tokens.shape[1]).expand_as(tokens))


def hf_logits(path, tokens):
    hf = transformers.AutoModelForCausalLM.from_pretrained(str(path), dtype=torch.float32).eval()
    with torch.no_grad():
        return hf(tokens).logits


@pytest.fixture()
def sft_file(tmp_path):
    f = tmp_path / "chats.jsonl"
    f.write_text("".join(json.dumps(c) + "\n" for c in CHATS * 4))
    return f


@pytest.mark.parametrize("tie", [True, False])
def test_sft_lora_export_loads_in_transformers_with_equal_logits(tmp_path, sft_file, tie):
    base = write_model_dir(tmp_path / "base", tie_word_embeddings=tie)
    out = tmp_path / "out"
    assert main(["train", "sft", "--model", str(base), "--data", str(sft_file), "--output", str(out),
                 "--max-steps", "4", "--seq-len", "64", "--batch-size", "2", "--lora", "--lora-rank", "4",
                 "--lr", "1e-2", "--no-progress", "--no-bf16"]) == 0
    files = {p.name for p in out.iterdir()}
    assert {"config.json", "model.safetensors", "tokenizer.json", "tokenizer_config.json",
            "generation_config.json", "metrics.jsonl", "loss.png", "adapter", "checkpoints"} <= files
    tokens = torch.randint(0, 259, (2, 17), generator=torch.Generator().manual_seed(0))
    ours = zen_logits(out, tokens)
    torch.testing.assert_close(hf_logits(out, tokens), ours, atol=1e-4, rtol=1e-4)
    assert (ours - zen_logits(base, tokens)).abs().max() > 1e-3  # the merged adapter changed the model
    gen = json.loads((out / "generation_config.json").read_text())
    assert gen["eos_token_id"][0] == 258  # <|im_end|> first: the fine-tuned model stops at the end of its turn


@pytest.mark.parametrize("quantize", [None, "nf4"])
def test_lora_on_some_shards_exports_hf_names_equal_to_the_trained_model(tmp_path, quantize):
    """LoRA on k_proj and gate_proj only (shards of the fused linears) and o_proj, 4-bit base or not:
    the export splits q/k/v and gate/up back into HF linears, the adapters merged into their own rows,
    and transformers and zenlm both load it with the trained model's logits."""
    from safetensors import safe_open

    from tests.tiny_train import byte_tokenizer, tiny_model
    from zenlm.train.export import plain_state_dict, save_model_dir
    from zenlm.train.lora import LoRAConfig, LoRALinear, apply_lora

    model = apply_lora(tiny_model(), LoRAConfig(rank=4, alpha=8, targets=("k_proj", "gate_proj", "o_proj"),
                                                quantize=quantize))
    g = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, LoRALinear):
                for B in m.lora_B.values():
                    B.copy_(torch.randn(B.shape, generator=g) * 0.1)
    sd = plain_state_dict(model.state_dict(), 2.0, lambda prefix, _sd: model.get_submodule(prefix).base.dequantize())
    out = save_model_dir(tmp_path / "out", model.config, sd, byte_tokenizer())
    with safe_open(str(out / "model.safetensors"), "pt") as f:
        names = set(f.keys())
    assert "model.layers.1.self_attn.v_proj.bias" in names and "model.layers.0.mlp.up_proj.weight" in names
    assert not any("qkv_proj" in n or "gate_up_proj" in n or "lora" in n or ".base." in n for n in names)
    tokens = torch.randint(0, 300, (2, 13), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        want = model(tokens, torch.arange(13).expand(2, 13))
    torch.testing.assert_close(zen_logits(out, tokens), want, atol=1e-4, rtol=1e-4)
    torch.testing.assert_close(hf_logits(out, tokens), want, atol=1e-4, rtol=1e-4)


def test_dpo_and_yaml_config(tmp_path):
    base = write_model_dir(tmp_path / "base")
    data = tmp_path / "pairs.jsonl"
    data.write_text(json.dumps({"prompt": "Say yes", "chosen": "yes", "rejected": "no"}) + "\n"
                    + json.dumps({"prompt": "2+2", "chosen": "4", "rejected": "5"}) + "\n")
    cfg = tmp_path / "dpo.yaml"
    cfg.write_text(f"model: {base}\ndata: {data}\noutput: {tmp_path / 'out'}\nmax-steps: 3\nseq_len: 48\n"
                   "batch_size: 2\nbeta: 0.2\nbf16: false\nprogress: false\nval_fraction: 0\n")
    assert main(["train", "dpo", "--config", str(cfg), "--lr", "1e-3"]) == 0
    recs = [json.loads(x) for x in (tmp_path / "out" / "metrics.jsonl").read_text().splitlines()]
    assert len(recs) == 3 and recs[0]["loss"] == pytest.approx(0.6931471805599453, abs=1e-6)
    bad = tmp_path / "bad.yaml"
    bad.write_text("learning_rate: 3\n")
    assert main(["train", "dpo", "--config", str(bad)]) == 1


def test_zen_tiny_pretrain_from_scratch(tmp_path, gguf_path):
    src = tmp_path / "src"
    src.mkdir()
    for i in range(6):
        (src / f"m{i}.py").write_text(f"def f{i}(x):\n    return x + {i}\n\n" * 40)
    out = tmp_path / "tiny"
    assert main(["train", "pretrain", "--model", "zen-tiny", "--data", str(src), "--output", str(out),
                 "--max-steps", "3", "--seq-len", "64", "--batch-size", "2", "--no-progress",
                 "--checkpointing", "--val-fraction", "0.2"]) == 0
    cfg = json.loads((out / "config.json").read_text())
    assert cfg["hidden_size"] == 96 and cfg["vocab_size"] == 151936 and not cfg["tie_word_embeddings"]
    recs = [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines()]
    assert recs[0]["loss"] > recs[-1]["loss"] and "eval_loss" in recs[-1]
    tokens = torch.randint(0, 151936, (1, 9), generator=torch.Generator().manual_seed(0))
    torch.testing.assert_close(hf_logits(out, tokens), zen_logits(out, tokens), atol=1e-4, rtol=1e-4)
