"""The LLM facade on the real default model: streaming, stop strings, limits, defaults, bad input."""

import pytest

from zenlm.engine.sampling import SamplingParams

GREEDY = dict(temperature=0, repetition_penalty=1.0)
CHAT = [{"role": "user", "content": "List three fruits, one per line."}]


def test_stream_equals_complete(default_llm):
    p = SamplingParams(max_tokens=24, **GREEDY)
    assert "".join(default_llm.stream_chat(CHAT, p)) == default_llm.chat(CHAT, p).text
    assert "".join(default_llm.stream("def f(x):", p)) == default_llm.generate("def f(x):", p)[0].text


def test_stops_at_end_of_turn(default_llm):
    out = default_llm.chat([{"role": "user", "content": "Reply with the single word: yes"}],
                           SamplingParams(max_tokens=50, **GREEDY))
    assert out.finish_reason == "stop" and len(out.token_ids) < 50
    assert "<|im_end|>" not in out.text and out.text.strip()


def test_stop_string_and_length(default_llm):
    free = default_llm.chat(CHAT, SamplingParams(max_tokens=40, **GREEDY))
    assert "\n" in free.text
    cut = default_llm.chat(CHAT, SamplingParams(max_tokens=40, stop=["\n"], **GREEDY))
    assert cut.finish_reason == "stop" and cut.text == free.text.split("\n")[0]
    short = default_llm.chat(CHAT, SamplingParams(max_tokens=3, **GREEDY))
    assert short.finish_reason == "length" and len(short.token_ids) == 3


def test_generate_many_prompts_and_token_ids(default_llm):
    p = SamplingParams(max_tokens=6, **GREEDY)
    outs = default_llm.generate(["import numpy as", "def add(a, b):"], p)
    assert len(outs) == 2 and outs[0].text.startswith(" np")
    ids = default_llm.tokenizer.encode("import numpy as")
    assert default_llm.generate(ids, p)[0].token_ids == outs[0].token_ids


def test_generation_config_defaults_apply(default_llm):
    assert default_llm.generation_config["repetition_penalty"] == 1.05
    seq = default_llm.engine.add([1, 2, 3], SamplingParams(max_tokens=4))
    default_llm.engine.abort(seq)
    assert (seq.params.temperature, seq.params.top_p, seq.params.top_k) == (0.7, 0.8, 20)


def test_bad_input(default_llm):
    with pytest.raises(ValueError, match="the prompt is empty"):
        default_llm.generate("", SamplingParams(max_tokens=2))
    with pytest.raises(ValueError, match=r"the prompt is 40000 tokens; the model's context is 32768 tokens"):
        default_llm.generate([100] * 40000, SamplingParams(max_tokens=2))
    with pytest.raises(ValueError, match="top_p"):
        default_llm.generate("x", SamplingParams(top_p=1.5))
