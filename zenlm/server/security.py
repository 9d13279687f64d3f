"""Safe serving defaults: which origins and hosts may talk to the server, and how big a request body may be.

Security holds the policy; Guard is the plain-ASGI middleware that enforces it before any route runs:
a Host header check against DNS rebinding (on when bound to loopback), a refusal of any request whose
Origin is not allowed (loopback origins and the server's own origin always are), and a body-size limit
(413, both for a Content-Length over it and for a chunked body that grows past it).
"""

from __future__ import annotations

import ipaddress
import os
from dataclasses import dataclass, field
from urllib.parse import urlsplit

from fastapi import Request
from starlette.middleware.cors import CORSMiddleware

from zenlm.server import errors

DEFAULT_MAX_BODY = 16 * 1024 * 1024  # 16 MiB
DRAIN_FACTOR = 4  # an oversized body is read (and dropped) up to 4x the limit before the 413, then the server hangs up
LOOPBACK_NAMES = {"localhost", "127.0.0.1", "::1"}


def is_loopback_name(host: str) -> bool:
    """localhost, ::1 or any 127.x.y.z (no port, no brackets)."""
    host = host.strip("[]").lower()
    if host in LOOPBACK_NAMES or host.endswith(".localhost"):
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def split_host(value: str) -> str:
    """A Host header ("name:port", "[::1]:port", "name") -> the lowercase name without port or brackets."""
    value = value.strip().lower()
    if value.startswith("["):
        return value[1:value.find("]")] if "]" in value else value[1:]
    return value.rsplit(":", 1)[0] if value.count(":") == 1 else value


def is_loopback_origin(origin: str) -> bool:
    try:
        parts = urlsplit(origin)
        return parts.scheme in ("http", "https") and bool(parts.hostname) and is_loopback_name(parts.hostname)
    except ValueError:
        return False


def parse_list(value: str | None) -> list[str]:
    """"a, b,,c" -> ["a", "b", "c"]; None -> []."""
    return [x.strip() for x in (value or "").split(",") if x.strip()]


@dataclass(slots=True)
class Security:
    """allowed_origins: extra origins allowed cross-origin ("*": any); loopback ones always are.
    check_host: refuse requests whose Host is not loopback (or in allowed_hosts); max_body_bytes: 413 above."""

    allowed_origins: list[str] = field(default_factory=list)
    check_host: bool = True
    allowed_hosts: list[str] = field(default_factory=list)
    max_body_bytes: int = DEFAULT_MAX_BODY

    def __post_init__(self):
        if self.max_body_bytes < 1:
            raise ValueError(f"the body-size limit must be at least 1 byte, got {self.max_body_bytes}")
        self.allowed_origins = [o.rstrip("/") for o in self.allowed_origins]
        for o in self.allowed_origins:
            if o != "*" and not urlsplit(o).scheme:
                raise ValueError(f"allowed origin {o!r} needs a scheme, as browsers send it: e.g. http://{o}")
        self.allowed_hosts = [h.lower() for h in self.allowed_hosts]

    @classmethod
    def for_bind(cls, host: str, allowed_origins: str | None = None, allowed_hosts: str | None = None,
                 max_body_bytes: int = DEFAULT_MAX_BODY) -> Security:
        """The policy for `zen serve --host HOST`: the Host check is on only when bound to loopback.
        Unset lists fall back to $ZEN_ALLOWED_ORIGINS / $ZEN_ALLOWED_HOSTS."""
        origins = parse_list(allowed_origins if allowed_origins is not None else os.environ.get("ZEN_ALLOWED_ORIGINS"))
        hosts = parse_list(allowed_hosts if allowed_hosts is not None else os.environ.get("ZEN_ALLOWED_HOSTS"))
        return cls(origins, is_loopback_name(host) or bool(hosts), hosts, max_body_bytes)

    @property
    def any_origin(self) -> bool:
        return "*" in self.allowed_origins

    def origin_allowed(self, origin: str, host: str | None) -> bool:
        if self.any_origin or origin.rstrip("/") in self.allowed_origins or is_loopback_origin(origin):
            return True
        try:  # same origin (a page this server serves, reached by any name): the Origin names the Host
            return host is not None and urlsplit(origin).netloc.lower() == host.strip().lower()
        except ValueError:
            return False

    def host_allowed(self, host: str | None) -> bool:
        if not self.check_host or host is None:  # no Host at all: not a browser, so no rebinding
            return True
        name = split_host(host)
        return is_loopback_name(name) or name in self.allowed_hosts or host.strip().lower() in self.allowed_hosts


