"""A scripted OpenAI-compatible server for agent tests: each chat completion streams the next scripted turn.

A turn is a list of deltas ({"content": ...} or {"tool_calls": [...]}, OpenAI's streaming shapes), or an
int for an HTTP error status. Requests (body and headers) are recorded. Served over real loopback HTTP
by tiny_server.Running.
"""

import json

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, StreamingResponse


def content(*pieces: str) -> list[dict]:
    return [{"content": p} for p in pieces]


def tool_call(index: int, cid: str, name: str, *argument_pieces: str) -> list[dict]:
    """One call streamed as OpenAI does: id and name first, then the arguments in pieces."""
    first = {"tool_calls": [{"index": index, "id": cid, "type": "function", "function": {"name": name,
                                                                                         "arguments": ""}}]}
    return [first] + [{"tool_calls": [{"index": index, "function": {"arguments": a}}]} for a in argument_pieces]


def scripted_app(turns: list, usage: bool = True) -> tuple[FastAPI, list[dict]]:
    app, requests = FastAPI(), []
    turns = list(turns)

    @app.get("/v1/models")
    def models():
        return {"object": "list", "data": [{"id": "scripted", "object": "model"}]}

    @app.post("/v1/chat/completions")
    async def chat(request: Request):
        body = await request.json()
        requests.append({"body": body, "headers": dict(request.headers)})
        turn = turns.pop(0)
        if isinstance(turn, int):
            return JSONResponse({"error": {"message": "scripted failure", "type": "invalid_request_error"}}, turn)

        def sse():
            def chunk(delta, finish=None):
                return {"id": "x", "object": "chat.completion.chunk", "model": body["model"],
                        "choices": [{"index": 0, "delta": delta, "finish_reason": finish}]}
            yield f"data: {json.dumps(chunk({'role': 'assistant', 'content': ''}))}\n\n"
            for delta in turn:
                yield f"data: {json.dumps(chunk(delta))}\n\n"
            called = any("tool_calls" in d for d in turn)
            yield f"data: {json.dumps(chunk({}, 'tool_calls' if called else 'stop'))}\n\n"
            if usage:
                yield "data: " + json.dumps({"id": "x", "object": "chat.completion.chunk", "choices": [],
                                             "usage": {"prompt_tokens": 10, "completion_tokens": 7 * len(turn),
                                                       "total_tokens": 10 + 7 * len(turn)}}) + "\n\n"
            yield "data: [DONE]\n\n"
        return StreamingResponse(sse(), media_type="text/event-stream")

    return app, requests
