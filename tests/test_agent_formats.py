"""The three tool formats (zenlm/agent/formats/): golden prompts byte for byte, and each parser on whole
texts and on every streamed split, where the shown text never takes anything back.

Sources of the golden prompts: agents.md §2.3 (Hermes, as the default model's own chat template renders
it), §2.4 plus the English template of Qwen-Agent's Qwen1.5-era function-calling prompt (✿FUNCTION✿),
§2.1 (the Qwen v1 ReAct prompt).
"""

from types import SimpleNamespace

import pytest

from zenlm.agent.backends import EngineBackend, fold_continuation
from zenlm.agent.formats import get_format
from zenlm.agent.formats.base import ParsedCall, Reply
from zenlm.agent.tools import Tool
from zenlm.tokenizer.chat import render


def add(a: int, b: int) -> int:
    """Add two integers.

    Args:
        a: The first number.
        b: The second number.
    """
    return a + b


def lookup(city: str) -> str:
    """Look up a city."""
    return city


TOOLS = [Tool.from_function(add), Tool.from_function(lookup)]
ADD_SCHEMA = ('{"type": "object", "properties": {"a": {"type": "integer", "description": "The first number."}, '
              '"b": {"type": "integer", "description": "The second number."}}, "required": ["a", "b"]}')
LOOKUP_SCHEMA = '{"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]}'


def call(cid, name, args):
    return {"id": cid, "type": "function", "function": {"name": name, "arguments": args}}


PARALLEL = [  # the agent's conversation after one turn of two parallel calls
    {"role": "user", "content": "What is 2 + 3 and 4 + 5?"},
    {"role": "assistant", "content": "I will add both.",
     "tool_calls": [call("c1", "add", '{"a": 2, "b": 3}'), call("c2", "add", '{"a": 4, "b": 5}')]},
    {"role": "tool", "tool_call_id": "c1", "name": "add", "content": "5"},
    {"role": "tool", "tool_call_id": "c2", "name": "add", "content": "9"},
]
ONE_CALL = [
    {"role": "user", "content": "What is 2 + 3?"},
    {"role": "assistant", "content": "I need to add.", "tool_calls": [call("c1", "add", '{"a": 2, "b": 3}')]},
    {"role": "tool", "tool_call_id": "c1", "name": "add", "content": "5"},
]


def chatml_backend():
    """An engine backend whose tokenizer renders plain ChatML (no model), to see the exact prompt text."""
    tok = SimpleNamespace(apply_chat=lambda m, tools=None, add_generation_prompt=True: render(
        None, m, tools, add_generation_prompt))
    return EngineBackend(SimpleNamespace(tokenizer=tok))


QWEN_AGENT_SYSTEM = (
    "You are a helpful assistant.\n\n# Tools\n\n## You have access to the following tools:\n\n"
    f"### add\n\nadd: Add two integers. Parameters: {ADD_SCHEMA} Format the arguments as a JSON object.\n\n"
    f"### lookup\n\nlookup: Look up a city. Parameters: {LOOKUP_SCHEMA} Format the arguments as a JSON object.\n\n"
    "## When you need to call a tool, please insert the following command in your reply, which can be called "
    "zero or multiple times according to your needs:\n\n"
    "✿FUNCTION✿: The tool to use, should be one of [add,lookup]\n"
    "✿ARGS✿: The input of the tool\n"
    "✿RESULT✿: The result returned by the tool. The image needs to be rendered as ![](url)\n"
    "✿RETURN✿: Reply based on tool result")


def test_golden_qwen_agent():
    fmt = get_format("qwen-agent")
    messages = fmt.prompt(PARALLEL, TOOLS)
    continued = ('I will add both.\n✿FUNCTION✿: add\n✿ARGS✿: {"a": 2, "b": 3}\n✿FUNCTION✿: add\n'
                 '✿ARGS✿: {"a": 4, "b": 5}\n✿RESULT✿: 5\n✿RESULT✿: 9\n✿RETURN✿')
    assert messages == [{"role": "system", "content": QWEN_AGENT_SYSTEM},
                        {"role": "user", "content": "What is 2 + 3 and 4 + 5?"},
                        {"role": "assistant", "content": continued}]
    assert chatml_backend().prompt_text(messages, None) == (
        f"<|im_start|>system\n{QWEN_AGENT_SYSTEM}<|im_end|>\n<|im_start|>user\nWhat is 2 + 3 and 4 + 5?<|im_end|>\n"
        f"<|im_start|>assistant\n{continued}")
    assert fold_continuation(messages)[1:] == [
        {"role": "user", "content": f"What is 2 + 3 and 4 + 5?\n\n{continued}"}]
    assert fmt.stop == ("✿RESULT✿", "✿RETURN✿")
    # the first turn: only system and user; a given system message is kept and extended
    first = fmt.prompt([{"role": "system", "content": "Be brief."}, PARALLEL[0]], TOOLS)
    assert first[0]["content"] == QWEN_AGENT_SYSTEM.replace("You are a helpful assistant.", "Be brief.")
    assert [m["role"] for m in first] == ["system", "user"]


