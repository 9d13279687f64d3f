"""Speculative decoding on a tiny random model and on small vocabularies: greedy output with drafts equals
greedy output without them (n-gram and draft-model proposers, batches mixing speculative and plain rows,
stop conditions inside an accepted run); the rejection sampler's output follows p (a model-like q and a
point-mass q); rejected drafts' K/V slots are rolled back; bad settings are one-line ValueErrors."""

import random
from types import SimpleNamespace

import pytest
import torch
from fake_sequence import Params, Seq
from test_engine import byte_tokenizer

from zenlm.config import Config
from zenlm.engine.engine import Engine, EngineConfig
from zenlm.engine.kv_cache import BlockManager
from zenlm.engine.sampling import SamplingParams
from zenlm.engine.scheduler import Scheduler
from zenlm.engine.speculative.draft_model import DraftModelProposer
from zenlm.engine.speculative.ngram import NgramProposer, lookup
from zenlm.engine.speculative.rejection import accept_greedy, accept_sampled
from zenlm.engine.speculative.speculator import Speculator
from zenlm.model import Transformer

TINY = Config(name="t", vocab_size=300, hidden_size=64, num_layers=2, num_heads=4, num_kv_heads=2, head_dim=16,
              intermediate_size=128, tie_word_embeddings=False, context_length=512, rope_theta=10000.0)


def tiny_model(seed: int, std: float = 0.3) -> Transformer:
    torch.manual_seed(seed)
    m = Transformer(TINY).eval()
    m.init_weights(std=std)
    return m


@pytest.fixture(scope="module")
def model():
    return tiny_model(0)


@pytest.fixture(scope="module")
def tokenizer():
    return byte_tokenizer()


def make_engine(model, tokenizer, proposer=None, k=4, **kw) -> Engine:
    eng = Engine(model, tokenizer, {}, torch.float32, "cpu", EngineConfig(**kw))
    if proposer is not None:
        eng.speculator = Speculator(proposer, k, adaptive=False)
    return eng


def run(eng, prompts, params):
    plist = params if isinstance(params, list) else [params] * len(prompts)
    seqs = [eng.add(p, sp) for p, sp in zip(prompts, plist)]
    while eng.has_work:
        eng.step()
    assert eng.blocks.num_free_blocks == eng.blocks.num_blocks  # every block, draft slots included, came back
    return [(s.output_ids, s.text, s.finish_reason) for s in seqs]


def prompts(n=5, seed=0):
    """Prompts that repeat themselves, so the n-gram proposer finds matches."""
    rng = random.Random(seed)
    out = []
    for _ in range(n):
        unit = [rng.randrange(256) for _ in range(rng.randrange(3, 12))]
        out.append((unit * 6)[:rng.randrange(20, 70)])
    return out


GREEDY = SamplingParams(max_tokens=40, temperature=0, ignore_eos=True)


# ---- proposers -------------------------------------------------------------------------------------
def test_ngram_lookup_prefers_the_longest_tail_and_the_latest_match():
    assert lookup([1, 2, 3, 9, 1, 2, 3, 7, 8, 5, 2, 3], 3) == [7, 8, 5]  # "2 3" last seen before 7 8 5
    assert lookup([1, 2, 3, 4, 9, 2, 3, 5, 6, 1, 2, 3], 2) == [4, 9]  # "1 2 3" (3-gram) beats the later "2 3"
    assert lookup([5, 6, 7, 5], 4) == [6, 7, 5]  # 1-gram, and the draft may run into the tail itself
    assert lookup([1, 2, 3, 4], 3) == []  # nothing repeats
    assert lookup([1, 2, 3, 2], 3, min_n=2) == []  # a 1-gram match only, below min_n
    big = [256 * 3 + 1, 7, 256 * 3 + 1]  # ids whose bytes contain each other at odd offsets stay aligned
    assert lookup([1 << 8, 1, 2, 1 << 16] + big, 2) == [7, 256 * 3 + 1]


