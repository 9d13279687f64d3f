"""Hub model names, and which of a repository's files such a name means.

    Qwen/Qwen2.5-7B-Instruct                      an HF repository of safetensors: config, tokenizer, weights
    Qwen/Qwen2.5-Coder-7B-Instruct-GGUF:q4_k_m    a GGUF repository and a quantization tag: that file (or its shards)
    Qwen/Qwen2.5-7B-Instruct@v1.0                 a revision: a branch, a tag or a commit
    modelscope:Qwen/Qwen2.5-7B-Instruct           the same repository on ModelScope (hf.co/ and hf: prefixes mean HF)

Pure string work, no I/O: the same selection runs on the hub's file list and on a cached snapshot's.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import dataclass

from zenlm.weights.file_info import FILE_TYPES

PREFIXES = {"hf.co/": "hf", "huggingface.co/": "hf", "hf:": "hf", "modelscope:": "modelscope"}
_REPO = re.compile(r"[A-Za-z0-9][\w.-]{0,95}/[A-Za-z0-9][\w.-]{0,95}")
_PART = re.compile(r"(:[^:@/\s]+|@[^:@\s]+)")
SHARD = re.compile(r"(?P<prefix>.+)-(?P<no>\d{5})-of-(?P<count>\d{5})\.gguf", re.IGNORECASE)
DEFAULT_TAG = "q4_k_m"  # what llama.cpp and Ollama take from a GGUF repository when no tag is given
QUANT_TAGS = sorted({t.lower() for t in FILE_TYPES.values()} | {"fp16", "fp32"}, key=len, reverse=True)
# An HF directory: what zenlm reads from it (weights are every top-level *.safetensors); Qwen v1's
# tokenizer is qwen.tiktoken instead of tokenizer.json
HF_FILES = {"config.json", "generation_config.json", "tokenizer.json", "tokenizer_config.json",
            "special_tokens_map.json", "chat_template.jinja", "chat_template.json", "model.safetensors.index.json",
            "qwen.tiktoken"}


@dataclass(frozen=True, slots=True)
class HubName:
    provider: str  # "hf" | "modelscope"
    repo: str  # "Org/Name"
    tag: str | None = None  # lower case: "q4_k_m"
    revision: str | None = None  # None: the default branch

    def __str__(self) -> str:
        prefix = "modelscope:" if self.provider == "modelscope" else ""
        return f"{prefix}{self.repo}" + (f":{self.tag}" if self.tag else "") + (
            f"@{self.revision}" if self.revision else "")


@dataclass(frozen=True, slots=True)
class Selection:
    """The repository files a name means: a GGUF file (or all shards of a split one), or an HF directory."""

    kind: str  # "gguf" | "hf"
    files: tuple[str, ...]  # repository-relative paths
    main: str  # the GGUF file to open (the first shard); "" for an HF directory (the snapshot root)


def parse(text: str) -> HubName | None:
    """The hub name `text` spells, or None when it is not shaped like one (a path, 'default', a preset)."""
    provider, explicit = "hf", False
    for prefix, where in PREFIXES.items():
        if text.startswith(prefix):
            provider, text, explicit = where, text[len(prefix):], True
            break
    m = _REPO.match(text)
    if m is None or (not explicit and m.group().lower().endswith((".gguf", ".safetensors"))):
        return _not_a_name(text, explicit)
    rest = text[m.end():]
    parts = _PART.findall(rest)
    if "".join(parts) != rest:
        return _not_a_name(text, explicit)
    tag = revision = None
    for part in parts:
        if part[0] == ":" and tag is None:
            tag = part[1:].lower()
        elif part[0] == "@" and revision is None:
            revision = part[1:]
        else:
            raise ValueError(f"{text!r}: a hub name takes one :tag and one @revision")
    return HubName(provider, m.group(), tag, revision)


def _not_a_name(text: str, explicit: bool) -> None:
    if explicit:
        raise ValueError(f"{text!r} is not a hub name: write Org/Name, Org/Name:tag or Org/Name@revision")
    return None


def select(name: HubName, files: Iterable[str]) -> Selection:
    """The files `name` means among a repository's `files`; a one-line ValueError when none or several fit."""
    files = sorted(set(files))
    weights = [f for f in files if "/" not in f and f.endswith(".safetensors")]
    if name.tag is None and "config.json" in files and weights:
        if "tokenizer.json" not in files and "qwen.tiktoken" not in files:
            raise ValueError(f"{name}: the repository has no tokenizer.json (or qwen.tiktoken), which zenlm reads")
        return Selection("hf", tuple(f for f in files if "/" not in f and (f in HF_FILES or f in weights)), "")
    models = gguf_models(files)
    if not models:
        what = f"no GGUF file for the tag {name.tag!r}" if name.tag else \
            "neither safetensors weights with a config.json nor GGUF files"
        raise ValueError(f"{name}: the repository has {what}")
    if name.tag is None and len(models) == 1:
        hits = list(models)
    else:
        tag = name.tag or DEFAULT_TAG
        hits = [label for label in models if _has_tag(label, tag)]
        if not hits:
            why = "" if name.tag else " (the default; add a tag to choose another)"
            raise ValueError(f"{name}: no GGUF file matches the tag {tag!r}{why}; the repository has "
                             f"{', '.join(tag_of(label) for label in models)}")
        if len(hits) > 1:
            raise ValueError(f"{name}: {len(hits)} GGUF files match the tag {tag!r} ({', '.join(hits)}); "
                             "give a tag that names one")
    shards = models[hits[0]]
    count = SHARD.fullmatch(shards[0])
    if count is not None and len(shards) != int(count["count"]):
        have = sorted(int(SHARD.fullmatch(s)["no"]) for s in shards)
        lost = [str(i) for i in range(1, int(count["count"]) + 1) if i not in have]
        raise ValueError(f"{name}: the split GGUF {hits[0]} lacks shard(s) {', '.join(lost)} "
                         f"of {int(count['count'])}")
    return Selection("gguf", tuple(shards), shards[0])


def gguf_models(files: Iterable[str]) -> dict[str, list[str]]:
    """GGUF models among repository files: {label: files}; a split model's label is its shard prefix."""
    models: dict[str, list[str]] = {}
    for f in sorted(files):
        if not f.lower().endswith(".gguf"):
            continue
        m = SHARD.fullmatch(f)
        models.setdefault(m["prefix"] if m else f, []).append(f)
    return models


def _has_tag(label: str, tag: str) -> bool:
    return re.search(rf"(?<![a-z0-9_]){re.escape(tag.lower())}(?![a-z0-9_])", label.lower()) is not None


def tag_of(label: str) -> str:
    """The quantization tag a GGUF file's name carries (q4_k_m), or its name when it carries none."""
    return next((t for t in QUANT_TAGS if _has_tag(label, t)), label)