class CORS(CORSMiddleware):
    """Starlette's CORS headers, with the origin rule of Security (so Guard and CORS never disagree)."""

    def __init__(self, app, security: Security):
        super().__init__(app, allow_origins=["*"] if security.any_origin else security.allowed_origins,
                         allow_methods=["*"], allow_headers=["*"])
        self.security = security

    def is_allowed_origin(self, origin: str) -> bool:
        return self.security.origin_allowed(origin, None)


class BodyTooLarge(Exception):
    def __init__(self, complete: bool):
        super().__init__("request body too large")
        self.complete = complete  # whether the whole body has arrived already


class Guard:
    """ASGI middleware: Host check, Origin check, body-size limit. Plain ASGI (not BaseHTTPMiddleware), so
    streams pass straight through and routes still see a client's disconnect once the body is read."""

    def __init__(self, app, security: Security):
        self.app, self.security = app, security

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        sec = self.security
        headers = {k.lower(): v for k, v in scope["headers"]}
        host = headers[b"host"].decode("latin-1") if b"host" in headers else None
        if not sec.host_allowed(host):
            return await self._refuse(scope, receive, send, f"host not allowed: {host!r} (against DNS rebinding; "
                                      "add it with --allowed-hosts)", 403, "host_not_allowed")
        origin = headers.get(b"origin")
        if origin is not None and not sec.origin_allowed(origin.decode("latin-1"), host):
            return await self._refuse(scope, receive, send, f"origin not allowed: {origin.decode('latin-1')!r} "
                                      "(allow it with --allowed-origins)", 403, "origin_not_allowed")
        length = headers.get(b"content-length")
        if length is not None:
            try:
                declared = int(length)
            except ValueError:
                return await self._refuse(scope, receive, send, "bad Content-Length header", 400)
            if declared > sec.max_body_bytes:  # drain it only if that is cheap enough
                return await self._too_large(scope, receive, send, drain=declared <= DRAIN_FACTOR * sec.max_body_bytes)
        if length is None and b"transfer-encoding" not in headers:
            return await self.app(scope, receive, send)  # no body
        try:
            body = await self._read(receive)
        except BodyTooLarge as e:
            return await self._too_large(scope, receive, send, drain=not e.complete)
        if body is None:  # the client went away while sending
            return None
        replayed = False

        async def replay():
            nonlocal replayed
            if not replayed:
                replayed = True
                return {"type": "http.request", "body": body, "more_body": False}
            return await receive()  # then the real stream: the app still sees http.disconnect

        return await self.app(scope, replay, send)

    async def _read(self, receive) -> bytes | None:
        chunks, size = [], 0
        while True:
            message = await receive()
            if message["type"] == "http.disconnect":
                return None
            chunk = message.get("body", b"")
            size += len(chunk)
            if size > self.security.max_body_bytes:
                raise BodyTooLarge(complete=not message.get("more_body", False))
            chunks.append(chunk)
            if not message.get("more_body", False):
                return b"".join(chunks)

    async def _too_large(self, scope, receive, send, drain: bool):
        """413. With `drain`, the rest of the body is read and dropped first (up to DRAIN_FACTOR x the limit): a
        server that hangs up while the client still sends makes the client see a connection reset, not the 413."""
        limit = self.security.max_body_bytes
        left = DRAIN_FACTOR * limit if drain else 0
        while left > 0:
            message = await receive()
            if message["type"] == "http.disconnect":
                return
            left -= len(message.get("body", b""))
            if not message.get("more_body", False):
                break
        await self._refuse(scope, receive, send, f"the request body is over the {_size(limit)} limit "
                           "(zen serve --max-body-bytes)", 413, "request_too_large")

    async def _refuse(self, scope, receive, send, message: str, status: int, code: str | None = None):
        response = errors.response(Request(scope), message, status, code=code, headers={"Connection": "close"})
        await response(scope, receive, send)


def _size(n: int) -> str:
    for unit, scale in (("GiB", 1 << 30), ("MiB", 1 << 20), ("KiB", 1 << 10)):
        if n >= scale and n % scale == 0:
            return f"{n // scale} {unit}"
    return f"{n} bytes"
