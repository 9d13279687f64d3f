"""CPU cost of grammar-constrained decoding: llguidance vs xgrammar vs outlines-core, default model's tokenizer.

    pip install llguidance xgrammar outlines-core    # xgrammar and outlines-core are not zenlm dependencies
    python benchmarks/grammar_engines.py

For each engine: one-off tokenizer set-up, compiling one JSON schema, and the per-token cost of the
next-token mask while stepping through a valid 46-token answer (mask only; applying a mask to the
logits is the same ~0.15 ms for all three). Results on 2026-11-24 (2-core CI machine, busy):

    engine               tokenizer set-up  schema compile  mask median  mask max
    llguidance 1.9.1     0.9-1.0 s (once)  1 ms            0.037 ms     1.4 ms
    xgrammar 0.2.8       0.07 s            19-24 ms        0.006 ms     0.1 ms
    outlines-core 0.2.14 0.4-0.5 s         430-540 ms      0.001 ms     5 ms

A rerun while the test suite ran beside it: llguidance 4.7 s / 1.3 ms / 0.028 ms / 14 ms, xgrammar
0.29 s / 103 ms / 0.002 ms / 0.12 ms, outlines-core 1.3 s / 2.3 s / 0.0003 ms / 33 ms.

zenlm uses llguidance: xgrammar needs transformers and triton at run time (test-only packages here),
and outlines-core spends half a second indexing every new schema. All three cost far less per token
than one decode step (~40 ms).
"""

from __future__ import annotations

import json
import sys
import time

import numpy as np

SCHEMA = {"type": "object", "properties": {
    "name": {"type": "string"}, "age": {"type": "integer"}, "tags": {"type": "array", "items": {"type": "string"}},
    "address": {"type": "object", "properties": {"city": {"type": "string"},
                                                 "zip": {"type": "string", "pattern": "^[0-9]{5}$"}},
                "required": ["city", "zip"]}}, "required": ["name", "age", "tags", "address"],
    "additionalProperties": False}
ANSWER = {"name": "Alice Smith", "age": 42, "tags": ["engineer", "python", "rust"],
          "address": {"city": "Paris", "zip": "75001"}}


def token_bytes(tok) -> tuple[list[bytes], set[int]]:
    """Each id's bytes (byte-level BPE spelling undone) and the ids of added/special tokens."""
    from zenlm.tokenizer.bpe import bytes_to_unicode

    inv = {c: b for b, c in bytes_to_unicode().items()}
    out, special = [], set()
    for i in range(tok.vocab_size):
        s = tok.id_to_token(i)
        if tok.decode([i], skip_special_tokens=True) == "" or s.startswith("[PAD") or s in ("<tool_call>",
                                                                                                "</tool_call>"):
            special.add(i)
            out.append(s.encode())
        else:
            out.append(bytes(inv[c] for c in s) if all(c in inv for c in s) else s.encode())
    return out, special


def run(engine: str, tok, ids: list[int]) -> dict:
    eos, V = list(tok.eos_token_ids), tok.vocab_size
    times = []
    if engine == "llguidance":
        import llguidance

        t0 = time.perf_counter()
        ll = llguidance.LLTokenizer(tok.to_json(), n_vocab=V, eos_token=eos)
        t1 = time.perf_counter()
        m = llguidance.LLMatcher(ll, llguidance.LLMatcher.grammar_from_json_schema(SCHEMA))
        t2 = time.perf_counter()
        for t in ids:
            a = time.perf_counter()
            m.compute_bitmask()
            times.append(time.perf_counter() - a)
            assert m.consume_token(t), m.get_error()
    elif engine == "xgrammar":
        import xgrammar as xgr

        vocab, _ = token_bytes(tok)
        t0 = time.perf_counter()
        info = xgr.TokenizerInfo(vocab, xgr.VocabType.BYTE_LEVEL, vocab_size=V, stop_token_ids=eos)
        t1 = time.perf_counter()
        compiled = xgr.GrammarCompiler(info, max_threads=1).compile_json_schema(json.dumps(SCHEMA),
                                                                               any_whitespace=False)
        t2 = time.perf_counter()
        m, mask = xgr.GrammarMatcher(compiled), xgr.allocate_token_bitmask(1, V)
        for t in ids:
            a = time.perf_counter()
            m.fill_next_token_bitmask(mask)
            times.append(time.perf_counter() - a)
            assert m.accept_token(t)
    else:
        import outlines_core as oc
        from outlines_core.json_schema import build_regex_from_schema

        vocab, special = token_bytes(tok)
        t0 = time.perf_counter()
        table: dict[str, list[int]] = {}
        for i, b in enumerate(vocab):
            if i in special:
                continue
            try:
                table.setdefault(b.decode("utf-8"), []).append(i)
            except UnicodeDecodeError:
                pass
        voc = oc.Vocabulary(eos[0], table)
        t1 = time.perf_counter()
        index = oc.Index(build_regex_from_schema(json.dumps(SCHEMA)), voc)
        t2 = time.perf_counter()
        guide = oc.Guide(index)
        for t in ids:
            a = time.perf_counter()
            guide.get_tokens()
            times.append(time.perf_counter() - a)
            guide.advance(t)
    ms = np.array(times) * 1e3
    return {"engine": engine, "tokenizer_s": round(t1 - t0, 3), "compile_ms": round((t2 - t1) * 1e3, 2),
            "mask_median_ms": round(float(np.median(ms)), 4), "mask_max_ms": round(float(ms.max()), 3)}


def main() -> None:
    from zenlm.tokenizer import Tokenizer
    from zenlm.weights.gguf_reader import read_gguf
    from zenlm.weights.registry import default_model_path

    tok = Tokenizer.from_gguf(read_gguf(default_model_path())[0])
    ids = tok.encode(json.dumps(ANSWER))
    for engine in sys.argv[1:] or ["llguidance", "xgrammar", "outlines-core"]:
        try:
            print(json.dumps(run(engine, tok, ids)), flush=True)
        except ImportError as e:
            print(json.dumps({"engine": engine, "error": f"not installed: {e}"}), flush=True)


if __name__ == "__main__":
    main()
