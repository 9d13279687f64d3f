"""The local model store, Ollama-style: pull a hub name, list what is here, remove it.

The files stay where their hub's own tools keep them (hub.py: the HF cache; modelscope.py: the
ModelScope cache). What zenlm adds is a record per name pulled, {zen cache}/models/{key}.json: the
name, its files, format, quantization and size, so `zen list` needs neither network nor parsing. A
name already complete in the cache is used as it is (no network); `zen pull` asks the hub for the
latest revision. HF_HUB_OFFLINE=1 keeps every provider off the network.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from types import ModuleType

from zenlm.cache import cache_dir
from zenlm.weights import hub, modelscope
from zenlm.weights.download import Local, Unreachable, human_bytes
from zenlm.weights.file_info import FILE_TYPES, TORCH_DTYPES
from zenlm.weights.hub_names import HubName, parse

log = logging.getLogger("zenlm.weights")


@dataclass(slots=True)
class Entry:
    name: str
    kind: str  # "gguf" | "hf"
    path: str  # what the loader opens
    files: list[str]
    revision: str
    format: str  # "gguf" | "safetensors"
    quantization: str  # the file's own: Q4_K_M, BF16, ...
    size: int
    pulled_at: str


def provider(name: HubName) -> ModuleType:
    return modelscope if name.provider == "modelscope" else hub


def hub_name(name: HubName | str) -> HubName:
    parsed = name if isinstance(name, HubName) else parse(name)
    if parsed is None:
        raise ValueError(f"{name!r} is not a hub name (Org/Name, Org/Name:tag, Org/Name@revision, "
                         "modelscope:Org/Name)")
    return parsed


def ensure(name: HubName | str, confirm: Callable[[str], bool] | None = None, progress: bool = True) -> Local:
    """The model `name` means, from the cache when it is complete there, else pulled now."""
    name = hub_name(name)
    local = provider(name).cached(name)
    if local is None:
        return pull(name, confirm, progress)
    if not _entry_file(name).exists():
        _record(name, local)
    return local


def pull(name: HubName | str, confirm: Callable[[str], bool] | None = None, progress: bool = True) -> Local:
    """Bring `name` up to date with its hub and record it. confirm(question) is asked before downloading.

    Without network (or with HF_HUB_OFFLINE=1) a complete cached copy serves; otherwise one line says why not.
    """
    name = hub_name(name)
    source = provider(name)
    if hub.offline():
        local = source.cached(name)
        if local is None:
            raise ValueError(f"{name} is not in the cache, and HF_HUB_OFFLINE is set: nothing is downloaded")
        return _record(name, local)
    try:
        plan = source.remote(name)
    except Unreachable as e:
        local = source.cached(name)
        if local is None:
            raise ValueError(f"{e}; {name} is not in the cache") from None
        log.warning("%s; using the cached copy of %s", e, name)
        return _record(name, local)
    todo = source.missing(name, plan)
    if todo and confirm is not None:
        size = human_bytes(sum(f.size or 0 for f in todo))
        if not confirm(f"{name} is not downloaded: fetch {len(todo)} file(s), {size}, from {source.endpoint()}?"):
            raise ValueError(f"{name} is not downloaded; `zen pull {name}` fetches it")
    return _record(name, source.download(name, plan, progress))


def _key(name: HubName) -> str:
    return hashlib.sha256(str(name).encode()).hexdigest()[:16]


def _entry_file(name: HubName) -> Path:
    return cache_dir() / "models" / f"{_key(name)}.json"


def _record(name: HubName, local: Local) -> Local:
    """Write (or refresh) the store's record of a complete model."""
    if local.kind == "gguf":
        from zenlm.weights.gguf_reader import read_gguf

        fmt, quant = "gguf", FILE_TYPES.get(read_gguf(local.path)[0].get("general.file_type"), "unknown")
    else:
        config = json.loads((local.path / "config.json").read_text())
        fmt, quant = "safetensors", TORCH_DTYPES.get(str(config.get("torch_dtype", "")).removeprefix("torch."),
                                                     "unknown")
    entry = Entry(str(name), local.kind, str(local.path), [str(f) for f in local.files], local.revision, fmt, quant,
                  sum(f.stat().st_size for f in local.files), time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()))
    target = _entry_file(name)
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = target.with_name(f".{target.name}.{os.getpid()}.tmp")
    tmp.write_text(json.dumps(asdict(entry), indent=1))
    os.replace(tmp, target)
    return local


def entries() -> list[Entry]:
    """Every recorded model, by name."""
    found = []
    for f in sorted((cache_dir() / "models").glob("*.json")):
        try:
            found.append(Entry(**json.loads(f.read_text())))
        except (ValueError, TypeError):
            log.warning("%s: not a model record; ignored", f)
    return sorted(found, key=lambda e: e.name)


def complete(entry: Entry) -> bool:
    return all(Path(f).is_file() for f in entry.files)


def remove(name: HubName | str) -> list[Path]:
    """Delete a pulled model's files (those no other record uses), its quantized copies and its record."""
    from zenlm.weights.load import quantized_copies

    name = hub_name(name)
    record = _entry_file(name)
    if not record.exists():
        raise ValueError(f"{name} is not in the store (see `zen list`)")
    entry = Entry(**json.loads(record.read_text()))
    shared = {f for e in entries() if e.name != entry.name for f in e.files}
    removed = [p for copies in quantized_copies(Path(entry.path)).values() for p in copies]
    for p in removed:
        p.unlink(missing_ok=True)
    for f in map(Path, entry.files):
        if str(f) not in shared:
            removed += _remove_file(f)
    record.unlink()
    return removed


def _remove_file(f: Path) -> list[Path]:
    """A file, and for an HF snapshot link its blob when no other snapshot links to it."""
    if not f.is_symlink():
        f.unlink(missing_ok=True)
        return [f]
    blob = f.resolve()
    f.unlink()
    snapshots = next((p for p in f.parents if p.name == "snapshots"), None)
    used = snapshots is not None and any(p.is_symlink() and p.resolve() == blob for p in snapshots.rglob("*"))
    if not used:
        blob.unlink(missing_ok=True)
    for d in f.parents:  # the emptied folders up to the snapshot's
        if d == snapshots or not d.is_dir() or any(d.iterdir()):
            break
        d.rmdir()
    return [f] if used else [f, blob]
