"""The two Ray Serve deployments: ZenEngine (N replicas, each one AsyncLLM and zenlm's own FastAPI app) and
Ingress (one, the HTTP entry, forwarding every request to ZenEngine through a DeploymentHandle).

    HTTP -> Serve proxy -> Ingress -> handle(PrefixAffinityRouter) -> ZenEngine replica -> create_app(state)

Every route, check and response format stays zenlm's: the replica runs the request through the same app as
single-process `zen serve` (bridge.run_app) and streams its bytes back. The ingress adds `X-Zen-Replica`
(the replica's id and pid). A replica that dies before accepting a request is skipped for another; one
that dies holding a request ends it with 503 and Retry-After (streams: an error event, then [DONE]).
"""

import json
import logging
import os
from dataclasses import asdict, dataclass

from fastapi import FastAPI, Request
from fastapi.responses import Response, StreamingResponse
from ray import serve
from ray.exceptions import ActorUnavailableError, RayActorError
from ray.serve.config import RequestRouterConfig

from zenlm.server.errors import body as error_body
from zenlm.server.replicas.bridge import Forward, route_key, run_app

log = logging.getLogger("zenlm.server")
RETRY_AFTER_S = 5  # what a 503 tells the client to wait: Ray starts a new replica meanwhile
ATTEMPTS = 3  # replicas tried for a request none has accepted yet
DEAD = (RayActorError, ActorUnavailableError)
METHODS = ["GET", "POST", "PUT", "PATCH", "DELETE", "OPTIONS", "HEAD"]


@dataclass(slots=True)
class EngineOptions:
    """What each replica needs to build the same state as `zen serve` (server/serve.py) does."""
    model: str = "default"
    dtype: str = "auto"
    device: str = "cpu"
    threads: int = 1
    served_name: str | None = None
    api_key: str | None = None
    max_num_seqs: int = 16
    max_waiting: int = 256
    kv_cache_tokens: int | None = None
    host: str = "127.0.0.1"
    allowed_origins: str | None = None
    allowed_hosts: str | None = None
    max_body_bytes: int = 16 * 1024 * 1024
    log_level: str = "warning"


@serve.deployment(name="ZenEngine")
class ZenEngine:
    def __init__(self, options: dict):
        opts = EngineOptions(**options)
        import torch  # OMP_NUM_THREADS comes from the actor's runtime_env (build), set before the process starts

        torch.set_num_threads(opts.threads)
        from zenlm.engine.engine import EngineConfig
        from zenlm.engine.llm import AsyncLLM
        from zenlm.server.app import create_app
        from zenlm.server.generate import ServerState
        from zenlm.server.security import Security

        logging.getLogger("zenlm").setLevel(opts.log_level.upper())
        engine = EngineConfig(max_num_seqs=opts.max_num_seqs, max_num_batched_tokens=max(512, opts.max_num_seqs),
                              max_waiting=opts.max_waiting, kv_cache_tokens=opts.kv_cache_tokens)
        self.llm = AsyncLLM(opts.model, dtype=opts.dtype, device=opts.device, progress=False, engine=engine)
        state = ServerState(self.llm, opts.served_name or opts.model, opts.api_key or None)
        security = Security.for_bind(opts.host, opts.allowed_origins, opts.allowed_hosts, opts.max_body_bytes)
        self.app = create_app(state, security)
        self.replica = {"id": serve.get_replica_context().replica_id.unique_id, "pid": os.getpid()}

    async def handle(self, fwd: Forward):
        async for item in run_app(self.app, fwd, self.replica):
            yield item

    def __del__(self):
        llm = getattr(self, "llm", None)
        if llm is not None:
            llm.close()


