"""The local store through the CLI, in process: `zen pull`, `zen list` (name, format, quantization, size, the
quantized copy), `zen rm` (the files, the quantized copies, the record), against the fake hub."""

import json
import os
from pathlib import Path

import pytest
from hub_models import hub_env, published  # noqa: F401 - fixtures

from zenlm.cli import main
from zenlm.engine.llm import LLM
from zenlm.weights import store


def zen(capsys, *argv) -> tuple[int, str, str]:
    rc = main(list(argv))
    out, err = capsys.readouterr()
    return rc, out, err


def test_pull_list_rm(hub_env, capsys):
    rc, out, err = zen(capsys, "pull", "Org/Tiny-GGUF:q4_0")
    path = Path(out.strip())
    assert rc == 0 and path.name == "tiny-q4_0.gguf" and path.is_file()
    assert "Org/Tiny-GGUF:q4_0: 1 file(s)" in err
    assert zen(capsys, "pull", "Org/Tiny")[0] == 0
    rc, out, _ = zen(capsys, "list", "--json")
    rows = {r["name"]: r for r in json.loads(out)}
    assert set(rows) == {"Org/Tiny", "Org/Tiny-GGUF:q4_0"}
    gguf, hf = rows["Org/Tiny-GGUF:q4_0"], rows["Org/Tiny"]
    assert (gguf["format"], gguf["quantization"], gguf["size"]) == ("gguf", "Q4_0", path.stat().st_size)
    assert (hf["format"], hf["quantization"]) == ("safetensors", "F32") and hf["size"] > 0
    assert gguf["quantized_copy"] == hf["quantized_copy"] == []
    LLM("Org/Tiny-GGUF:q4_0", dtype="int4", progress=False)  # writes zenlm's int4 copy to the cache
    rc, out, _ = zen(capsys, "list")
    line = next(x for x in out.splitlines() if x.startswith("Org/Tiny-GGUF:q4_0"))
    assert line.split()[1:3] == ["gguf", "Q4_0"] and line.endswith("int4")
    assert out.splitlines()[0].split()[:4] == ["NAME", "FORMAT", "QUANT", "SIZE"]
    copies = list((Path(os.environ["ZEN_CACHE"]) / "quantized").glob("tiny-q4_0-int4-*.safetensors"))
    assert len(copies) == 1
    blob = path.resolve()
    rc, _, err = zen(capsys, "rm", "Org/Tiny-GGUF:q4_0")
    assert rc == 0 and "removed Org/Tiny-GGUF:q4_0" in err
    assert not path.exists() and not blob.exists() and not copies[0].exists()
    assert [e.name for e in store.entries()] == ["Org/Tiny"]
    rc, _, err = zen(capsys, "rm", "Org/Tiny-GGUF:q4_0")
    assert rc == 1 and err.strip() == "zen: error: Org/Tiny-GGUF:q4_0 is not in the store (see `zen list`)"


def test_rm_keeps_files_another_name_uses(hub_env, capsys):
    pinned = f"Org/Tiny-GGUF:f16@{hub_env.hub.repos['Org/Tiny-GGUF'].refs['main']}"
    a = store.pull("Org/Tiny-GGUF:f16", progress=False)
    b = store.pull(pinned, progress=False)
    assert a.path == b.path
    assert zen(capsys, "rm", "Org/Tiny-GGUF:f16")[0] == 0
    assert a.path.is_file()
    rc, out, _ = zen(capsys, "list")
    assert pinned in out and "files missing" not in out


def test_list_marks_a_model_whose_files_were_deleted_elsewhere(hub_env, capsys):
    local = store.pull("Org/Tiny-GGUF:f16", progress=False)
    local.path.resolve().unlink()  # e.g. `hf cache delete`
    rc, out, _ = zen(capsys, "list")
    assert "(files missing: pull again)" in out
    assert zen(capsys, "pull", "Org/Tiny-GGUF:f16")[0] == 0
    assert "files missing" not in zen(capsys, "list")[1]


@pytest.mark.parametrize("argv, message", [
    (["pull", "Org/Nope"], "zen: error: Org/Nope: no repository Org/Nope on"),
    (["pull", "nohub"], "zen: error: 'nohub' is not a hub name"),
    (["info", "Org/Tiny-GGUF:q5_k_m"], "zen: error: Org/Tiny-GGUF:q5_k_m: no GGUF file matches the tag 'q5_k_m'"),
    (["generate", "hi", "--model", "Org/Ambiguous-GGUF:q8_0"], "zen: error: Org/Ambiguous-GGUF:q8_0: 2 GGUF files"),
])
def test_cli_errors_are_one_line(hub_env, capsys, argv, message):
    rc, out, err = zen(capsys, *argv)
    assert rc == 1 and out == "" and err.startswith(message) and err.count("\n") == 1


def test_info_takes_a_hub_name(hub_env, capsys):
    rc, out, _ = zen(capsys, "info", "Org/Tiny", "--json")
    assert rc == 0 and json.loads(out)["num_layers"] == 2
