"""`zen serve`: load the model once, start the AsyncLLM loop and uvicorn, print the URL, stop cleanly.

Ctrl-C (SIGINT) or SIGTERM makes uvicorn stop accepting, give requests in flight a few seconds,
then cancel what is left (which aborts their sequences) before the engine loop is closed.
The safe defaults (security.py) are set here from the flags: allowed origins and hosts, the body limit.
"""

from __future__ import annotations

import asyncio
import logging
import socket
import sys
from collections.abc import Callable

GRACE_S = 5  # seconds in-flight requests get to finish on shutdown


def serve(model: str = "default", host: str = "127.0.0.1", port: int = 8000, api_key: str | None = None,
          dtype: str = "auto", device: str = "cpu", served_name: str | None = None, max_num_seqs: int = 16,
          log_level: str = "warning", allowed_origins: str | None = None, allowed_hosts: str | None = None,
          max_body_bytes: int = 16 * 1024 * 1024, max_waiting: int = 256,
          kv_cache_tokens: int | None = None, before_load: Callable[[], None] | None = None, tp: int = 1,
          code_interpreter: bool = False, speculative: str | None = None, spec_tokens: int = 5) -> int:
    """Serve until Ctrl-C or SIGTERM. before_load runs once the flags and the port are checked, before the
    model loads (the CLI pulls a hub name there, asking first in a terminal). tp > 1: tensor parallelism."""
    import uvicorn

    from zenlm.engine.engine import EngineConfig
    from zenlm.engine.llm import AsyncLLM
    from zenlm.server.app import create_app
    from zenlm.server.generate import ServerState
    from zenlm.server.security import Security

    if not 0 <= port <= 65535:
        raise ValueError(f"--port must be in 0..65535, got {port}")
    if max_waiting < 1:
        raise ValueError(f"--max-waiting must be at least 1, got {max_waiting}")
    if kv_cache_tokens is not None and kv_cache_tokens < 16:
        raise ValueError(f"--kv-cache-tokens must be at least 16 (one block), got {kv_cache_tokens}")
    security = Security.for_bind(host, allowed_origins, allowed_hosts, max_body_bytes)  # bad flags fail first
    _check_bind(host, port)  # fail in a second, not after loading the model
    if not logging.getLogger().handlers:  # engine and server errors reach stderr with their tracebacks
        logging.basicConfig(format="zen serve: %(levelname)s %(name)s: %(message)s")
    logging.getLogger("zenlm").setLevel(log_level.upper())
    if before_load is not None:
        before_load()
    engine = EngineConfig(max_num_seqs=max_num_seqs, max_num_batched_tokens=max(512, max_num_seqs),
                          max_waiting=max_waiting, kv_cache_tokens=kv_cache_tokens)
    llm = AsyncLLM(model, dtype=dtype, device=device, progress=sys.stderr.isatty(), engine=engine, tp=tp,
                   speculative=speculative, num_speculative_tokens=spec_tokens)
    state = ServerState(llm, served_name or model, api_key or None, code_interpreter=code_interpreter)
    config = uvicorn.Config(create_app(state, security), host=host, port=port, log_level=log_level, lifespan="off",
                            timeout_graceful_shutdown=GRACE_S, access_log=log_level in ("info", "debug"))
    server = uvicorn.Server(config)

    async def main() -> None:
        task = asyncio.create_task(server.serve())
        while not server.started and not task.done():
            await asyncio.sleep(0.05)
        if server.started:
            bound = server.servers[0].sockets[0].getsockname()[1]
            shown = f"[{host}]" if ":" in host else host
            key = " (API key required)" if state.api_key else ""
            key += "; the code interpreter runs model-written code in the sandbox" if code_interpreter else ""
            print(f"zen serve: {state.model_name} on http://{shown}:{bound}/v1{key}; web chat at "
                  f"http://{shown}:{bound}/ ; Ctrl-C stops", file=sys.stderr, flush=True)
        await task

    try:
        asyncio.run(main())
    except KeyboardInterrupt:
        pass
    finally:
        llm.close()
    if not server.started:
        raise OSError(f"could not listen on {host}:{port}")
    print("zen serve: stopped", file=sys.stderr, flush=True)
    return 0


def _check_bind(host: str, port: int) -> None:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as uvicorn binds
        try:
            s.bind((host, port))
        except OSError as e:
            raise OSError(f"cannot listen on {host}:{port}: {e.strerror or e}") from None
