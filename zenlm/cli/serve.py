"""`zen serve`: the OpenAI/Ollama-compatible server with its web chat (server/serve.py does the work);
with --replicas N, the same app on N engine replicas behind one endpoint on Ray Serve (server/replicas/).
"""

from __future__ import annotations

import sys

from zenlm.cli.common import add_model, add_speculative, add_tp, count, pull_first, speculative

MISSING_RAY = "zen serve --replicas needs Ray Serve, which is not installed: pip install zenlm[ray]"


def cmd_serve(args) -> int:
    import os

    api_key = args.api_key or os.environ.get("ZEN_API_KEY")
    if args.replicas is not None:
        if count("--tp", args.tp, 1) > 1:
            raise ValueError("--tp and --replicas cannot be combined yet: give one of them")
        if args.enable_code_interpreter:
            raise ValueError("--enable-code-interpreter is not available with --replicas yet")
        return serve_replicas(args, api_key)
    if args.ray_address is not None or args.threads_per_replica is not None:
        raise ValueError("--ray-address and --threads-per-replica need --replicas N")
    from zenlm.server.serve import serve

    spec = speculative(args)  # a bad --spec-tokens fails before anything loads
    return serve(args.model, args.host, args.port, api_key, args.dtype,
                 args.device, args.served_model_name, args.max_num_seqs, args.log_level, args.allowed_origins,
                 args.allowed_hosts, args.max_body_bytes, args.max_waiting, args.kv_cache_tokens,
                 before_load=lambda: pull_first(args.model), tp=count("--tp", args.tp, 1),
                 code_interpreter=args.enable_code_interpreter, speculative=spec.get("speculative"),
                 spec_tokens=spec.get("num_speculative_tokens", 5))


def serve_replicas(args, api_key: str | None) -> int:
    try:
        from zenlm.server.replicas.deployments import EngineOptions
        from zenlm.server.replicas.launch import serve_replicas as run
    except ModuleNotFoundError as e:
        if (e.name or "").partition(".")[0] != "ray":
            raise
        print(f"zen: error: {MISSING_RAY}", file=sys.stderr)
        return 1
    pull_first(args.model)  # once here, not in every replica
    options = EngineOptions(args.model, args.dtype, args.device, args.threads_per_replica or 1,
                            args.served_model_name, api_key, args.max_num_seqs, args.max_waiting,
                            args.kv_cache_tokens, args.host, args.allowed_origins, args.allowed_hosts,
                            args.max_body_bytes, args.log_level)
    return run(options, args.replicas, args.port, args.ray_address)


def add(sub) -> None:
    s = sub.add_parser("serve", help="OpenAI-compatible HTTP server (and Ollama's API, and a web chat)")
    add_model(s)
    add_tp(s)
    s.add_argument("--host", default="127.0.0.1")
    s.add_argument("--port", type=int, default=8000, help="0 picks a free port (the URL printed says which)")
    s.add_argument("--api-key", default=None, help="require 'Authorization: Bearer KEY' (default: $ZEN_API_KEY)")
    s.add_argument("--served-model-name", default=None, help="the model id clients use (default: --model)")
    s.add_argument("--max-num-seqs", type=int, default=16, help="sequences decoded together")
    s.add_argument("--max-waiting", type=int, default=256,
                   help="requests queued beyond those running; more get 429 with Retry-After")
    s.add_argument("--kv-cache-tokens", type=int, default=None,
                   help="tokens the paged KV cache holds, all sequences together (default: the model's context); "
                        "its memory is touched as it fills")
    s.add_argument("--log-level", default="warning", choices=["debug", "info", "warning", "error"])
    s.add_argument("--allowed-origins", default=None, metavar="LIST",
                   help="comma-separated origins browsers may call from, '*' for any; loopback origins always "
                        "may (default: $ZEN_ALLOWED_ORIGINS)")
    s.add_argument("--allowed-hosts", default=None, metavar="LIST",
                   help="comma-separated Host names accepted besides loopback ones; bound to loopback, others "
                        "get 403 (DNS rebinding); setting it turns the check on for any --host "
                        "(default: $ZEN_ALLOWED_HOSTS)")
    s.add_argument("--max-body-bytes", type=int, default=16 * 1024 * 1024,
                   help="request bodies over this get 413 (default: 16 MiB)")
    add_speculative(s)
    s.add_argument("--enable-code-interpreter", action="store_true",
                   help="let /v1/code_interpreter (the web chat's switch) run model-written Python in the sandbox; "
                        "off by default, and it needs the API key like every /v1 route")
    r = s.add_argument_group("replicas (Ray Serve; pip install zenlm[ray])")
    r.add_argument("--replicas", type=int, default=None, metavar="N",
                   help="N engine processes behind one endpoint on Ray Serve; a conversation's requests go to the "
                        "replica that holds its prefix, new ones to the least loaded; dead replicas are restarted")
    r.add_argument("--ray-address", default=None, metavar="ADDR",
                   help="an existing Ray cluster (e.g. 'auto' or 'ray://head:10001'; default: start a local one)")
    r.add_argument("--threads-per-replica", type=int, default=None, metavar="T",
                   help="torch threads (and CPUs reserved) per replica (default: 1)")
    s.set_defaults(func=cmd_serve)
