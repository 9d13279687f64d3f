"""Reward models on tiny models built in code: the Bradley-Terry loss, held-out pair accuracy rising on a
separable synthetic preference (chosen answers carry a marker), and the exported scorer reloading.
"""

import math
import random

import torch

from tests.tiny_train import byte_tokenizer, tiny_model, write_model_dir
from zenlm.train.data import Loader, collate_pairs, dpo_pair
from zenlm.train.reward import BradleyTerry, Scorer, bradley_terry_loss, last_answer_index, load_scorer, scalar_head
from zenlm.train.run import make_config, run
from zenlm.train.trainer import TrainConfig, Trainer

WORDS = ["red", "blue", "cat", "dog", "sun", "tree", "milk", "road", "fish", "rain"]


def marker_pairs(n: int, seed: int) -> list[dict]:
    """Chosen answers contain '#', rejected ones do not; otherwise the same kind of random words."""
    rng = random.Random(seed)
    out = []
    for i in range(n):
        words = lambda: " ".join(rng.choice(WORDS) for _ in range(3))  # noqa: E731
        out.append({"prompt": f"Item {i}?", "chosen": f"{words()} # {words()}", "rejected": f"{words()} {words()}"})
    return out


def test_bradley_terry_loss_values():
    r_c, r_r = torch.tensor([2.0, 0.0, -1.0]), torch.tensor([0.0, 0.0, 1.0])
    want = [math.log1p(math.exp(-2.0)), math.log(2.0), math.log1p(math.exp(2.0))]
    torch.testing.assert_close(bradley_terry_loss(r_c, r_r), torch.tensor(want))


def test_loss_is_log2_when_chosen_equals_rejected(tmp_path):
    tok = byte_tokenizer()
    pairs = [dpo_pair(tok, {"prompt": "hi", "chosen": "same answer", "rejected": "same answer"}, 32)] * 2
    torch.manual_seed(1)
    head = scalar_head(64)
    torch.nn.init.normal_(head.weight)  # a non-zero head: the rewards themselves are not 0
    tr = Trainer(tiny_model(), BradleyTerry(head), Loader(pairs, 2), collate_pairs,
                 TrainConfig(output=str(tmp_path), max_steps=1, batch_size=2, bf16=False, progress=False), heads=head)
    loss_sum, metrics = tr.objective(collate_pairs(pairs), tr.loss)
    assert abs(float(loss_sum.detach()) / 2 - math.log(2)) < 1e-6
    assert metrics["accuracy"] == 0.0  # ties are not wins


def test_last_answer_index_is_the_end_of_turn_token():
    tok = byte_tokenizer()
    chosen, _ = dpo_pair(tok, {"prompt": "hi", "chosen": "yes", "rejected": "no"}, 40)
    b = collate_pairs([(chosen, chosen)])
    i = int(last_answer_index(b.labels)[0])
    assert chosen.tokens[i] == tok.token_to_id("<|im_end|>")
    ids, index = Scorer(tiny_model(), scalar_head(64), tok).ids(
        [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "yes"}])
    assert index == i and ids[:i + 1] == chosen.tokens[:i + 1]


def test_rm_training_raises_held_out_accuracy_and_exports_a_scorer(tmp_path):
    import json

    base = write_model_dir(tmp_path / "base")
    for name, n, seed in (("train.jsonl", 96, 0), ("held.jsonl", 32, 1)):
        (tmp_path / name).write_text("".join(json.dumps(r) + "\n" for r in marker_pairs(n, seed)))
    out = tmp_path / "rm"
    rc = make_config({"task": "rm", "model": str(base), "data": [str(tmp_path / "train.jsonl")],
                      "eval_data": [str(tmp_path / "held.jsonl")], "output": str(out), "seq_len": 48,
                      "max_steps": 30, "batch_size": 8, "lr": 3e-3, "warmup_steps": 2, "eval_every": 10,
                      "eval_items": 32, "bf16": False, "progress": False, "weight_decay": 0.0})
    tr = run(rc)
    last = tr.history[-1]
    assert last["eval_accuracy"] > 0.8, last  # 0 at init: a zero head ties every pair
    assert last["eval_loss"] < math.log(2) - 0.2, last
    metrics = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert metrics[-1]["eval_accuracy"] == last["eval_accuracy"]
    # the exported directory reloads as a scorer giving the trained model's scores
    scorer = load_scorer(out)
    live = Scorer(tr.model, tr.objective.heads, scorer.tokenizer)
    convs = [[{"role": "user", "content": "Item 3?"}, {"role": "assistant", "content": a}]
             for a in ("red cat # sun", "red cat sun", "fish")]
    got, want = scorer.score_many(convs), live.score_many(convs)
    assert all(abs(g - w) < 1e-4 for g, w in zip(got, want)), (got, want)
    assert got[0] > got[1]  # the marker wins
