"""Speculative decoding on real models: greedy output with speculation equals greedy output without it,
token for token, on the default model (one request; a batch mixing speculative, plain, stopped and
sampled rows) with n-gram and draft-model proposers (the model drafting for itself, and a random zen-tiny
with the same vocabulary that is mostly wrong), and on zen-tiny as the target."""

import contextlib

import pytest
import torch

from zenlm.config import preset
from zenlm.engine.engine import Engine
from zenlm.engine.sampling import SamplingParams
from zenlm.engine.speculative.draft_model import DraftModelProposer
from zenlm.engine.speculative.ngram import NgramProposer
from zenlm.engine.speculative.speculator import Speculator
from zenlm.model import Transformer

CODE = '''def area(w, h):
    return w * h


def perimeter(w, h):
    return 2 * (w + h)


def describe(w, h):
    return f"{w}x{h}: area {area(w, h)}, perimeter {perimeter(w, h)}"
'''
EDIT = [{"role": "user", "content": f"```python\n{CODE}```\nRename the function `perimeter` to `border` "
                                    "everywhere. Return the whole file only."}]
GREEDY = SamplingParams(max_tokens=64, temperature=0, repetition_penalty=1.0)


@contextlib.contextmanager
def speculating(engine, proposer, k=4, adaptive=True):
    engine.speculator = Speculator(proposer, k, adaptive)
    try:
        yield engine.speculator
    finally:
        engine.speculator = None


def zen_tiny(seed: int) -> Transformer:
    torch.manual_seed(seed)
    m = Transformer(preset("zen-tiny")).eval()
    m.init_weights(std=0.02)
    return m


def test_ngram_greedy_equals_plain_on_the_default_model(default_llm):
    ids = default_llm.chat_ids(EDIT)
    plain = default_llm.generate(ids, GREEDY)[0]
    with speculating(default_llm.engine, NgramProposer()) as spec:
        fast = default_llm.generate(ids, GREEDY)[0]
    assert fast.token_ids == plain.token_ids and fast.text == plain.text
    assert spec.stats.accepted > spec.stats.proposed // 3 > 0  # the answer copies the file


def test_mixed_batch_equals_plain(default_llm):
    """Speculative rows, rows with speculation off, a stop string inside a run, a max_tokens cut, penalties."""
    ids = default_llm.chat_ids(EDIT)
    prompts = [ids, ids, default_llm.chat_ids([{"role": "user", "content": "Count from 1 to 30, comma separated."}]),
               ids, "def fib(n):"]
    plist = [GREEDY, SamplingParams(max_tokens=40, temperature=0, speculative=False),
             SamplingParams(max_tokens=64, temperature=0, stop=["14"]),
             SamplingParams(max_tokens=23, temperature=0, repetition_penalty=1.1, frequency_penalty=0.4),
             SamplingParams(max_tokens=30, temperature=0, speculative=False)]
    plain = default_llm.generate(prompts, plist)
    with speculating(default_llm.engine, NgramProposer(), k=5, adaptive=False) as spec:
        fast = default_llm.generate(prompts, plist)
    assert [c.token_ids for c in fast] == [c.token_ids for c in plain]
    assert [c.text for c in fast] == [c.text for c in plain]
    assert [c.finish_reason for c in fast] == [c.finish_reason for c in plain]
    assert plain[2].finish_reason == "stop" and len(fast[3].token_ids) == 23
    assert spec.stats.accepted > 0


@pytest.mark.parametrize("draft", ["self", "zen-tiny"])
def test_draft_model_greedy_equals_plain(default_llm, draft):
    c = default_llm.config
    model = default_llm.model if draft == "self" else zen_tiny(1)
    proposer = DraftModelProposer(model, c.vocab_size, c.context_length, default_llm.tokenizer.vocab_size)
    ids = default_llm.chat_ids(EDIT)
    params = SamplingParams(max_tokens=32, temperature=0)
    plain = default_llm.generate(ids, params)[0]
    with speculating(default_llm.engine, proposer, k=3, adaptive=False) as spec:
        fast = default_llm.generate(ids, params)[0]
    assert fast.token_ids == plain.token_ids
    st = spec.stats
    if draft == "self":
        assert st.accepted >= 0.9 * st.proposed  # the same weights, through another attention path
    else:
        assert st.proposed > 0 and st.accepted < 0.5 * st.proposed


def test_zen_tiny_target(default_llm):
    model, tok = zen_tiny(0), default_llm.tokenizer
    prompts = [tok.encode("one two three one two three one two"), tok.encode("abc abc abc abc"), [7, 8, 9] * 10]

    def run(spec: bool):
        eng = Engine(model, tok, {}, torch.float32, "cpu")
        if spec:
            eng.speculator = Speculator(NgramProposer(), 4, adaptive=False)
        seqs = [eng.add(p, SamplingParams(max_tokens=40, temperature=0, ignore_eos=True)) for p in prompts]
        while eng.has_work:
            eng.step()
        return [s.output_ids for s in seqs], eng.speculator

    plain, _ = run(False)
    fast, spec = run(True)
    assert fast == plain and spec.stats.proposed > 0
