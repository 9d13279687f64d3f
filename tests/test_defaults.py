"""Generation defaults follow the file's identity (its GGUF metadata), not the name it was given by."""

import pytest

from zenlm.weights.defaults import QWEN_CHAT, gguf_generation_config
from zenlm.weights.gguf import GGUFCheckpoint


def test_the_default_model_and_its_file_under_another_name_get_the_same_defaults(default_llm, gguf_path, tmp_path):
    renamed = tmp_path / "my-model.gguf"
    renamed.symlink_to(gguf_path)
    by_path = gguf_generation_config(GGUFCheckpoint(renamed).meta)
    assert by_path == default_llm.generation_config == QWEN_CHAT
    assert by_path["repetition_penalty"] == 1.05


@pytest.mark.parametrize("meta, want", [
    ({"general.architecture": "qwen2", "general.finetune": "Instruct"}, QWEN_CHAT),
    ({"general.architecture": "qwen2moe", "general.finetune": "Chat"}, QWEN_CHAT),
    ({"general.architecture": "qwen2"}, {}),  # a base model: no sampling defaults
    ({"general.architecture": "llama", "general.finetune": "Instruct"}, {}),  # not a Qwen release
    ({"general.architecture": "qwen2", "general.finetune": "Instruct", "general.sampling.temp": 0.2},
     QWEN_CHAT | {"temperature": 0.2}),
])
def test_metadata_decides(meta, want):
    assert gguf_generation_config(meta) == want
