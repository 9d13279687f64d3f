"""The training loop and its losses on tiny models built in code (fp32 unless a test says otherwise).

Chunked linear+CE equals F.cross_entropy (values and grads); one batch overfits; k micro-batches equal
one k-times batch (with unequal token counts); a packed row equals its documents run separately; a
killed run resumes to the same losses, also when SIGKILLed inside the checkpoint writer (atomic
checkpoints); uneven held-out shards are padded; warmup+cosine; metrics.jsonl and the loss PNG.
"""

import json
import math
import zlib

import pytest
import torch
import torch.nn.functional as F

from tests.tiny_train import CHATS, byte_tokenizer, tiny_model
from zenlm.train.data import IGNORE, Batch, Loader, collate, pack_documents, pack_examples, sft_example
from zenlm.train.losses import CrossEntropy, linear_cross_entropy, linear_token_logps
from zenlm.train.trainer import TrainConfig, Trainer, eval_batches, hidden_states, lr_factor


def fp32(tmp_path, **over) -> TrainConfig:
    base = dict(output=str(tmp_path), max_steps=4, batch_size=2, lr=1e-3, warmup_steps=1, bf16=False,
                progress=False)
    return TrainConfig(**(base | over))


def random_docs(n: int, seed: int = 0, vocab: int = 256) -> list[list[int]]:
    g = torch.Generator().manual_seed(seed)
    return [torch.randint(0, vocab, (int(torch.randint(5, 60, (1,), generator=g)),), generator=g).tolist()
            for _ in range(n)]


@pytest.mark.parametrize("chunk", [7, 1024])
def test_linear_cross_entropy_matches_reference(chunk):
    torch.manual_seed(0)
    h = torch.randn(2, 25, 32, requires_grad=True)
    w = torch.randn(300, 32, requires_grad=True)
    y = torch.randint(0, 300, (2, 25))
    y[0, ::3] = IGNORE
    got = linear_cross_entropy(h, w, y, chunk)
    (got * 0.5).backward()
    h2, w2 = h.detach().clone().requires_grad_(), w.detach().clone().requires_grad_()
    ref = F.cross_entropy((h2 @ w2.t()).view(-1, 300), y.view(-1), ignore_index=IGNORE, reduction="sum")
    (ref * 0.5).backward()
    torch.testing.assert_close(got, ref)
    torch.testing.assert_close(h.grad, h2.grad)
    torch.testing.assert_close(w.grad, w2.grad)
    lp = linear_token_logps(h2.detach(), w2.detach(), y, chunk)
    full = torch.log_softmax(h2.detach() @ w2.detach().t(), -1).gather(-1, y.clamp_min(0)[..., None])[..., 0]
    torch.testing.assert_close(lp, torch.where(y == IGNORE, 0.0, full))


def test_bf16_autocast_cross_entropy_is_close():
    torch.manual_seed(0)
    h, w, y = torch.randn(64, 32), torch.randn(500, 32) * 0.1, torch.randint(0, 500, (64,))
    with torch.autocast("cpu", dtype=torch.bfloat16):
        got = linear_cross_entropy(h, w, y)
    ref = F.cross_entropy(h @ w.t(), y, reduction="sum")
    assert abs(float(got) - float(ref)) / float(ref) < 1e-2


def test_overfit_one_batch(tmp_path):
    model = tiny_model()
    rows = pack_documents(random_docs(3, vocab=250), 48, 256)[:2]
    tr = Trainer(model, CrossEntropy(), Loader(rows, 2, shuffle=False), collate,
                 fp32(tmp_path, max_steps=80, lr=1e-2, warmup_steps=5, min_lr_ratio=1.0, weight_decay=0.0))
    hist = tr.fit()
    assert hist[0]["loss"] > 5.0
    assert hist[-1]["loss"] < 0.05, hist[-1]


def sft_rows(seq_len=40):
    tok = byte_tokenizer()
    return pack_examples([sft_example(tok, c) for c in CHATS * 3], seq_len, tok.pad_token_id)


