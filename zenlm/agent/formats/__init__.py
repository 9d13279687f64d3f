"""Prompt formats for tool use, chosen by name: hermes (zen's native), qwen-agent (✿FUNCTION✿), react (Qwen v1)."""

from __future__ import annotations

from zenlm.agent.formats.base import Format, ParsedCall, Parser, Reply
from zenlm.agent.formats.hermes import Hermes
from zenlm.agent.formats.qwen_agent import QwenAgent
from zenlm.agent.formats.react import ReAct

FORMATS: dict[str, type] = {"hermes": Hermes, "qwen-agent": QwenAgent, "react": ReAct}

__all__ = ["FORMATS", "Format", "ParsedCall", "Parser", "Reply", "get_format"]


def get_format(name: str) -> Format:
    if name not in FORMATS:
        raise ValueError(f"unknown tool format {name!r}; choose one of {', '.join(FORMATS)}")
    return FORMATS[name]()
