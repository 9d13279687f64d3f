"""POST /v1/embeddings in OpenAI's shape, served by the RAG embedding model (WordLlama, 256 dims).

The model is loaded on the first request (about half a second), never at startup, so a server that is
never asked for embeddings never imports it. `model` may name the embedding model or the served chat model
(clients often send the one they know). input: a string or a list of strings (token-id inputs are refused:
they would be ids of another tokenizer). encoding_format "float" or "base64" (little-endian float32, what
the openai client asks for by default); `dimensions` cuts the vector (Matryoshka) and renormalises.
"""

from __future__ import annotations

import asyncio
import base64
from typing import Literal

from fastapi import APIRouter, Request
from pydantic import Field

from zenlm.server.errors import APIError
from zenlm.server.protocol import _Model

router = APIRouter()
MAX_INPUTS = 2048  # OpenAI's limit on inputs per request


class EmbeddingRequest(_Model):
    model: str | None = None
    input: str | list[str] | list[int] | list[list[int]]
    encoding_format: Literal["float", "base64"] = "float"
    dimensions: int | None = Field(default=None, ge=1)
    user: str | None = None


def _texts(req: EmbeddingRequest) -> list[str]:
    items = [req.input] if isinstance(req.input, str) else list(req.input)
    if not items:
        raise APIError("input is empty: give a string or a list of strings", 400, "input")
    if not all(isinstance(t, str) for t in items):
        raise APIError("token-id input is not supported: send the text as strings", 400, "input")
    if len(items) > MAX_INPUTS:
        raise APIError(f"{len(items)} inputs; at most {MAX_INPUTS} per request", 400, "input")
    if any(not t.strip() for t in items):
        raise APIError("an input string is empty", 400, "input")
    return items


async def _embedder(request: Request):
    app_state = request.app.state
    if getattr(app_state, "embedder", None) is None:
        from zenlm.agent.rag.embed import Embedder

        try:
            app_state.embedder = await asyncio.to_thread(Embedder.load)
        except ValueError as e:  # the optional dependency is missing
            raise APIError(str(e), 503) from e
    return app_state.embedder


@router.post("/v1/embeddings")
async def embeddings(req: EmbeddingRequest, request: Request):
    from zenlm.agent.rag.embed import DIMS, MODEL_ID

    state = request.app.state.zen
    if req.model is not None and req.model != MODEL_ID:
        if req.model not in state.aliases:
            raise APIError(f"The model `{req.model}` does not exist; embeddings come from `{MODEL_ID}`.", 404,
                           "model", "model_not_found")
    if req.dimensions is not None and req.dimensions > DIMS:
        raise APIError(f"dimensions must be at most {DIMS} for {MODEL_ID}", 400, "dimensions")
    texts = _texts(req)
    embedder = await _embedder(request)
    vectors = await asyncio.to_thread(embedder.embed, texts, req.dimensions)
    tokens = await asyncio.to_thread(embedder.count_tokens, texts)
    data = []
    for i, v in enumerate(vectors):
        emb = base64.b64encode(v.astype("<f4").tobytes()).decode() if req.encoding_format == "base64" else v.tolist()
        data.append({"object": "embedding", "index": i, "embedding": emb})
    return {"object": "list", "data": data, "model": MODEL_ID,
            "usage": {"prompt_tokens": tokens, "total_tokens": tokens}}
