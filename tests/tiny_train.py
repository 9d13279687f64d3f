"""Shared pieces of the training tests: a byte-level tokenizer with ChatML specials, tiny configs and models."""

from pathlib import Path

import torch
from tokenizers import AddedToken, decoders, models, pre_tokenizers
from tokenizers import Tokenizer as HFTokenizer

from zenlm.config import Config
from zenlm.model import Transformer
from zenlm.tokenizer import Tokenizer
from zenlm.tokenizer.bpe import bytes_to_unicode

SPECIALS = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]


def byte_tokenizer() -> Tokenizer:
    """256 byte tokens + the three ChatML specials (ids 256-258); plain ChatML (no template)."""
    vocab = {ch: b for b, ch in bytes_to_unicode().items()}
    tk = HFTokenizer(models.BPE(vocab=vocab, merges=[], fuse_unk=False))
    tk.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)
    tk.decoder = decoders.ByteLevel()
    tk.add_special_tokens([AddedToken(s, special=True, normalized=False) for s in SPECIALS])
    return Tokenizer(tk, eos_token_ids=[tk.token_to_id("<|im_end|>")], pad_token_id=tk.token_to_id("<|endoftext|>"))


def tiny_config(**over) -> Config:
    base = dict(name="tiny", vocab_size=300, hidden_size=64, intermediate_size=128, num_layers=2, num_heads=4,
                num_kv_heads=2, head_dim=16, context_length=512, rope_theta=10000.0)
    return Config(**(base | over))


def tiny_model(seed: int = 0, **over) -> Transformer:
    torch.manual_seed(seed)
    return Transformer(tiny_config(**over))


def write_model_dir(path: Path, seed: int = 0, **over) -> Path:
    """A random tiny model saved as an HF directory (with the byte tokenizer)."""
    from zenlm.train.export import save_model_dir

    m = tiny_model(seed, **over)
    return save_model_dir(path, m.config, m.state_dict(), byte_tokenizer())


CHATS = [
    {"messages": [{"role": "system", "content": "Be terse."}, {"role": "user", "content": "2+2?"},
                  {"role": "assistant", "content": "4"}, {"role": "user", "content": "In French?"},
                  {"role": "assistant", "content": "quatre"}]},
    {"messages": [{"role": "user", "content": "Say hi"}, {"role": "assistant", "content": "hi there"}]},
    {"messages": [{"role": "user", "content": "Colour of the sky?"}, {"role": "assistant", "content": "blue"}]},
    {"messages": [{"role": "user", "content": "Opposite of up?"}, {"role": "assistant", "content": "down"}]},
]
