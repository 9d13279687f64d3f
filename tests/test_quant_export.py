"""Writing GPTQ/AWQ HF directories (`quantize_to_hf`) and `zen perplexity`, on tiny models built in code.

The written directory has the tensors, dtypes, shapes and quantization_config AutoGPTQ/GPTQModel and
AutoAWQ write, and loads back in zenlm as the model that was quantized in memory. (transformers loads
such a directory only through optimum + gptqmodel or autoawq, which this environment does not have.)
"""

import json
import math
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from safetensors import safe_open

from tests.tiny_train import write_model_dir
from zenlm.cli import main
from zenlm.quant import grid
from zenlm.quant.hf_export import quantize, quantize_to_hf
from zenlm.quant.perplexity import perplexity, windows
from zenlm.weights.load import load

SHAPE = dict(hidden_size=64, intermediate_size=128, num_layers=2, num_heads=4, num_kv_heads=2, head_dim=16)
TEXT = "def add(a, b):\n    return a + b\n\nclass Point:\n    x: int = 0\n    y: int = 0\n" * 40


@pytest.fixture
def src(tmp_path) -> Path:
    return write_model_dir(tmp_path / "src", **SHAPE)


@pytest.fixture
def calib(tmp_path) -> Path:
    (tmp_path / "calib.txt").write_text(TEXT)
    return tmp_path / "calib.txt"


def tensors_of(path: Path) -> dict[str, torch.Tensor]:
    with safe_open(str(path / "model.safetensors"), "pt") as f:
        return {k: f.get_tensor(k) for k in f.keys()}