def test_qwen_agent_history_closes_the_turn_before_a_new_question():
    answered = PARALLEL + [{"role": "assistant", "content": "5 and 9."}, {"role": "user", "content": "Thanks!"}]
    messages = get_format("qwen-agent").prompt(answered, TOOLS)
    assert messages[2]["content"].endswith("✿RESULT✿: 5\n✿RESULT✿: 9\n✿RETURN✿: 5 and 9.")
    assert messages[3] == {"role": "user", "content": "Thanks!"}


REACT_QUESTION = (
    "Answer the following questions as best you can. You have access to the following tools:\n\n"
    "add: Call this tool to interact with the add API. What is the add API useful for? Add two integers. "
    f"Parameters: {ADD_SCHEMA} Format the arguments as a JSON object.\n\n"
    "lookup: Call this tool to interact with the lookup API. What is the lookup API useful for? Look up a city. "
    f"Parameters: {LOOKUP_SCHEMA} Format the arguments as a JSON object.\n\n"
    "Use the following format:\n\n"
    "Question: the input question you must answer\n"
    "Thought: you should always think about what to do\n"
    "Action: the action to take, should be one of [add,lookup]\n"
    "Action Input: the input to the action\n"
    "Observation: the result of the action\n"
    "... (this Thought/Action/Action Input/Observation can be repeated zero or more times)\n"
    "Thought: I now know the final answer\n"
    "Final Answer: the final answer to the original input question\n\n"
    "Begin!\n\n"
    "Question: What is 2 + 3?")


def test_golden_react():
    fmt = get_format("react")
    continued = 'Thought: I need to add.\nAction: add\nAction Input: {"a": 2, "b": 3}\nObservation: 5\nThought:'
    assert fmt.prompt(ONE_CALL, TOOLS) == [{"role": "user", "content": REACT_QUESTION},
                                          {"role": "assistant", "content": continued}]
    assert fmt.prompt(ONE_CALL[:1], TOOLS) == [{"role": "user", "content": REACT_QUESTION}]
    system = [{"role": "system", "content": "You are a helpful assistant."}]
    assert chatml_backend().prompt_text(fmt.prompt(system + ONE_CALL, TOOLS), None) == (
        "<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n"
        f"<|im_start|>user\n{REACT_QUESTION}<|im_end|>\n<|im_start|>assistant\n{continued}")
    assert fmt.stop == ("Observation:", "Observation:\n")


def test_react_history_replays_answers():
    second = ONE_CALL + [{"role": "assistant", "content": "5"}, {"role": "user", "content": "And 1 + 1?"}]
    messages = get_format("react").prompt(second, TOOLS)
    assert messages[1]["content"].endswith("Observation: 5\nThought: I now know the final answer.\nFinal Answer: 5")
    assert messages[2] == {"role": "user", "content": "And 1 + 1?"}  # only the first question is wrapped


HERMES_PROMPT = (
    "<|im_start|>system\nYou are Qwen, created by Alibaba Cloud. You are a helpful assistant.\n\n# Tools\n\n"
    "You may call one or more functions to assist with the user query.\n\n"
    "You are provided with function signatures within <tools></tools> XML tags:\n<tools>\n"
    '{"type": "function", "function": {"name": "add", "description": "Add two integers.", '
    f'"parameters": {ADD_SCHEMA}}}}}\n'
    '{"type": "function", "function": {"name": "lookup", "description": "Look up a city.", '
    f'"parameters": {LOOKUP_SCHEMA}}}}}\n'
    "</tools>\n\nFor each function call, return a json object with function name and arguments within "
    "<tool_call></tool_call> XML tags:\n<tool_call>\n"
    '{"name": <function-name>, "arguments": <args-json-object>}\n</tool_call><|im_end|>\n'
    "<|im_start|>user\nWhat is 2 + 3 and 4 + 5?<|im_end|>\n"
    "<|im_start|>assistant\nI will add both.\n"
    '<tool_call>\n{"name": "add", "arguments": {"a": 2, "b": 3}}\n</tool_call>\n'
    '<tool_call>\n{"name": "add", "arguments": {"a": 4, "b": 5}}\n</tool_call><|im_end|>\n'
    "<|im_start|>user\n<tool_response>\n5\n</tool_response>\n<tool_response>\n9\n</tool_response><|im_end|>\n"
    "<|im_start|>assistant\n")