async def relay(gen, replica: dict, headers: list[tuple[bytes, bytes]]):
    """A streamed body, chunk by chunk; if the replica dies, an error event (SSE) or line (NDJSON) ends it."""
    try:
        async for chunk in gen:
            yield chunk
    except DEAD:
        err = error_body(f"the replica {replica['id']} handling this request died; retry in {RETRY_AFTER_S} s", 503,
                         code="replica_died")
        sse = any(k.lower() == b"content-type" and v.startswith(b"text/event-stream") for k, v in headers)
        yield f"data: {json.dumps(err)}\n\ndata: [DONE]\n\n".encode() if sse else (json.dumps(err) + "\n").encode()
    finally:
        gen.cancel()


def lost(message: str) -> Response:
    err = error_body(f"{message}; retry in {RETRY_AFTER_S} s", 503, code="replica_died")
    return Response(json.dumps(err), status_code=503, media_type="application/json",
                    headers={"Retry-After": str(RETRY_AFTER_S)})


# serve.ingress pickles this app as it decorates: whatever its routes call must be defined above it
ingress_app = FastAPI(docs_url=None, redoc_url=None, openapi_url=None)


@serve.deployment(name="Ingress")
@serve.ingress(ingress_app)
class Ingress:
    def __init__(self, engine):
        self.engine = engine.options(stream=True)

    @ingress_app.api_route("/{path:path}", methods=METHODS)
    async def forward(self, path: str, request: Request) -> Response:
        data = await request.body()
        fwd = Forward(request.method, request.url.path, request.scope.get("query_string", b""),
                      list(request.scope["headers"]), data, request.scope.get("client"),
                      route_key(request.url.path, data))
        for attempt in range(ATTEMPTS):
            gen = self.engine.handle.remote(fwd)
            try:
                replica = (await gen.__anext__())["replica"]
                break
            except DEAD as e:  # dead before it took the request: nothing was done, try a live one
                gen.cancel()
                log.warning("replica unavailable (%s); %s", type(e).__name__,
                            "trying another" if attempt + 1 < ATTEMPTS else "giving up")
        else:
            return lost("no engine replica is available")
        streaming = False
        try:
            try:
                start = await gen.__anext__()
            except DEAD:
                return lost(f"the replica {replica['id']} handling this request died")
            headers = [(k, v) for k, v in start["headers"] if k.lower() != b"x-zen-replica"]
            headers.append((b"x-zen-replica", f"{replica['id']} pid={replica['pid']}".encode()))
            if any(k.lower() == b"content-length" for k, _ in headers):  # a whole body: answer once it is all here
                chunks = []
                try:
                    async for chunk in gen:
                        chunks.append(chunk)
                except DEAD:
                    return lost(f"the replica {replica['id']} handling this request died")
                response = Response(b"".join(chunks), status_code=start["status"])
            else:
                response = StreamingResponse(relay(gen, replica, headers), status_code=start["status"])
                streaming = True  # relay() ends the replica's side
            response.raw_headers = headers
            return response
        finally:
            if not streaming:  # done, failed, or the client left (cancelled): the replica's side ends too
                gen.cancel()


def build(options: EngineOptions, replicas: int, router_kwargs: dict | None = None):
    """The Serve application: `replicas` ZenEngine replicas (options.threads CPUs each) behind one Ingress."""
    from zenlm.server.replicas.router import PrefixAffinityRouter

    if replicas < 1:
        raise ValueError(f"--replicas must be at least 1, got {replicas}")
    if options.threads < 1:
        raise ValueError(f"--threads-per-replica must be at least 1, got {options.threads}")
    engine = ZenEngine.options(
        num_replicas=replicas, max_ongoing_requests=options.max_num_seqs + options.max_waiting,
        ray_actor_options={"num_cpus": options.threads,
                           "runtime_env": {"env_vars": {"OMP_NUM_THREADS": str(options.threads)}}},
        request_router_config=RequestRouterConfig(request_router_class=PrefixAffinityRouter,
                                                  request_router_kwargs=router_kwargs or {}),
    ).bind(asdict(options))
    capacity = replicas * (options.max_num_seqs + options.max_waiting)
    return Ingress.options(num_replicas=1, max_ongoing_requests=capacity,
                           ray_actor_options={"num_cpus": 0}).bind(engine)