def test_rtn_directory_has_gptq_layout_and_loads_back(src, tmp_path):
    out = quantize_to_hf(str(src), tmp_path / "rtn", "rtn", 4, 32, None, progress=False)
    cfg = json.loads((out / "config.json").read_text())["quantization_config"]
    assert cfg | {"model_name_or_path": None} == {
        "quant_method": "gptq", "bits": 4, "group_size": 32, "damp_percent": 0.01, "desc_act": False,
        "static_groups": False, "sym": True, "true_sequential": True, "checkpoint_format": "gptq",
        "model_name_or_path": None, "model_file_base_name": "model"}
    assert json.loads((out / "quantize_config.json").read_text()) == cfg
    for name in ("tokenizer.json", "tokenizer_config.json", "generation_config.json"):
        assert (out / name).is_file()
    t = tensors_of(out)
    q = "model.layers.0.self_attn.q_proj"
    assert t[f"{q}.qweight"].dtype == torch.int32 and t[f"{q}.qweight"].shape == (64 * 4 // 32, 64)
    assert t[f"{q}.qzeros"].dtype == torch.int32 and t[f"{q}.qzeros"].shape == (2, 64 * 4 // 32)
    assert t[f"{q}.scales"].dtype == torch.float16 and t[f"{q}.scales"].shape == (2, 64)
    assert torch.equal(t[f"{q}.g_idx"], torch.arange(64, dtype=torch.int32) // 32)
    assert t[f"{q}.bias"].dtype == torch.float16 and f"{q}.weight" not in t
    assert t["model.layers.1.mlp.down_proj.qweight"].shape == (128 * 4 // 32, 64)
    assert t["model.embed_tokens.weight"].dtype == torch.float16 and "lm_head.weight" not in t  # tied
    # sym: every stored zero point is 8 - 1 = 7 in each nibble
    assert (t[f"{q}.qzeros"] == 0x77777777).all()
    # loads back as the source rounded onto the grid, member by member
    source = load(src, progress=False).model.state_dict()
    back = load(out, progress=False).model.state_dict()
    w = source["model.layers.0.self_attn.qkv_proj.weight"]
    want = torch.cat([grid.rtn(w[rows], 4, 32).dequantize() for rows in (slice(0, 64), slice(64, 96), slice(96, 128))])
    assert torch.equal(back["model.layers.0.self_attn.qkv_proj.weight"], want)
    assert load(out, quant="int4", progress=False).model.model.layers[0].mlp.down_proj.bits == 4


@pytest.mark.parametrize("method,bits,group,desc_act", [("gptq", 4, 32, False), ("gptq", 8, -1, True),
                                                        ("awq", 4, 64, False)])
def test_calibrated_directory_loads_back_as_the_model_quantized_in_memory(src, calib, tmp_path, monkeypatch,
                                                                           method, bits, group, desc_act):
    monkeypatch.setenv("ZEN_CACHE", str(tmp_path / "cache"))
    out = quantize(str(src), tmp_path / method, method, bits, group, calib, desc_act, progress=False,
                   samples=4, seq_len=64, awq_search_samples=2)
    t = tensors_of(out)
    name = "model.layers.1.mlp.gate_proj"
    if method == "awq":
        assert json.loads((out / "config.json").read_text())["quantization_config"] == {
            "quant_method": "awq", "bits": 4, "group_size": 64, "zero_point": True, "version": "gemm",
            "modules_to_not_convert": None}
        assert t[f"{name}.qweight"].shape == (64, 128 // 8) and f"{name}.g_idx" not in t
        assert not (out / "quantize_config.json").exists()
    else:
        assert t[f"{name}.qweight"].shape == (64 * bits // 32, 128)
        assert torch.equal(t[f"{name}.g_idx"], torch.arange(64, dtype=torch.int32) // (64 if group == -1 else group))
    tokens = windows(load(src, progress=False).tokenizer.encode(TEXT), 64)[:3]
    back = load(out, progress=False).model
    fp = load(src, progress=False).model
    r = perplexity(back, tokens, reference=fp)
    assert r.agreement > 0.5 and abs(math.log(r.perplexity / r.reference_perplexity)) < 0.2 and 0 < r.kl < 0.1
    qback = load(out, quant="int8", progress=False).model
    assert perplexity(qback, tokens, reference=back).agreement > 0.9


def test_gptq_act_order_writes_scattered_groups(src, calib, tmp_path):
    out = quantize(str(src), tmp_path / "act", "gptq", 4, 32, calib, desc_act=True, progress=False, samples=4,
                   seq_len=64)
    g_idx = tensors_of(out)["model.layers.0.self_attn.k_proj.g_idx"]
    assert sorted(g_idx.tolist()) == [0] * 32 + [1] * 32 and not torch.equal(g_idx, g_idx.sort().values)
    t = tensors_of(out)  # q, k, v read one input: one act-order for all three
    assert torch.equal(t["model.layers.0.self_attn.q_proj.g_idx"], g_idx)
    assert type(load(out, quant="int4", progress=False).model.model.layers[0].self_attn.qkv_proj).__name__ == \
        "PermutedInput"


@pytest.mark.parametrize("args,message", [
    (("bnb", 4, 32, None, False), "unknown method 'bnb'"),
    (("rtn", 3, 32, None, False), "bits must be 4 or 8"),
    (("awq", 8, 32, "calib", False), "4-bit weights only"),
    (("gptq", 4, 32, None, False), "gptq needs calibration text"),
    (("rtn", 4, 48, None, False), "group size must be a positive multiple of 32"),
    (("awq", 4, 32, "calib", True), "desc_act"),
    (("rtn", 4, 128, None, False), "64 inputs, not whole groups of 128"),
])
def test_bad_arguments(src, calib, tmp_path, args, message):
    method, bits, group, c, desc_act = args
    with pytest.raises(ValueError, match=message):
        quantize_to_hf(str(src), tmp_path / "out", method, bits, group, calib if c else None, desc_act,
                       progress=False)


def test_output_holding_a_model_is_refused(src, tmp_path):
    with pytest.raises(ValueError, match="already holds a model"):
        quantize_to_hf(str(src), src, "rtn", 4, 32, None, progress=False)


def test_perplexity_is_the_mean_cross_entropy_over_windows(src):
    model = load(src, progress=False).model
    ids = list(range(1, 200))
    tokens = windows(ids, 64)
    assert tokens.shape == (3, 64) and windows(ids[:10], 64).shape == (1, 10)
    with torch.no_grad():
        logits = model(tokens, torch.arange(64).expand(3, 64))
    nll = F.cross_entropy(logits[:, :-1].reshape(-1, logits.shape[-1]), tokens[:, 1:].reshape(-1))
    r = perplexity(model, tokens, reference=model)
    assert r.tokens == 3 * 63 and math.isclose(r.perplexity, math.exp(nll.item()), rel_tol=1e-5)
    assert r.agreement == 1.0 and r.reference_perplexity == r.perplexity and abs(r.kl) < 1e-6


def test_zen_perplexity_cli(src, tmp_path, capsys):
    data = tmp_path / "held.txt"
    data.write_text(TEXT)
    assert main(["perplexity", str(src), "--data", str(data), "--ctx", "64", "--reference", str(src),
                 "--reference-dtype", "int8", "--json"]) == 0
    r = json.loads(capsys.readouterr().out)
    assert r["windows"] == r["tokens"] // 63 and 0.8 < r["agreement"] <= 1 and r["perplexity"] > 1
    assert main(["perplexity", str(src), "--data", str(data), "--ctx", "64", "--max-tokens", "100"]) == 0
    assert "over 63 tokens (1 windows of 64)" in capsys.readouterr().out
    assert main(["perplexity", str(src), "--data", str(tmp_path / "none.txt")]) == 1
    assert "is not a file" in capsys.readouterr().err
    assert main(["perplexity", str(src), "--data", str(data), "--ctx", "1"]) == 1
    assert "--ctx must be at least 2" in capsys.readouterr().err
