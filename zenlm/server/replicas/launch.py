"""`zen serve --replicas N`: join or start a Ray cluster, run the Serve application, wait, shut down cleanly.

Without --ray-address a local Ray cluster starts inside this process's session (head, Serve controller,
HTTP proxy, the replicas) and ends with it; with one, the replicas are placed across that cluster, whose
nodes need zenlm and the model installed. Ctrl-C or SIGTERM deletes the application before leaving.
"""

from __future__ import annotations

import os
import signal
import socket
import sys
import threading

from zenlm.server.replicas.deployments import EngineOptions

APP = "zen"


def serve_replicas(options: EngineOptions, replicas: int, port: int = 8000, ray_address: str | None = None,
                   num_cpus: int | None = None, router_kwargs: dict | None = None) -> int:
    import ray
    from ray import serve

    from zenlm.server.replicas.deployments import build

    app = build(options, replicas, router_kwargs)  # bad flags fail before a cluster starts
    if not 0 <= port <= 65535:
        raise ValueError(f"--port must be in 0..65535, got {port}")
    port = port or free_port(options.host)
    if ray_address is None and num_cpus is None:  # a local cluster: room for every replica, even past the cores
        num_cpus = max(os.cpu_count() or 1, replicas * options.threads)
    ray.init(address=ray_address, num_cpus=num_cpus, include_dashboard=False, configure_logging=False)
    logs = {"log_level": options.log_level.upper()}  # replicas' errors (a model that fails to load) reach stderr
    stop = threading.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: stop.set())
    try:
        serve.start(http_options={"host": options.host, "port": port}, logging_config=logs)
        try:
            serve.run(app, name=APP, route_prefix="/", logging_config=logs)
        except RuntimeError as e:  # a replica that cannot start: its traceback is above, from Ray
            print(f"zen: error: the replicas did not start ({e}); the replica errors above say why",
                  file=sys.stderr, flush=True)
            return 1
        shown = f"[{options.host}]" if ":" in options.host else options.host
        print(f"zen serve: {options.served_name or options.model} on http://{shown}:{port}/v1 ({replicas} replicas "
              f"x {options.threads} threads on Ray Serve); Ctrl-C stops", file=sys.stderr, flush=True)
        while not stop.wait(0.5):
            pass
    finally:
        serve.shutdown()
        ray.shutdown()
    print("zen serve: stopped", file=sys.stderr, flush=True)
    return 0


def free_port(host: str) -> int:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as s:
        s.bind((host, 0))
        return s.getsockname()[1]
