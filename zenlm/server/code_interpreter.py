"""POST /v1/code_interpreter: the web chat's code-interpreter switch. The server runs the agent loop (zenlm.agent)
with the `python` tool, whose code runs in a sandboxed session made for the request, and streams what happens.

Off unless zen serve was started with --enable-code-interpreter: until then every POST gets 403
(code_interpreter_disabled) before its body is read; GET /v1/code_interpreter says {"enabled": bool}. Under
/v1, it needs the API key like every other route. The body: {"messages": [...chat messages...], "max_turns": 6,
"max_tokens": 2048, "temperature": 0}. The answer is a server-sent event stream of JSON objects, then [DONE]:

    {"type": "text", "text": "...", "turn": 1}                                   the model's words, as written
    {"type": "tool_call", "id": "call_...", "name": "python", "arguments": "{\\"code\\": ...}", "turn": 1}
    {"type": "tool_result", "id": "call_...", "name": "python", "content": "...", "error": false,
     "images": ["<base64 PNG>", ...], "turn": 1}                                 figures the code drew
    {"type": "answer", "text": "...", "turn": 2}                                 the final answer, or
    {"type": "stopped", "reason": "max_turns", "message": "...", "turn": 6}      a limit or an error ended it

The loop runs in a worker thread; its model turns go to the server's own engine loop, beside other requests.
A client that goes away stops the run at its next event, and the sandbox session is closed.
"""

from __future__ import annotations

import asyncio
import base64
import json
import threading

from fastapi import APIRouter, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import StreamingResponse
from pydantic import Field, ValidationError

from zenlm.server.errors import APIError, body
from zenlm.server.generate import ServerState
from zenlm.server.protocol import ChatMessage, _Model, sse

router = APIRouter()
SYSTEM = ("You are a helpful assistant with a Python code interpreter. To compute anything, call the python tool "
          "with code that prints the result; to draw, use matplotlib. Then answer from its output.")
CELL_TIMEOUT = 30.0  # seconds per cell
MEMORY_MB = 1024


class CodeInterpreterRequest(_Model):
    model: str | None = None
    messages: list[ChatMessage] = Field(min_length=1)
    max_turns: int = Field(6, ge=1, le=20)
    max_tokens: int = Field(2048, ge=1)
    temperature: float = Field(0.0, ge=0.0, le=2.0)


def disabled_error() -> APIError:
    return APIError("code execution is off on this server; start it with `zen serve --enable-code-interpreter`",
                    403, code="code_interpreter_disabled")


def event_json(event) -> dict:
    """An agent event as the stream's JSON object."""
    from zenlm.agent.events import FinalAnswer, Stopped, TextDelta, ToolCall, ToolResult

    if isinstance(event, TextDelta):
        return {"type": "text", "text": event.text, "turn": event.turn}
    if isinstance(event, ToolCall):
        return {"type": "tool_call", "id": event.id, "name": event.name, "arguments": event.arguments,
                "turn": event.turn}
    if isinstance(event, ToolResult):
        return {"type": "tool_result", "id": event.id, "name": event.name, "content": event.content,
                "error": event.error, "images": [base64.b64encode(png).decode() for png in event.images],
                "turn": event.turn}
    if isinstance(event, FinalAnswer):
        return {"type": "answer", "text": event.text, "turn": event.turn}
    if isinstance(event, Stopped):
        return {"type": "stopped", "reason": event.reason, "message": event.message, "turn": event.turn}
    raise TypeError(f"not an agent event: {type(event).__name__}")


def make_run(state: ServerState, req: CodeInterpreterRequest):
    """The agent and its (not yet started) run; APIError 400 for messages it cannot take."""
    from zenlm.agent import Agent, python_tool
    from zenlm.agent.backends import AsyncEngineBackend

    messages = [m.for_template() for m in req.messages]
    if messages[0]["role"] != "system":
        messages.insert(0, {"role": "system", "content": SYSTEM})
    try:
        agent = Agent(AsyncEngineBackend(state.llm), tools=[python_tool(timeout=CELL_TIMEOUT, memory_mb=MEMORY_MB)],
                      max_turns=req.max_turns, max_tokens=req.max_tokens, temperature=req.temperature)
        return agent, agent.stream(messages)
    except ValueError as e:
        raise APIError(str(e), 400, "messages") from e


@router.get("/v1/code_interpreter")
async def code_interpreter_status(request: Request):
    return {"enabled": bool(request.app.state.zen.code_interpreter)}


@router.post("/v1/code_interpreter")
async def code_interpreter(request: Request):
    state: ServerState = request.app.state.zen
    if not state.code_interpreter:
        raise disabled_error()
    try:
        req = CodeInterpreterRequest.model_validate_json(await request.body())
    except ValidationError as e:
        raise RequestValidationError(e.errors()) from None
    if req.model is not None:
        state.check_model(req.model)
    agent, run = make_run(state, req)
    return StreamingResponse(stream(agent, run), media_type="text/event-stream",
                             headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"})


async def stream(agent, run):
    loop, queue, gone = asyncio.get_running_loop(), asyncio.Queue(), threading.Event()
    done = object()

    def put(item) -> None:
        try:
            loop.call_soon_threadsafe(queue.put_nowait, item)
        except RuntimeError:  # the server's loop has closed
            gone.set()

    def work() -> None:
        try:
            for event in run:
                put(event)
                if gone.is_set():
                    run.close()
                    break
        except Exception as e:  # noqa: BLE001 - reported in the stream
            put(e)
        finally:
            agent.close()  # the sandbox session goes with it
            put(done)

    threading.Thread(target=work, name="zen-code-interpreter", daemon=True).start()
    try:
        while (item := await queue.get()) is not done:
            if isinstance(item, Exception):
                yield sse(body(f"the code interpreter failed: {type(item).__name__}: {item}", 500))
                continue
            yield sse(json.dumps(event_json(item), ensure_ascii=False))
    finally:
        gone.set()
    yield sse("[DONE]")
