"""Tokenizer package: byte-level BPE (bpe.py) and chat rendering (chat.py) for the zen family.

Exports `Tokenizer` (from tokenizer.json or GGUF metadata), its `StreamDecoder`, and the chat
functions `render` / `render_ids`; tool_calls.py reads (and writes) the tool calls the chat format
asks for. Nothing here imports torch or other zenlm modules.
"""

from zenlm.tokenizer.bpe import StreamDecoder, Tokenizer
from zenlm.tokenizer.chat import render, render_ids

__all__ = ["StreamDecoder", "Tokenizer", "render", "render_ids"]
