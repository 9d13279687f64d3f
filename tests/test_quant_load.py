"""Loading GPTQ and AWQ HF directories: tiny checkpoints packed by tests/quant_reference.py (written from the
formats' description), against the fp32 model built from the weights they stand for.

Without a quantization mode the loader dequantizes (the float reference: the same logits); with one, each
linear becomes the QLinear its integers already are (the same weights up to fp16 rounding of the offset;
act-order through an input permutation), and the copy cached on first load restores the same model.
"""

import json
import logging

import numpy as np
import pytest
import torch

import zenlm.kernels.ops
from tests.quant_reference import dequantize, pack_awq, pack_gptq, random_grid, write_quantized_dir
from zenlm.config import Config
from zenlm.model import Transformer, checkpoint_layout
from zenlm.quant.convert import PermutedInput
from zenlm.quant.linear import QLinear
from zenlm.quant.packing import Grid, from_awq, from_gptq, to_awq, to_gptq
from zenlm.weights.load import load

TINY = Config(name="t", vocab_size=300, hidden_size=128, num_layers=2, num_heads=4, num_kv_heads=2, head_dim=32,
              intermediate_size=256, tie_word_embeddings=True, context_length=128, rope_theta=10000.0)


def float_model(c: Config, truth: dict[str, torch.Tensor]) -> Transformer:
    """The fp32 model holding exactly these checkpoint tensors (HF names)."""
    model = Transformer(c)
    layout, sd = checkpoint_layout(model), model.state_dict()
    with torch.no_grad():
        for name, t in truth.items():
            target, rows = layout[name]
            (sd[target] if rows is None else sd[target][rows]).copy_(t)
    model.tie_weights()
    return model.eval()


