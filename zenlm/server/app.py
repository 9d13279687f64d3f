"""The FastAPI app: routes, API-key auth, request metrics, the web chat page.

create_app(state) wires chat.py, completions.py, embeddings.py, code_interpreter.py and ollama.py with the
small routes that live here: /health, /v1/models, /tokenize, /detokenize, /tokenizer_info, /metrics, and
`/` + `/ui/*`, which serve zenlm/server/ui/ (the page itself lives there, not here). With an API key, /v1 and /api
routes need `Authorization: Bearer KEY`; /health, /metrics and the page stay open. security.py's Guard and CORS
(loopback origins, plus --allowed-origins) wrap everything.
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import time
from pathlib import Path
from typing import Any

from fastapi import FastAPI, Request
from fastapi.responses import FileResponse, JSONResponse, PlainTextResponse, Response
from fastapi.staticfiles import StaticFiles
from pydantic import Field

from zenlm.server import chat, code_interpreter, completions, embeddings, errors, ollama
from zenlm.server.errors import APIError
from zenlm.server.generate import ServerState
from zenlm.server.protocol import ChatMessage, Tool, _Model
from zenlm.server.security import CORS, Guard, Security

UI_DIR = Path(__file__).resolve().parent / "ui"
PROTECTED = ("/v1/", "/api/")


class TokenizeRequest(_Model):
    model: str | None = None
    prompt: str | None = None
    messages: list[ChatMessage] | None = None
    tools: list[Tool] | None = None
    add_generation_prompt: bool = True
    return_token_strs: bool = False


class DetokenizeRequest(_Model):
    model: str | None = None
    tokens: list[int] = Field(default_factory=list)


class AuthAndCount:
    """ASGI middleware: the API-key check and the per-route request counter. Plain ASGI (not
    BaseHTTPMiddleware) so that routes still see a client's disconnect and streams pass straight through."""

    def __init__(self, app, state: ServerState):
        self.app, self.state = app, state

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        path, state = scope["path"], self.state
        counter = state.metrics.requests
        if state.api_key and path.startswith(PROTECTED) and scope["method"] != "OPTIONS":  # CORS preflights pass
            header = dict(scope["headers"]).get(b"authorization", b"").decode("latin-1")
            scheme, _, token = header.partition(" ")
            if scheme.lower() != "bearer" or not key_matches(token.strip(), state.api_key):
                counter.labels(route=_route(path), status="401").inc()
                response = errors.response(Request(scope), "missing or wrong API key: send Authorization: Bearer <key>",
                                           401, code="invalid_api_key", headers={"WWW-Authenticate": "Bearer"})
                return await response(scope, receive, send)
        status = 500

        async def send_status(message):
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, send_status)
        except asyncio.CancelledError:  # shutdown cancelled a request still running: one line, no traceback
            errors.log.warning("%s cancelled by shutdown", path)
            status = 499
        finally:
            counter.labels(route=_route(path), status=str(status)).inc()


def key_matches(given: str, key: str) -> bool:
    """Constant time in the key's content and length: compare the digests, not the strings."""
    digest = hashlib.sha256
    return hmac.compare_digest(digest(given.encode()).digest(), digest(key.encode()).digest())


def create_app(state: ServerState, security: Security | None = None) -> FastAPI:
    """The app; `security` defaults to loopback origins only, the loopback Host check, a 16 MiB body limit."""
    security = security or Security()
    app = FastAPI(title="zen serve", docs_url=None, redoc_url=None, openapi_url=None)
    app.state.zen = state
    started = int(time.time())
    errors.install(app)

    # the last added runs first: Guard (host, origin, body size) -> CORS -> auth + counting -> routes
    app.add_middleware(ollama.AnyContentType)
    app.add_middleware(AuthAndCount, state=state)
    app.add_middleware(CORS, security=security)
    app.add_middleware(Guard, security=security)
    app.include_router(chat.router)
    app.include_router(completions.router)
    app.include_router(ollama.router)
    app.include_router(embeddings.router)  # loads its model on first use
    app.include_router(code_interpreter.router)  # 403 unless zen serve --enable-code-interpreter

    @app.get("/health")
    async def health():
        if not state.llm.alive:
            return JSONResponse(errors.body("the engine loop has stopped", 503), status_code=503)
        return {"status": "ok"}

    def model_card() -> dict[str, Any]:
        return {"id": state.model_name, "object": "model", "created": started, "owned_by": "zenlm",
                "root": str(state.llm.path), "parent": None, "max_model_len": state.context_length,
                "default_sampling": state.llm.generation_config}

    @app.get("/v1/models")
    async def models():
        return {"object": "list", "data": [model_card()]}

    @app.get("/v1/models/{name:path}")
    async def model(name: str):
        state.check_model(name)
        return model_card()

    @app.post("/tokenize")
    async def tokenize(req: TokenizeRequest):
        if req.model is not None:
            state.check_model(req.model)
        if (req.prompt is None) == (req.messages is None):
            raise APIError("give either prompt or messages", 400)
        tok = state.tokenizer
        if req.prompt is not None:
            ids = tok.encode(req.prompt)
        else:
            try:
                tools = [t.model_dump(exclude_none=True) for t in req.tools] if req.tools else None
                text = tok.apply_chat([m.for_template() for m in req.messages], tools=tools,
                                      add_generation_prompt=req.add_generation_prompt)
            except ValueError as e:
                raise APIError(str(e), 400, "messages") from e
            ids = tok.encode(text)
        out: dict[str, Any] = {"count": len(ids), "max_model_len": state.context_length, "tokens": ids}
        if req.return_token_strs:
            out["token_strs"] = [tok.id_to_token(i) for i in ids]
        return out

    @app.post("/detokenize")
    async def detokenize(req: DetokenizeRequest):
        vocab = state.tokenizer.vocab_size
        if any(not 0 <= t < vocab for t in req.tokens):
            raise APIError(f"token ids must be in 0..{vocab - 1}", 400, "tokens")
        return {"prompt": state.tokenizer.decode(req.tokens)}

    @app.get("/tokenizer_info")
    async def tokenizer_info():
        tok = state.tokenizer
        return {"tokenizer_class": "zenlm.tokenizer.Tokenizer", "vocab_size": tok.vocab_size,
                "model_max_length": state.context_length, "eos_token_ids": tok.eos_token_ids,
                **tok.special_tokens, "chat_template": tok.chat_template}

    @app.get("/metrics")
    async def metrics():
        return Response(state.metrics.render(), media_type="text/plain; version=0.0.4; charset=utf-8")

    @app.get("/")
    async def index():
        page = UI_DIR / "index.html"
        if page.is_file():
            return FileResponse(page, media_type="text/html")
        return PlainTextResponse(f"zen serve is running ({state.model_name}); the API is under /v1")

    app.mount("/ui", StaticFiles(directory=UI_DIR, check_dir=False), name="ui")
    return app


def _route(path: str) -> str:
    """A bounded label for metrics: known route prefixes, else "other"."""
    for known in ("/v1/chat/completions", "/v1/completions", "/v1/embeddings", "/v1/models", "/api/chat",
                  "/api/generate", "/api/tags", "/api/show", "/api/ps", "/api/version", "/tokenize", "/detokenize",
                  "/tokenizer_info", "/health", "/metrics"):
        if path.startswith(known):
            return known
    return "other"
