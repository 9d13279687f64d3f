"""Where zenlm keeps what it makes once and reuses: the assembled default model, the built C kernels,
quantized copies of checkpoints. `$ZEN_CACHE`, else `$XDG_CACHE_HOME/zenlm`, else `~/.cache/zenlm`."""

import os
from pathlib import Path


def cache_dir() -> Path:
    root = os.environ.get("ZEN_CACHE") or os.path.join(
        os.environ.get("XDG_CACHE_HOME") or os.path.expanduser("~/.cache"), "zenlm")
    return Path(root)
