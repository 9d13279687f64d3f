"""POST /v1/chat/completions: messages through the model's own chat template, plain or streamed (SSE).

Tools go into the template; tool calls in the answer come back as tool_calls (tools.py). tool_choice
"none" leaves the tools out of the prompt, "required" and a named function are enforced by a grammar,
as is response_format (structured.py). Streams follow OpenAI's chunk order and end with [DONE].
"""

from __future__ import annotations

import asyncio

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse, StreamingResponse

from zenlm.server import tools as toolcalls
from zenlm.server.errors import APIError, body
from zenlm.server.generate import ServerState, check_prompt, choices, sampling_params, until_disconnect
from zenlm.server.protocol import (
    ChatCompletionRequest,
    NamedToolChoice,
    chat_chunk,
    chat_logprobs,
    new_id,
    now,
    sse,
    tool_call_dict,
    usage,
    usage_chunk,
)

router = APIRouter()


def render(state: ServerState, req: ChatCompletionRequest) -> tuple[list[int], set[str]]:
    """Prompt ids, and the names of the tools whose calls to look for in the answer (empty: none)."""
    try:
        messages = [m.for_template() for m in req.messages]
        offered = req.tools if req.effective_tool_choice != "none" else None
        tools = [t.model_dump(exclude_none=True) for t in offered] if offered else None
        text = state.tokenizer.apply_chat(messages, tools=tools, add_generation_prompt=True)
    except ValueError as e:
        raise APIError(str(e), 400, "messages") from e
    return state.tokenizer.encode(text), {t.function.name for t in offered or []}


def grammar_of(state: ServerState, req: ChatCompletionRequest) -> str | None:
    choice = req.effective_tool_choice
    try:
        if req.forces_tool:
            fns = [t.function.model_dump(exclude_none=True) for t in req.tools
                   if not isinstance(choice, NamedToolChoice) or t.function.name == choice.function.name]
            return state.grammars.tool_calls(fns, parallel=req.parallel_tool_calls is not False)
        rf = req.response_format
        if rf is None or rf.type == "text":
            return None
        return state.grammars.json_schema(rf.json_schema.schema_ if rf.type == "json_schema" else None)
    except ValueError as e:
        raise APIError(str(e), 400, "response_format" if req.response_format else "tool_choice") from e


@router.post("/v1/chat/completions")
async def chat_completions(req: ChatCompletionRequest, request: Request):
    state: ServerState = request.app.state.zen
    state.check_model(req.model)
    ids, tool_names = render(state, req)
    check_prompt(state, len(ids), "messages")
    k = (req.top_logprobs or 0) if req.logprobs else None
    grammar = grammar_of(state, req)
    params = await asyncio.to_thread(sampling_params, state, req, req.limit, len(ids), k, grammar)
    if req.stream:
        return StreamingResponse(stream(state, req, ids, params, tool_names), media_type="text/event-stream",
                                 headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"})
    return JSONResponse(await until_disconnect(request, complete(state, req, ids, params, tool_names)))


async def complete(state: ServerState, req: ChatCompletionRequest, ids, params, tool_names: set[str]) -> dict:
    done = {}
    async for ev in choices(state, [(ids, p) for p in params]):
        if ev.finished:
            done[ev.index] = ev.seq.result()
    out = []
    for i in range(len(params)):
        c = done[i]
        message = {"role": "assistant", "content": c.text, "refusal": None, "tool_calls": None}
        finish = c.finish_reason
        if tool_names:
            content, calls = toolcalls.parse(c.text, tool_names)
            if calls:
                message["content"] = content
                message["tool_calls"] = [tool_call_dict(toolcalls.new_call_id(), n, a) for n, a in calls]
                finish = "tool_calls"
        if message["tool_calls"] is None:
            del message["tool_calls"]
        lp = chat_logprobs(state.tokenizer, c.logprobs) if c.logprobs is not None else None
        out.append({"index": i, "message": message, "logprobs": lp, "finish_reason": finish})
    gen = sum(len(done[i].token_ids) for i in done)
    return {"id": new_id("chatcmpl"), "object": "chat.completion", "created": now(), "model": req.model,
            "system_fingerprint": None, "choices": out,
            "usage": usage(len(ids), gen, max(c.cached_tokens for c in done.values()))}


async def stream(state: ServerState, req: ChatCompletionRequest, ids, params, tool_names: set[str]):
    rid, created, model, tok = new_id("chatcmpl"), now(), req.model, state.tokenizer
    n = len(params)
    parsers = [toolcalls.ToolStream(tool_names) if tool_names else None for _ in range(n)]
    lp_sent, gen, cached = [0] * n, 0, 0
    try:
        for i in range(n):
            yield chat_chunk(rid, created, model, i, {"role": "assistant", "content": ""})
        async for ev in choices(state, [(ids, p) for p in params]):
            i, seq = ev.index, ev.seq
            lp = None
            if req.logprobs:
                new = seq.logprobs[lp_sent[i]:]
                lp_sent[i] += len(new)
                lp = chat_logprobs(tok, new) if new else None
            if parsers[i] is not None:
                deltas = parsers[i].feed(ev.text, final=ev.finished)
            else:
                deltas = [{"content": ev.text}] if ev.text else []
            for d in deltas:
                yield chat_chunk(rid, created, model, i, d, logprobs=lp)
                lp = None
            if lp is not None:  # tokens whose text is held back still report their logprobs
                yield chat_chunk(rid, created, model, i, {}, logprobs=lp)
            if ev.finished:
                reason = "tool_calls" if parsers[i] is not None and parsers[i].called else seq.finish_reason
                yield chat_chunk(rid, created, model, i, {}, finish_reason=reason)
                gen += len(seq.output_ids)
                cached = max(cached, seq.cached_tokens or 0)
        if req.include_usage:
            yield usage_chunk(rid, created, model, "chat.completion.chunk", usage(len(ids), gen, cached))
    except APIError as e:
        yield sse(body(e.message, e.status, e.param, e.code))
    yield sse("[DONE]")
