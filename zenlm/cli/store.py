"""`zen pull`, `zen list` and `zen rm`: the models fetched by hub name (weights/store.py does the work).
"""

from __future__ import annotations

import json
import sys


def cmd_pull(args) -> int:
    from zenlm.weights.download import human_bytes
    from zenlm.weights.store import pull

    local = pull(args.name, progress=sys.stderr.isatty())
    size = sum(f.stat().st_size for f in local.files)
    print(f"{args.name}: {len(local.files)} file(s), {human_bytes(size)} at {local.path}", file=sys.stderr)
    print(local.path)
    return 0


def cmd_list(args) -> int:
    from pathlib import Path

    from zenlm.weights.download import human_bytes
    from zenlm.weights.load import quantized_copies
    from zenlm.weights.store import complete, entries

    rows = []
    for e in entries():
        copies = quantized_copies(Path(e.path)) if complete(e) else {}
        rows.append({"name": e.name, "format": e.format, "quantization": e.quantization, "size": e.size,
                     "quantized_copy": sorted(copies), "complete": complete(e), "path": e.path})
    if args.json:
        print(json.dumps(rows, indent=1))
        return 0
    print(f"{'NAME':48s} {'FORMAT':12s} {'QUANT':8s} {'SIZE':>9s}  QUANTIZED COPY")
    for r in rows:
        copy = ",".join(r["quantized_copy"]) or "-"
        note = "" if r["complete"] else "  (files missing: pull again)"
        print(f"{r['name']:48s} {r['format']:12s} {r['quantization']:8s} {human_bytes(r['size']):>9s}  {copy}{note}")
    return 0


def cmd_rm(args) -> int:
    from zenlm.weights.store import remove

    for name in args.names:
        removed = remove(name)
        print(f"removed {name} ({len(removed)} file(s))", file=sys.stderr)
    return 0


def add(sub) -> None:
    p = sub.add_parser("pull", help="download a model by hub name into the local cache")
    p.add_argument("name", help="Org/Name (safetensors), Org/Name-GGUF:q4_k_m, NAME@revision, modelscope:Org/Name")
    p.set_defaults(func=cmd_pull)
    ls = sub.add_parser("list", help="the models pulled: name, format, quantization, size, quantized copy")
    ls.add_argument("--json", action="store_true")
    ls.set_defaults(func=cmd_list)
    r = sub.add_parser("rm", help="remove pulled models and their quantized copies")
    r.add_argument("names", nargs="+")
    r.set_defaults(func=cmd_rm)