def test_ngram_bad_sizes():
    with pytest.raises(ValueError, match="min_n <= max_n"):
        NgramProposer(max_n=2, min_n=3)


# ---- rejection sampling ------------------------------------------------------------------------------
def test_accept_greedy_keeps_the_matching_prefix_and_adds_the_targets_token():
    assert accept_greedy([4, 5, 6, 7], [4, 5, 6]) == [4, 5, 6, 7]
    assert accept_greedy([4, 9, 6, 7], [4, 5, 6]) == [4, 9]
    assert accept_greedy([1, 2], [3]) == [1]


def _tv(counts: torch.Tensor, p: torch.Tensor) -> float:
    return 0.5 * float((counts / counts.sum() - p).abs().sum())


@pytest.mark.parametrize("point_mass", [False, True])
def test_rejection_sampler_keeps_the_target_distribution(point_mass):
    """Over many draws, the first emitted token follows p at each step of the chain, whatever q proposes:
    total variation within what sampling noise allows, and a chi-square test far from rejecting."""
    V, N, k = 6, 40000, 2
    g = torch.Generator().manual_seed(0)
    p = torch.softmax(torch.randn(k + 1, V, generator=g) * 1.5, dim=-1)  # [k + 1, V]
    q = torch.softmax(torch.randn(k, V, generator=g) * 1.5, dim=-1)  # [k, V]: a model-like draft
    first = torch.zeros(V)
    second_given = torch.zeros(V)  # second token, when the first draft was accepted
    accepted = 0
    for _ in range(N):
        if point_mass:  # a deterministic proposer always drafts the same tokens
            drafts, qs = [2, 4], None
        else:
            drafts = [int(torch.multinomial(q[j], 1, generator=g)) for j in range(k)]
            qs = q
        out = accept_sampled(p, drafts, qs, g)
        assert 1 <= len(out) <= k + 1 and out[:-1] == drafts[:len(out) - 1]
        first[out[0]] += 1
        if len(out) > 1 and (point_mass or out[0] == drafts[0]):
            accepted += 1
            if point_mass:
                second_given[out[1]] += 1
    assert _tv(first, p[0]) < 0.015
    chi2 = float(((first - N * p[0]) ** 2 / (N * p[0])).sum())
    assert chi2 < 25.0  # chi-square, 5 degrees of freedom: p-value ~1e-4 at 25
    assert 0 < accepted < N  # both branches ran
    if point_mass:  # after accepting draft 2, the next token follows p's second row
        assert _tv(second_given, p[1]) < 0.03


def test_rejection_sampler_accepts_everything_when_the_draft_is_the_target():
    g = torch.Generator().manual_seed(1)
    p = torch.softmax(torch.randn(4, 5, generator=g), dim=-1)
    for _ in range(200):
        drafts = [int(torch.multinomial(p[j], 1, generator=g)) for j in range(3)]
        assert accept_sampled(p, drafts, p[:3], g)[:3] == drafts


