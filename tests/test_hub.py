"""Models by name from a real local HTTP server speaking the hub's file API (fake_hub.py, HF_ENDPOINT at it).

Every name form resolves to the right files and only those; downloads resume, are hash-checked and land in
the standard HF cache (shared both ways with huggingface_hub); offline mode serves the cache; a split GGUF
pulled by tag decodes exactly as the same model in one file; every failure is one clear line.
"""

import hashlib
import os
from pathlib import Path

import pytest
import torch
from hub_models import GATED_TOKEN, hub_env, published  # noqa: F401 - fixtures
from tqdm import tqdm

from zenlm.engine.llm import LLM
from zenlm.engine.sampling import SamplingParams
from zenlm.weights import store
from zenlm.weights.load import load
from zenlm.weights.registry import resolve


def fetched(hub, method="GET") -> list[str]:
    """The repository files (HF resolve URLs) or CDN blobs requested."""
    return [r["path"].split("/resolve/", 1)[1].split("/", 1)[1] if "/resolve/" in r["path"] else r["path"]
            for r in hub.requests(method) if "/resolve/" in r["path"] or r["cdn"]]


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def one_line_error(call, match: str) -> str:
    with pytest.raises(ValueError, match=match) as e:
        call()
    assert "\n" not in str(e.value)
    return str(e.value)


# ---- name -> files ---------------------------------------------------------------------------------------------
def test_hf_repo_name_downloads_only_what_zenlm_reads(hub_env):
    hub = hub_env.hub
    src = resolve("Org/Tiny", progress=False)
    snapshot = Path(os.environ["HF_HOME"]) / "hub" / "models--Org--Tiny" / "snapshots" / hub_env.main_commit
    assert src.kind == "hf" and src.path == snapshot and src.name == "Org/Tiny"
    assert sorted(p.name for p in snapshot.iterdir()) == [
        "config.json", "generation_config.json", "model-00001-of-00002.safetensors",
        "model-00002-of-00002.safetensors", "model.safetensors.index.json", "tokenizer.json", "tokenizer_config.json"]
    assert not any("README" in p or ".bin" in p for p in fetched(hub, "HEAD"))
    assert hub.requests("GET", "/api/models/Org/Tiny/revision/main")
    # the same weights as the directory it was published from
    x = torch.tensor([[1, 5, 9, 200]])
    ours, theirs = load("Org/Tiny", progress=False), load(hub_env.root / "hf", progress=False)
    with torch.no_grad():
        assert torch.equal(ours.model(x, torch.arange(4)[None]), theirs.model(x, torch.arange(4)[None]))


@pytest.mark.parametrize("name, file", [("Org/Tiny-GGUF:q4_0", "tiny-q4_0.gguf"),
                                        ("Org/Tiny-GGUF:Q4_0", "tiny-q4_0.gguf"),
                                        ("hf.co/Org/Tiny-GGUF:f16", "tiny-f16.gguf")])
def test_gguf_tag_downloads_that_file_alone(hub_env, name, file):
    src = resolve(name, progress=False)
    assert src.kind == "gguf" and src.path.name == file
    assert src.path.read_bytes() == (hub_env.root / "gguf" / file).read_bytes()
    assert [p for p in fetched(hub_env.hub, "HEAD")] == [file]


def test_split_gguf_by_tag_decodes_as_the_same_model_in_one_file(hub_env):
    src = resolve("Org/Tiny-GGUF:q8_0", progress=False)
    shards = sorted(src.path.parent.glob("tiny-q8_0-*.gguf"))
    assert src.path == shards[0] and len(shards) == hub_env.shard_count > 1
    greedy = SamplingParams(max_tokens=12, temperature=0, ignore_eos=True)
    split = LLM("Org/Tiny-GGUF:q8_0", dtype="float32", progress=False)
    single = LLM(str(hub_env.q8_single), dtype="float32", progress=False)
    a, b = split.generate("hello world", greedy)[0], single.generate("hello world", greedy)[0]
    assert a.token_ids == b.token_ids and len(a.token_ids) == 12
    assert split.file_info().parameters == single.file_info().parameters
    assert split.file_info().size == sum(s.stat().st_size for s in shards)


def test_revision_branch_and_commit(hub_env):
    v1 = resolve("Org/Tiny@v1.0", progress=False)
    main = resolve(f"Org/Tiny@{hub_env.main_commit}", progress=False)
    assert v1.path.name == hub_env.v1_commit and main.path.name == hub_env.main_commit
    ref = Path(os.environ["HF_HOME"]) / "hub" / "models--Org--Tiny" / "refs" / "v1.0"
    assert ref.read_text() == hub_env.v1_commit
    w1 = load("Org/Tiny@v1.0", progress=False).model.model.norm.weight
    w0 = load(f"Org/Tiny@{hub_env.main_commit}", progress=False).model.model.norm.weight
    assert torch.allclose(w1, w0 * 0.5)


