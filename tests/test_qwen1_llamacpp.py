"""Qwen v1 parity with llama.cpp, the oracle for GGUF architecture `qwen` (transformers has no v1 class).

Tiny random v1 GGUFs (tests/qwen1_files.py): zenlm's fp32 logits against llama.cpp's (F32 weights and K/V
cache) over a short prompt and one running far past the file's context_length, and greedy tokens from
zenlm's engine against llama.cpp's. llama.cpp's `qwen` graph has no logn scaling and no dynamic NTK (its
src/models/qwen.cpp: plain neox rope, 1/sqrt(D) attention), and a `qwen` GGUF has no seq_length, so neither
applies to these files; test_qwen1_model.py checks both against the formulas. Skips only without llama_cpp.
benchmarks/qwen1_vs_llamacpp.py runs the same comparison over more shapes and seeds.
"""

import numpy as np
import pytest
import torch

from tests.qwen1_files import llama_cpp_run, random_weights, tiny_config, train_ranks, write_gguf
from zenlm.engine.llm import LLM
from zenlm.engine.sampling import SamplingParams
from zenlm.weights.load import load

pytest.importorskip("llama_cpp")

VOCAB = 560


@pytest.fixture(scope="module")
def gguf_file(tmp_path_factory):
    """A file with context_length 128: the engine test stays inside it, the 200-token logits run past it."""
    c = tiny_config(VOCAB, context_length=128, use_logn_attn=False, use_dynamic_ntk=False, seq_length=0)
    return write_gguf(tmp_path_factory.mktemp("lcpp") / "tiny-qwen.gguf", c, random_weights(c, seed=11), train_ranks())


@pytest.mark.parametrize("T", [16, 200])
def test_logits_match_llama_cpp(gguf_file, T):
    tokens = torch.randint(0, VOCAB, (T,), generator=torch.Generator().manual_seed(T)).tolist()
    ref, _ = llama_cpp_run(gguf_file, tokens)
    m = load(gguf_file, progress=False).model
    with torch.no_grad():
        got = m(torch.tensor([tokens]), torch.arange(T)[None])[0].numpy()
    assert np.abs(got - ref).max() < 2e-5 * max(1.0, np.abs(ref).max())
    assert (got.argmax(-1) == ref.argmax(-1)).all()


def test_engine_greedy_matches_llama_cpp(gguf_file):
    prompt = torch.randint(0, 300, (20,), generator=torch.Generator().manual_seed(1)).tolist()
    _, ref = llama_cpp_run(gguf_file, prompt, new_tokens=100)
    llm = LLM(str(gguf_file), progress=False)
    out = llm.generate(prompt, SamplingParams(max_tokens=100, temperature=0, ignore_eos=True,
                                              repetition_penalty=1.0))[0]
    assert out.token_ids == ref