def test_golden_hermes_through_the_default_models_template(gguf_meta):
    from zenlm.tokenizer.bpe import Tokenizer

    fmt = get_format("hermes")
    backend = EngineBackend(SimpleNamespace(tokenizer=Tokenizer.from_gguf(gguf_meta)))
    schemas = [t.schema for t in TOOLS]
    assert backend.prompt_text(fmt.prompt(PARALLEL, TOOLS), schemas) == HERMES_PROMPT
    # arguments that are not JSON are shown to the model as the string it wrote, not rejected
    broken = [PARALLEL[0], {"role": "assistant", "content": None,
                            "tool_calls": [call("c1", "add", '{"a": 2, "b": }')]},
              {"role": "tool", "tool_call_id": "c1", "name": "add", "content": "Error: ..."}]
    text = backend.prompt_text(fmt.prompt(broken, TOOLS), schemas)
    assert '<tool_call>\n{"name": "add", "arguments": "{\\"a\\": 2, \\"b\\": }"}\n</tool_call>' in text
    assert fmt.native_tools and fmt.stop == ()


# ---- parsers -------------------------------------------------------------------------------------------

PARTIAL_TAG = "Use <b>bold</b> and a <tool"
ADD23 = ParsedCall("add", '{"a": 2, "b": 3}')
ADD45 = ParsedCall("add", '{"a": 4, "b": 5}')
CASES = {  # format -> [(conversation so far, generated text, expected Reply)]
    "hermes": [
        (ONE_CALL[:1], "The sum is 5.", Reply("The sum is 5.", [], "The sum is 5.", "The sum is 5.")),
        (ONE_CALL[:1], '<tool_call>\n{"name": "add", "arguments": {"a": 2, "b": 3}}\n</tool_call>',
         Reply("", [ADD23], None, "")),
        (ONE_CALL[:1], 'I will add both.\n<tool_call>\n{"name": "add", "arguments": {"a": 2, "b": 3}}\n'
                       '</tool_call>\n<tool_call>\n{"name": "add", "arguments": {"a": 4, "b": 5}}\n</tool_call>',
         Reply("I will add both.\n", [ADD23, ADD45], None, "I will add both.")),
        (ONE_CALL[:1], '```json\n{\n  "name": "add",\n  "arguments": {"a": 2, "b": 3}\n}\n```',
         Reply("", [ADD23], None, "")),  # the default model's habit: a bare call in a fence
        (ONE_CALL[:1], '<tool_call>\n{"name": "add", "arguments": {"a": 2, "b": }}\n</tool_call>',
         Reply("", [ParsedCall("add", '{"a": 2, "b": }')], None, "")),
        (ONE_CALL[:1], '<tool_call>\n{"name": "divide", "arguments": {"a": 1}}\n</tool_call>',
         Reply("", [ParsedCall("divide", '{"a": 1}')], None, "")),
        (ONE_CALL[:1], "<tool_call>\nnot a call at all\n</tool_call>",
         Reply("", [ParsedCall("", "not a call at all")], None, "")),
        (ONE_CALL[:1], "Use <b>bold</b> and a <tool", Reply(PARTIAL_TAG, [], PARTIAL_TAG, PARTIAL_TAG)),
        (ONE_CALL[:1], '{"answer": 42}', Reply('{"answer": 42}', [], '{"answer": 42}', '{"answer": 42}')),
    ],
    "qwen-agent": [
        (ONE_CALL[:1], '✿FUNCTION✿: add\n✿ARGS✿: {"a": 2, "b": 3}\n', Reply("", [ADD23], None, "")),
        (ONE_CALL[:1], 'Let me add.\n✿FUNCTION✿: add\n✿ARGS✿: {"a": 2, "b": 3}\n✿FUNCTION✿: add\n'
                       '✿ARGS✿: {"a": 4, "b": 5}', Reply("Let me add.\n", [ADD23, ADD45], None, "Let me add.")),
        (PARALLEL, ": The sums are 5 and 9.", Reply("The sums are 5 and 9.", [], "The sums are 5 and 9.",
                                                     "The sums are 5 and 9.")),
        (PARALLEL, ':I also need 1 + 1.\n✿FUNCTION✿: add\n✿ARGS✿: {"a": 1, "b": 1}',
         Reply("I also need 1 + 1.\n", [ParsedCall("add", '{"a": 1, "b": 1}')], None, "I also need 1 + 1.")),
        (ONE_CALL[:1], ": 5 + 3 = 8", Reply(": 5 + 3 = 8", [], ": 5 + 3 = 8", ": 5 + 3 = 8")),
        (ONE_CALL[:1], "✿RETURN✿: 8", Reply("8", [], "8", "8")),
        (ONE_CALL[:1], "✿FUNCTION✿: lookup\n✿ARGS✿: Paris", Reply("", [ParsedCall("lookup", "Paris")], None, "")),
    ],
    "react": [
        (ONE_CALL[:1], 'Thought: I need to add.\nAction: add\nAction Input: {"a": 2, "b": 3}\n',
         Reply("Thought: I need to add.", [ADD23], None, "I need to add.")),
        (ONE_CALL, " I now know the final answer\nFinal Answer: 5",
         Reply("Thought: I now know the final answer\nFinal Answer: 5", [], "5", "5")),
        (ONE_CALL[:1], "Action: lookup\nAction Input: Paris", Reply("", [ParsedCall("lookup", "Paris")], None, "")),
        (ONE_CALL[:1], "The answer is 4.", Reply("The answer is 4.", [], "The answer is 4.", "The answer is 4.")),
        (ONE_CALL[:1], "Thought: run it\nAction: python\nAction Input: ```py\nprint(1)\n```\nObservation: 7",
         Reply("Thought: run it", [ParsedCall("python", "```py\nprint(1)\n```")], None, "run it")),
        (ONE_CALL[:1], "Final Answer: 12", Reply("Final Answer: 12", [], "12", "12")),
    ],
}
PARSER_CASES = [(name, *case) for name, cases in CASES.items() for case in cases]