def logits(model: Transformer) -> torch.Tensor:
    tokens = torch.randint(0, 259, (2, 24), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        return model(tokens, torch.arange(24).expand(2, 24)).float()


def rel(a: torch.Tensor, b: torch.Tensor) -> float:
    return ((a - b).norm() / b.norm()).item()


def as_grid(g: dict, bits: int) -> Grid:
    return Grid(torch.from_numpy(g["q"]).to(torch.uint8), torch.from_numpy(g["scale"]),
                torch.from_numpy(g["zero"]).to(torch.int16), torch.from_numpy(g["g_idx"]).int(), bits)


@pytest.mark.parametrize("bits", [4, 8])
@pytest.mark.parametrize("v1", [True, False])
def test_gptq_packing_equals_the_reference_and_round_trips(bits, v1):
    rng = np.random.default_rng(bits)
    g = random_grid(rng, 48, 256, bits, 64, sym=False, order=rng.permutation(256), v1=v1)
    qweight, qzeros = pack_gptq(g["q"], g["zero"], bits, v1)
    packed = to_gptq(as_grid(g, bits), v1)
    assert torch.equal(packed["qweight"], qweight) and torch.equal(packed["qzeros"], qzeros)
    assert packed["qweight"].shape == (256 * bits // 32, 48) and packed["qzeros"].shape == (4, 48 * bits // 32)
    assert (qweight < 0).any()  # words with the top bit set: the sign of int32 must not leak into values
    back = from_gptq(qweight, qzeros, packed["scales"], packed["g_idx"], bits, 64, v1)
    assert torch.equal(back.q.long(), torch.from_numpy(g["q"])) and torch.equal(back.zero.long(),
                                                                                 torch.from_numpy(g["zero"]))
    assert torch.equal(back.dequantize(), dequantize(g))


def test_awq_packing_equals_the_reference_and_round_trips():
    rng = np.random.default_rng(0)
    g = random_grid(rng, 64, 128, 4, 32, sym=False, order=None, v1=False)
    qweight, qzeros = pack_awq(g["q"], g["zero"])
    packed = to_awq(as_grid(g, 4))
    assert torch.equal(packed["qweight"], qweight) and torch.equal(packed["qzeros"], qzeros)
    back = from_awq(qweight, qzeros, packed["scales"], 4, 32)
    assert torch.equal(back.q.long(), torch.from_numpy(g["q"])) and torch.equal(back.dequantize(), dequantize(g))
    with pytest.raises(ValueError, match="4-bit"):
        to_awq(as_grid(random_grid(rng, 8, 32, 8, 32, False, None), 8))


def test_v1_cannot_store_a_zero_point_of_zero():
    g = random_grid(np.random.default_rng(0), 8, 32, 4, 32, sym=False, order=None, v1=False)
    g["zero"][0, 0] = 0
    with pytest.raises(ValueError, match="zero point of 0"):
        to_gptq(as_grid(g, 4), v1=True)


def check_quantized_load(path, truth, c, tol_weight=1e-3):
    """Float load == the reference; quantized load: QLinear weights == the reference up to fp16 offsets.
    Returns the quantized model and its logits' error with the reference's float head and embedding (the
    loader quantizes those itself, as it would any float checkpoint's)."""
    reference = float_model(c, truth)
    want = logits(reference)
    ref = load(path, progress=False)
    assert rel(logits(ref.model), want) < 1e-5
    q = load(path, quant="int8", progress=False)
    lin = q.model.model.layers[0].self_attn.qkv_proj
    inner = lin.linear if isinstance(lin, PermutedInput) else lin
    assert isinstance(inner, QLinear)
    w = lin.dequantize()
    w_ref = torch.cat([truth[f"model.layers.0.self_attn.{m}_proj.weight"] for m in "qkv"])
    assert (w - w_ref).abs().max() <= tol_weight * w_ref.abs().max()  # fp16 rounding of m = -s * z only
    down = q.model.model.layers[1].mlp.down_proj
    assert torch.allclose(down.dequantize(), truth["model.layers.1.mlp.down_proj.weight"],
                          atol=tol_weight * truth["model.layers.1.mlp.down_proj.weight"].abs().max())
    head, emb = q.model.lm_head, q.model.model.embed_tokens
    q.model.lm_head, q.model.model.embed_tokens = reference.lm_head, reference.model.embed_tokens
    err = rel(logits(q.model), want)
    q.model.lm_head, q.model.model.embed_tokens = head, emb
    return q, err


GPTQ_CASES = [  # bits, group, sym, desc_act, v1
    (4, 32, True, False, True), (4, 128, False, True, True), (4, -1, False, False, False),
    (8, 64, True, True, True), (8, -1, False, True, False), (4, 64, True, True, False),
]


@pytest.mark.parametrize("bits,group,sym,desc_act,v1", GPTQ_CASES)
def test_gptq_directory_loads_exactly(tmp_path, monkeypatch, bits, group, sym, desc_act, v1):
    monkeypatch.setenv("ZEN_CACHE", str(tmp_path / "cache"))
    path, truth = write_quantized_dir(tmp_path / "m", TINY, "gptq", bits, group, sym, desc_act, v1)
    q, err = check_quantized_load(path, truth, TINY)
    assert err < 0.05  # the kernel quantizes activations to int8 per group (~1% a linear): nothing else
    qkv = q.model.model.layers[0].self_attn.qkv_proj
    assert isinstance(qkv, PermutedInput) == (desc_act and group in (32, 64))  # one group over K=128: in order
    assert (qkv.linear if isinstance(qkv, PermutedInput) else qkv).bits == bits  # the file's, whatever the mode
    copies = list((tmp_path / "cache" / "quantized").glob("*.safetensors"))
    assert len(copies) == 1  # cached like a GGUF conversion, and restored from it with the same output
    again = load(path, quant="int8", progress=False)
    assert torch.equal(logits(again.model), logits(q.model))


def test_gptq_on_the_torch_path_equals_the_reference(tmp_path, monkeypatch):
    """Off the C kernels (CUDA, or no compiler) QLinear dequantizes in torch: the reference's logits."""
    monkeypatch.setenv("ZEN_CACHE", str(tmp_path / "cache"))
    monkeypatch.setattr(zenlm.kernels.ops, "lib", lambda: None)
    path, truth = write_quantized_dir(tmp_path / "m", TINY, "gptq", 4, 32, False, True)
    _, err = check_quantized_load(path, truth, TINY)
    assert err < 3e-3


@pytest.mark.parametrize("group", [32, 128])
def test_awq_directory_loads_exactly(tmp_path, monkeypatch, group):
    monkeypatch.setenv("ZEN_CACHE", str(tmp_path / "cache"))
    c = TINY.replace(tie_word_embeddings=False)
    path, truth = write_quantized_dir(tmp_path / "m", c, "awq", 4, group, sym=False, v1=False)
    q, err = check_quantized_load(path, truth, c)
    assert err < 0.05
    assert isinstance(q.model.lm_head, QLinear) and q.model.lm_head.bits == 8  # a float head: quantized as asked


def test_fused_members_in_different_act_orders_fall_back_to_int8(tmp_path, monkeypatch, caplog):
    monkeypatch.setenv("ZEN_CACHE", str(tmp_path / "cache"))
    path, truth = write_quantized_dir(tmp_path / "m", TINY, "gptq", 4, 32, True, True, shared_order=False)
    with caplog.at_level(logging.WARNING, logger="zenlm.weights"):
        q, err = check_quantized_load(path, truth, TINY, tol_weight=0.01)
    assert "re-quantized to int8" in caplog.text
    qkv = q.model.model.layers[0].self_attn.qkv_proj
    assert isinstance(qkv, QLinear) and qkv.bits == 8
    assert isinstance(q.model.model.layers[0].self_attn.o_proj, PermutedInput)  # alone, it keeps its order
    assert err < 0.05


def edit_config(path, **changes):
    cfg = json.loads((path / "config.json").read_text())
    cfg["quantization_config"] |= changes
    (path / "config.json").write_text(json.dumps(cfg))


@pytest.mark.parametrize("changes,message", [
    ({"quant_method": "bitsandbytes"}, "quant_method 'bitsandbytes' is not supported"),
    ({"bits": 3}, "3-bit gptq is not supported"),
    ({"group_size": 16}, "group_size 16 is not supported"),
    ({"checkpoint_format": "marlin"}, "checkpoint_format 'marlin' is not supported"),
])
def test_unsupported_quantization_config(tmp_path, changes, message):
    path, _ = write_quantized_dir(tmp_path / "m", TINY.replace(num_layers=1), "gptq")
    edit_config(path, **changes)
    with pytest.raises(ValueError, match=message):
        load(path, progress=False)


def test_awq_gemv_is_refused(tmp_path):
    path, _ = write_quantized_dir(tmp_path / "m", TINY.replace(num_layers=1), "awq")
    edit_config(path, version="gemv")
    with pytest.raises(ValueError, match="AWQ version 'gemv'"):
        load(path, progress=False)


def test_bad_tensors_are_named(tmp_path):
    from safetensors.torch import load_file, save_file

    c = TINY.replace(num_layers=1)
    path, _ = write_quantized_dir(tmp_path / "m", c, "gptq")
    st = path / "model.safetensors"
    good = load_file(st)
    bad = dict(good)
    del bad["model.layers.0.self_attn.k_proj.qzeros"]
    save_file(bad, st)
    with pytest.raises(ValueError, match="k_proj.qweight without qzeros"):
        load(path, progress=False)
    bad = dict(good) | {"model.layers.0.mlp.up_proj.qweight": good["model.layers.0.mlp.up_proj.qweight"][:8]}
    save_file(bad, st)
    with pytest.raises(ValueError, match="up_proj"):
        load(path, progress=False)
    bad = {k: v for k, v in good.items() if not k.startswith("model.layers.0.self_attn.v_proj.")}
    bad["model.layers.0.self_attn.v_proj.weight"] = torch.zeros(64, 128).half()
    save_file(bad, st)
    with pytest.raises(ValueError, match="some members are quantized and some are not"):
        load(path, progress=False)


def test_file_info_names_the_quantization(tmp_path):
    from zenlm.weights.file_info import file_info

    gptq, _ = write_quantized_dir(tmp_path / "g", TINY.replace(num_layers=1), "gptq", bits=8, group=64)
    awq, _ = write_quantized_dir(tmp_path / "a", TINY.replace(num_layers=1), "awq")
    assert file_info(gptq).quantization == "GPTQ-Int8" and file_info(awq).quantization == "AWQ"
