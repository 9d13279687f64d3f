"""Chat rendering parity: zenlm.tokenizer.chat against transformers' apply_chat_template.

Golden prompts (system/no system, multi-turn, tools, tool calls with string or object arguments,
consecutive tool results, with and without the generation prompt) must be byte-identical to the
reference; plain ChatML without a template; render_ids loss masks on exact assistant spans.
"""

import copy
import json

import pytest

from zenlm.tokenizer import Tokenizer, render

WEATHER = {"type": "function", "function": {
    "name": "get_weather", "description": "Current weather for a city — in °C or °F.",
    "parameters": {"type": "object", "properties": {
        "location": {"type": "string", "description": "City name, e.g. Paris"},
        "unit": {"type": "string", "enum": ["celsius", "fahrenheit"]}},
        "required": ["location"]}}}
SEARCH = {"type": "function", "function": {
    "name": "search", "description": "Search the web.",
    "parameters": {"type": "object", "properties": {
        "query": {"type": "string"}, "max_results": {"type": "integer", "minimum": 1, "default": 5}},
        "required": ["query"]}}}
TOOLS = [WEATHER, SEARCH]

ARGS_PARIS = {"location": "Paris", "unit": "celsius"}
ARGS_TOKYO = {"location": "東京"}


def tool_call_conversation(as_string: bool) -> list[dict]:
    def call(name, args):
        return {"type": "function", "function": {
            "name": name, "arguments": json.dumps(args, ensure_ascii=False) if as_string else args}}
    return [
        {"role": "user", "content": "Weather in Paris and Tokyo?"},
        {"role": "assistant", "content": None, "tool_calls": [call("get_weather", ARGS_PARIS),
                                                              call("get_weather", ARGS_TOKYO)]},
        {"role": "tool", "name": "get_weather", "content": '{"temp": 21}'},
        {"role": "tool", "name": "get_weather", "content": '{"temp": 18}'},
        {"role": "assistant", "content": "Paris is 21 °C and Tokyo 18 °C. Let me search more.",
         "tool_calls": [call("search", {"query": "Tokyo weather tomorrow", "max_results": 3})]},
        {"role": "tool", "name": "search", "content": "Sunny."},
        {"role": "assistant", "content": "Tomorrow Tokyo will be sunny."},
        {"role": "user", "content": "Thanks!"},
    ]


MULTI_TURN = [
    {"role": "system", "content": "You are a terse assistant."},
    {"role": "user", "content": "What is 2+2?"},
    {"role": "assistant", "content": "4"},
    {"role": "user", "content": "And in French? Réponds en un mot."},
    {"role": "assistant", "content": "Quatre.\n\n  (indented) 👍"},
    {"role": "user", "content": "Merci"},
]

GOLDEN = {
    "no_system": ([{"role": "user", "content": "Hello!"}], None),
    "custom_system": ([{"role": "system", "content": "Be brief. 简短。"}, {"role": "user", "content": "Hi"}], None),
    "multi_turn": (MULTI_TURN, None),
    "tools": ([{"role": "user", "content": "Weather in Paris?"}], TOOLS),
    "tools_custom_system": ([{"role": "system", "content": "Use tools."}, {"role": "user", "content": "Go"}], TOOLS),
    "tool_calls_and_results": (tool_call_conversation(as_string=False), TOOLS),
    "tool_first_message": ([{"role": "tool", "content": "orphan result"}], None),
}


@pytest.fixture(scope="module")
def ref(hf_tokenizer):
    return hf_tokenizer


@pytest.fixture(scope="module")
def tok(hf_tokenizer_dir):
    return Tokenizer.from_hf_dir(hf_tokenizer_dir)


def reference(ref, messages, tools, add_generation_prompt):
    return ref.apply_chat_template(copy.deepcopy(messages), tools=tools, tokenize=False,
                                   add_generation_prompt=add_generation_prompt)


@pytest.mark.parametrize("add_generation_prompt", [True, False])
@pytest.mark.parametrize("name", list(GOLDEN))
def test_golden_matches_reference(tok, ref, name, add_generation_prompt):
    messages, tools = GOLDEN[name]
    want = reference(ref, messages, tools, add_generation_prompt)
    assert tok.apply_chat(messages, tools, add_generation_prompt=add_generation_prompt) == want
    assert render(tok.chat_template, messages, tools, add_generation_prompt) == want


@pytest.mark.parametrize("add_generation_prompt", [True, False])
def test_string_arguments_are_parsed(tok, ref, add_generation_prompt):
    # Qwen2.5's template writes `arguments | tojson`, so an OpenAI-style JSON string would be encoded
    # twice; we parse it first and must match the reference given the object form.
    want = reference(ref, tool_call_conversation(as_string=False), TOOLS, add_generation_prompt)
    as_string = tool_call_conversation(as_string=True)
    before = copy.deepcopy(as_string)
    assert tok.apply_chat(as_string, TOOLS, add_generation_prompt) == want
    assert as_string == before  # the caller's messages are not modified
    assert '"arguments": {"location": "東京"}' in want


def test_bad_string_arguments(tok):
    msgs = [{"role": "user", "content": "x"},
            {"role": "assistant", "tool_calls": [{"function": {"name": "f", "arguments": "{oops"}}]}]
    with pytest.raises(ValueError, match="'f'.*not JSON"):
        tok.apply_chat(msgs)


