"""Chat rendering: messages -> prompt text with the model's own Jinja template, and -> (ids, loss_mask).

The Jinja environment mirrors the one transformers uses for apply_chat_template (sandboxed,
trim_blocks, lstrip_blocks, loopcontrols, its tojson/raise_exception/strftime_now), so prompts are
byte-identical. Without a template it writes plain ChatML. It does not parse model output (tool
calls in generated text: tool_calls.py) and does not tokenize except in render_ids.
"""

from __future__ import annotations

import json
from datetime import datetime
from functools import lru_cache
from typing import TYPE_CHECKING, Any

import jinja2
import jinja2.ext
import jinja2.nodes
from jinja2.sandbox import ImmutableSandboxedEnvironment

if TYPE_CHECKING:
    from zenlm.tokenizer.bpe import Tokenizer

CHATML_ROLES = ("system", "user", "assistant", "tool")
# Qwen v1's chat format: ChatML, with "You are a helpful assistant." as the system prompt when the messages
# bring none (v1's make_context in qwen_generation_utils.py; models.md section 5). v1 has no tool format here.
QWEN1_SYSTEM = "You are a helpful assistant."
QWEN1_CHAT_TEMPLATE = (
    "{% if tools %}{{ raise_exception('the Qwen v1 chat format has no tools') }}{% endif %}"
    "{% if not messages or messages[0]['role'] != 'system' %}"
    "<|im_start|>system\n" + QWEN1_SYSTEM + "<|im_end|>\n{% endif %}"
    "{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)


def _raise_exception(message: str):
    raise jinja2.exceptions.TemplateError(message)


def _tojson(x: Any, ensure_ascii: bool = False, indent: int | None = None, separators=None,
            sort_keys: bool = False) -> str:
    # Jinja's own tojson HTML-escapes and sorts keys; transformers' (and so the models') does neither.
    return json.dumps(x, ensure_ascii=ensure_ascii, indent=indent, separators=separators, sort_keys=sort_keys)


def _strftime_now(fmt: str) -> str:
    return datetime.now().strftime(fmt)


class _GenerationTag(jinja2.ext.Extension):
    """Accept transformers' `{% generation %}...{% endgeneration %}` (assistant-mask markers) as a no-op."""

    tags = {"generation"}

    def parse(self, parser):
        lineno = next(parser.stream).lineno
        body = parser.parse_statements(("name:endgeneration",), drop_needle=True)
        return jinja2.nodes.Scope(body).set_lineno(lineno)


@lru_cache(maxsize=16)
def _compile(template: str) -> jinja2.Template:
    env = ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True,
                                        extensions=[jinja2.ext.loopcontrols, _GenerationTag])
    env.filters["tojson"] = _tojson
    env.globals["raise_exception"] = _raise_exception
    env.globals["strftime_now"] = _strftime_now
    return env.from_string(template)


def _prepare(messages: list[dict]) -> list[dict]:
    """Copy messages for the template: drop None fields (as transformers does) and parse tool-call
    arguments given as a JSON string, so templates that `tojson` them do not encode them twice."""
    out = []
    for n, msg in enumerate(messages):
        if not isinstance(msg, dict) or "role" not in msg:
            raise ValueError(f"message {n} must be a dict with a 'role', got {msg!r}")
        msg = {k: v for k, v in msg.items() if v is not None}
        if msg.get("tool_calls"):
            msg["tool_calls"] = [_parse_arguments(call, n) for call in msg["tool_calls"]]
        out.append(msg)
    return out


def _parse_arguments(call: dict, n: int) -> dict:
    fn = call.get("function", call)  # OpenAI shape {"type", "function": {...}} or bare {"name", "arguments"}
    args = fn.get("arguments")
    if not isinstance(args, str):
        return call
    try:
        fn = {**fn, "arguments": json.loads(args)}
    except json.JSONDecodeError as e:
        raise ValueError(f"message {n}: tool call {fn.get('name')!r} has arguments that are not JSON: {args!r}") from e
    return {**call, "function": fn} if "function" in call else fn


def _chatml(messages: list[dict], add_generation_prompt: bool) -> str:
    parts = []
    for msg in messages:
        role, content = msg["role"], msg.get("content", "")
        if role not in CHATML_ROLES:
            raise ValueError(f"unknown role {role!r} (plain ChatML knows {', '.join(CHATML_ROLES)})")
        if msg.get("tool_calls"):
            raise ValueError("assistant tool_calls need the model's chat template; plain ChatML has none")
        if not isinstance(content, str):
            raise ValueError(f"plain ChatML needs string content, got {type(content).__name__} for role {role!r}")
        parts.append(f"<|im_start|>{role}\n{content}<|im_end|>\n")
    if add_generation_prompt:
        parts.append("<|im_start|>assistant\n")
    return "".join(parts)


def render(template: str | None, messages: list[dict], tools: list[dict] | None = None,
           add_generation_prompt: bool = True, **extra: Any) -> str:
    """Prompt text for `messages`. `extra` reaches the template as variables (e.g. bos_token).
    Errors the template raises (raise_exception, sandbox, syntax) come out as ValueError."""
    messages = _prepare(messages)
    if template is None:
        if tools:
            raise ValueError("tools need the model's chat template; plain ChatML has no place for them")
        return _chatml(messages, add_generation_prompt)
    context = {"documents": None, **extra}  # transformers always defines `documents`
    try:
        return _compile(template).render(messages=messages, tools=tools,
                                         add_generation_prompt=add_generation_prompt, **context)
    except jinja2.TemplateError as e:  # raise_exception(...), sandbox violations, syntax errors
        raise ValueError(f"chat template failed: {e}") from e


def render_ids(tokenizer: Tokenizer, messages: list[dict],
               tools: list[dict] | None = None) -> tuple[list[int], list[int]]:
    """(ids, loss_mask) for training: ids == encode(render(..., add_generation_prompt=False)); the mask
    is 1 on each assistant turn's content and its end-of-turn token, 0 on headers and everything else.

    Each assistant turn's span is found by rendering prefixes of the conversation: it starts where
    the prefix with a generation prompt stops matching, and ends after the last end-of-turn token
    of the prefix that includes the turn. The whole text is tokenized once; a token carries loss
    when it starts inside a span. Templates whose prefixes are not prefixes of the whole raise.
    """
    def text(upto: int, gen: bool) -> str:
        return tokenizer.apply_chat(messages[:upto], tools, add_generation_prompt=gen)

    full = text(len(messages), False)
    ends = [t for i in tokenizer.eos_token_ids if (t := tokenizer.id_to_token(i))]
    spans = []
    for i, msg in enumerate(messages):
        if msg.get("role") != "assistant":
            continue
        before, turn = text(i, False), text(i + 1, False)
        if not (full.startswith(before) and full.startswith(turn)):
            raise ValueError(f"chat template renders message {i} differently once later messages follow; "
                             "cannot find its span for the loss mask")
        prompt = text(i, True)
        start = next((k for k, (a, b) in enumerate(zip(prompt, full)) if a != b), min(len(prompt), len(full)))
        stop = max((turn.rfind(t, start) + len(t) for t in ends if turn.rfind(t, start) >= 0), default=len(turn))
        spans.append((max(start, len(before)), stop))

    ids, offsets = tokenizer.encode_with_offsets(full)
    mask = [int(any(a <= s < b for a, b in spans)) for s, _ in offsets]
    return ids, mask
