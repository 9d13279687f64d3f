"""How many tokens a text is, for tasks that size their prompts in tokens (needle).

A TokenCounter is a counting function plus a line saying what counts (results name it). The in-process
engine counts with the model's own tokenizer; for a server, default_counter() uses the default model's
tokenizer (the Qwen2/2.5 family shares it) when it is installed, else an approximation by characters.
Nothing here talks to a server or downloads anything.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable
from dataclasses import dataclass

log = logging.getLogger("zenlm.eval")

# The needle filler runs 4.76 characters a token under the Qwen2 tokenizer; 4.5 overcounts a little, so a
# prompt sized by the approximation stays within its length.
CHARS_PER_TOKEN = 4.5


@dataclass(frozen=True, slots=True)
class TokenCounter:
    count: Callable[[str], int]  # text -> its number of tokens
    name: str  # what counts: "the tokenizer of MODEL" | "approximate: ..."


def tokenizer_counter(tokenizer, model: str) -> TokenCounter:
    """Count with a zenlm Tokenizer (anything with encode(text) -> ids)."""
    return TokenCounter(lambda text: len(tokenizer.encode(text)), f"the tokenizer of {model}")


def approximate_counter() -> TokenCounter:
    return TokenCounter(lambda text: math.ceil(len(text) / CHARS_PER_TOKEN),
                        f"approximate: {CHARS_PER_TOKEN} characters a token")


def default_counter() -> TokenCounter:
    """The default model's tokenizer (Qwen2/2.5's) when it is installed, else the character approximation."""
    from zenlm.weights.registry import resolve

    try:
        source = resolve("default")
        return tokenizer_counter(source.tokenizer(), source.name)
    except (ValueError, OSError) as e:
        log.warning("token counts are approximate (%s characters a token): the default model's tokenizer "
                    "is not available (%s)", CHARS_PER_TOKEN, e)
        return approximate_counter()
