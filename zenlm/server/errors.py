"""Errors in OpenAI's shape: {"error": {"message", "type", "param", "code"}}, never a traceback.

APIError is what routes raise; install(app) maps it, request-validation failures (malformed JSON,
wrong types, missing fields: 400, as OpenAI answers), HTTP errors and anything unexpected (500,
logged on the server) to that body. Ollama routes get Ollama's own shape, {"error": "message"}.
"""

from __future__ import annotations

import logging

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException

log = logging.getLogger("zenlm.server")

TYPES = {400: "invalid_request_error", 401: "authentication_error", 403: "permission_error", 404: "not_found_error",
         405: "invalid_request_error", 413: "invalid_request_error", 429: "rate_limit_error",
         500: "internal_server_error", 503: "service_unavailable"}


class APIError(Exception):
    def __init__(self, message: str, status: int = 400, param: str | None = None, code: str | None = None,
                 headers: dict[str, str] | None = None):
        super().__init__(message)
        self.message, self.status, self.param, self.code, self.headers = message, status, param, code, headers


def body(message: str, status: int, param: str | None = None, code: str | None = None) -> dict:
    return {"error": {"message": message, "type": TYPES.get(status, "invalid_request_error"),
                      "param": param, "code": code}}


def response(request: Request, message: str, status: int, param: str | None = None,
             code: str | None = None, headers: dict | None = None) -> JSONResponse:
    if request.url.path.startswith("/api/"):  # Ollama's native API
        return JSONResponse({"error": message}, status_code=status, headers=headers)
    return JSONResponse(body(message, status, param, code), status_code=status, headers=headers)


def _validation_message(exc: RequestValidationError) -> tuple[str, str | None]:
    errors = exc.errors()
    if not errors:
        return "invalid request", None
    e = errors[0]
    loc = [str(x) for x in e.get("loc", ()) if x != "body"]
    param = ".".join(loc) or None
    msg = str(e.get("msg", "invalid value")).removeprefix("Value error, ")
    if e.get("type") == "json_invalid":
        return f"the request body is not valid JSON: {e.get('ctx', {}).get('error', msg)}", None
    if e.get("type") == "missing":
        return f"{param} is required", param
    if e.get("type") == "model_attributes_type" and not loc:
        return "the request body must be a JSON object", None
    return (f"{param}: {msg}" if param else msg), param


def install(app: FastAPI) -> None:
    @app.exception_handler(APIError)
    async def _api_error(request: Request, exc: APIError):
        return response(request, exc.message, exc.status, exc.param, exc.code, exc.headers)

    @app.exception_handler(RequestValidationError)
    async def _invalid(request: Request, exc: RequestValidationError):
        message, param = _validation_message(exc)
        return response(request, message, 400, param)

    @app.exception_handler(HTTPException)
    async def _http(request: Request, exc: HTTPException):
        return response(request, str(exc.detail), exc.status_code, headers=getattr(exc, "headers", None))

    @app.exception_handler(Exception)
    async def _unexpected(request: Request, exc: Exception):
        log.exception("unhandled error on %s", request.url.path)
        return response(request, f"internal error: {type(exc).__name__}", 500)
