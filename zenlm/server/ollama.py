"""Ollama's native API: POST /api/chat, /api/generate, /api/show; GET /api/tags, /api/ps, /api/version.

Streams are NDJSON (one JSON object a line, the last with done: true), streaming is the default,
sampling settings come in `options` (num_predict, repeat_penalty, ...), `format` is "json" or a JSON
schema (enforced by grammar), and tool-call arguments are objects, not strings, as Ollama sends them.
Bodies are JSON whatever their Content-Type (curl -d sends a form type; Ollama reads JSON anyway).
Model details (quantization level, parameter size, digest) come from the file: model_info.py.
"""

from __future__ import annotations

import asyncio
import json
import time
from datetime import datetime, timezone
from typing import Any

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse, StreamingResponse
from pydantic import Field, ValidationError

from zenlm.server import model_info
from zenlm.server import tools as toolcalls
from zenlm.server.errors import APIError
from zenlm.server.generate import ServerState, check_prompt, choices, sampling_params
from zenlm.server.protocol import ChatMessage, SamplingFields, Tool, _Model

router = APIRouter()
VERSION = "0.6.0"  # the Ollama API version these routes follow
OPTIONS = {"temperature": "temperature", "top_p": "top_p", "top_k": "top_k", "min_p": "min_p",
           "repeat_penalty": "repetition_penalty", "presence_penalty": "presence_penalty",
           "frequency_penalty": "frequency_penalty", "seed": "seed", "stop": "stop"}


class AnyContentType:
    """ASGI middleware: POST bodies to /api/* are read as JSON whatever Content-Type says (or if none)."""

    def __init__(self, app):
        self.app = app

    async def __call__(self, scope, receive, send):
        if scope["type"] == "http" and scope["method"] == "POST" and scope["path"].startswith("/api/"):
            headers = [(k, v) for k, v in scope["headers"] if k.lower() != b"content-type"]
            scope = {**scope, "headers": headers + [(b"content-type", b"application/json")]}
        return await self.app(scope, receive, send)


class OllamaChat(_Model):
    model: str
    messages: list[ChatMessage] = Field(min_length=1)
    tools: list[Tool] | None = None
    format: str | dict[str, Any] | None = None
    options: dict[str, Any] = Field(default_factory=dict)
    stream: bool = True


class OllamaGenerate(_Model):
    model: str
    prompt: str = ""
    system: str | None = None
    raw: bool = False
    format: str | dict[str, Any] | None = None
    options: dict[str, Any] = Field(default_factory=dict)
    stream: bool = True


def _stamp() -> str:
    return datetime.now(timezone.utc).isoformat().replace("+00:00", "Z")


def _model(state: ServerState, name: str) -> None:
    state.check_model(name.removesuffix(":latest"))


def _params(state: ServerState, name: str, options: dict, fmt, prompt_tokens: int):
    try:
        fields = SamplingFields(model=name, **{ours: options[k] for k, ours in OPTIONS.items() if k in options})
    except ValidationError as e:
        first = e.errors()[0]
        raise APIError(f"options.{'.'.join(map(str, first['loc']))}: {first['msg']}", 400) from e
    predict = options.get("num_predict")
    limit = None if predict is None or predict < 0 else predict
    if limit == 0:
        raise APIError("options.num_predict must not be 0", 400)
    grammar = None
    if fmt:
        if fmt != "json" and not isinstance(fmt, dict):
            raise APIError(f"format must be \"json\" or a JSON schema, got {fmt!r}", 400)
        try:
            grammar = state.grammars.json_schema(None if fmt == "json" else fmt)
        except ValueError as e:
            raise APIError(str(e), 400) from e
    return sampling_params(state, fields, limit, prompt_tokens, None, grammar)


def _final(name: str, ids: list[int], seq, start: float) -> dict:
    took = int((time.perf_counter() - start) * 1e9)
    return {"model": name, "created_at": _stamp(), "done": True, "done_reason": seq.finish_reason or "stop",
            "total_duration": took, "load_duration": 0, "prompt_eval_count": len(ids), "prompt_eval_duration": 0,
            "eval_count": len(seq.output_ids), "eval_duration": took}


def _ndjson(obj: dict) -> str:
    return json.dumps(obj, ensure_ascii=False) + "\n"


async def _run(state, name, ids, params, piece, finish, stream: bool):
    """Drive one generation; piece(text) -> dict for each streamed line, finish(seq) -> the last line."""
    start = time.perf_counter()

    async def lines():
        try:
            async for ev in choices(state, [(ids, params[0])]):
                if ev.text:
                    yield _ndjson({"model": name, "created_at": _stamp(), **piece(ev.text), "done": False})
                if ev.finished:
                    yield _ndjson({**_final(name, ids, ev.seq, start), **finish(ev.seq)})
        except APIError as e:
            yield _ndjson({"error": e.message})

    if stream:
        return StreamingResponse(lines(), media_type="application/x-ndjson")
    async for ev in choices(state, [(ids, params[0])]):
        if ev.finished:
            return JSONResponse({**_final(name, ids, ev.seq, start), **finish(ev.seq)})


