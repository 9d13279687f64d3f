"""Shared pieces of the Qwen v1 tests: a tiny qwen.tiktoken trained here, tiny v1 configs and random weights,
and writers for a v1 HF directory (QWenLMHeadModel config.json, safetensors under v1's names) and a GGUF of
architecture `qwen` (the tensor and metadata names llama.cpp reads for it), plus an independent v1 forward
written from the formulas of reference/models.md 1.5 (per-step rotary for the whole context, logn list).
"""

import base64
import json
import math
from collections import Counter
from pathlib import Path

import gguf
import numpy as np
import regex
import torch
import torch.nn.functional as F
from safetensors.torch import save_file

from zenlm.config import Config
from zenlm.model import Transformer, checkpoint_state_dict
from zenlm.tokenizer.bpe import QWEN2_SPLIT, bytes_to_unicode
from zenlm.tokenizer.tiktoken_bpe import SPECIALS

CORPUS = (
    "def fibonacci(n):\n    if n < 2:\n        return n\n    return fibonacci(n - 1) + fibonacci(n - 2)\n"
    "The quick brown fox jumps over the lazy dog. Hello world! hello there, world.\n"
    "通义千问是阿里云研发的大语言模型。你好，世界！\n"
    "for i in range(10):\n\tprint(i, i ** 2)  # squares\n"
    "Les élèves étudient l'économie; die Straße ist schön. Привет, мир!\n"
)
MERGES = 80


def train_ranks(text: str = CORPUS, merges: int = MERGES) -> dict[bytes, int]:
    """A byte-level BPE: the 256 bytes, then `merges` most frequent pairs within pre-tokens, in order."""
    ranks = {bytes([b]): b for b in range(256)}
    words = Counter(tuple(bytes([b]) for b in w.encode()) for w in regex.findall(QWEN2_SPLIT, text))
    for _ in range(merges):
        pairs = Counter()
        for w, n in words.items():
            for a, b in zip(w, w[1:]):
                pairs[a, b] += n
        if not pairs:
            break
        (a, b), _ = max(pairs.items(), key=lambda kv: (kv[1], kv[0]))
        ranks[a + b] = len(ranks)
        merged = Counter()
        for w, n in words.items():
            out, i = [], 0
            while i < len(w):
                if i + 1 < len(w) and (w[i], w[i + 1]) == (a, b):
                    out.append(a + b)
                    i += 2
                else:
                    out.append(w[i])
                    i += 1
            merged[tuple(out)] += n
        words = merged
    return ranks


def write_tiktoken(path: Path, ranks: dict[bytes, int]) -> Path:
    path.write_bytes(b"".join(base64.b64encode(t) + b" %d\n" % r for t, r in ranks.items()))
    return path


def reference_encode(text: str, ranks: dict[bytes, int]) -> list[int]:
    """BPE by lowest rank inside each pre-token (specials matched first), from the definition."""
    specials = {s: len(ranks) + i for i, s in enumerate(SPECIALS)}
    ids = []
    for part in regex.split("(" + "|".join(map(regex.escape, specials)) + ")", text):
        if part in specials:
            ids.append(specials[part])
            continue
        for word in regex.findall(QWEN2_SPLIT, part):
            pieces = [bytes([b]) for b in word.encode()]
            while len(pieces) > 1:
                best = min(range(len(pieces) - 1), key=lambda i: ranks.get(pieces[i] + pieces[i + 1], math.inf))
                if pieces[best] + pieces[best + 1] not in ranks:
                    break
                pieces[best:best + 2] = [pieces[best] + pieces[best + 1]]
            ids += [ranks[p] for p in pieces]
    return ids


def tiny_config(vocab: int, **over) -> Config:
    """A v1 shape: MHA, untied head; seq_length 32 (logn and dynamic NTK from there), positions to 256."""
    base = dict(name="tiny-qwen", arch="qwen", vocab_size=vocab, hidden_size=64, num_layers=2, num_heads=4,
                num_kv_heads=4, head_dim=16, intermediate_size=96, tie_word_embeddings=False, context_length=256,
                rope_theta=10000.0, seq_length=32, use_logn_attn=True, use_dynamic_ntk=True)
    return Config(**(base | over))


def random_weights(c: Config, seed: int = 0, std: float = 0.2) -> dict[str, torch.Tensor]:
    """Random tensors under v1's checkpoint names (transformer.h.{i}.attn.c_attn.weight, ...)."""
    torch.manual_seed(seed)
    return {k: torch.randn(v.shape) * std for k, v in checkpoint_state_dict(Transformer(c)).items()}


