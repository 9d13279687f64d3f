"""A real zen serve app over a tiny random model (an HF directory with the byte tokenizer), for fast server tests.

app(tmp, security) builds it through the public AsyncLLM constructor; Running(app) serves it with uvicorn
on a free loopback port in a background thread, so tests talk real HTTP and can see the process stay up.
"""

import threading
import time
from pathlib import Path

import uvicorn
from tiny_train import write_model_dir


def tiny_llm(tmp: Path):
    from zenlm.engine.llm import AsyncLLM

    path = write_model_dir(tmp / "tiny-model")
    return AsyncLLM(str(path), dtype="float32", progress=False)


def app(llm, security=None, api_key: str | None = None, name: str = "tiny"):
    from zenlm.server.app import create_app
    from zenlm.server.generate import ServerState

    return create_app(ServerState(llm, name, api_key), security)


class Running:
    """uvicorn serving `app` on 127.0.0.1:<free port> in a daemon thread; .url, .stop()."""

    def __init__(self, asgi_app):
        config = uvicorn.Config(asgi_app, host="127.0.0.1", port=0, log_level="warning", lifespan="off")
        self.server = uvicorn.Server(config)
        self.thread = threading.Thread(target=self.server.run, daemon=True)
        self.thread.start()
        deadline = time.time() + 30
        while not self.server.started and time.time() < deadline and self.thread.is_alive():
            time.sleep(0.02)
        assert self.server.started, "uvicorn did not start"
        port = self.server.servers[0].sockets[0].getsockname()[1]
        self.url = f"http://127.0.0.1:{port}"

    def stop(self) -> None:
        self.server.should_exit = True
        self.thread.join(timeout=10)
