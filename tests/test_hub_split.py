"""Split GGUF files (gguf-split's PREFIX-0000i-of-0000n.gguf, written here with the gguf package's own splitter)
load as one model from any shard, and a missing, foreign or misnamed shard is one clear error."""

import shutil

import gguf
import pytest
import torch
from test_weights import TINY, logits, random_weights, write_gguf

from zenlm.weights.file_info import file_info
from zenlm.weights.gguf_split import read_split
from zenlm.weights.load import load

Q8 = gguf.GGMLQuantizationType.Q8_0


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    root = tmp_path_factory.mktemp("split")
    sd = random_weights(TINY)
    (root / "split").mkdir()
    (root / "other").mkdir()
    first = write_gguf(root / "split" / "tiny.gguf", TINY, sd, Q8, split_max_tensors=7)
    other = write_gguf(root / "other" / "tiny.gguf", TINY, {k: v + 1 for k, v in sd.items()}, Q8, split_max_tensors=9)
    single = write_gguf(root / "tiny.gguf", TINY, sd, Q8)
    return root, first, other, single


def copy_split(models, tmp_path):
    root, first, _, _ = models
    for f in first.parent.iterdir():
        shutil.copy(f, tmp_path / f.name)
    return sorted(tmp_path.glob("tiny-*.gguf"))


def test_split_loads_as_the_one_file_model_from_any_shard(models):
    _, first, _, single = models
    shards = sorted(first.parent.glob("tiny-*.gguf"))
    assert len(shards) == 4 and first == shards[0] and shards[-1].name == "tiny-00004-of-00004.gguf"
    whole = logits(load(single, progress=False))
    assert torch.equal(logits(load(first, progress=False)), whole)
    later = load(shards[2], progress=False)
    assert later.path == first and torch.equal(logits(later), whole)
    meta, tensors, files = read_split(shards[1])
    assert files == shards and meta["general.architecture"] == "qwen2" and len(tensors) == meta["split.tensors.count"]
    info = file_info(first)
    assert info.size == sum(s.stat().st_size for s in shards) and info.parameters == file_info(single).parameters


def test_a_missing_shard_is_named(models, tmp_path):
    shards = copy_split(models, tmp_path)
    shards[2].unlink()
    with pytest.raises(ValueError, match=r"tiny-00001-of-00004.gguf: split GGUF of 4 files; missing "
                                         r"tiny-00003-of-00004.gguf \(all shards must sit in one directory\)"):
        load(shards[0], progress=False)


def test_a_shard_of_another_split_is_refused(models, tmp_path):
    _, _, other, _ = models
    shards = copy_split(models, tmp_path)
    shutil.copy(other.parent / "tiny-00002-of-00003.gguf", shards[1])  # another model's, split otherwise
    with pytest.raises(ValueError, match=r"tiny-00002-of-00004.gguf: its split keys say shard 2 of 3 .*expected "
                                         r"shard 2 of 4 .*\(a shard of another model\?\)"):
        load(shards[0], progress=False)
    shutil.copy(shards[2], shards[1])  # a shard in the wrong place
    with pytest.raises(ValueError, match=r"tiny-00002-of-00004.gguf: its split keys say shard 3 of 4 .*expected "
                                         r"shard 2 of 4"):
        load(shards[0], progress=False)


def test_a_renamed_shard_is_refused(models, tmp_path):
    shards = copy_split(models, tmp_path)
    shards[0].rename(tmp_path / "tiny.gguf")
    with pytest.raises(ValueError, match=r"tiny.gguf: shard 1 of a 4-file split GGUF, but not named "
                                         r"PREFIX-NNNNN-of-00004.gguf"):
        load(tmp_path / "tiny.gguf", progress=False)
    shards[1].rename(tmp_path / "tiny-00002-of-00005.gguf")
    with pytest.raises(ValueError, match="the name says shard 2 of 5, the metadata shard 2 of 4"):
        load(tmp_path / "tiny-00002-of-00005.gguf", progress=False)