def hf_config(c: Config) -> dict:
    """config.json as the v1 releases write it (Qwen-7B's fields; intermediate_size counts both branches)."""
    return {"architectures": ["QWenLMHeadModel"], "model_type": "qwen", "hidden_size": c.hidden_size,
            "num_hidden_layers": c.num_layers, "num_attention_heads": c.num_heads, "kv_channels": c.head_dim,
            "intermediate_size": 2 * c.intermediate_size, "vocab_size": c.vocab_size, "no_bias": True,
            "layer_norm_epsilon": c.rms_norm_eps, "max_position_embeddings": c.context_length,
            "seq_length": c.seq_length, "rotary_emb_base": c.rope_theta, "rotary_pct": 1.0,
            "use_dynamic_ntk": c.use_dynamic_ntk, "use_logn_attn": c.use_logn_attn, "tie_word_embeddings": False,
            "tokenizer_class": "QWenTokenizer", "bf16": False, "fp16": False, "fp32": False}


def write_hf_dir(path: Path, c: Config, sd: dict, ranks: dict[bytes, int]) -> Path:
    path.mkdir(parents=True)
    (path / "config.json").write_text(json.dumps(hf_config(c)))
    save_file({k: v.contiguous() for k, v in sd.items()}, str(path / "model.safetensors"))
    write_tiktoken(path / "qwen.tiktoken", ranks)
    (path / "tokenizer_config.json").write_text(json.dumps({"tokenizer_class": "QWenTokenizer"}))
    eod = len(ranks)  # <|endoftext|>
    (path / "generation_config.json").write_text(json.dumps({"chat_format": "chatml", "eos_token_id": eod,
                                                             "pad_token_id": eod, "top_p": 0.8}))
    return path


# v1 checkpoint name -> GGUF name (gguf-py's tensor_mapping: c_attn -> attn_qkv, w1 -> ffn_up, w2 -> ffn_gate)
GGUF_GLOBAL = {"transformer.wte": "token_embd", "transformer.ln_f": "output_norm", "lm_head": "output"}
GGUF_BLOCK = {"ln_1": "attn_norm", "ln_2": "ffn_norm", "attn.c_attn": "attn_qkv", "attn.c_proj": "attn_output",
              "mlp.w1": "ffn_up", "mlp.w2": "ffn_gate", "mlp.c_proj": "ffn_down"}


def gguf_name(v1: str) -> str:
    module, _, leaf = v1.rpartition(".")
    if module in GGUF_GLOBAL:
        return f"{GGUF_GLOBAL[module]}.{leaf}"
    _, _, layer, part = module.split(".", 3)
    return f"blk.{layer}.{GGUF_BLOCK[part]}.{leaf}"


def write_gguf(path: Path, c: Config, sd: dict, ranks: dict[bytes, int],
               qtype: gguf.GGMLQuantizationType = gguf.GGMLQuantizationType.F32) -> Path:
    """A GGUF of architecture `qwen`, keys as llama.cpp's converter writes them (feed_forward_length is
    config.json's intermediate_size; no head_count_kv), vocabulary as byte-level tokens + merges."""
    w = gguf.GGUFWriter(str(path), "qwen")
    w.add_block_count(c.num_layers)
    w.add_context_length(c.context_length)
    w.add_embedding_length(c.hidden_size)
    w.add_feed_forward_length(2 * c.intermediate_size)
    w.add_head_count(c.num_heads)
    w.add_rope_dimension_count(c.head_dim)
    w.add_rope_freq_base(c.rope_theta)
    w.add_layer_norm_rms_eps(c.rms_norm_eps)
    spell = bytes_to_unicode()
    by_rank = sorted(ranks, key=ranks.get)
    tokens = ["".join(spell[b] for b in t) for t in by_rank] + list(SPECIALS[:3])
    tokens += [f"[PAD{i}]" for i in range(c.vocab_size - len(tokens))]
    merges = [" ".join("".join(spell[b] for b in p) for p in split_token(t, ranks)) for t in by_rank if len(t) > 1]
    w.add_tokenizer_model("gpt2")
    w.add_tokenizer_pre("qwen2")
    w.add_token_list(tokens)
    w.add_token_types([1] * len(ranks) + [3] * 3 + [4] * (len(tokens) - len(ranks) - 3))
    w.add_token_merges(merges)
    w.add_eos_token_id(len(ranks))
    w.add_bos_token_id(len(ranks))
    for name, t in sd.items():
        arr = t.numpy().astype(np.float32)
        if arr.ndim == 2 and qtype != gguf.GGMLQuantizationType.F32:
            w.add_tensor(gguf_name(name), gguf.quants.quantize(arr, qtype), raw_dtype=qtype)
        else:
            w.add_tensor(gguf_name(name), arr)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    return path


