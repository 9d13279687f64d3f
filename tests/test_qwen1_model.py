"""Qwen v1 in model.py: v1's checkpoint names, logn attention and dynamic NTK against an independent forward
written from the formulas (tests/qwen1_files.py), and cached decoding giving what one full forward over the
whole context gives: a KVCache step inside one NTK epoch, and the engine (paged cache, chunked prefill, prefix
sharing), whose scheduler recomputes a sequence when it steps into another epoch.
"""

import math

import pytest
import torch

from tests.fake_sequence import Params, Seq
from tests.qwen1_files import random_weights, reference_logits, tiny_config, train_ranks, write_hf_dir
from zenlm.engine.engine import EngineConfig
from zenlm.engine.kv_cache import BlockManager
from zenlm.engine.llm import LLM
from zenlm.engine.sampling import SamplingParams
from zenlm.engine.scheduler import Scheduler
from zenlm.model import KVCache, Transformer, checkpoint_layout, logn_scale, ntk_alpha
from zenlm.weights.load import build

VOCAB = 560  # 256 bytes + 80 merges + 208 specials + padding rows, as the releases pad theirs


def model_of(c, sd):
    return build(c, iter(sd.items()), "tiny")


def test_v1_checkpoint_names_and_shapes():
    c = tiny_config(VOCAB)
    shapes = {k: tuple(v.shape) for k, v in random_weights(c).items()}
    h, i = c.hidden_size, c.intermediate_size
    assert shapes["transformer.wte.weight"] == (VOCAB, h) and shapes["lm_head.weight"] == (VOCAB, h)
    assert shapes["transformer.h.0.attn.c_attn.weight"] == (3 * h, h)
    assert shapes["transformer.h.0.attn.c_attn.bias"] == (3 * h,)
    assert "transformer.h.0.attn.c_proj.bias" not in shapes  # no_bias: only c_attn has one
    assert shapes["transformer.h.1.mlp.w1.weight"] == shapes["transformer.h.1.mlp.w2.weight"] == (i, h)
    assert shapes["transformer.h.1.mlp.c_proj.weight"] == (h, i)
    assert {"transformer.ln_f.weight", "transformer.h.1.ln_1.weight", "transformer.h.1.ln_2.weight"} <= set(shapes)
    with torch.device("meta"):
        layout = checkpoint_layout(Transformer(c))
    # c_attn fills the whole fused q/k/v; w2 the gate rows (it goes through silu), w1 the up rows
    assert layout["transformer.h.0.attn.c_attn.weight"] == ("model.layers.0.self_attn.qkv_proj.weight", None)
    assert layout["transformer.h.0.mlp.w2.weight"] == ("model.layers.0.mlp.gate_up_proj.weight", slice(0, i))
    assert layout["transformer.h.0.mlp.w1.weight"] == ("model.layers.0.mlp.gate_up_proj.weight", slice(i, 2 * i))


def test_ntk_alpha_and_logn_follow_v1s_formulas():
    assert [ntk_alpha(8192, n) for n in (1, 8192, 8193, 16384, 16385, 32768, 32769)] == [1, 1, 3, 3, 7, 7, 15]
    c = tiny_config(VOCAB)
    scale = logn_scale(c, torch.tensor([[0, 31, 32, 63, 199]]))[0, :, 0]
    expected = [1.0, 1.0, math.log(33, 32), math.log(64, 32), math.log(200, 32)]
    assert scale.tolist() == pytest.approx(expected, rel=1e-6)


@pytest.mark.parametrize("logn, ntk", [(True, True), (True, False), (False, True), (False, False)])
@pytest.mark.parametrize("T", [20, 32, 33, 100, 200])
def test_full_forward_matches_the_formulas(logn, ntk, T):
    c = tiny_config(VOCAB, use_logn_attn=logn, use_dynamic_ntk=ntk)
    sd = random_weights(c)
    tokens = torch.randint(0, VOCAB, (T,), generator=torch.Generator().manual_seed(T)).tolist()
    with torch.no_grad():
        got = model_of(c, sd)(torch.tensor([tokens]), torch.arange(T)[None])[0]
    torch.testing.assert_close(got, reference_logits(c, sd, tokens), rtol=0, atol=2e-5)


def test_logn_and_ntk_change_the_logits_only_past_seq_length():
    plain = tiny_config(VOCAB, use_logn_attn=False, use_dynamic_ntk=False, seq_length=0)
    sd = random_weights(plain)
    tokens = torch.arange(100)[None] % VOCAB
    with torch.no_grad():
        base = model_of(plain, sd)(tokens, torch.arange(100)[None])[0]
        v1 = model_of(tiny_config(VOCAB), sd)(tokens, torch.arange(100)[None])[0]
        short = model_of(tiny_config(VOCAB), sd)(tokens[:, :32], torch.arange(32)[None])[0]
    torch.testing.assert_close(short, base[:32])  # within seq_length: alpha 1, logn 1
    assert (v1[32:] - base[32:]).abs().max() > 1e-2


