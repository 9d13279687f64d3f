"""A real local HTTP server speaking the Hugging Face Hub's file API (and ModelScope's), for the hub tests.

What huggingface_hub 2.4 requests (hf_api.model_info / list_repo_tree, file_download.get_hf_file_metadata
and http_get), answered the way huggingface.co answers it:

    GET  /api/models/{repo}/revision/{rev}[?blobs=true]   id, sha; siblings (rfilename, and with blobs size,
                                                           blobId, lfs {sha256, size, pointerSize})
    GET  /api/models/{repo}/tree/{rev}?recursive=true     the tree listing snapshot_download reads
    HEAD|GET /{repo}/resolve/{rev}/{path}                 a small file: 200, ETag = its git blob id; an LFS file
                                                          (*.gguf, *.safetensors): 302 to the CDN (a second
                                                          server, another origin) with X-Linked-Etag = sha256
                                                          and X-Linked-Size; all with X-Repo-Commit
    GET  {cdn}/blobs/{sha256}                             the bytes; a Range request gets 206
    errors: X-Error-Code RepoNotFound, GatedRepo (401 without the repo's token), RevisionNotFound, EntryNotFound

ModelScope's file API on the same server: GET /api/v1/models/{repo}/repo/files?Revision=&Recursive= (Code,
Data.Files with Path, Size, Sha256) and GET /api/v1/models/{repo}/repo?Revision=&FilePath= (the bytes, Range).

Knobs: a gated repo (token), a corrupted blob (other bytes, same size, the listing keeps the true hash), a
claimed size (the listing and headers lie about it), a blob that stalls after N bytes until released, a
blob whose connection drops once after N bytes, and `log`, every request seen.
"""

from __future__ import annotations

import hashlib
import json
import threading
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qs, quote, unquote, urlsplit

LFS_SUFFIXES = (".gguf", ".safetensors")


def git_blob_id(data: bytes) -> str:
    return hashlib.sha1(f"blob {len(data)}\0".encode() + data).hexdigest()


@dataclass
class Repo:
    commits: dict[str, dict[str, bytes]] = field(default_factory=dict)  # commit -> {path: bytes}
    refs: dict[str, str] = field(default_factory=dict)  # branch or tag -> commit
    token: str | None = None  # gated: only "Bearer {token}" gets in


class FakeHub:
    def __init__(self):
        self.repos: dict[str, Repo] = {}
        self.ms_repos: dict[str, Repo] = {}
        self.blobs: dict[str, bytes] = {}  # sha256 -> bytes
        self.corrupt: set[str] = set()  # sha256s served with a byte flipped
        self.claimed: dict[str, int] = {}  # sha256 -> the size the hub says it has
        self.stall: dict[str, tuple[int, threading.Event]] = {}  # sha256 -> (bytes sent, then wait for the event)
        self.drop: dict[str, int] = {}  # sha256 -> bytes sent before the connection is cut, once
        self.log: list[dict] = []
        self._servers = [ThreadingHTTPServer(("127.0.0.1", 0), _handler(self, cdn)) for cdn in (False, True)]
        for s in self._servers:
            s.daemon_threads = True
            threading.Thread(target=s.serve_forever, daemon=True).start()
        self.url, self.cdn_url = (f"http://127.0.0.1:{s.server_address[1]}" for s in self._servers)

    def close(self) -> None:
        for event in [e for _, e in self.stall.values()]:
            event.set()
        for s in self._servers:
            s.shutdown()
            s.server_close()

    def add(self, repo: str, files: dict[str, bytes], revision: str = "main", token: str | None = None,
            modelscope: bool = False) -> str:
        """Publish `files` as a new commit of `repo` on `revision`; returns the commit id."""
        repos = self.ms_repos if modelscope else self.repos
        r = repos.setdefault(repo, Repo())
        r.token = token or r.token
        commit = hashlib.sha1(json.dumps([repo, revision, len(r.commits),
                                          sorted((p, hashlib.sha256(d).hexdigest()) for p, d in files.items())])
                              .encode()).hexdigest()
        r.commits[commit] = dict(files)
        r.refs[revision] = commit
        for data in files.values():
            self.blobs[hashlib.sha256(data).hexdigest()] = data
        return commit

    def sha256(self, data: bytes) -> str:
        return hashlib.sha256(data).hexdigest()

    def requests(self, method: str | None = None, contains: str = "") -> list[dict]:
        return [r for r in self.log if (method is None or r["method"] == method) and contains in r["path"]]