def test_grad_accumulation_equals_one_big_batch(tmp_path):
    rows = sft_rows()
    counts = [sum(lab != IGNORE for lab in r.labels) for r in rows[:4]]
    assert len(set(counts)) > 1, "micro-batches must differ in valid tokens to catch a mean of means"
    runs = []
    for B, A in [(4, 1), (1, 4), (2, 2)]:
        model = tiny_model()
        tr = Trainer(model, CrossEntropy(), Loader(rows, 4, seed=3), collate,
                     fp32(tmp_path / f"{B}x{A}", batch_size=B, grad_accum=A, max_steps=3))
        runs.append(([r["loss"] for r in tr.fit()], model.state_dict()))
    for losses, sd in runs[1:]:
        assert losses == pytest.approx(runs[0][0], rel=1e-5)
        for k, v in sd.items():
            torch.testing.assert_close(v, runs[0][1][k], atol=2e-6, rtol=1e-5)


def test_packed_row_equals_documents_run_alone():
    model = tiny_model().eval()
    docs = random_docs(4, seed=1)
    row = pack_documents(docs, sum(len(d) + 1 for d in docs), 256)[0]
    packed = linear_cross_entropy(hidden_states(model, collate([row])), model.lm_head.weight,
                                  torch.tensor([row.labels]))
    alone = 0.0
    for d in docs:
        r = pack_documents([d], len(d) + 1, 256)[0]
        b = collate([r], packed=False)
        alone += linear_cross_entropy(hidden_states(model, b), model.lm_head.weight, b.labels)
    torch.testing.assert_close(packed, alone)
    assert row.positions.count(0) == len(docs)


def test_lr_schedule_warmup_then_cosine():
    cfg = TrainConfig(max_steps=110, warmup_steps=10, min_lr_ratio=0.1)
    assert lr_factor(0, cfg) == pytest.approx(0.1)
    assert lr_factor(9, cfg) == pytest.approx(1.0)
    assert lr_factor(60, cfg) == pytest.approx(0.1 + 0.9 * 0.5)
    assert lr_factor(110, cfg) == pytest.approx(0.1)
    assert all(lr_factor(s, cfg) >= lr_factor(s + 1, cfg) for s in range(10, 110))


@pytest.mark.parametrize("lora", [False, True])
def test_killed_run_resumes_to_the_same_losses(tmp_path, lora):
    from zenlm.train.lora import LoRAConfig, apply_lora

    rows = pack_documents(random_docs(40), 32, 256)

    def make(out, steps, seed):
        model = tiny_model(seed)
        if lora:  # dropout makes the RNG state matter
            apply_lora(model, LoRAConfig(rank=4, alpha=8, dropout=0.2))
        return Trainer(model, CrossEntropy(), Loader(rows, 2, seed=5), collate,
                       fp32(out, max_steps=steps, warmup_steps=2, save_every=3))

    full = [r["loss"] for r in make(tmp_path / "a", 7, 0).fit()]
    doomed = make(tmp_path / "b", 7, 0)
    save = doomed.save

    def save_then_die():
        save()
        raise KeyboardInterrupt  # killed right after the step-3 checkpoint

    doomed.save = save_then_die
    with pytest.raises(KeyboardInterrupt):
        doomed.fit()
    assert doomed.step == 3
    torch.manual_seed(123)  # a fresh process: other RNG state, other random init
    resumed = make(tmp_path / "b", 7, 0 if lora else 1)  # LoRA checkpoints hold adapters, not the base
    assert resumed.step == 3
    again = [r["loss"] for r in resumed.fit()]
    assert again[:3] == full[:3]  # history restored from the checkpoint
    assert again[3:] == full[3:]
    lines = (tmp_path / "b" / "metrics.jsonl").read_text().splitlines()
    assert [json.loads(x)["step"] for x in lines] == list(range(1, 8))


@pytest.mark.parametrize("n,world,batch", [(1, 2, 2), (3, 2, 1), (5, 3, 2), (7, 4, 3), (8, 2, 4), (0, 2, 2)])
def test_eval_batches_pad_uneven_shards(n, world, batch):
    plans = [eval_batches(n, r, world, batch) for r in range(world)]
    assert len({len(p) for p in plans}) == 1  # the same number of forwards on every rank
    real = sorted(i for p in plans for part in p for i in part)
    assert real == list(range(n))  # each item counted once; padding batches are empty
    assert all(0 < len(part) <= batch for p in plans for part in p[:1] if part)
    if n:
        assert len(plans[0]) == math.ceil(math.ceil(n / world) / batch)


