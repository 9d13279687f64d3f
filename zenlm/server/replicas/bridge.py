"""One HTTP request carried from the ingress to an engine replica, and zenlm's ASGI app run on it there.

Forward is what the ingress sends through the DeploymentHandle: the raw request plus route_key, the
text the prefix router matches (a chat's system prompt and turns, a completion's prompt, in order).
run_app() drives the replica's FastAPI app with that request and yields, in order: a marker naming the
replica (sent before any work, so the ingress knows the request was accepted), the response's status
and headers, then its body chunks as the app sends them. No Ray here.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from dataclasses import dataclass, field

# routes whose JSON body carries a prompt, and how to read it
CHAT_ROUTES = ("/v1/chat/completions", "/api/chat")
PROMPT_ROUTES = ("/v1/completions", "/api/generate")


@dataclass(slots=True)
class Forward:
    method: str
    path: str
    query: bytes = b""
    headers: list[tuple[bytes, bytes]] = field(default_factory=list)
    body: bytes = b""
    client: tuple[str, int] | None = None
    route_key: str = ""  # the leading text of the prompt this request will render; "" for non-generating routes


def route_key(path: str, body: bytes) -> str:
    """The prompt's text in rendering order, as one string: tools, then each message's role and content (chat),
    or the system prompt and prompt (completions). Requests whose keys share a prefix share a rendered-prompt
    prefix, so the same replica's prefix cache holds it. "" when the body is not a JSON prompt."""
    if path not in CHAT_ROUTES + PROMPT_ROUTES:
        return ""
    try:
        req = json.loads(body or b"{}")
    except ValueError:
        return ""
    if not isinstance(req, dict):
        return ""
    parts = [json.dumps(req["tools"], sort_keys=True)] if req.get("tools") else []
    if path in CHAT_ROUTES:
        for m in req.get("messages") or []:
            if isinstance(m, dict):
                parts.append(f"<{m.get('role')}>{_text(m.get('content'))}")
    else:
        if req.get("system"):
            parts.append(f"<system>{_text(req['system'])}")
        prompt = req.get("prompt")
        parts.append(_text(prompt[0] if isinstance(prompt, list) and prompt and not isinstance(prompt[0], int)
                           else prompt))
    return "\n".join(parts)


def _text(content) -> str:
    if isinstance(content, str):
        return content
    if isinstance(content, list) and all(isinstance(p, dict) for p in content):  # OpenAI content parts
        return "".join(str(p.get("text", "")) for p in content)
    return "" if content is None else json.dumps(content, sort_keys=True)


def scope_of(fwd: Forward) -> dict:
    return {"type": "http", "asgi": {"version": "3.0"}, "http_version": "1.1", "method": fwd.method,
            "scheme": "http", "path": fwd.path, "raw_path": fwd.path.encode(), "query_string": fwd.query,
            "root_path": "", "headers": fwd.headers, "client": fwd.client, "server": None}


async def run_app(app, fwd: Forward, replica: dict) -> AsyncIterator[dict | bytes]:
    """Yield {"replica": ...}, then {"status", "headers"}, then body bytes, as the ASGI app produces them.
    Leaving early (the caller went away) tells the app the client disconnected, which aborts its sequences."""
    yield {"replica": replica}
    out: asyncio.Queue = asyncio.Queue()
    gone = asyncio.Event()
    body_sent = False

    async def receive() -> dict:
        nonlocal body_sent
        if not body_sent:
            body_sent = True
            return {"type": "http.request", "body": fwd.body, "more_body": False}
        await gone.wait()
        return {"type": "http.disconnect"}

    async def send(message: dict) -> None:
        out.put_nowait(message)

    task = asyncio.create_task(app(scope_of(fwd), receive, send))
    task.add_done_callback(lambda _: out.put_nowait(None))
    complete = False
    try:
        while not complete:
            message = await out.get()
            if message is None:  # the app returned without finishing its response
                task.result()  # its exception, if it raised one
                raise RuntimeError(f"the app ended {fwd.method} {fwd.path} without a complete response")
            if message["type"] == "http.response.start":
                yield {"status": message["status"], "headers": list(message.get("headers", []))}
            elif message["type"] == "http.response.body":
                if message.get("body"):
                    yield bytes(message["body"])
                complete = not message.get("more_body", False)
        await task
    finally:
        if not task.done():
            gone.set()
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)