def test_plain_chatml():
    msgs = [{"role": "system", "content": "S"}, {"role": "user", "content": "U"}, {"role": "assistant", "content": "A"}]
    body = "<|im_start|>system\nS<|im_end|>\n<|im_start|>user\nU<|im_end|>\n<|im_start|>assistant\nA<|im_end|>\n"
    assert render(None, msgs, add_generation_prompt=False) == body
    assert render(None, msgs) == body + "<|im_start|>assistant\n"
    with pytest.raises(ValueError, match="'narrator'"):
        render(None, [{"role": "narrator", "content": "Once upon a time"}])
    with pytest.raises(ValueError, match="tools"):
        render(None, msgs, tools=TOOLS)


def test_environment_matches_transformers():
    # Features of transformers' Jinja environment, on a template that uses each of them.
    chat_utils = pytest.importorskip("transformers.utils.chat_template_utils")
    template = (
        "{% set ns = namespace(n=0) %}\n"
        "{% for m in messages %}\n"
        "  {% if m.role == 'skip' %}{% continue %}{% endif %}\n"
        "  {% set ns.n = ns.n + 1 %}\n"
        "  {{ m | tojson }}|{{ m | tojson(indent=2) }}|{{ m.content | tojson }}\n"
        "  {% if loop.index > 2 %}{% break %}{% endif %}\n"
        "{% endfor %}\n"
        "{{ ns.n }} {{ tools | length if tools else 'none' }} {{ bos_token }}"
        "{% generation %}gen{% endgeneration %}"
        "{{ strftime_now('%Y') | length }}{% if add_generation_prompt %}<go>{% endif %}"
    )
    msgs = [{"role": "user", "content": "<b>é\"</b>", "z": 1, "a": [1, 2]}, {"role": "skip", "content": ""},
            {"role": "assistant", "content": "日本"}, {"role": "user", "content": "x"},
            {"role": "user", "content": "y"}]
    (want,), _ = chat_utils.render_jinja_template(conversations=[msgs], tools=TOOLS, chat_template=template,
                                                  add_generation_prompt=True, bos_token="<s>")
    assert render(template, msgs, TOOLS, True, bos_token="<s>") == want
    with pytest.raises(ValueError, match="boom"):
        render("{{ raise_exception('boom') }}", msgs)
    with pytest.raises(ValueError, match="unsafe"):  # the sandbox is immutable
        render("{{ messages.append(1) }}", msgs)


# ---- render_ids --------------------------------------------------------------------------------

def loss_runs(tok, ids, mask):
    """Decoded text of each maximal run of tokens with loss 1."""
    runs, cur = [], []
    for i, m in zip(ids, mask):
        if m:
            cur.append(i)
        elif cur:
            runs.append(tok.decode(cur))
            cur = []
    return runs + ([tok.decode(cur)] if cur else [])


def test_render_ids_multi_turn(tok):
    msgs = MULTI_TURN[:-1]  # ends with an assistant turn
    ids, mask = tok.render_ids(msgs)
    assert ids == tok.encode(tok.apply_chat(msgs, add_generation_prompt=False))
    assert len(mask) == len(ids)
    assert loss_runs(tok, ids, mask) == ["4<|im_end|>", "Quatre.\n\n  (indented) 👍<|im_end|>"]
    # header tokens carry no loss; the newline after <|im_end|> carries none either
    im_end, newline = tok.token_to_id("<|im_end|>"), tok.encode("\n")[0]
    for k, (i, m) in enumerate(zip(ids, mask)):
        if i == im_end:
            assert ids[k + 1] == newline and mask[k + 1] == 0
    header = tok.encode("<|im_start|>assistant\n")
    for k in range(len(ids) - len(header)):
        if ids[k:k + len(header)] == header:
            assert mask[k:k + len(header)] == [0] * len(header)


def test_render_ids_with_tools(tok):
    msgs = tool_call_conversation(as_string=True)[:-1]
    ids, mask = tok.render_ids(msgs, TOOLS)
    assert ids == tok.encode(tok.apply_chat(msgs, TOOLS, add_generation_prompt=False))
    calls = ('<tool_call>\n{"name": "get_weather", "arguments": {"location": "Paris", "unit": "celsius"}}'
             '\n</tool_call>\n'
             '<tool_call>\n{"name": "get_weather", "arguments": {"location": "東京"}}\n</tool_call><|im_end|>')
    search = ('Paris is 21 °C and Tokyo 18 °C. Let me search more.\n<tool_call>\n'
              '{"name": "search", "arguments": {"query": "Tokyo weather tomorrow", "max_results": 3}}'
              '\n</tool_call><|im_end|>')
    assert loss_runs(tok, ids, mask) == [calls, search, "Tomorrow Tokyo will be sunny.<|im_end|>"]


def test_render_ids_plain_chatml(tok):
    plain = copy.copy(tok)
    plain.chat_template = None
    msgs = [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "\nhello"}]
    ids, mask = plain.render_ids(msgs)
    assert ids == plain.encode("<|im_start|>user\nhi<|im_end|>\n<|im_start|>assistant\n\nhello<|im_end|>\n")
    # "\n\n" straddles header and content here; a token carries loss only if it starts in the content
    assert loss_runs(plain, ids, mask) == ["hello<|im_end|>"]
