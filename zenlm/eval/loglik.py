"""A continuation's log-likelihood after a context, split into tokens the way lm-eval-harness splits it.

lm-eval moves the context's trailing whitespace onto the continuation, encodes the context and the
whole text, and takes the continuation's tokens to be whole[len(context tokens):]; the model reads the
context's tokens followed by those. An empty context becomes one prefix token (BOS, else the first
end-of-text id). zen eval's EngineBackend and the lm-eval model (harness.py) both score through here,
one forward pass per pair (LLM.prompt_logprobs); this module batches nothing and knows no HTTP.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from zenlm.engine.llm import LLM
    from zenlm.tokenizer.bpe import Tokenizer


def move_trailing_space(context: str, continuation: str) -> tuple[str, str]:
    """("Answer: ", "B") -> ("Answer:", " B"): a context's trailing whitespace belongs to the continuation."""
    kept = context.rstrip()
    return kept, context[len(kept):] + continuation


def prefix_id(tokenizer: Tokenizer) -> int:
    """What an empty context is read as: BOS where the model has one, else its first end-of-text id."""
    return tokenizer.bos_token_id if tokenizer.bos_token_id is not None else tokenizer.eos_token_ids[0]


def encode_pair(tokenizer: Tokenizer, context: str, continuation: str) -> tuple[list[int], list[int]]:
    """(context ids, continuation ids) as lm-eval's causal models encode a (context, continuation) request."""
    if context == "":
        cont = tokenizer.encode(continuation)
        if not cont:
            raise ValueError("both the context and the continuation are empty")
        first = prefix_id(tokenizer)
        return ([first], cont) if cont[0] != first else (cont[:1], cont[1:])
    context, continuation = move_trailing_space(context, continuation)
    if context == "":  # a context of whitespace only: it all moved onto the continuation
        return [prefix_id(tokenizer)], tokenizer.encode(continuation)
    ctx = tokenizer.encode(context)
    return ctx, tokenizer.encode(context + continuation)[len(ctx):]


def score_ids(llm: LLM, context_ids: list[int], continuation_ids: list[int],
              max_length: int | None = None) -> tuple[float, bool]:
    """(sum of the continuation tokens' logprobs, whether greedy decoding would have produced each of them),
    in one forward pass over the last max_length + 1 tokens (default: as many as the model's context holds)."""
    n = len(continuation_ids)
    if n == 0:
        return 0.0, True  # lm-eval's split can leave nothing to score (the context's tokens swallowed it)
    window = llm.config.context_length - 1 if max_length is None else max_length
    if n > window:
        raise ValueError(f"the continuation is {n} tokens; at most {window} fit the model's window")
    ids = (context_ids + continuation_ids)[-(window + 1):]
    scored = llm.prompt_logprobs(ids, 1)[-n:]
    return sum(lp for lp, _ in scored), all(lp >= top[0][1] for lp, top in scored)


def score(llm: LLM, context: str, continuation: str, max_length: int | None = None) -> tuple[float, bool]:
    """score_ids of encode_pair: one (context, continuation) request, lm-eval's way."""
    return score_ids(llm, *encode_pair(llm.tokenizer, context, continuation), max_length)