def killable_run(out, steps: int, seed: int = 0) -> Trainer:
    """A tiny run that saves every 3 steps (also built by the subprocess of the test below)."""
    rows = pack_documents(random_docs(40), 32, 256)
    return Trainer(tiny_model(seed), CrossEntropy(), Loader(rows, 2, seed=5), collate,
                   fp32(out, max_steps=steps, warmup_steps=2, save_every=3))


# Runs killable_run(out, 8) and pauses inside the real checkpoint writer while it writes step 6, at
# the point `where` names; the test then kills the process with SIGKILL.
KILLED_RUN = """
import io, os, sys, time
from pathlib import Path
import torch
import torch.distributed.checkpoint as dcp
from tests.test_train import killable_run

out, where = Path(sys.argv[1]), sys.argv[2]

def pause():
    (out / "PAUSED").write_text("")
    time.sleep(600)

if where == "dcp":  # model and optimizer written, trainer state, marker and rename not yet
    real_dcp = dcp.save
    def dcp_save(*a, **k):
        real_dcp(*a, **k)
        if "step_0000006" in str(k.get("checkpoint_id") or k["storage_writer"].path):
            pause()
    dcp.save = dcp_save
elif where == "trainer":  # halfway through the bytes of trainer.pt
    real_save = torch.save
    def torch_save(obj, f, *a, **k):
        if isinstance(obj, dict) and obj.get("step") == 6:
            buf = io.BytesIO()
            real_save(obj, buf, *a, **k)
            f = open(f, "wb") if isinstance(f, (str, os.PathLike)) else f
            f.write(buf.getvalue()[:len(buf.getvalue()) // 2])
            f.flush()
            pause()
        return real_save(obj, f, *a, **k)
    torch.save = torch_save
else:  # everything written and marked COMPLETE, just before the rename
    real_replace = os.replace
    def replace(src, dst):
        if str(dst).endswith("step_0000006"):
            pause()
        return real_replace(src, dst)
    os.replace = replace
killable_run(out, 8).fit()
"""


@pytest.mark.slow  # starts processes
@pytest.mark.parametrize("where", ["dcp", "trainer", "rename"])
def test_run_killed_while_writing_a_checkpoint_resumes_from_the_last_complete_one(tmp_path, where):
    import os
    import signal
    import subprocess
    import sys
    import time
    from pathlib import Path

    full = [r["loss"] for r in killable_run(tmp_path / "full", 8).fit()]
    out = tmp_path / "killed"
    out.mkdir()
    root = Path(__file__).resolve().parents[1]
    env = os.environ | {"PYTHONPATH": str(root), "PYTHONWARNINGS": "ignore"}
    p = subprocess.Popen([sys.executable, "-c", KILLED_RUN, str(out), where], cwd=root, env=env,
                         stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, start_new_session=True)
    try:
        deadline = time.monotonic() + 120
        while not (out / "PAUSED").exists():
            assert p.poll() is None, p.stderr.read()[-3000:]
            assert time.monotonic() < deadline, "the run never reached the step-6 checkpoint"
            time.sleep(0.1)
    finally:
        os.killpg(p.pid, signal.SIGKILL)
        p.wait()
    ckpts = out / "checkpoints"
    assert (ckpts / "step_0000003" / "COMPLETE").exists()
    assert not (ckpts / "step_0000006").exists()  # a checkpoint directory only ever appears complete
    assert (ckpts / ".tmp-step_0000006").is_dir()  # what the killed save left, ignored
    assert [json.loads(x)["step"] for x in (out / "metrics.jsonl").read_text().splitlines()] == list(range(1, 7))

    resumed = killable_run(out, 8, seed=1)  # another init: the weights must come from the checkpoint
    assert resumed.step == 3
    again = [r["loss"] for r in resumed.fit()]
    assert again == pytest.approx(full, rel=1e-5, abs=1e-6)
    assert sorted(p.name for p in ckpts.iterdir()) == ["step_0000003", "step_0000006", "step_0000008"]
    assert [json.loads(x)["step"] for x in (out / "metrics.jsonl").read_text().splitlines()] == list(range(1, 9))