# ---- KV rollback -------------------------------------------------------------------------------------
def test_rejected_drafts_free_their_blocks_and_never_enter_the_prefix_cache():
    bm = BlockManager(num_blocks=8, block_size=4)
    sched = Scheduler(bm, max_num_seqs=2, max_num_batched_tokens=32)
    seq = Seq(0, [1, 2, 3, 4, 5, 6], Params(max_tokens=20))
    sched.add(seq)
    sched.postprocess(sched.schedule(), [7])  # prefill: 6 computed, all_ids = 7 tokens, 2 blocks
    batch = sched.schedule()
    (e,) = batch.seqs
    assert e.num_tokens == 1 and e.start == 6
    # a speculator would append 5 drafts (positions 7..11): reserve slots up to 12 tokens, 3 blocks
    assert bm.reserve(seq, 12) and len(seq.block_table) == 3
    e.token_ids += [8, 9, 10, 11, 12]
    e.slot_mapping += [seq.block_table[t // 4] * 4 + t % 4 for t in range(7, 12)]
    e.num_draft = 5
    free_before = bm.num_free_blocks
    # the target kept drafts 8, 9 then said 42: all_ids = 1..7, 8, 9, 42 (10 tokens); K/V valid for 9 of them
    out = sched.postprocess(batch, {0: [8, 9, 42]})
    assert out == [(seq, "<8><9><42>")]
    assert seq.all_ids == [1, 2, 3, 4, 5, 6, 7, 8, 9, 42]
    assert seq.num_computed_tokens == 9  # the fed 7, 8, 9: 10, 11, 12 are rolled back
    assert len(seq.block_table) == 3 and bm.num_free_blocks == free_before  # 10 tokens still need 3 blocks
    hashed = [b for b in seq.block_table if bm.blocks[b].hash is not None]
    assert hashed == seq.block_table[:2]  # only full blocks of kept tokens (0..7) are hashed
    # a rejection at the first draft: the third block goes back
    batch = sched.schedule()
    (e,) = batch.seqs
    assert e.start == 9 and bm.reserve(seq, 13)
    e.token_ids += [1, 2, 3]
    e.slot_mapping += [seq.block_table[t // 4] * 4 + t % 4 for t in range(10, 13)]
    e.num_draft = 3
    sched.postprocess(batch, {0: [5]})
    assert seq.all_ids[-2:] == [42, 5] and seq.num_computed_tokens == 10 and len(seq.block_table) == 3


def test_a_run_stops_where_the_sequence_finishes():
    bm = BlockManager(num_blocks=8, block_size=4)
    sched = Scheduler(bm, max_num_seqs=2, max_num_batched_tokens=32)
    seq = Seq(0, [1, 2, 3], Params(max_tokens=3))
    sched.add(seq)
    sched.postprocess(sched.schedule(), [4])
    batch = sched.schedule()
    (e,) = batch.seqs
    assert bm.reserve(seq, 8)
    e.token_ids += [5, 6, 7, 8]
    e.slot_mapping += [seq.block_table[t // 4] * 4 + t % 4 for t in range(4, 8)]
    e.num_draft = 4
    sched.postprocess(batch, {0: [5, 6, 7, 8, 9]})
    assert seq.output_ids == [4, 5, 6] and seq.finished  # max_tokens 3 reached inside the accepted run
    assert bm.num_free_blocks == bm.num_blocks and not sched.has_work


# ---- the engine: greedy output unchanged -------------------------------------------------------------
def test_ngram_speculation_keeps_greedy_output(model, tokenizer):
    ps = prompts()
    plain = run(make_engine(model, tokenizer), ps, GREEDY)
    eng = make_engine(model, tokenizer, NgramProposer(), k=4)
    assert run(eng, ps, GREEDY) == plain
    st = eng.speculator.stats
    assert 0 < st.accepted < st.proposed  # drafts were both kept and rejected


def test_mixed_batch_with_speculation_off_for_some_rows(model, tokenizer):
    """Speculative rows next to plain decode rows and prefill chunks, a tight token budget, small blocks."""
    ps = prompts(7, seed=3)
    plist = [GREEDY if i % 3 else SamplingParams(max_tokens=40, temperature=0, ignore_eos=True, speculative=False)
             for i in range(len(ps))]
    plain = run(make_engine(model, tokenizer, block_size=4), ps, plist)
    eng = make_engine(model, tokenizer, NgramProposer(), k=5, block_size=4, max_num_batched_tokens=64,
                      max_num_seqs=4)
    assert run(eng, ps, plist) == plain
    assert eng.speculator.stats.accepted > 0


@pytest.mark.parametrize("draft_seed", [0, 1])
def test_draft_model_keeps_greedy_output(model, tokenizer, draft_seed):
    """The target drafting for itself (all kept) and another random model (mostly rejected)."""
    draft = model if draft_seed == 0 else tiny_model(draft_seed)
    ps = prompts(3, seed=5)
    plain = run(make_engine(model, tokenizer), ps, GREEDY)
    eng = make_engine(model, tokenizer, DraftModelProposer(draft, TINY.vocab_size, TINY.context_length), k=3)
    assert run(eng, ps, GREEDY) == plain
    st = eng.speculator.stats
    assert st.proposed > 0
    if draft_seed == 0:
        assert st.accepted == st.proposed
    else:
        assert st.accepted < st.proposed


def test_stop_strings_and_penalties_inside_accepted_runs(model, tokenizer):
    ps = prompts(4, seed=7)
    base = run(make_engine(model, tokenizer), ps, GREEDY)
    stop = [tokenizer.decode(out[5:7]) for out, _, _ in base]  # a string the output reaches mid-run
    plist = [SamplingParams(max_tokens=40, temperature=0, ignore_eos=True, stop=[s]) for s in stop]
    plist += [SamplingParams(max_tokens=17, temperature=0, ignore_eos=True, repetition_penalty=1.3,
                             presence_penalty=0.5, frequency_penalty=0.3, logit_bias={3: 2.0})]
    ps = ps + ps[:1]
    plain = run(make_engine(model, tokenizer), ps, plist)
    assert any(r == "stop" for _, _, r in plain)
    eng = make_engine(model, tokenizer, NgramProposer(), k=5)
    assert run(eng, ps, plist) == plain


def test_sampled_requests_run_and_are_reproducible_with_a_seed(model, tokenizer):
    sp = SamplingParams(max_tokens=30, temperature=0.8, top_p=0.9, seed=11, ignore_eos=True)
    ps = prompts(2, seed=9)
    a = run(make_engine(model, tokenizer, NgramProposer(), k=4), ps, sp)
    b = run(make_engine(model, tokenizer, NgramProposer(), k=4), ps, sp)
    assert a == b and all(len(out) == 30 for out, _, _ in a)


def test_prefix_cache_after_speculation_matches_a_fresh_engine(model, tokenizer):
    """Blocks hashed during speculative decoding hold exactly the tokens they claim: a second request
    sharing the first's output as prompt reuses them and decodes the same as an engine without a cache."""
    eng = make_engine(model, tokenizer, NgramProposer(), k=5, block_size=4)
    (out, _, _), = run(eng, prompts(1, seed=2), GREEDY)
    follow = prompts(1, seed=2)[0] + out + [7]
    (again, _, _), = run(eng, [follow], GREEDY)
    assert eng.blocks.stats.hit_tokens > 0
    (fresh, _, _), = run(make_engine(model, tokenizer, block_size=4), [follow], GREEDY)
    assert again == fresh


# ---- bad settings ------------------------------------------------------------------------------------
def test_bad_settings_are_value_errors(model, tokenizer):
    with pytest.raises(ValueError, match="num_speculative_tokens must be >= 1"):
        Speculator(NgramProposer(), 0)
    other = Transformer(TINY.replace(vocab_size=512))
    with pytest.raises(ValueError, match="must share the target's tokenizer"):
        DraftModelProposer(other, TINY.vocab_size, TINY.context_length)
    with pytest.raises(ValueError, match="not enabled"):
        make_engine(model, tokenizer).add([1, 2, 3], SamplingParams(speculative=True))


def test_llm_rejects_unknown_proposers_and_bad_k():
    from zenlm.engine.llm import LLM

    llm = SimpleNamespace(config=SimpleNamespace(use_dynamic_ntk=False), dtype=torch.float32, device="cpu")
    with pytest.raises(ValueError, match="num_speculative_tokens must be >= 1"):
        LLM._speculator(llm, "ngram", 0, "float32", False)
    with pytest.raises(ValueError, match="speculative must be 'ngram' or a draft model: unknown model 'ngarm'"):
        LLM._speculator(llm, "ngarm", 4, "float32", False)
