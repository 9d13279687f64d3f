"""Grammar-constrained decoding (zenlm/server/structured.py) with the default model's real tokenizer.

No model: logits are random, so nothing but the grammar mask makes the output valid. Whatever is
sampled, the text parses and validates against its schema, and only end-of-turn tokens follow it.
"""

import json

import jsonschema
import pytest
import torch

from zenlm.engine.sampling import SamplingParams, sample
from zenlm.server.structured import Grammars

SCHEMA = {"type": "object", "properties": {
    "name": {"type": "string", "maxLength": 12}, "age": {"type": "integer", "minimum": 0, "maximum": 120},
    "tags": {"type": "array", "items": {"enum": ["a", "b", "c"]}, "maxItems": 3},
    "kind": {"enum": ["cat", "dog"]}}, "required": ["name", "age", "tags", "kind"], "additionalProperties": False}
WEATHER = {"name": "get_weather", "parameters": {"type": "object", "properties": {"city": {"enum": ["Paris", "Rome"]}},
                                                 "required": ["city"], "additionalProperties": False}}
PING = {"name": "ping", "parameters": {"type": "object", "properties": {}, "additionalProperties": False}}


@pytest.fixture(scope="module")
def tokenizer(gguf_meta):
    from zenlm.tokenizer import Tokenizer

    return Tokenizer.from_gguf(gguf_meta)


@pytest.fixture(scope="module")
def grammars(tokenizer):
    return Grammars(tokenizer)


def decode_constrained(grammars, tokenizer, grammar: str, seed: int, max_tokens: int = 200) -> tuple[str, bool]:
    """Sample from random logits (biased towards end-of-turn) through the grammar; (text, stopped on EOS)."""
    gen = torch.Generator().manual_seed(seed)
    params = SamplingParams(temperature=1.0, max_tokens=max_tokens,
                            logits_processors=[grammars.processor(grammar)]).resolved({})
    V, eos, out = tokenizer.vocab_size, set(tokenizer.eos_token_ids), []
    for _ in range(max_tokens):
        logits = torch.randn(1, V, generator=gen) * 3
        logits[0, list(eos)] += 4.0  # the model would like to stop early: the grammar must not let it
        token = sample(logits, [params], [out[:]], [0], [gen]).item()
        if token in eos:
            return tokenizer.decode(out), True
        out.append(token)
    return tokenizer.decode(out), False


@pytest.mark.parametrize("seed", range(6))
def test_random_logits_give_valid_json_schema_output(grammars, tokenizer, seed):
    text, stopped = decode_constrained(grammars, tokenizer, grammars.json_schema(SCHEMA), seed)
    assert stopped, text
    jsonschema.validate(json.loads(text), SCHEMA)


@pytest.mark.parametrize("seed", range(2))
def test_random_logits_give_a_json_object(grammars, tokenizer, seed):
    text, stopped = decode_constrained(grammars, tokenizer, grammars.json_schema(None), seed, max_tokens=150)
    if stopped:  # free-form JSON may run long; what is finished must be an object
        assert isinstance(json.loads(text), dict)
    else:
        assert text.lstrip().startswith("{")


@pytest.mark.parametrize("seed", range(4))
def test_forced_tool_calls_follow_the_tools(grammars, tokenizer, seed):
    from zenlm.server.tools import parse

    grammar = grammars.tool_calls([WEATHER, PING], parallel=True)
    text, stopped = decode_constrained(grammars, tokenizer, grammar, seed)
    assert stopped and text.startswith("<tool_call>\n{")
    content, calls = parse(text, {"get_weather", "ping"})
    assert content is None and calls
    for name, args in calls:
        jsonschema.validate(json.loads(args), {"get_weather": WEATHER, "ping": PING}[name]["parameters"])


def test_named_tool_without_parallel_calls_once(grammars, tokenizer):
    text, stopped = decode_constrained(grammars, tokenizer, grammars.tool_calls([WEATHER], parallel=False), 0)
    assert stopped and text.count("<tool_call>") == 1 and '"name": "get_weather"' in text


def test_bad_schema_is_a_clear_error(grammars):
    with pytest.raises(ValueError, match="strin"):
        grammars.processor(grammars.json_schema({"type": "strin"}))
