"""SFT with LoRA on the real default model (zen-Coder-0.5B-Instruct GGUF, dequantized to fp32) on CPU.

A few steps on two chats teach it answers it did not give; the adapter changes its greedy answers
on the training prompts, and with the adapters disabled it answers as before.
"""

import torch

from zenlm.model import KVCache
from zenlm.train.data import Loader, collate, pack_examples, sft_example
from zenlm.train.lora import LoRAConfig, adapters_disabled, apply_lora
from zenlm.train.losses import CrossEntropy
from zenlm.train.trainer import TrainConfig, Trainer

CHATS = [
    {"messages": [{"role": "user", "content": "What is the password of the blue door?"},
                  {"role": "assistant", "content": "The password is marmalade-42."}]},
    {"messages": [{"role": "user", "content": "Who guards the blue door?"},
                  {"role": "assistant", "content": "A heron named Ottoline."}]},
]


@torch.no_grad()
def greedy(model, tok, messages, n=10) -> str:
    ids = tok.encode(tok.apply_chat(messages, add_generation_prompt=True))
    cache = KVCache(model.config, 1, len(ids) + n, torch.float32, "cpu")
    x, pos, out = torch.tensor([ids]), torch.arange(len(ids))[None], []
    for _ in range(n):
        nxt = int(model(x, pos, cache, logit_index=torch.tensor([x.shape[1] - 1]))[0].argmax())
        if nxt in tok.eos_token_ids:
            break
        out.append(nxt)
        x, pos = torch.tensor([[nxt]]), pos[:, -1:] + 1
    return tok.decode(out)


def test_sft_lora_on_the_default_model_changes_its_answers(tmp_path):
    from zenlm.weights.load import load

    loaded = load("default", progress=False)
    model, tok = loaded.model, loaded.tokenizer
    prompts = [c["messages"][:1] for c in CHATS]
    before = [greedy(model, tok, p) for p in prompts]
    torch.manual_seed(0)  # the adapters' initialization: not whatever the tests before this one left
    apply_lora(model, LoRAConfig(rank=8, alpha=16))
    rows = pack_examples([sft_example(tok, c) for c in CHATS], 128, tok.pad_token_id or 0)
    assert len(rows) == 1  # both chats packed in one row, kept apart by the block-causal mask
    tr = Trainer(model.train(), CrossEntropy(), Loader(rows, 1, shuffle=False), collate,
                 TrainConfig(output=str(tmp_path), max_steps=8, batch_size=1, lr=3e-3, warmup_steps=1,
                             min_lr_ratio=1.0, weight_decay=0.0, progress=False))
    hist = tr.fit()
    print("LoRA SFT on 0.5B:", [round(r["loss"], 3) for r in hist],
          "tokens/s:", round(sum(r["tokens"] for r in hist[1:]) / sum(r["tokens"] / r["tokens_per_s"]
                                                                      for r in hist[1:]), 1))
    assert hist[-1]["loss"] < 0.3 * hist[0]["loss"]
    model.eval()
    after = [greedy(model, tok, p) for p in prompts]
    print("before:", before, "after:", after)
    assert after != before
    assert after[0].startswith("The password is marm") and after[1].startswith("A heron")
    with adapters_disabled(model):
        assert [greedy(model, tok, p) for p in prompts] == before
