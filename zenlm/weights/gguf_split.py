"""Split GGUF files (llama.cpp's gguf-split): PREFIX-00001-of-00003.gguf ... read as one model.

Every shard carries `split.no` (0-based), `split.count` and `split.tensors.count`; the first also
carries all of the model's metadata. Any shard may be given: the first is found by name. A missing
shard, or one whose split keys do not fit its place (another model's, a stray copy), is one ValueError.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from zenlm.weights.gguf_reader import GGUFTensor, read_gguf
from zenlm.weights.hub_names import SHARD

NO, COUNT, TENSORS = "split.no", "split.count", "split.tensors.count"


def shard_paths(path: Path, meta: dict[str, Any]) -> list[Path]:
    """All shards of the split GGUF `path` belongs to, in order ([path] for an unsplit file)."""
    count = int(meta.get(COUNT, 1))
    if count <= 1:
        return [path]
    m = SHARD.fullmatch(path.name)
    if m is None:
        raise ValueError(f"{path}: shard {int(meta.get(NO, 0)) + 1} of a {count}-file split GGUF, but not named "
                         f"PREFIX-NNNNN-of-{count:05d}.gguf, so its other shards cannot be found")
    if int(m["count"]) != count or int(m["no"]) != int(meta.get(NO, -1)) + 1:
        raise ValueError(f"{path}: the name says shard {int(m['no'])} of {int(m['count'])}, the metadata "
                         f"shard {int(meta.get(NO, -1)) + 1} of {count}")
    return [path.with_name(f"{m['prefix']}-{i:05d}-of-{count:05d}.gguf") for i in range(1, count + 1)]


def read_split(path: str | Path) -> tuple[dict[str, Any], dict[str, GGUFTensor], list[Path]]:
    """(the model's metadata, the tensors of every shard, the shard files) for a GGUF file, split or not."""
    path = Path(path)
    meta, tensors = read_gguf(path)
    files = shard_paths(path, meta)
    if len(files) == 1:
        return meta, tensors, files
    lost = [f.name for f in files if not f.is_file()]
    if lost:
        raise ValueError(f"{files[0]}: split GGUF of {len(files)} files; missing {', '.join(lost)} "
                         "(all shards must sit in one directory)")
    if path != files[0]:
        meta, tensors = read_gguf(files[0])
    tensors = dict(tensors)
    for i, f in enumerate(files):
        m, t = (meta, {}) if i == 0 else read_gguf(f)
        if int(m.get(COUNT, 1)) != len(files) or int(m.get(NO, -1)) != i or m.get(TENSORS) != meta.get(TENSORS):
            raise ValueError(f"{f}: its split keys say shard {int(m.get(NO, -1)) + 1} of {m.get(COUNT, 1)} with "
                             f"{m.get(TENSORS)} tensors in all; expected shard {i + 1} of {len(files)} with "
                             f"{meta.get(TENSORS)} (a shard of another model?)")
        twice = set(t) & set(tensors)
        if twice:
            raise ValueError(f"{f}: tensor {sorted(twice)[0]} is in an earlier shard too")
        tensors.update(t)
    if meta.get(TENSORS) is not None and len(tensors) != meta[TENSORS]:
        raise ValueError(f"{files[0]}: the shards hold {len(tensors)} tensors, split.tensors.count says "
                         f"{meta[TENSORS]}")
    return meta, tensors, files
