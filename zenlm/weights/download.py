"""Hub files to disk, for every provider: fetch() resumable and hash-checked, never half a file under the
final name; local_model(), what counts as a complete model on disk; the types the providers share.

fetch writes to `DEST.incomplete`; a later attempt (after a dropped connection, Ctrl-C or a killed
process) resumes it with a Range request. huggingface_hub's http_get does the HTTP: retries, resuming
within one attempt, its progress bar. Only when the size and the hub's hash (sha256, or the git blob
sha1 of a small file) match is the file renamed into place; a mismatch deletes it.
"""

from __future__ import annotations

import errno
import hashlib
import json
import os
import shutil
from dataclasses import dataclass
from pathlib import Path

from tqdm import tqdm

from zenlm.weights.hub_names import HubName, select


class Unreachable(ValueError):
    """The hub could not be reached (no network, DNS, refused, timed out): a cached copy may still serve."""


@dataclass(frozen=True, slots=True)
class RemoteFile:
    path: str  # repository-relative
    size: int | None
    sha256: str | None = None
    git_sha1: str | None = None  # the git blob id, for files not stored in LFS


@dataclass(slots=True)
class Local:
    """A hub model on disk, complete: what the loader opens."""

    kind: str  # "gguf" | "hf"
    path: Path  # the GGUF file to open (the first shard of a split one), or the HF directory
    files: list[Path]
    revision: str  # the commit it came from (HF) or the revision asked for (ModelScope)


@dataclass(slots=True)
class Remote:
    """What pulling a name means on the hub: the commit (or revision), each selected file's size and hash."""

    revision: str
    files: list[RemoteFile]


def local_model(name: HubName, directory: Path, revision: str) -> Local | None:
    """The model `name` means among the complete files under `directory` (a snapshot), or None.

    Complete: renamed into place after its hash check (never an .incomplete part), every shard of a
    split GGUF, every shard an HF index lists.
    """
    files = []
    for p in directory.rglob("*"):
        rel = p.relative_to(directory)
        if p.is_file() and not p.name.endswith(".incomplete") and not any(s.startswith(".") for s in rel.parts):
            files.append(rel.as_posix())
    try:
        chosen = select(name, files)
    except ValueError:
        return None
    index = directory / "model.safetensors.index.json"
    if chosen.kind == "hf" and index.is_file():
        try:
            shards = set(json.loads(index.read_text())["weight_map"].values())
        except (ValueError, KeyError):
            return None
        if not shards <= set(files):
            return None
    path = directory / chosen.main if chosen.main else directory
    return Local(chosen.kind, path, [directory / f for f in chosen.files], revision)


class _Bar(tqdm):
    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs, leave=False)


class _NoBar(tqdm):
    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs, disable=True)


def human_bytes(n: float) -> str:
    for unit in ("B", "KB", "MB", "GB", "TB", "PB", "EB"):
        if n < 1000 or unit == "EB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1000
    raise AssertionError("unreachable")


def check_space(directory: Path, need: int, what: str) -> None:
    """A one-line ValueError when the disk holding `directory` has fewer than `need` bytes free."""
    probe = directory
    while not probe.exists():
        probe = probe.parent
    free = shutil.disk_usage(probe).free
    if need > free:
        raise ValueError(f"not enough disk space for {what}: {human_bytes(need)} to download, "
                         f"{human_bytes(free)} free in {directory}")


def fetch(url: str, dest: Path, remote: RemoteFile, headers: dict[str, str], progress: bool) -> Path:
    """Download `url` to `dest` (resuming DEST.incomplete), check it against `remote`, rename it into place.

    The caller holds the lock that keeps two processes off the same file.
    """
    import httpx2
    from huggingface_hub.errors import HfHubHTTPError
    from huggingface_hub.file_download import http_get

    if dest.exists():
        return dest
    partial = dest.with_name(dest.name + ".incomplete")
    dest.parent.mkdir(parents=True, exist_ok=True)
    have = partial.stat().st_size if partial.exists() else 0
    if remote.size is not None and have > remote.size:  # not a prefix of this file: start again
        partial.unlink()
        have = 0
    if remote.size is not None:
        check_space(dest.parent, remote.size - have, remote.path)
    try:
        with open(partial, "ab") as f:
            http_get(url, f, resume_size=have, headers=headers, expected_size=remote.size,
                     displayed_filename=remote.path, tqdm_class=_Bar if progress else _NoBar)
    except HfHubHTTPError:  # an HTTP status: the provider names it
        raise
    except (OSError, httpx2.TransportError) as e:
        if getattr(e, "errno", None) == errno.ENOSPC:
            raise ValueError(f"disk full while downloading {remote.path} into {dest.parent}; the part downloaded "
                             "is kept: free some space and pull again to resume") from None
        got = partial.stat().st_size if partial.exists() else 0
        if remote.size is not None and got > remote.size:
            partial.unlink()
            raise ValueError(f"{remote.path}: the hub sent {got} bytes, {remote.size} expected; "
                             "the download was deleted, pull again") from None
        if isinstance(e, httpx2.TransportError) or (remote.size is not None and got < remote.size):
            of = f" of {human_bytes(remote.size)}" if remote.size is not None else ""
            raise Unreachable(f"the download of {remote.path} stopped after {human_bytes(got)}{of} "
                              f"({_reason(e)}); pull again to resume") from None
        raise
    _verify(partial, remote)
    os.replace(partial, dest)
    return dest


def _reason(e: BaseException) -> str:
    return f"{type(e).__name__}: {e}".splitlines()[0]


def _verify(path: Path, remote: RemoteFile) -> None:
    """The file's size and hash against the hub's; a mismatch deletes it (a ValueError says so)."""
    size = path.stat().st_size
    if remote.size is not None and size != remote.size:
        path.unlink()
        raise ValueError(f"{remote.path}: downloaded {size} bytes, the hub says {remote.size}; "
                         "the download was deleted, pull again")
    if remote.sha256:
        h, want, kind = hashlib.sha256(), remote.sha256, "sha256"
    elif remote.git_sha1:
        h, want, kind = hashlib.sha1(f"blob {size}\0".encode()), remote.git_sha1, "git blob sha1"
    else:
        return
    with open(path, "rb") as f:
        while chunk := f.read(1 << 24):
            h.update(chunk)
    if h.hexdigest() != want.lower():
        path.unlink()
        raise ValueError(f"{remote.path} is corrupted: its {kind} is {h.hexdigest()[:16]}…, the hub says "
                         f"{want[:16]}…; the download was deleted, pull again")
