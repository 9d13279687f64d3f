"""Hugging Face Hub models by name, downloaded through huggingface_hub into the standard HF cache.

remote(): the repository's files at a revision (huggingface_hub's model_info: GET
/api/models/{repo}/revision/{rev}?blobs=true), the ones the name selects, their sizes and hashes.
download(): for each missing file, its metadata (HEAD /{repo}/resolve/{commit}/{file}: ETag,
X-Repo-Commit, the LFS redirect) and then its bytes (download.py), laid out as hf_hub_download lays them:
blobs/{etag}, snapshots/{commit}/{file} a relative link to it, refs/{revision}. So transformers' and
vLLM's downloads are reused here, and these there. Not hf_hub_download itself: in huggingface_hub 2.4 it
writes to a per-process temporary file that any failure deletes (a killed download starts over) and it
checks only the size. HF_ENDPOINT, HF_HOME / HF_HUB_CACHE, HF_TOKEN and HF_HUB_OFFLINE are read at each call.
"""

from __future__ import annotations

import os
import re
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from urllib.parse import urlparse

from zenlm.weights.download import Local, Remote, RemoteFile, Unreachable, check_space, fetch, local_model
from zenlm.weights.hub_names import HubName, select

COMMIT = re.compile(r"[0-9a-f]{40}")
TRUE = {"1", "ON", "YES", "TRUE"}


def endpoint() -> str:
    return (os.environ.get("HF_ENDPOINT") or "https://huggingface.co").rstrip("/")


def cache_root() -> Path:
    """The HF hub cache where huggingface_hub finds it: $HF_HUB_CACHE, else $HF_HOME/hub, else
    ~/.cache/huggingface/hub."""
    explicit = os.environ.get("HF_HUB_CACHE") or os.environ.get("HUGGINGFACE_HUB_CACHE")
    if explicit:
        return Path(explicit).expanduser()
    home = os.environ.get("HF_HOME") or os.path.join(os.environ.get("XDG_CACHE_HOME") or "~/.cache", "huggingface")
    return Path(home).expanduser() / "hub"


