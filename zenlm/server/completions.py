"""POST /v1/completions: raw prompts (a string, strings, token ids, lists of ids), plain or streamed.

echo with logprobs returns each prompt token's log-probability (one forward pass over the prompt),
which is what lm-eval-harness `local-completions` needs for log-likelihood tasks; max_tokens 0 with
echo scores the prompt without generating. Choice i*n + j is prompt i's j-th sample.
"""

from __future__ import annotations

import asyncio

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse, StreamingResponse

from zenlm.server.errors import APIError, body
from zenlm.server.generate import ServerState, check_prompt, choices, sampling_params, until_disconnect
from zenlm.server.protocol import (
    CompletionRequest,
    completion_chunk,
    completion_logprobs,
    new_id,
    now,
    sse,
    usage,
    usage_chunk,
)

router = APIRouter()
DEFAULT_MAX_TOKENS = 16  # OpenAI's default for this endpoint
MAX_CHOICES = 256  # prompts x n per request
MAX_SCORED = 4096  # prompt tokens echo + logprobs scores in one pass (its logits are [T, vocab])


def prompt_ids(state: ServerState, req: CompletionRequest) -> list[list[int]]:
    try:
        prompts = req.prompts()
    except ValueError as e:
        raise APIError(str(e), 400, "prompt") from e
    if len(prompts) * req.n > MAX_CHOICES:
        raise APIError(f"{len(prompts)} prompts x n={req.n} is {len(prompts) * req.n} completions; "
                       f"at most {MAX_CHOICES} per request", 400, "prompt")
    out = []
    vocab = state.tokenizer.vocab_size
    for p in prompts:
        ids = state.tokenizer.encode(p) if isinstance(p, str) else list(p)
        bad = next((t for t in ids if not 0 <= t < vocab), None)
        if bad is not None:
            raise APIError(f"prompt token id {bad} is outside the vocabulary: ids must be in 0..{vocab - 1}", 400,
                           "prompt")
        check_prompt(state, len(ids), "prompt")
        if req.echo and req.logprobs is not None and len(ids) > MAX_SCORED:
            raise APIError(f"echo with logprobs scores prompts of at most {MAX_SCORED} tokens; this one is "
                           f"{len(ids)} tokens", 400, "prompt")
        out.append(ids)
    return out


@router.post("/v1/completions")
async def completions(req: CompletionRequest, request: Request):
    state: ServerState = request.app.state.zen
    state.check_model(req.model)
    prompts = prompt_ids(state, req)
    limit = DEFAULT_MAX_TOKENS if req.max_tokens is None else req.max_tokens
    params = [await asyncio.to_thread(sampling_params, state, req, limit, len(ids), req.logprobs)
              for ids in prompts]
    if req.stream:
        return StreamingResponse(stream(state, req, prompts, params), media_type="text/event-stream",
                                 headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"})
    return JSONResponse(await until_disconnect(request, complete(state, req, prompts, params, limit)))


async def _echo(state: ServerState, req: CompletionRequest, ids: list[int]) -> tuple[str, list | None]:
    text = state.tokenizer.decode(ids)
    if req.logprobs is None:
        return text, None
    scored = await asyncio.to_thread(state.llm.prompt_logprobs, ids, req.logprobs)
    return text, [(t, None, []) if s is None else (t, s[0], s[1]) for t, s in zip(ids, scored)]


async def complete(state: ServerState, req: CompletionRequest, prompts, params, limit: int) -> dict:
    tok, n = state.tokenizer, req.n
    echoes = [await _echo(state, req, ids) if req.echo else ("", None) for ids in prompts]
    jobs = [(ids, p) for ids, plist in zip(prompts, params) for p in plist] if limit > 0 else []
    done = {}
    async for ev in choices(state, jobs):
        if ev.finished:
            done[ev.index] = ev.seq.result()
    out = []
    for i in range(len(prompts) * n):
        c, (echo_text, echo_lp) = done.get(i), echoes[i // n]
        text, reason = (c.text, c.finish_reason) if c else ("", "length")
        lp = None
        if req.logprobs is not None:
            lp = completion_logprobs(tok, (echo_lp or []) + (c.logprobs if c else []))
        out.append({"index": i, "text": echo_text + text, "logprobs": lp, "finish_reason": reason})
    gen = sum(len(c.token_ids) for c in done.values())
    cached = max([0, *(c.cached_tokens for c in done.values())])
    return {"id": new_id("cmpl"), "object": "text_completion", "created": now(), "model": req.model,
            "system_fingerprint": None, "choices": out, "usage": usage(sum(map(len, prompts)), gen, cached)}


async def stream(state: ServerState, req: CompletionRequest, prompts, params):
    rid, created, model, tok, n = new_id("cmpl"), now(), req.model, state.tokenizer, req.n
    gen, cached = 0, 0
    try:
        if req.echo:
            for p, ids in enumerate(prompts):
                text, lp = await _echo(state, req, ids)
                for j in range(n):
                    yield completion_chunk(rid, created, model, p * n + j, text,
                                           logprobs=completion_logprobs(tok, lp) if lp else None)
        sent = [0] * (len(prompts) * n)
        jobs = [(ids, p) for ids, plist in zip(prompts, params) for p in plist]
        async for ev in choices(state, jobs):
            i, seq, lp = ev.index, ev.seq, None
            if req.logprobs is not None:
                new = seq.logprobs[sent[i]:]
                sent[i] += len(new)
                lp = completion_logprobs(tok, new) if new else None
            if ev.text or lp:
                yield completion_chunk(rid, created, model, i, ev.text, logprobs=lp)
            if ev.finished:
                yield completion_chunk(rid, created, model, i, "", finish_reason=seq.finish_reason)
                gen += len(seq.output_ids)
                cached = max(cached, seq.cached_tokens or 0)
        if req.include_usage:
            yield usage_chunk(rid, created, model, "text_completion", usage(sum(map(len, prompts)), gen, cached))
    except APIError as e:
        yield sse(body(e.message, e.status, e.param, e.code))
    yield sse("[DONE]")
