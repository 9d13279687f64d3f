"""`zen serve`: the OpenAI/Ollama-compatible server with its web chat (server/serve.py does the work).
"""

from __future__ import annotations

from zenlm.cli.common import add_model, add_speculative, pull_first, speculative


def cmd_serve(args) -> int:
    import os

    from zenlm.server.serve import serve

    spec = speculative(args)  # a bad --spec-tokens fails before anything loads
    return serve(args.model, args.host, args.port, args.api_key or os.environ.get("ZEN_API_KEY"), args.dtype,
                 args.device, args.served_model_name, args.max_num_seqs, args.log_level, args.allowed_origins,
                 args.allowed_hosts, args.max_body_bytes, args.max_waiting, args.kv_cache_tokens,
                 before_load=lambda: pull_first(args.model), spec_tokens=spec.get("num_speculative_tokens", 5),
                 speculative=spec.get("speculative"))


def add(sub) -> None:
    s = sub.add_parser("serve", help="OpenAI-compatible HTTP server (and Ollama's API, and a web chat)")
    add_model(s)
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
    s.set_defaults(func=cmd_serve)
