"""ModelScope models by name (`modelscope:Org/Name`), through its HTTP file API; no SDK needed.

    GET {endpoint}/api/v1/models/{repo}/repo/files?Revision={rev}&Recursive=true   the files, sizes, sha256
    GET {endpoint}/api/v1/models/{repo}/repo?Revision={rev}&FilePath={path}        one file (Range resumes)

Files land where the modelscope SDK keeps them, $MODELSCOPE_CACHE (~/.cache/modelscope/hub)
/models/{org}/{name with '.' as '___'}, so either reuses the other's downloads. Like the SDK's, that
folder holds one revision at a time; the one zenlm fetched is noted in its .zenlm-revision, and a
name asking for another is fetched again. $MODELSCOPE_DOMAIN picks the site (www.modelscope.cn by
default; a value with a scheme, http://host:port, is used as it is).
"""

from __future__ import annotations

import os
from pathlib import Path
from urllib.parse import urlencode

from zenlm.weights.download import Local, Remote, RemoteFile, Unreachable, check_space, fetch, local_model
from zenlm.weights.hub_names import HubName, select

DEFAULT_REVISION = "master"
REVISION_FILE = ".zenlm-revision"


def endpoint() -> str:
    domain = os.environ.get("MODELSCOPE_DOMAIN") or "www.modelscope.cn"
    return (domain if "://" in domain else f"https://{domain}").rstrip("/")


def model_dir(repo: str) -> Path:
    root = Path(os.environ.get("MODELSCOPE_CACHE") or "~/.cache/modelscope/hub").expanduser()
    org, _, model = repo.partition("/")
    return root / "models" / org / model.replace(".", "___")


def cached(name: HubName) -> Local | None:
    directory, revision = model_dir(name.repo), name.revision or DEFAULT_REVISION
    if not directory.is_dir():
        return None
    marker = directory / REVISION_FILE
    if marker.is_file() and marker.read_text() != revision:
        return None
    return local_model(name, directory, revision)


def remote(name: HubName) -> Remote:
    """What `name` selects on ModelScope now (one request); one-line errors for every failure."""
    import httpx2
    from huggingface_hub.utils import get_session

    revision = name.revision or DEFAULT_REVISION
    url = f"{endpoint()}/api/v1/models/{name.repo}/repo/files?" + urlencode({"Revision": revision,
                                                                              "Recursive": "true"})
    try:
        r = get_session().get(url, timeout=30)
    except httpx2.TransportError as e:
        raise Unreachable(f"cannot reach {endpoint()} to fetch {name} ({type(e).__name__}: {e})") from None
    try:
        body = r.json()
    except ValueError:
        body = {}
    if r.status_code != 200 or body.get("Code") != 200:
        msg = body.get("Message") or f"HTTP {r.status_code}"
        if r.status_code in (401, 403):
            raise ValueError(f"{name}: {endpoint()} refused access ({msg}); a private model needs the SDK's login")
        raise ValueError(f"{name}: no model {name.repo} at revision {revision!r} on {endpoint()} ({msg})")
    listed = {f["Path"]: f for f in body["Data"]["Files"] if f.get("Type", "blob") == "blob"}
    chosen = select(name, listed)
    files = [RemoteFile(p, listed[p].get("Size"), listed[p].get("Sha256") or None) for p in chosen.files]
    return Remote(revision, files)


def missing(name: HubName, plan: Remote) -> list[RemoteFile]:
    directory = model_dir(name.repo)
    marker = directory / REVISION_FILE
    if marker.is_file() and marker.read_text() != plan.revision:  # another revision's files: all again
        return list(plan.files)
    return [f for f in plan.files if not (directory / f.path).is_file()]


def download(name: HubName, plan: Remote, progress: bool = True) -> Local:
    from huggingface_hub.errors import HfHubHTTPError
    from huggingface_hub.utils import WeakFileLock

    directory = model_dir(name.repo)
    todo = missing(name, plan)
    check_space(directory, sum(f.size or 0 for f in todo), str(name))
    for f in todo:
        (directory / f.path).unlink(missing_ok=True)  # another revision's copy
        url = f"{endpoint()}/api/v1/models/{name.repo}/repo?" + urlencode({"Revision": plan.revision,
                                                                            "FilePath": f.path})
        dest = directory / f.path
        dest.parent.mkdir(parents=True, exist_ok=True)
        try:
            with WeakFileLock(dest.with_name(f".{dest.name}.lock")):
                fetch(url, dest, f, {}, progress)
        except HfHubHTTPError as e:
            raise ValueError(f"{name}: {endpoint()} answered HTTP {e.response.status_code} for {f.path}") from None
    (directory / REVISION_FILE).write_text(plan.revision)
    local = local_model(name, directory, plan.revision)
    assert local is not None, f"{directory}: incomplete right after downloading {name}"
    return local