def test_modelscope_names_use_its_file_api_and_cache(hub_env):
    src = resolve("modelscope:Org/Tiny-GGUF:q4_0", progress=False)
    assert src.path == Path(os.environ["MODELSCOPE_CACHE"]) / "models" / "Org" / "Tiny-GGUF" / "tiny-q4_0.gguf"
    assert src.path.read_bytes() == (hub_env.root / "gguf" / "tiny-q4_0.gguf").read_bytes()
    hf = resolve("modelscope:Org/Tiny", progress=False)
    assert hf.kind == "hf" and (hf.path / "model.safetensors.index.json").is_file()
    assert all("/api/v1/models/" in r["path"] for r in hub_env.hub.log if not r["path"].startswith("/api/agent"))
    # its folder holds one revision: asking for another fetches that one
    other = (hub_env.root / "gguf" / "tiny-f16.gguf").read_bytes()
    hub_env.hub.add("Org/Tiny-GGUF", {"tiny-q4_0.gguf": other}, revision="v2", modelscope=True)
    assert resolve("modelscope:Org/Tiny-GGUF:q4_0@v2", progress=False).path.read_bytes() == other
    assert resolve("modelscope:Org/Tiny-GGUF:q4_0", progress=False).path.read_bytes() != other


def test_downloads_show_a_progress_bar(hub_env, capfd):
    store.pull("Org/Tiny-GGUF:f16", progress=True)
    size = (hub_env.root / "gguf" / "tiny-f16.gguf").stat().st_size
    err = capfd.readouterr().err
    assert "tiny-f16.gguf:   0%|" in err and f"/{tqdm.format_sizeof(size)} [" in err  # a bar of the bytes
    store.pull("Org/Tiny-GGUF:q4_0", progress=False)
    assert capfd.readouterr().err == ""


def test_a_cached_name_needs_no_network(hub_env):
    resolve("Org/Tiny-GGUF:q4_0", progress=False)
    hub_env.hub.log.clear()
    assert resolve("Org/Tiny-GGUF:q4_0", progress=False).path.name == "tiny-q4_0.gguf"
    assert not [r for r in hub_env.hub.log if not r["path"].startswith("/api/agent")]


# ---- resume, hashes, offline, the shared cache ------------------------------------------------------------------
def test_a_dropped_connection_resumes_with_a_range_request(hub_env):
    hub = hub_env.hub
    blob = hub.sha256(hub.repos["Org/Big-GGUF"].commits[hub.repos["Org/Big-GGUF"].refs["main"]]["big-q8_0.gguf"])
    hub.drop[blob] = 12 << 20  # after 12 MiB: huggingface_hub has written its first 10 MiB chunk
    src = resolve("Org/Big-GGUF", progress=False)
    assert sha256(src.path) == blob
    ranges = [r["range"] for r in hub.requests("GET") if r["cdn"]]
    assert ranges == [None, f"bytes={10 << 20}-"]


def test_a_corrupted_download_is_deleted_not_used(hub_env):
    hub = hub_env.hub
    good = (hub_env.root / "gguf" / "tiny-q4_0.gguf").read_bytes()
    hub.corrupt.add(hub.sha256(good))
    one_line_error(lambda: resolve("Org/Tiny-GGUF:q4_0", progress=False),
                   r"tiny-q4_0.gguf is corrupted: its sha256 is .*the hub says .*deleted, pull again")
    repo = Path(os.environ["HF_HOME"]) / "hub" / "models--Org--Tiny-GGUF"
    assert not [p for p in repo.rglob("*") if p.is_file() and not p.name.endswith(".lock")]
    assert store.entries() == []
    hub.corrupt.clear()
    assert resolve("Org/Tiny-GGUF:q4_0", progress=False).path.read_bytes() == good


def test_offline_mode_serves_the_cache_and_says_what_is_missing(hub_env, monkeypatch):
    resolve("Org/Tiny", progress=False)
    hub_env.hub.log.clear()
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    assert store.pull("Org/Tiny").kind == "hf"  # even pull: the cached copy
    assert load("Org/Tiny", progress=False).config.num_layers == 2
    one_line_error(lambda: resolve("Org/Tiny-GGUF:q4_0", progress=False),
                   "Org/Tiny-GGUF:q4_0 is not in the cache, and HF_HUB_OFFLINE is set")
    assert not [r for r in hub_env.hub.log if not r["path"].startswith("/api/agent")]


