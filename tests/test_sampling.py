"""Sampler tests: params, penalties, parity with transformers' logits processors, seeding, statistics.

No model is loaded; logits are random or hand-written.
"""

import math

import pytest
import torch
from transformers.generation.logits_process import (
    LogitsProcessorList,
    MinPLogitsWarper,
    RepetitionPenaltyLogitsProcessor,
    TemperatureLogitsWarper,
    TopKLogitsWarper,
    TopPLogitsWarper,
)

from zenlm.engine.sampling import (
    SamplingParams,
    apply_penalties,
    apply_warpers,
    logprobs,
    make_generator,
    sample,
)

QWEN_DEFAULTS = {"do_sample": True, "temperature": 0.7, "top_p": 0.8, "top_k": 20, "repetition_penalty": 1.05}


def resolved(**kw) -> SamplingParams:
    return SamplingParams(**kw).resolved({})


def hf_chain(p: SamplingParams) -> LogitsProcessorList:
    """The processors transformers' _get_logits_processor builds for these params, in its order."""
    procs = LogitsProcessorList()
    if p.repetition_penalty != 1.0:
        procs.append(RepetitionPenaltyLogitsProcessor(p.repetition_penalty))
    if p.temperature != 1.0:
        procs.append(TemperatureLogitsWarper(p.temperature))
    if p.top_k != 0:
        procs.append(TopKLogitsWarper(p.top_k))
    if p.top_p < 1.0:
        procs.append(TopPLogitsWarper(p.top_p))
    if p.min_p:
        procs.append(MinPLogitsWarper(p.min_p))
    return procs


def ours(logits, params, histories):
    prompt_lens = [len(h) for h in histories]  # all prompt: presence/frequency stay out of the comparison
    return apply_warpers(apply_penalties(logits, params, histories, prompt_lens), params)


def assert_same_scores(got, want):
    assert torch.equal(torch.isinf(got), torch.isinf(want)), "filtered positions differ"
    keep = ~torch.isinf(want)
    torch.testing.assert_close(got[keep], want[keep])


COMBOS = [
    dict(temperature=0.7, top_p=0.8, top_k=20, repetition_penalty=1.05),  # Qwen2.5 defaults
    dict(temperature=1.0),
    dict(temperature=0.5, top_k=5),
    dict(temperature=1.3, top_p=0.5),
    dict(temperature=0.9, min_p=0.1),
    dict(temperature=0.8, top_k=30, top_p=0.9, min_p=0.05, repetition_penalty=1.3),
    dict(temperature=2.0, top_k=1000),  # top_k beyond the vocabulary
    dict(temperature=1.0, repetition_penalty=0.7),  # a "reward" below 1
]


@pytest.mark.parametrize("kw", COMBOS)
def test_processed_scores_match_transformers(kw):
    torch.manual_seed(0)
    B, V, L = 3, 64, 12
    logits = torch.randn(B, V) * 3
    ids = torch.randint(0, V, (B, L))
    p = resolved(**kw)
    want = hf_chain(p)(ids, logits.clone())
    got = ours(logits, [p] * B, ids.tolist())
    assert_same_scores(got, want)


def test_per_row_params_match_transformers_row_by_row():
    torch.manual_seed(1)
    V = 50
    params = [resolved(**kw) for kw in COMBOS]
    logits = torch.randn(len(params), V) * 2
    histories = [torch.randint(0, V, (n + 1,)).tolist() for n in range(len(params))]  # ragged
    got = ours(logits, params, histories)
    for i, p in enumerate(params):
        want = hf_chain(p)(torch.tensor([histories[i]]), logits[i : i + 1].clone())
        assert_same_scores(got[i : i + 1], want)


def test_greedy_is_argmax():
    torch.manual_seed(2)
    logits = torch.randn(6, 100)
    p = resolved(temperature=0.0)
    out = sample(logits, [p] * 6, [[]] * 6, [0] * 6, [None] * 6)
    assert out.dtype == torch.int64 and out.shape == (6,)
    assert torch.equal(out, logits.argmax(-1))


def test_native_argmax_equals_torch_including_ties_infinities_and_nan():
    from zenlm.engine.sampling import argmax

    torch.manual_seed(0)
    x = torch.randn(6, 1000)
    x[1, 7] = x[1, 900] = 50.0  # a tie: the first index wins
    x[2] = float("-inf")
    x[3, 999] = float("inf")
    x[4, 500] = float("nan")  # torch points at the NaN
    x[5, 3] = x[5, 20] = float("nan")
    assert torch.equal(argmax(x), x.argmax(-1))
    assert torch.equal(argmax(x[:, :37]), x[:, :37].argmax(-1))  # a width that is not whole vectors


def test_top_k_one_equals_greedy():
    torch.manual_seed(3)
    logits = torch.randn(8, 100)
    p = resolved(temperature=1.5, top_k=1)
    for _ in range(5):
        out = sample(logits, [p] * 8, [[]] * 8, [0] * 8, [None] * 8)
        assert torch.equal(out, logits.argmax(-1))


def test_repetition_penalty_negative_and_positive_logits():
    logits = torch.tensor([[2.0, -2.0, 1.0, 0.5]])
    p = resolved(repetition_penalty=2.0)
    out = apply_penalties(logits, [p], [[0, 1, 1, 0]], [2])  # prompt and output tokens, repeats count once
    assert torch.equal(out, torch.tensor([[1.0, -4.0, 1.0, 0.5]]))