@router.post("/api/chat")
async def api_chat(req: OllamaChat, request: Request):
    state: ServerState = request.app.state.zen
    _model(state, req.model)
    tools = [t.model_dump(exclude_none=True) for t in req.tools] if req.tools else None
    try:  # for_template refuses non-text parts, the template refuses bad turns: both are the client's
        messages = [m.for_template() for m in req.messages]
        ids = state.tokenizer.encode(state.tokenizer.apply_chat(messages, tools=tools))
    except ValueError as e:
        raise APIError(str(e), 400) from e
    check_prompt(state, len(ids), "messages")
    params = await asyncio.to_thread(_params, state, req.model, req.options, req.format, len(ids))
    names = {t.function.name for t in req.tools or []}

    def finish(seq) -> dict:
        message: dict[str, Any] = {"role": "assistant", "content": ""}
        if names:
            content, calls = toolcalls.parse(seq.text, names)
            if calls:
                message["content"] = content or ""
                message["tool_calls"] = [{"function": {"name": n, "arguments": json.loads(a)}} for n, a in calls]
        if not req.stream and "tool_calls" not in message:
            message["content"] = seq.text
        return {"message": message}

    def piece(text: str) -> dict:
        return {"message": {"role": "assistant", "content": text}}

    if names and req.stream:  # with tools the answer is held to the end: a call must not leak out as content
        return _buffered(state, req.model, ids, params, finish)
    return await _run(state, req.model, ids, params, piece, finish, req.stream)


def _buffered(state, name, ids, params, finish) -> StreamingResponse:
    """A stream that sends the whole answer (content or tool calls) in its final line."""
    start = time.perf_counter()

    async def lines():
        try:
            async for ev in choices(state, [(ids, params[0])]):
                if ev.finished:
                    out = finish(ev.seq)
                    if "tool_calls" not in out["message"]:
                        out["message"]["content"] = ev.seq.text
                    yield _ndjson({**_final(name, ids, ev.seq, start), **out})
        except APIError as e:
            yield _ndjson({"error": e.message})

    return StreamingResponse(lines(), media_type="application/x-ndjson")


@router.post("/api/generate")
async def api_generate(req: OllamaGenerate, request: Request):
    state: ServerState = request.app.state.zen
    _model(state, req.model)
    tok = state.tokenizer
    if req.raw:
        text = req.prompt
    else:
        system = [{"role": "system", "content": req.system}] if req.system else []
        text = tok.apply_chat(system + [{"role": "user", "content": req.prompt}])
    ids = tok.encode(text)
    check_prompt(state, len(ids), "prompt")
    params = await asyncio.to_thread(_params, state, req.model, req.options, req.format, len(ids))

    def finish(seq) -> dict:
        return {"response": "" if req.stream else seq.text}

    return await _run(state, req.model, ids, params, lambda t: {"response": t}, finish, req.stream)


class OllamaShow(_Model):
    model: str | None = None
    name: str | None = None  # the older spelling of `model`
    verbose: bool = False


async def _entry(state: ServerState) -> dict:
    """The fields /api/tags and /api/ps share for the one model served."""
    info = await asyncio.to_thread(model_info.describe, state.llm)
    return {"name": state.model_name, "model": state.model_name, "modified_at": info.modified_at,
            "size": info.size, "digest": info.digest, "details": info.details}


@router.get("/api/tags")
async def api_tags(request: Request):
    return {"models": [await _entry(request.app.state.zen)]}


@router.get("/api/ps")
async def api_ps(request: Request):
    state: ServerState = request.app.state.zen
    entry = await _entry(state)
    # loaded for the server's lifetime; CPU memory, so nothing in VRAM
    entry |= {"size": model_info.resident_bytes(state.llm), "expires_at": model_info.FOREVER, "size_vram": 0,
              "context_length": state.context_length}
    return {"models": [entry]}


@router.post("/api/show")
async def api_show(req: OllamaShow, request: Request):
    state: ServerState = request.app.state.zen
    name = req.model or req.name
    if not name:
        raise APIError("model is required", 400)
    _model(state, name)
    info = await asyncio.to_thread(model_info.describe, state.llm)
    meta = info.metadata if req.verbose else model_info.brief(info.metadata)
    return {"modelfile": f"# Modelfile of zen serve\nFROM {state.llm.path}\n",
            "parameters": model_info.parameters(state.llm.generation_config),
            "template": state.tokenizer.chat_template or "", "details": info.details, "model_info": meta,
            "capabilities": ["completion", "tools"], "modified_at": info.modified_at}


@router.get("/api/version")
async def api_version():
    return {"version": VERSION}