def test_checkpoint_saved_again_replaces_the_old_one_and_newest_complete_wins(tmp_path):
    from zenlm.train.distributed import latest_checkpoint

    first = killable_run(tmp_path, 3)
    first.fit()
    ckpts = tmp_path / "checkpoints"
    (ckpts / "step_0000010").mkdir()  # an interrupted save of an older version: no COMPLETE marker
    (ckpts / "step_0000002" / "x").mkdir(parents=True)
    (ckpts / "step_0000002" / "COMPLETE").write_text("")
    assert latest_checkpoint(ckpts).name == "step_0000003"
    cfg = fp32(tmp_path, max_steps=3, warmup_steps=2, save_every=3, resume=False, lr=1e-2)
    rows = pack_documents(random_docs(40), 32, 256)
    again = Trainer(tiny_model(0), CrossEntropy(), Loader(rows, 2, seed=5), collate, cfg)
    again.fit()  # saves step 3 over the first run's
    assert latest_checkpoint(ckpts).name == "step_0000003"
    assert not [p for p in ckpts.iterdir() if p.name.startswith(".")]
    resumed = killable_run(tmp_path, 3, seed=1)
    assert resumed.step == 3
    w = dict(again.model.named_parameters())
    for k, v in resumed.model.named_parameters():
        torch.testing.assert_close(v, w[k])  # the second run's weights, not the first's


def test_metrics_eval_and_loss_png(tmp_path):
    rows = pack_documents(random_docs(30), 32, 256)
    tr = Trainer(tiny_model(), CrossEntropy(), Loader(rows[:-4], 2), collate,
                 fp32(tmp_path, max_steps=4, eval_every=2, bf16=True, checkpointing=True), held_out=rows[-4:])
    tr.fit()
    recs = [json.loads(x) for x in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in recs] == [1, 2, 3, 4]
    for r in recs:
        assert {"step", "loss", "lr", "tokens_per_s"} <= set(r) and r["tokens_per_s"] > 0
        assert math.isfinite(r["loss"])
    assert ["eval_loss" in r for r in recs] == [False, True, False, True]
    png = (tmp_path / "loss.png").read_bytes()
    assert png[:8] == b"\x89PNG\r\n\x1a\n" and png[12:16] == b"IHDR"
    w, h = int.from_bytes(png[16:20], "big"), int.from_bytes(png[20:24], "big")
    n = int.from_bytes(png[33:37], "big")
    raw = zlib.decompress(png[41:41 + n])
    assert len(raw) == h * (1 + 3 * w)
    assert raw.count(bytes((31, 119, 180))) > 50  # the loss line is drawn


def test_activation_checkpointing_gives_the_same_gradients():
    rows = pack_documents(random_docs(6), 32, 256)[:2]
    grads = []
    for ckpt in (False, True):
        model = tiny_model()
        b = collate(rows)
        linear_cross_entropy(hidden_states(model, b, ckpt), model.lm_head.weight, b.labels).backward()
        grads.append([p.grad.clone() for p in model.parameters()])
    for a, b in zip(*grads):
        torch.testing.assert_close(a, b)


def test_batch_counts_and_bad_settings():
    b = Batch(torch.zeros(1, 3, dtype=torch.long), torch.tensor([[1, IGNORE, 2]]), torch.zeros(1, 3), None)
    assert CrossEntropy().count(b) == 2
    with pytest.raises(ValueError, match="batch_size"):
        TrainConfig(batch_size=0)
    with pytest.raises(ValueError, match="no training data"):
        Loader([], 1)


def test_embedding_lr_scale_gives_the_embedding_its_own_lr(tmp_path):
    docs = random_docs(8)
    rows = pack_documents(docs, 32, 0)
    m = tiny_model(tie_word_embeddings=False)
    tr = Trainer(m, CrossEntropy(), Loader(rows, 2), collate, fp32(tmp_path, embedding_lr_scale=10.0))
    emb = [g for g in tr.opt.param_groups if any(p is m.model.embed_tokens.weight for p in g["params"])]
    assert len(emb) == 1 and len(emb[0]["params"]) == 1
    assert emb[0]["lr"] == pytest.approx(10 * tr.opt.param_groups[0]["lr"]) and emb[0]["weight_decay"] == 0.0
    before = m.model.embed_tokens.weight.detach().clone()
    tr.train_step()
    moved = (m.model.embed_tokens.weight.detach() - before).abs().amax(-1)  # [V]
    assert moved[:256].max() > 0 and moved[256:].max() == 0  # tokens 256-299 never occur: their rows stay
