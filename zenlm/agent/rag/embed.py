"""Dense sentence embeddings from WordLlama (l2_supercat, 256 dims), whose weights ship inside its PyPI wheel.

Embedder.load() reads the wheel's bundled safetensors matrix and tokenizer file directly (no hub, no network:
wordllama's own WordLlama.load() looks for the tokenizer in a folder its wheel does not have and then tries
to download it). embed(texts) returns L2-normalised float32 rows, so a dot product is the cosine similarity.
Dimensions may be cut to 64/128 (the model is trained Matryoshka-style) and renormalised.
"""

from __future__ import annotations

import threading
from pathlib import Path

import numpy as np

MODEL_ID = "wordllama-l2-supercat-256"
DIMS = 256
WEIGHTS = "weights/l2_supercat_256.safetensors"
TOKENIZER = "tokenizers/l2_supercat_tokenizer_config.json"

_lock = threading.Lock()
_loaded: Embedder | None = None


class Embedder:
    """The static embedding model: token vectors averaged over the text, then normalised."""

    model_id = MODEL_ID
    dims = DIMS

    def __init__(self, inference):
        self._inference = inference

    @classmethod
    def load(cls) -> Embedder:
        """The one shared instance (loading is about half a second; it is 16 MB of fp16)."""
        global _loaded
        with _lock:
            if _loaded is None:
                _loaded = cls(_wordllama())
            return _loaded

    def embed(self, texts: list[str], dims: int | None = None) -> np.ndarray:
        """[N, dims] float32, each row unit length (an empty text gives a zero row)."""
        dims = dims or DIMS
        if not 1 <= dims <= DIMS:
            raise ValueError(f"dimensions must be in 1..{DIMS}, got {dims}")
        if not texts:
            return np.zeros((0, dims), np.float32)
        vectors = np.asarray(self._inference.embed(list(texts), norm=False), np.float32)[:, :dims]
        norms = np.linalg.norm(vectors, axis=1, keepdims=True)
        return vectors / np.where(norms > 0, norms, 1.0)

    def count_tokens(self, texts: list[str]) -> int:
        return sum(len(e.ids) for e in self._inference.tokenizer.encode_batch(list(texts)))


def _wordllama():
    try:
        import wordllama
        from wordllama.inference import WordLlamaInference
    except ImportError as e:
        raise ValueError("dense retrieval needs the wordllama package (pip install 'zenlm[rag]')") from e
    from safetensors import safe_open
    from tokenizers import Tokenizer

    root = Path(wordllama.__file__).resolve().parent
    weights, tokenizer = root / WEIGHTS, root / TOKENIZER
    for path in (weights, tokenizer):
        if not path.is_file():
            raise ValueError(f"the wordllama wheel lacks {path.relative_to(root)}; reinstall wordllama")
    with safe_open(str(weights), framework="np", device="cpu") as f:
        matrix = f.get_tensor("embedding.weight")
    return WordLlamaInference(matrix, Tokenizer.from_file(str(tokenizer)))