def split_token(token: bytes, ranks: dict[bytes, int]) -> list[bytes]:
    """The two lower-ranked tokens a token was merged from (BPE over its bytes, ranks below its own)."""
    parts = [bytes([b]) for b in token]
    while len(parts) > 2:
        i = min(range(len(parts) - 1), key=lambda i: ranks.get(parts[i] + parts[i + 1], math.inf))
        parts[i:i + 2] = [parts[i] + parts[i + 1]]
    return parts


# ---- an independent Qwen v1 forward, from the formulas (reference/models.md 1.5) -----------------------------
def reference_logits(c: Config, sd: dict, tokens: list[int]) -> torch.Tensor:
    """Logits [T, V] of one full forward over tokens, computed as v1's modeling code describes it: rotary
    for the whole context with ntk_alpha of its length, the logn list on the queries, w1 * silu(w2)."""
    T, H, D = len(tokens), c.num_heads, c.head_dim
    S = c.seq_length
    alpha = max(2 ** math.ceil(math.log(T / S, 2) + 1) - 1, 1) if c.use_dynamic_ntk else 1
    base = c.rope_theta * alpha ** (D / (D - 2))
    inv = 1.0 / (base ** (torch.arange(0, D, 2).float() / D))
    freqs = torch.outer(torch.arange(T).float(), inv)
    emb = torch.cat((freqs, freqs), dim=-1)
    cos, sin = emb.cos(), emb.sin()  # [T, D]

    def rot(x):  # [H, T, D]
        x1, x2 = x[..., : D // 2], x[..., D // 2:]
        return x * cos + torch.cat((-x2, x1), dim=-1) * sin

    logn = torch.tensor([math.log(i, S) if i > S else 1.0 for i in range(1, T + 1)])  # query i-1's factor

    def norm(x, w):
        return w * (x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + c.rms_norm_eps))

    x = sd["transformer.wte.weight"][tokens]
    mask = torch.ones(T, T).tril().bool()
    for i in range(c.num_layers):
        p = f"transformer.h.{i}."
        h = norm(x, sd[p + "ln_1.weight"])
        qkv = h @ sd[p + "attn.c_attn.weight"].T + sd[p + "attn.c_attn.bias"]
        q, k, v = (t.view(T, H, D).transpose(0, 1) for t in qkv.split(H * D, dim=-1))
        q, k = rot(q), rot(k)
        if c.use_logn_attn and T > S:
            q = q * logn[None, :, None]
        att = (q @ k.transpose(-1, -2)) / math.sqrt(D)
        att = att.masked_fill(~mask, -math.inf).softmax(-1)
        x = x + (att @ v).transpose(0, 1).reshape(T, H * D) @ sd[p + "attn.c_proj.weight"].T
        h = norm(x, sd[p + "ln_2.weight"])
        a1, a2 = h @ sd[p + "mlp.w1.weight"].T, h @ sd[p + "mlp.w2.weight"].T
        x = x + (a1 * F.silu(a2)) @ sd[p + "mlp.c_proj.weight"].T
    return norm(x, sd["transformer.ln_f.weight"]) @ sd["lm_head.weight"].T


# ---- llama.cpp, the oracle for architecture `qwen` (llama-cpp-python; not in CI's test extra) -----------------
def llama_cpp_run(path: Path, tokens: list[int], new_tokens: int = 0) -> tuple[np.ndarray, list[int]]:
    """llama.cpp's logits [T, V] for tokens (one batch, F32 K/V cache) and, with new_tokens, its greedy
    continuation (one token at a time through its cache)."""
    from llama_cpp import Llama

    llm = Llama(str(path), n_ctx=len(tokens) + new_tokens + 8, n_batch=512, logits_all=True, verbose=False,
                n_threads=1, type_k=0, type_v=0, seed=0)  # type 0: GGML_TYPE_F32
    try:
        llm.eval(tokens)
        logits = np.array(llm.scores[:len(tokens)])
        out = []
        for _ in range(new_tokens):
            out.append(int(np.argmax(llm.scores[llm.n_tokens - 1])))
            llm.eval([out[-1]])
        return logits, out
    finally:
        llm.close()