def feed_all(fmt, history, pieces: list[str]) -> tuple[str, Reply]:
    parser = fmt.parser(history, TOOLS)
    shown = ""
    for piece in pieces:
        new = parser.feed(piece)
        shown += new
    reply = parser.finish()
    assert reply.text.startswith(shown), f"shown {shown!r} is not a prefix of the turn's text {reply.text!r}"
    return shown, reply


@pytest.mark.parametrize("name,history,text,expected", PARSER_CASES)
def test_parse_whole(name, history, text, expected):
    assert feed_all(get_format(name), history, [text])[1] == expected


@pytest.mark.parametrize("name,history,text,expected", PARSER_CASES)
def test_parse_streamed_at_every_boundary(name, history, text, expected):
    fmt = get_format(name)
    shown, reply = feed_all(fmt, history, list(text))  # one character at a time: every boundary at once
    assert reply == expected
    for i in range(len(text) + 1):
        assert feed_all(fmt, history, [text[:i], text[i:]])[1] == expected, f"split at {i}"
    if not expected.calls:  # a plain answer is shown as it comes, except what could still start call syntax
        assert len(expected.text) - len(shown) <= len("<tool_call>") + 2


def test_call_syntax_is_never_shown():
    fmt = get_format("hermes")
    text = 'Sure.\n<tool_call>\n{"name": "add", "arguments": {"a": 2, "b": 3}}\n</tool_call>'
    shown, _ = feed_all(fmt, ONE_CALL[:1], list(text))
    assert shown == "Sure.\n"
    shown, _ = feed_all(get_format("qwen-agent"), ONE_CALL[:1], list('OK.\n✿FUNCTION✿: add\n✿ARGS✿: {}'))
    assert shown == "OK.\n"
    shown, _ = feed_all(get_format("react"), ONE_CALL[:1], list("Thought: t\nAction: add\nAction Input: {}"))
    assert shown == "Thought: t"


def test_unknown_format():
    with pytest.raises(ValueError, match="unknown tool format 'nous'; choose one of hermes, qwen-agent, react"):
        get_format("nous")


@pytest.mark.parametrize("text", ['```json\n{"name": "sum_primes", "arguments": {"code": "print(1)"}}\n```',
                                  '{"name": "sum_primes", "parameters": {"code": "print(1)"}}'])
def test_hermes_reads_a_call_shaped_reply_to_an_unknown_tool_as_a_call(text):
    """The default model invents tool names in bare or fenced JSON; the loop answers with the offered names."""
    parser = get_format("hermes").parser([], [])
    parser.names = {"python"}
    parser.feed(text)
    assert parser.finish().calls == [ParsedCall("sum_primes", '{"code": "print(1)"}')]


@pytest.mark.parametrize("text", ['{"name": "Ada", "age": 36}', '```json\n{"result": [1, 2]}\n```', "plain text"])
def test_hermes_keeps_other_json_as_the_answer(text):
    parser = get_format("hermes").parser([], [])
    parser.names = {"python"}
    parser.feed(text)
    reply = parser.finish()
    assert reply.calls == [] and reply.answer == text.strip()
