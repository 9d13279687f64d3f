"""Grammar-constrained decoding with llguidance: JSON mode, JSON schemas, and forced tool calls.

Grammars builds a grammar (JSON schema, or a Lark grammar of `<tool_call>` blocks) and a logits
processor per request that masks every token the grammar forbids; once the grammar is complete only
end-of-turn tokens remain. llguidance was chosen over xgrammar (which needs transformers and triton
at run time) and outlines-core (hundreds of ms to index each schema): benchmarks/grammar_engines.py.
"""

from __future__ import annotations

import json
import logging
import threading

import numpy as np
import torch

log = logging.getLogger("zenlm.server")

# json.dumps' separators: the spacing the model writes anyway, so the mask rarely fights it
JSON_OPTIONS = {"whitespace_flexible": False, "item_separator": ", ", "key_separator": ": "}


class GrammarProcessor:
    """A logits processor (output ids, logits [V]) -> logits [V] that follows one grammar matcher."""

    def __init__(self, matcher, vocab_size: int):
        self.matcher, self.vocab_size, self.consumed = matcher, vocab_size, 0

    def __call__(self, output_ids: list[int], logits: torch.Tensor) -> torch.Tensor:
        m = self.matcher
        for t in output_ids[self.consumed:]:  # tokens sampled since the last call
            if not m.consume_token(t):
                log.warning("grammar rejected token %d: %s", t, m.get_error())
        self.consumed = len(output_ids)
        if m.is_error():
            return logits  # never block generation on a matcher bug; the output may then not parse
        bits = np.frombuffer(m.compute_bitmask(), dtype=np.uint8)
        allowed = np.unpackbits(bits, bitorder="little")[: logits.shape[-1]].astype(bool)  # [V]
        mask = torch.zeros(logits.shape[-1], dtype=torch.bool)
        mask[: allowed.shape[0]] = torch.from_numpy(allowed)
        return logits.masked_fill(~mask.to(logits.device), -float("inf"))


class Grammars:
    """Grammar building and validation for one tokenizer; the llguidance tokenizer is made once, lazily."""

    def __init__(self, tokenizer):
        self.tokenizer = tokenizer
        self._ll = None
        self._lock = threading.Lock()

    def _lltokenizer(self):
        import llguidance

        with self._lock:
            if self._ll is None:
                self._ll = llguidance.LLTokenizer(self.tokenizer.to_json(), n_vocab=self.tokenizer.vocab_size,
                                                  eos_token=list(self.tokenizer.eos_token_ids))
            return self._ll

    @staticmethod
    def json_schema(schema: dict | None) -> str:
        """A grammar for any JSON object (schema None) or for values valid under `schema`."""
        import llguidance

        if schema is None:
            schema = {"type": "object"}
        if not isinstance(schema, dict):
            raise ValueError("the JSON schema must be an object")
        return llguidance.LLMatcher.grammar_from_json_schema(json.dumps(schema), defaults=JSON_OPTIONS)

    def tool_calls(self, tools: list[dict], parallel: bool = True) -> str:
        """A grammar of one (or, if parallel, several) `<tool_call>` blocks calling one of `tools`.

        tools are OpenAI function definitions: {"name", "parameters"}; arguments follow "parameters".
        """
        import llguidance

        if not tools:
            raise ValueError("a forced tool call needs at least one tool")
        options = []
        for fn in tools:
            params = fn.get("parameters") or {"type": "object"}
            options.append({"type": "object", "properties": {"name": {"const": fn["name"]}, "arguments": params},
                            "required": ["name", "arguments"], "additionalProperties": False})
        schema = options[0] if len(options) == 1 else {"anyOf": options}
        body = json.dumps({**schema, "x-guidance": JSON_OPTIONS})
        call = f'{self._tag("<tool_call>")} "\\n" %json {body} "\\n" {self._tag("</tool_call>")}'
        start = 'call ("\\n" call)*' if parallel else "call"
        return llguidance.LLMatcher.grammar_from_lark(f"start: {start}\ncall: {call}\n")

    def _tag(self, text: str) -> str:
        """A special token by id when the vocabulary has it (`<[id]>`), else the literal text."""
        i = self.tokenizer.token_to_id(text)
        return f"<[{i}]>" if i is not None else json.dumps(text)

    def processor(self, grammar: str) -> GrammarProcessor:
        """A fresh processor for one sequence; ValueError (naming the problem) for a bad grammar."""
        import llguidance

        ll = self._lltokenizer()
        error = llguidance.LLMatcher.validate_grammar(grammar, ll)
        if error:
            raise ValueError(f"unsupported schema or grammar: {error}")
        matcher = llguidance.LLMatcher(ll, grammar, log_level=0)
        if matcher.is_error():
            raise ValueError(f"unsupported schema or grammar: {matcher.get_error()}")
        return GrammarProcessor(matcher, self.tokenizer.vocab_size)