def test_a_cache_step_turns_with_its_whole_contexts_base():
    """A prefill in chunks, then decoding inside one epoch (33..64 tokens: alpha 3): with rope_lengths, each
    step gives what one forward over the whole context gives. Crossing an epoch needs a recompute (the
    engine's, below); a KVCache left at an older base drifts."""
    c = tiny_config(VOCAB)
    sd = random_weights(c)
    model = model_of(c, sd)
    tokens = torch.randint(0, VOCAB, (80,), generator=torch.Generator().manual_seed(1)).tolist()
    cache = KVCache(c, 1, 96, torch.float32, "cpu")
    with torch.no_grad():
        cache.rope_lengths = torch.tensor([40])
        for a in range(0, 40, 16):  # chunks 0-15, 16-31, 32-39, all at alpha(40)
            got = model(torch.tensor([tokens[a:min(a + 16, 40)]]), torch.arange(a, min(a + 16, 40))[None], cache)
        torch.testing.assert_close(got[0, -1], reference_logits(c, sd, tokens[:40])[-1], rtol=0, atol=2e-5)
        for n in range(40, 64):
            cache.rope_lengths = torch.tensor([n + 1])
            got = model(torch.tensor([[tokens[n]]]), torch.tensor([[n]]), cache)[0, -1]
        torch.testing.assert_close(got, reference_logits(c, sd, tokens[:64])[-1], rtol=0, atol=2e-5)
        cache.rope_lengths = torch.tensor([65])  # alpha 7 now: the cached K/V turned with alpha 3
        got = model(torch.tensor([[tokens[64]]]), torch.tensor([[64]]), cache)[0, -1]
    assert (got - reference_logits(c, sd, tokens[:65])[-1]).abs().max() > 1e-4


@pytest.fixture(scope="module")
def v1_dir(tmp_path_factory):
    c = tiny_config(VOCAB)
    sd = random_weights(c, seed=3)
    return c, sd, write_hf_dir(tmp_path_factory.mktemp("v1") / "tiny-qwen", c, sd, train_ranks())


@pytest.mark.parametrize("logn, ntk", [(True, True), (True, False)])
def test_engine_greedy_equals_full_forwards(v1_dir, tmp_path, logn, ntk):
    """zenlm's engine (paged cache, prefill in chunks of 16, two prompts sharing blocks) against greedy
    decoding by repeated full forwards of the independent formula, across seq_length and alpha's steps
    (33 and 65 tokens: each sequence is recomputed twice under dynamic NTK)."""
    c, sd, path = v1_dir
    if not ntk:  # logn alone: the C attention kernel's path (keys cached after rope)
        c = c.replace(use_dynamic_ntk=False)
        path = write_hf_dir(tmp_path / "logn-only", c, sd, train_ranks())
    llm = LLM(str(path), progress=False, engine=EngineConfig(block_size=8, max_num_batched_tokens=16))
    assert llm.config.use_logn_attn and llm.config.use_dynamic_ntk == ntk
    shared = torch.randint(0, 300, (24,), generator=torch.Generator().manual_seed(5)).tolist()
    prompts = [shared + [7, 8, 9], shared + [10]]
    params = SamplingParams(max_tokens=45, temperature=0, ignore_eos=True, repetition_penalty=1.0)
    outs = llm.generate(prompts, params)
    assert llm.engine.scheduler.num_rope_recomputes == (4 if ntk else 0)
    assert llm.engine.blocks.stats.hit_tokens >= 16  # the second prompt reused the first one's blocks
    for prompt, out in zip(prompts, outs):
        ids = list(prompt)
        for _ in range(45):
            ids.append(int(reference_logits(c, sd, ids)[-1].argmax()))
        assert out.token_ids == ids[len(prompt):]


def test_scheduler_recomputes_a_sequence_entering_another_rope_epoch():
    """seq_length 8: a 6-token prompt decodes to 8 tokens at alpha 1; its 9th turns with alpha 3, so the
    whole sequence is prefilled again; blocks are found again only under the epoch they were computed in."""
    bm = BlockManager(32, 4)
    s = Scheduler(bm, 4, 64, rope_epoch=lambda n: ntk_alpha(8, n))
    a = Seq(0, list(range(1, 7)), Params(max_tokens=6))
    s.add(a)
    assert a.rope_epoch == 1
    chunks = []
    while s.has_work:
        batch = s.schedule()
        chunks += [(e.start, e.num_tokens) for e in batch.seqs]
        s.postprocess(batch, [40 + len(e.seq.all_ids) for e in batch.sampled])
    assert chunks == [(0, 6), (6, 1), (7, 1), (0, 9), (9, 1), (10, 1)] and s.num_rope_recomputes == 1
    same_epoch = Seq(1, a.all_ids[:8] + [99])  # 9 tokens: alpha 3, as a's blocks were recomputed
    other_epoch = Seq(2, a.all_ids[:8] + [99] * 9)  # 17 tokens: alpha 7
    for seq in (same_epoch, other_epoch):
        s.add(seq)
    assert bm._match(same_epoch, same_epoch.all_ids) and not bm._match(other_epoch, other_epoch.all_ids)
