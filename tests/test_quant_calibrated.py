"""GPTQ and AWQ do better than round-to-nearest, measured where it means something and costs little: the
real default model (its GGUF dequantized to fp32: real weights with their outlier channels, real
activations) with only its first two blocks quantized, 4-bit per output channel (group -1, where plain
rounding hurts most), calibrated on two Python standard library modules and scored on two others. A
random or briefly trained tiny model is no test: its weights have no structure for either method to
exploit, and rounding them barely moves its perplexity. Here rounding costs about 4% perplexity, GPTQ
about half as much, AWQ less. The mean KL divergence from the fp32 model's next-token distribution is
checked too: unlike a difference of two perplexities it does not average out.
"""

import copy
import sysconfig
from pathlib import Path

import torch
from torch import nn

from zenlm.quant.awq import quantize_awq
from zenlm.quant.calibration import calibration_tokens
from zenlm.quant.gptq import quantize_gptq, quantize_rtn
from zenlm.quant.perplexity import perplexity, windows
from zenlm.weights.load import load

BLOCKS = 2


def shell(model: nn.Module, layers: nn.ModuleList) -> nn.Module:
    """A model that shares every module with `model` but its blocks: no copy of the rest."""
    out, backbone = copy.copy(model), copy.copy(model.model)
    out._modules, backbone._modules = dict(model._modules), dict(model.model._modules)
    backbone.layers, out.model = layers, backbone
    return out


def first_blocks_quantized(model: nn.Module, quantize) -> nn.Module:
    """The model with copies of its first BLOCKS blocks put through quantize (which walks model.model.layers:
    it sees only those); the rest stays the fp32 model's own."""
    blocks = copy.deepcopy(model.model.layers[:BLOCKS])
    quantize(shell(model, blocks))
    return shell(model, nn.ModuleList([*blocks, *model.model.layers[BLOCKS:]]))


def test_gptq_and_awq_beat_round_to_nearest_on_the_default_model(gguf_path):
    torch.manual_seed(0)
    loaded = load(gguf_path, progress=False)
    model, tok = loaded.model, loaded.tokenizer
    lib = Path(sysconfig.get_paths()["stdlib"])
    held = torch.cat([windows(tok.encode((lib / name).read_text()), 256)[:4] for name in ("textwrap.py", "difflib.py")])
    # 16K tokens: more than three times the widest input (4,864), or GPTQ fits the calibration text
    calib = calibration_tokens(tok, [lib / "shutil.py", lib / "pickle.py"], 32, 512)

    def score(quantize):
        return perplexity(first_blocks_quantized(model, quantize), held, reference=model)

    rtn = score(lambda m: quantize_rtn(m, 4, -1))
    gptq = score(lambda m: quantize_gptq(m, calib, 4, -1, progress=False))
    awq = score(lambda m: quantize_awq(m, calib, 4, -1, search_samples=4, progress=False))
    increase = {k: r.perplexity / r.reference_perplexity - 1 for k, r in (("rtn", rtn), ("gptq", gptq), ("awq", awq))}
    kl = {"rtn": rtn.kl, "gptq": gptq.kl, "awq": awq.kl}
    print(increase, kl)
    assert increase["rtn"] > 0.02 and kl["rtn"] > 0.01  # rounding two blocks per channel does hurt
    assert increase["gptq"] < 0.8 * increase["rtn"] and kl["gptq"] < 0.85 * kl["rtn"]
    assert increase["awq"] < 0.8 * increase["rtn"] and kl["awq"] < 0.85 * kl["rtn"]