def test_presence_and_frequency_count_only_generated_tokens():
    logits = torch.zeros(1, 4)
    p = resolved(presence_penalty=0.5, frequency_penalty=0.25)
    history = [0, 0, 1] + [1, 2, 2]  # prompt (3) + generated (3)
    out = apply_penalties(logits, [p], [history], [3])
    assert torch.equal(out, torch.tensor([[0.0, -0.75, -1.0, 0.0]]))


def test_same_seed_same_tokens_different_seed_differs():
    torch.manual_seed(4)
    logits = torch.randn(1, 200)
    p = resolved(temperature=1.0, repetition_penalty=1.1, frequency_penalty=0.1)

    def run(seed):
        g, history = make_generator(seed, "cpu"), [5, 6, 7]
        for _ in range(50):
            history.append(int(sample(logits, [p], [history], [3], [g])[0]))
        return history[3:]

    assert run(123) == run(123)
    assert run(123) != run(124)
    assert make_generator(None, "cpu") is None


def test_min_p_filters():
    logits = torch.tensor([[0.5, 0.3, 0.15, 0.05]]).log()
    p = resolved(temperature=1.0, min_p=0.2)  # floor = 0.2 * 0.5 = 0.1
    out = apply_warpers(logits, [p])
    assert torch.isinf(out[0, 3]) and torch.isfinite(out[0, :3]).all()
    g = make_generator(0, "cpu")
    draws = [int(sample(logits, [p], [[]], [0], [g])[0]) for _ in range(300)]
    assert 3 not in draws and set(draws) == {0, 1, 2}


def test_mixed_batch():
    torch.manual_seed(5)
    V = 40
    logits = torch.randn(4, V)
    greedy, topk1 = resolved(temperature=0.0), resolved(temperature=0.9, top_k=1)
    penalized_greedy = resolved(temperature=0.0, repetition_penalty=100.0)
    seeded = resolved(temperature=1.0, top_p=0.9, seed=7)
    top = int(logits[2].argmax())
    params = [greedy, seeded, penalized_greedy, topk1]
    histories = [[], [1, 2], [top], []]
    gens = [None, make_generator(7, "cpu"), None, None]
    out = sample(logits, params, histories, [0, 2, 1, 0], gens)
    assert int(out[0]) == int(logits[0].argmax())
    assert int(out[2]) != top  # the penalty moved the argmax
    assert int(out[3]) == int(logits[3].argmax())
    alone = sample(logits[1:2], [seeded], [[1, 2]], [2], [make_generator(7, "cpu")])
    assert int(out[1]) == int(alone[0])  # a seeded row does not depend on its batch


def test_empirical_frequencies_match_softmax():
    torch.manual_seed(6)
    logits = torch.tensor([1.0, 0.5, 0.0, -0.5, 2.0])
    N = 20_000
    p = resolved(temperature=1.0)
    out = sample(logits.expand(N, 5), [p] * N, [[]] * N, [0] * N, [None] * N)
    freq = torch.bincount(out, minlength=5).float() / N
    assert (freq - logits.softmax(-1)).abs().max() < 0.02


def test_logprobs_float32():
    x = torch.randn(2, 7, dtype=torch.bfloat16)
    lp = logprobs(x)
    assert lp.dtype == torch.float32
    torch.testing.assert_close(lp.exp().sum(-1), torch.ones(2))


def test_resolved_takes_generation_config_defaults():
    r = SamplingParams().resolved(QWEN_DEFAULTS)
    assert (r.temperature, r.top_p, r.top_k, r.min_p, r.repetition_penalty) == (0.7, 0.8, 20, 0.0, 1.05)
    mine = SamplingParams(temperature=0.2, top_k=0).resolved(QWEN_DEFAULTS)
    assert (mine.temperature, mine.top_k, mine.top_p) == (0.2, 0, 0.8)  # the request wins
    neutral = SamplingParams().resolved({})
    assert (neutral.temperature, neutral.top_p, neutral.top_k, neutral.min_p, neutral.repetition_penalty) == (
        1.0, 1.0, 0, 0.0, 1.0,
    )
    assert SamplingParams().temperature is None  # resolved() returns a copy


def test_do_sample_false_means_greedy():
    base = {"bos_token_id": 151643, "do_sample": False, "eos_token_id": 151643, "max_new_tokens": 2048}
    assert SamplingParams().resolved(base).temperature == 0.0
    assert SamplingParams(temperature=0.5).resolved(base).temperature == 0.5


def test_stop_string_becomes_list():
    assert SamplingParams(stop="\n\n").stop == ["\n\n"]
    assert SamplingParams().stop == [] and SamplingParams().stop_token_ids == []


@pytest.mark.parametrize(
    "field, value",
    [
        ("max_tokens", 0),
        ("temperature", -0.1),
        ("temperature", math.nan),
        ("top_p", 0.0),
        ("top_p", 1.1),
        ("top_k", -1),
        ("min_p", -0.1),
        ("min_p", 1.5),
        ("repetition_penalty", 0.0),
        ("presence_penalty", 2.5),
        ("frequency_penalty", -2.1),
    ],
)
def test_validate_names_the_field(field, value):
    with pytest.raises(ValueError, match=field):
        SamplingParams(**{field: value}).validate()


def test_validate_accepts_defaults_and_edges():
    SamplingParams().validate()
    SamplingParams(temperature=0, top_p=1, top_k=0, min_p=1, presence_penalty=-2, frequency_penalty=2).validate()