def test_no_network_uses_a_cached_copy_or_says_it_cannot_reach_the_hub(hub_env, monkeypatch, caplog):
    resolve("Org/Tiny-GGUF:q4_0", progress=False)
    monkeypatch.setenv("HF_ENDPOINT", "http://127.0.0.1:9")  # nothing listens on the discard port
    assert store.pull("Org/Tiny-GGUF:q4_0").path.name == "tiny-q4_0.gguf"
    assert "using the cached copy" in caplog.text
    one_line_error(lambda: resolve("Org/Tiny-GGUF:f16", progress=False),
                   r"cannot reach http://127.0.0.1:9 to fetch Org/Tiny-GGUF:f16 \(ConnectError.*not in the cache")


def test_the_cache_is_huggingface_hubs_own(hub_env, monkeypatch):
    from huggingface_hub import hf_hub_download, snapshot_download

    cache = Path(os.environ["HF_HOME"]) / "hub"
    # what transformers or vLLM fetched is found here without a request...
    snapshot_download("Org/Tiny-GGUF", allow_patterns=["*f16*"], cache_dir=cache, endpoint=hub_env.hub.url)
    hub_env.hub.log.clear()
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    assert resolve("Org/Tiny-GGUF:f16", progress=False).path.name == "tiny-f16.gguf"
    assert not [r for r in hub_env.hub.log if not r["path"].startswith("/api/agent")]
    monkeypatch.delenv("HF_HUB_OFFLINE")
    # ...and what zenlm pulled is found by huggingface_hub, offline
    resolve("Org/Tiny", progress=False)
    path = hf_hub_download("Org/Tiny", "model-00002-of-00002.safetensors", cache_dir=cache, local_files_only=True)
    assert Path(path).read_bytes() == (hub_env.root / "hf" / "model-00002-of-00002.safetensors").read_bytes()


# ---- errors ------------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("name, message", [
    ("Org/Nope", r"Org/Nope: no repository Org/Nope on http://127.0.0.1:\d+ \(a private one needs HF_TOKEN\)"),
    ("Org/Tiny@v9", "Org/Tiny@v9: the repository has no revision 'v9'"),
    ("Org/Tiny-GGUF:q2_k", "Org/Tiny-GGUF:q2_k: no GGUF file matches the tag 'q2_k'; the repository has f16, q4_0, "
                           "q8_0"),
    ("Org/Tiny-GGUF", r"no GGUF file matches the tag 'q4_k_m' \(the default; add a tag"),
    ("Org/Ambiguous-GGUF:q8_0", r"2 GGUF files match the tag 'q8_0' \(a-q8_0.gguf, b-q8_0.gguf\)"),
    ("Org/Gated-GGUF", r"Org/Gated-GGUF is gated: accept its terms at http://127.0.0.1:\d+/Org/Gated-GGUF and set "
                       "HF_TOKEN"),
    ("Org/Huge-GGUF", r"not enough disk space for Org/Huge-GGUF: 1.2 EB to download, .* free in"),
    ("modelscope:Org/Nope", r"no model Org/Nope at revision 'master' on http://127.0.0.1:\d+"),
])
def test_each_failure_is_one_clear_line_and_leaves_nothing(hub_env, name, message):
    one_line_error(lambda: resolve(name, progress=False), message)
    files = [p for p in Path(os.environ["HF_HOME"]).rglob("*") if p.is_file() and not p.name.endswith(".lock")]
    assert files == [] and store.entries() == []


def test_a_disk_that_fills_up_mid_download_is_one_line(hub_env):
    blob = hub_env.hub.sha256((hub_env.root / "gguf" / "tiny-f16.gguf").read_bytes())
    blobs = Path(os.environ["HF_HOME"]) / "hub" / "models--Org--Tiny-GGUF" / "blobs"
    blobs.mkdir(parents=True)
    (blobs / f"{blob}.incomplete").symlink_to("/dev/full")  # every write: ENOSPC from the kernel
    one_line_error(lambda: resolve("Org/Tiny-GGUF:f16", progress=False),
                   r"disk full while downloading tiny-f16.gguf into .*blobs; the part downloaded is kept: free some "
                   "space and pull again to resume")
    assert not (blobs / blob).exists() and store.entries() == []
    assert not list(blobs.parent.glob("snapshots/*/tiny-f16.gguf"))


def test_gated_repo_takes_the_right_token_only(hub_env, monkeypatch):
    monkeypatch.setenv("HF_TOKEN", "hf_wrong")
    one_line_error(lambda: resolve("Org/Gated-GGUF", progress=False), "the token in use \\(HF_TOKEN\\) has no access")
    monkeypatch.setenv("HF_TOKEN", GATED_TOKEN)
    hub_env.hub.log.clear()
    assert resolve("Org/Gated-GGUF", progress=False).path.name == "gated-q4_0.gguf"
    assert {r["auth"] for r in hub_env.hub.requests() if not r["cdn"] and "Gated" in r["path"]} == {
        f"Bearer {GATED_TOKEN}"}
    assert {r["auth"] for r in hub_env.hub.requests() if r["cdn"]} == {None}  # the token never leaves the hub
