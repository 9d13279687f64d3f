"""The real default model (zen-Coder-0.5B-Instruct, Q4_K_M GGUF) against transformers on the same file.

Greedy chat completions of 32 tokens must be the same tokens; last-position logits must agree closely.
transformers is the oracle only; it needs about a minute to load the GGUF here.
"""

import pytest
import torch

from zenlm.engine.sampling import SamplingParams

transformers = pytest.importorskip("transformers")

CHATS = [
    [{"role": "user", "content": "Write a Python function that checks whether a number is prime."}],
    [{"role": "system", "content": "You are a terse assistant."},
     {"role": "user", "content": "What is the capital of France? Answer in one sentence."}],
    [{"role": "user", "content": "用中文解释一下什么是递归。"}],
    [{"role": "user", "content": "Écris une fonction JavaScript qui inverse une chaîne."}],
    [{"role": "user", "content": "Pythonでリストを逆順にする方法を教えてください。"}],
]


@pytest.fixture(scope="module")
def hf_model(gguf_path):
    model = transformers.AutoModelForCausalLM.from_pretrained(
        str(gguf_path.parent), gguf_file=gguf_path.name, dtype=torch.float32)
    return model.eval()


@pytest.mark.parametrize("chat", range(len(CHATS)))
def test_greedy_completion_matches_transformers(default_llm, hf_model, chat):
    ids = default_llm.chat_ids(CHATS[chat])
    ours = default_llm.generate([ids], SamplingParams(max_tokens=32, temperature=0, repetition_penalty=1.0))[0]
    with torch.inference_mode():
        out = hf_model.generate(torch.tensor([ids]), max_new_tokens=32, do_sample=False, repetition_penalty=1.0,
                                eos_token_id=default_llm.tokenizer.eos_token_ids, pad_token_id=151643)
    ref = [t for t in out[0, len(ids):].tolist() if t not in default_llm.tokenizer.eos_token_ids]
    assert ours.token_ids == ref, (default_llm.tokenizer.decode(ours.token_ids), default_llm.tokenizer.decode(ref))
    assert len(ref) > 0


def test_logits_match_transformers(default_llm, hf_model):
    ids = torch.tensor([default_llm.chat_ids(CHATS[0])])
    with torch.inference_mode():
        ref = hf_model(ids).logits
        ours = default_llm.model(ids, torch.arange(ids.shape[1])[None])
    torch.testing.assert_close(ours, ref, rtol=1e-3, atol=1e-3)


def test_same_seed_same_sample(default_llm):
    p = SamplingParams(max_tokens=12, temperature=0.9, seed=7)
    a = default_llm.generate("def add(a, b):", p)[0]
    b = default_llm.generate("def add(a, b):", p)[0]
    assert a.token_ids == b.token_ids and len(a.token_ids) == 12