def _handler(hub: FakeHub, cdn: bool):
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def log_message(self, *args):  # quiet
            pass

        def do_HEAD(self):
            self._route(body=False)

        def do_GET(self):
            self._route(body=True)

        # ---- dispatch ------------------------------------------------------------------------
        def _route(self, body: bool):
            url = urlsplit(self.path)
            hub.log.append({"method": self.command, "path": unquote(url.path), "query": url.query,
                            "range": self.headers.get("Range"), "auth": self.headers.get("Authorization"),
                            "cdn": cdn})
            parts = [unquote(p) for p in url.path.strip("/").split("/")]
            query = {k: v[0] for k, v in parse_qs(url.query).items()}
            try:
                if cdn and parts[:1] == ["blobs"]:
                    return self._bytes(parts[1], body)
                if parts[:3] == ["api", "v1", "models"]:
                    return self._modelscope(parts[3:], query, body)
                if parts[:2] == ["api", "models"]:
                    return self._api(parts[2:], query)
                if len(parts) >= 5 and parts[2] == "resolve":
                    return self._resolve("/".join(parts[:2]), parts[3], "/".join(parts[4:]), body)
                self._error(404, "Not Found", None)
            except (BrokenPipeError, ConnectionResetError):
                pass

        # ---- Hugging Face ----------------------------------------------------------------------
        def _repo(self, repo: str, revision: str) -> tuple[Repo, str] | None:
            r = hub.repos.get(repo)
            if r is None:
                self._error(404, "Repository not found", "RepoNotFound")
                return None
            if r.token and self.headers.get("Authorization") != f"Bearer {r.token}":
                self._error(401, f"Access to model {repo} is restricted. You must have access to it and be "
                                 "authenticated to access it. Please log in.", "GatedRepo")
                return None
            commit = revision if revision in r.commits else r.refs.get(revision)
            if commit is None:
                self._error(404, f"Invalid rev id: {revision}", "RevisionNotFound")
                return None
            return r, commit

        def _api(self, parts: list[str], query: dict):
            repo, rest = "/".join(parts[:2]), parts[2:]
            revision = rest[1] if len(rest) >= 2 else "main"
            found = self._repo(repo, revision)
            if found is None:
                return
            r, commit = found
            files = r.commits[commit]
            if rest[:1] == ["tree"]:
                return self._json([self._tree_entry(p, d) for p, d in sorted(files.items())])
            siblings = []
            for p, d in sorted(files.items()):
                s = {"rfilename": p}
                if query.get("blobs") == "true":
                    s |= {"size": self._size(d), "blobId": git_blob_id(d)}
                    if p.endswith(LFS_SUFFIXES):
                        s["lfs"] = {"sha256": hub.sha256(d), "size": self._size(d), "pointerSize": 134}
                siblings.append(s)
            self._json({"_id": commit[:24], "id": repo, "modelId": repo, "sha": commit, "private": False,
                        "gated": "manual" if r.token else False, "disabled": False, "downloads": 0, "likes": 0,
                        "tags": [], "siblings": siblings})

        def _tree_entry(self, path: str, data: bytes) -> dict:
            e = {"type": "file", "oid": git_blob_id(data), "size": self._size(data), "path": path}
            if path.endswith(LFS_SUFFIXES):
                e["lfs"] = {"oid": hub.sha256(data), "size": self._size(data), "pointerSize": 134}
            return e

        def _resolve(self, repo: str, revision: str, path: str, body: bool):
            found = self._repo(repo, revision)
            if found is None:
                return
            r, commit = found
            data = r.commits[commit].get(path)
            if data is None:
                return self._error(404, f"Entry not found: {path}", "EntryNotFound", {"X-Repo-Commit": commit})
            if path.endswith(LFS_SUFFIXES):
                sha = hub.sha256(data)
                self.send_response(302)
                for k, v in {"X-Repo-Commit": commit, "ETag": f'"{git_blob_id(data)}"',
                             "X-Linked-Etag": f'"{sha}"', "X-Linked-Size": str(self._size(data)),
                             "Location": f"{hub.cdn_url}/blobs/{sha}?name={quote(path)}",
                             "Content-Length": "0"}.items():
                    self.send_header(k, v)
                self.end_headers()
                return
            self._send(data, body, {"X-Repo-Commit": commit, "ETag": f'"{git_blob_id(data)}"'}, None)

        # ---- ModelScope ------------------------------------------------------------------------
        def _modelscope(self, parts: list[str], query: dict, body: bool):
            repo, rest = "/".join(parts[:2]), parts[2:]
            r = hub.ms_repos.get(repo)
            revision = query.get("Revision", "master")
            commit = r.refs.get(revision) if r else None
            if commit is None:
                return self._json({"Code": 10010205, "Message": f"model {repo} (revision {revision}) not found",
                                   "Success": False}, 404)
            files = r.commits[commit]
            if rest == ["repo", "files"]:
                listing = [{"Name": p.rsplit("/", 1)[-1], "Path": p, "Size": self._size(d),
                            "Sha256": hub.sha256(d), "Type": "blob", "Revision": commit}
                           for p, d in sorted(files.items())]
                return self._json({"Code": 200, "Data": {"Files": listing}, "Success": True})
            data = files.get(query.get("FilePath", ""))
            if rest != ["repo"] or data is None:
                return self._json({"Code": 10010206, "Message": "file not found", "Success": False}, 404)
            self._bytes(hub.sha256(data), body)

        # ---- bytes -------------------------------------------------------------------------------
        def _size(self, data: bytes) -> int:
            return hub.claimed.get(hub.sha256(data), len(data))

        def _bytes(self, sha: str, body: bool):
            data = hub.blobs.get(sha)
            if data is None:
                return self._error(404, "no such blob", None)
            if sha in hub.corrupt:
                data = bytes([data[0] ^ 0xFF]) + data[1:]
            self._send(data, body, {"ETag": f'"{sha}"'}, sha)

        def _send(self, data: bytes, body: bool, headers: dict, sha: str | None):
            start = 0
            rng = self.headers.get("Range")
            if rng and rng.startswith("bytes=") and rng.endswith("-"):
                start = int(rng[6:-1])
            part = data[start:]
            self.send_response(206 if start else 200)
            for k, v in headers.items():
                self.send_header(k, v)
            self.send_header("Accept-Ranges", "bytes")
            self.send_header("Content-Length", str(len(part)))
            if start:
                self.send_header("Content-Range", f"bytes {start}-{len(data) - 1}/{len(data)}")
            self.end_headers()
            if not body:
                return
            if sha in hub.drop:
                cut = hub.drop.pop(sha) - start
                self.wfile.write(part[:cut])
                self.wfile.flush()
                self.close_connection = True
                return
            if sha in hub.stall:
                after, release = hub.stall[sha]
                self.wfile.write(part[:after - start])
                self.wfile.flush()
                release.wait(120)
                self.close_connection = True
                return
            self.wfile.write(part)

        def _json(self, obj, status: int = 200):
            data = json.dumps(obj).encode()
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            if self.command != "HEAD":
                self.wfile.write(data)

        def _error(self, status: int, message: str, code: str | None, headers: dict | None = None):
            data = json.dumps({"error": message}).encode()
            self.send_response(status)
            if code:
                self.send_header("X-Error-Code", code)
            self.send_header("X-Error-Message", message)
            for k, v in (headers or {}).items():
                self.send_header(k, v)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            if self.command != "HEAD":
                self.wfile.write(data)

    return Handler
