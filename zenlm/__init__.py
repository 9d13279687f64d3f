"""zenlm: the zen (Qwen-lineage) model family in plain PyTorch.

Public API only; everything is imported lazily so `import zenlm` (and the CLI) start fast.
"""

from typing import TYPE_CHECKING

__all__ = ["LLM", "SamplingParams", "Completion", "load", "Config", "Tokenizer"]
__version__ = "0.1.0"

_WHERE = {
    "LLM": "zenlm.engine.llm",
    "SamplingParams": "zenlm.engine.sampling",
    "Completion": "zenlm.engine.sequence",
    "load": "zenlm.weights.load",
    "Config": "zenlm.config",
    "Tokenizer": "zenlm.tokenizer",
}

if TYPE_CHECKING:
    from zenlm.config import Config
    from zenlm.engine.llm import LLM
    from zenlm.engine.sampling import SamplingParams
    from zenlm.engine.sequence import Completion
    from zenlm.tokenizer import Tokenizer
    from zenlm.weights.load import load


def __getattr__(name: str):
    if name in _WHERE:
        import importlib

        return getattr(importlib.import_module(_WHERE[name]), name)
    raise AttributeError(f"module 'zenlm' has no attribute {name!r}")