def offline() -> bool:
    return any(os.environ.get(k, "").upper() in TRUE for k in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE"))


def repo_dir(repo: str) -> Path:
    return cache_root() / f"models--{repo.replace('/', '--')}"


def cached(name: HubName) -> Local | None:
    """The model `name` means, complete in the cache, or None; no network."""
    root = repo_dir(name.repo)
    revision = name.revision or "main"
    ref = root / "refs" / revision
    commit = revision if COMMIT.fullmatch(revision) else (ref.read_text().strip() if ref.is_file() else None)
    if commit is None or not (root / "snapshots" / commit).is_dir():
        return None
    return local_model(name, root / "snapshots" / commit, commit)


def remote(name: HubName) -> Remote:
    """What `name` selects on the hub now (one request); one-line errors for every failure."""
    from huggingface_hub import HfApi

    with _errors(name):
        info = HfApi(endpoint=endpoint()).model_info(name.repo, revision=name.revision or "main", files_metadata=True)
    siblings = {s.rfilename: s for s in info.siblings or []}
    chosen = select(name, siblings)
    files = []
    for path in chosen.files:
        s = siblings[path]
        files.append(RemoteFile(path, s.lfs.size if s.lfs else s.size, s.lfs.sha256 if s.lfs else None,
                                None if s.lfs else s.blob_id))
    return Remote(info.sha, files)


def _blob(root: Path, f: RemoteFile) -> Path | None:
    """Where the cache keeps this file's bytes, known from the listing: blobs/{sha256} (LFS) or blobs/{git id}."""
    oid = f.sha256 or f.git_sha1
    return root / "blobs" / oid if oid else None


def missing(name: HubName, plan: Remote) -> list[RemoteFile]:
    """The plan's files whose bytes are not in the cache (under this commit or, same bytes, another)."""
    root = repo_dir(name.repo)
    snapshot = root / "snapshots" / plan.revision
    return [f for f in plan.files
            if not (snapshot / f.path).is_file() and not ((b := _blob(root, f)) and b.is_file())]


def download(name: HubName, plan: Remote, progress: bool = True) -> Local:
    """Fetch the plan's missing files into the cache (resuming, hash-checked); the complete model."""
    from huggingface_hub import get_hf_file_metadata, hf_hub_url
    from huggingface_hub.utils import WeakFileLock, build_hf_headers

    root = repo_dir(name.repo)
    snapshot = root / "snapshots" / plan.revision
    check_space(root, sum(f.size or 0 for f in missing(name, plan)), str(name))
    for f in plan.files:
        if (snapshot / f.path).is_file():
            continue
        known = _blob(root, f)
        if known is not None and known.is_file():  # the same bytes, fetched for another commit
            _link(snapshot / f.path, known)
            continue
        url = hf_hub_url(name.repo, f.path, revision=plan.revision, endpoint=endpoint())
        with _errors(name, f.path):
            meta = get_hf_file_metadata(url, endpoint=endpoint())
        if meta.etag is None:
            raise ValueError(f"{endpoint()} sent no ETag for {f.path}: is HF_ENDPOINT a hub?")
        headers = build_hf_headers()
        if _origin(meta.location) != _origin(url):  # a CDN: the token stays with the hub
            headers.pop("authorization", None)
        blob = root / "blobs" / meta.etag
        lock = cache_root() / ".locks" / root.name / f"{meta.etag}.lock"
        lock.parent.mkdir(parents=True, exist_ok=True)
        with WeakFileLock(lock), _errors(name, f.path):
            fetch(meta.location, blob, f, headers, progress)
        _link(snapshot / f.path, blob)
    if (name.revision or "main") != plan.revision:
        _write_ref(root, name.revision or "main", plan.revision)
    local = local_model(name, snapshot, plan.revision)
    assert local is not None, f"{snapshot}: incomplete right after downloading {name}"
    return local


def _link(pointer: Path, blob: Path) -> None:
    """snapshots/{commit}/{file} -> ../../blobs/{etag}, as huggingface_hub links them."""
    pointer.parent.mkdir(parents=True, exist_ok=True)
    if pointer.is_file():  # another process linked it meanwhile
        return
    if pointer.is_symlink():  # dangling: its blob was removed
        pointer.unlink(missing_ok=True)
    try:
        os.symlink(os.path.relpath(blob, pointer.parent), pointer)
    except FileExistsError:
        pass


def _write_ref(root: Path, revision: str, commit: str) -> None:
    ref = root / "refs" / revision
    ref.parent.mkdir(parents=True, exist_ok=True)
    tmp = ref.with_name(f".{ref.name}.{os.getpid()}.tmp")
    tmp.write_text(commit)
    os.replace(tmp, ref)


def _origin(url: str) -> tuple[str, str, int | None]:
    u = urlparse(url)
    return u.scheme, (u.hostname or "").lower(), u.port


@contextmanager
def _errors(name: HubName, path: str | None = None) -> Iterator[None]:
    """huggingface_hub's exceptions -> one line each (Unreachable for the network, so the cache may serve)."""
    import httpx2
    from huggingface_hub import get_token
    from huggingface_hub.errors import (
        GatedRepoError,
        HfHubHTTPError,
        OfflineModeIsEnabled,
        RemoteEntryNotFoundError,
        RepositoryNotFoundError,
        RevisionNotFoundError,
    )

    where = endpoint()
    try:
        yield
    except GatedRepoError:
        page = f"{where}/{name.repo}"
        if get_token():
            raise ValueError(f"{name} is gated and the token in use (HF_TOKEN) has no access to it: accept its "
                             f"terms at {page} with that token's account") from None
        raise ValueError(f"{name} is gated: accept its terms at {page} and set HF_TOKEN to a token of that "
                         "account") from None
    except RepositoryNotFoundError:
        raise ValueError(f"{name}: no repository {name.repo} on {where} (a private one needs HF_TOKEN)") from None
    except RevisionNotFoundError:
        raise ValueError(f"{name}: the repository has no revision {name.revision!r}") from None
    except RemoteEntryNotFoundError:
        raise ValueError(f"{name}: {path} is listed by {where} but not served") from None
    except HfHubHTTPError as e:
        status = e.response.status_code if e.response is not None else "?"
        raise ValueError(f"{name}: {where} answered HTTP {status}" + (f" for {path}" if path else "")) from None
    except OfflineModeIsEnabled:
        raise Unreachable(f"{name}: HF_HUB_OFFLINE is set, so nothing is downloaded") from None
    except httpx2.TransportError as e:
        reason = f"{type(e).__name__}: {e}".splitlines()[0]
        raise Unreachable(f"cannot reach {where} to fetch {name} ({reason})") from None
