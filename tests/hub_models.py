"""Tiny checkpoints published on a FakeHub for the hub tests, and the environment that points zenlm at it.

    Org/Tiny          an HF directory (config, two safetensors shards + index, tokenizer), plus a README and a
                      pytorch_model.bin that a pull must leave alone; branch v1.0 holds other weights
    Org/Tiny-GGUF     tiny-q4_0.gguf, tiny-f16.gguf, and tiny-q8_0 split into shards (gguf-split's names)
    Org/Gated-GGUF    gated: only the token GATED_TOKEN gets in
    Org/Ambiguous-GGUF two files carrying the tag q8_0
    Org/Huge-GGUF     a file the hub says is 1 EiB
    Org/Big-GGUF      a 16 MiB GGUF (metadata padding), big enough for huggingface_hub's 10 MiB write chunks
    modelscope: Org/Tiny-GGUF and Org/Tiny as above
"""

from dataclasses import dataclass
from pathlib import Path

import gguf
import pytest
from fake_hub import FakeHub
from test_weights import TINY, random_weights, write_gguf, write_hf_dir

GATED_TOKEN = "hf_gated_secret"
Q = gguf.GGMLQuantizationType
FT_Q4_0, FT_Q8_0, FT_F16 = 2, 7, 1  # llama_ftype values


@dataclass
class Published:
    hub: FakeHub
    root: Path  # where the checkpoints were written
    main_commit: str
    v1_commit: str
    q8_single: Path  # the split q8_0 model as one file (not on the hub)
    shard_count: int


def files_of(directory: Path) -> dict[str, bytes]:
    return {p.relative_to(directory).as_posix(): p.read_bytes() for p in sorted(directory.rglob("*")) if p.is_file()}


def publish(hub: FakeHub, root: Path) -> Published:
    sd = random_weights(TINY)
    hf = files_of(write_hf_dir(root / "hf", TINY, sd))
    extras = {"README.md": b"# Tiny\n", "pytorch_model.bin": b"not for zenlm"}
    main = hub.add("Org/Tiny", hf | extras)
    v1 = hub.add("Org/Tiny", files_of(write_hf_dir(root / "hf-v1", TINY, {k: v * 0.5 for k, v in sd.items()})),
                 revision="v1.0")
    ggufs = root / "gguf"
    ggufs.mkdir()
    write_gguf(ggufs / "tiny-q4_0.gguf", TINY, sd, Q.Q4_0, file_type=FT_Q4_0)
    write_gguf(ggufs / "tiny-f16.gguf", TINY, sd, Q.F16, file_type=FT_F16)
    write_gguf(ggufs / "tiny-q8_0.gguf", TINY, sd, Q.Q8_0, file_type=FT_Q8_0, split_max_tensors=8)
    single = write_gguf(root / "tiny-q8_0.gguf", TINY, sd, Q.Q8_0, file_type=FT_Q8_0)
    gguf_files = files_of(ggufs)
    hub.add("Org/Tiny-GGUF", gguf_files | {"README.md": b"# Tiny GGUF\n"})
    hub.add("Org/Gated-GGUF", {"gated-q4_0.gguf": gguf_files["tiny-q4_0.gguf"]}, token=GATED_TOKEN)
    hub.add("Org/Ambiguous-GGUF", {"a-q8_0.gguf": b"GGUF a", "b-q8_0.gguf": b"GGUF b", "c-q4_0.gguf": b"GGUF c"})
    huge = b"GGUF huge"
    hub.add("Org/Huge-GGUF", {"huge-q8_0.gguf": huge})
    hub.claimed[hub.sha256(huge)] = 1 << 60
    big = write_gguf(root / "big-q8_0.gguf", TINY, sd, Q.Q8_0, file_type=FT_Q8_0,
                     strings={"general.description": "0123456789abcdef" * (1 << 20)})
    hub.add("Org/Big-GGUF", {"big-q8_0.gguf": big.read_bytes()})
    hub.add("Org/Tiny-GGUF", gguf_files, revision="master", modelscope=True)
    hub.add("Org/Tiny", hf, revision="master", modelscope=True)
    shards = sorted(n for n in gguf_files if n.startswith("tiny-q8_0-"))
    return Published(hub, root, main, v1, single, len(shards))


@pytest.fixture(scope="module")
def published(tmp_path_factory):
    hub = FakeHub()
    yield publish(hub, tmp_path_factory.mktemp("published"))
    hub.close()


@pytest.fixture
def hub_env(published, tmp_path, monkeypatch):
    """zenlm pointed at the fake hub, with empty HF, ModelScope and zenlm caches of its own."""
    hub = published.hub
    for key in ("HF_TOKEN", "HUGGING_FACE_HUB_TOKEN", "HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE", "HF_HUB_CACHE",
                "HUGGINGFACE_HUB_CACHE"):
        monkeypatch.delenv(key, raising=False)
    env = {"HF_ENDPOINT": hub.url, "HF_HOME": str(tmp_path / "hf"), "ZEN_CACHE": str(tmp_path / "zen"),
           "MODELSCOPE_DOMAIN": hub.url, "MODELSCOPE_CACHE": str(tmp_path / "ms")}
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    hub.log.clear()
    hub.corrupt.clear()
    yield published
    hub.corrupt.clear()
    hub.drop.clear()
