"""Shared fixtures: the real default model (assembled from its installed wheels) and a loaded LLM.

Markers, set here so no test has to remember them: `model` on every test that reads the real default
model (a fixture below, or a module that starts `zen serve` on it); `slow` on those and on the tests
that start processes (torchrun, servers, training runs). `pytest -m "not slow"` is the quick loop.
"""

from pathlib import Path

import pytest

MODEL_FIXTURES = {"gguf_path", "default_llm", "gguf_meta", "hf_tokenizer", "hf_tokenizer_dir"}
MODEL_MODULES = {"test_server", "test_server_tools", "test_web_ui", "test_real_model", "test_train_real",
                 "test_train_qlora_real", "test_agent_real", "test_agent_tir_real",
                 "test_speculative_real", "test_speculative_server"}
PROCESS_MODULES = {"test_train_dist", "test_cli", "test_train_estimate", "test_server_fuzz", "test_hub_process",
                   "test_sandbox_attacks", "test_train_rl_rewards", "test_parallel", "test_serve_replicas"}


def pytest_collection_modifyitems(items):
    for item in items:
        module = item.module.__name__.rpartition(".")[2]
        if MODEL_FIXTURES & set(item.fixturenames) or module in MODEL_MODULES:
            item.add_marker(pytest.mark.model)
            item.add_marker(pytest.mark.slow)
        elif module in PROCESS_MODULES:
            item.add_marker(pytest.mark.slow)


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
