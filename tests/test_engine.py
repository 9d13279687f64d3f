"""The engine on a tiny random model: paged attention equals a full recompute; batching, chunked prefill,
prefix caching and preemption never change a greedy output; abort frees every block; AsyncLLM streams.

ZENLM_TEST_DEVICE=cuda runs the same tests on a GPU (quantized weights through kernels/gpu_linear.py)."""

import asyncio
import os
import random
from pathlib import Path

import pytest
import torch

from zenlm.config import Config
from zenlm.engine.engine import Engine, EngineConfig
from zenlm.engine.sampling import SamplingParams
from zenlm.model import Transformer, checkpoint_state_dict
from zenlm.tokenizer import Tokenizer
from zenlm.tokenizer.bpe import bytes_to_unicode

TINY = Config(name="t", vocab_size=300, hidden_size=64, num_layers=2, num_heads=4, num_kv_heads=2, head_dim=16,
              intermediate_size=128, tie_word_embeddings=False, context_length=256, rope_theta=10000.0)
GREEDY = SamplingParams(max_tokens=12, temperature=0, ignore_eos=True)
DEVICE = os.environ.get("ZENLM_TEST_DEVICE", "cpu")


@pytest.fixture(scope="module", params=["float32", "int8"])
def model(request):
    """The tiny model in float32 and quantized the way the loader does it (int8 weights); both have fused
    q/k/v, so the engine's steps run zenlm's C attention kernel (PagedKVCache.attend)."""
    torch.manual_seed(0)
    m = Transformer(TINY).eval()
    m.init_weights(std=0.3)
    if request.param == "float32":
        return m.to(DEVICE)
    from zenlm.weights.load import build

    q = build(TINY, iter(checkpoint_state_dict(m).items()), Path("tiny"), quant="int8")
    assert q.model.layers[0].mlp.down_proj.glu  # quantized the loader's way: [gate, up] into the kernel
    return q.to(DEVICE)


@pytest.fixture(scope="module")
def tokenizer():
    return byte_tokenizer()


def byte_tokenizer() -> Tokenizer:
    """The 256 bytes, one merge ("ab") and an end-of-turn token (257)."""
    spell = bytes_to_unicode()
    return Tokenizer.from_gguf({"tokenizer.ggml.model": "gpt2", "tokenizer.ggml.pre": "qwen2",
                                "tokenizer.ggml.tokens": [spell[b] for b in range(256)] + ["ab", "<|im_end|>"],
                                "tokenizer.ggml.token_type": [1] * 257 + [3], "tokenizer.ggml.merges": ["a b"],
                                "tokenizer.ggml.eos_token_id": 257})


def engine(model, tokenizer, **kw) -> Engine:
    return Engine(model, tokenizer, {}, torch.float32, DEVICE, EngineConfig(**kw))


def run(eng: Engine, prompts, params=GREEDY) -> list[list[int]]:
    seqs = [eng.add(p, params) for p in prompts]
    while eng.has_work:
        eng.step()
    return [s.output_ids for s in seqs]


def reference(model, prompt, n) -> list[int]:
    """Greedy decoding by recomputing the whole sequence every step, no cache at all."""
    ids = list(prompt)
    with torch.no_grad():
        for _ in range(n):
            x = torch.tensor([ids], device=DEVICE)
            logits = model(x, torch.arange(len(ids), device=DEVICE)[None])[0, -1]
            ids.append(int(logits.argmax()))
    return ids[len(prompt):]


def prompts(k=6, seed=0):
    rng = random.Random(seed)
    return [[rng.randrange(256) for _ in range(rng.randrange(3, 60))] for _ in range(k)]


def test_paged_decoding_equals_full_recompute(model, tokenizer):
    ps = prompts(3)
    eng = engine(model, tokenizer)
    assert eng.runner.cache.native == (DEVICE == "cpu")  # a fused model's attention goes through the C kernel
    assert (eng.runner.graphs is not None) == (DEVICE == "cuda")  # decode steps replay CUDA graphs
    assert run(eng, ps) == [reference(model, p, 12) for p in ps]


@pytest.mark.skipif(DEVICE != "cpu", reason="zenlm's C attention kernel runs on the CPU only")
def test_native_attention_equals_torch_attention(model, tokenizer):
    """The C kernel's attention (rope, paged cache write, attention) against torch's on the same steps;
    every attention call of the native engine must really have gone through the kernel."""
    ps = prompts(4, seed=5)
    native, plain = engine(model, tokenizer), engine(model, tokenizer)
    plain.runner.cache.native = False
    got, ran = ([], []), ([], [])  # per engine: the logits of each step; per attend call: did the kernel run
    for eng, logits, kernel in zip((native, plain), got, ran):
        run_step, attend = eng.runner.run, eng.runner.cache.attend
        eng.runner.run = lambda batch, run_step=run_step, logits=logits: logits.append(run_step(batch)) or logits[-1]
        eng.runner.cache.attend = lambda *a, attend=attend, kernel=kernel: kernel.append(attend(*a)) or kernel[-1]
        run(eng, ps)
    assert len(got[0]) == len(got[1]) > 10
    assert len(ran[0]) >= len(got[0]) * TINY.num_layers and all(out is not None for out in ran[0])
    assert ran[1] and all(out is None for out in ran[1])  # the plain engine took torch's path every time
    for a, b in zip(*got):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-4)


def test_batched_equals_alone_with_chunked_prefill(model, tokenizer):
    ps = prompts(8, seed=1)
    alone = [run(engine(model, tokenizer), [p])[0] for p in ps]
    eng = engine(model, tokenizer, max_num_batched_tokens=16, max_num_seqs=8)  # forces chunked prefill
    assert run(eng, ps) == alone


def test_a_prompt_longer_than_the_step_budget_is_prefilled_in_chunks(model, tokenizer):
    p = prompts(1, seed=7)[0] * 3  # steps that sample nothing: only a partial prefill chunk
    assert run(engine(model, tokenizer, max_num_batched_tokens=16), [p]) == run(engine(model, tokenizer), [p])


def test_prefix_cache_hit_gives_the_same_output(model, tokenizer):
    eng = engine(model, tokenizer, block_size=4)
    system = list(range(40, 80))
    cold = run(eng, [system + [1, 2, 3]])[0]
    seq = eng.add(system + [1, 2, 3], GREEDY)
    eng.step()
    assert seq.num_cached_tokens == 40  # ten full blocks of the shared prefix were reused
    while eng.has_work:
        eng.step()
    assert seq.output_ids == cold
    assert eng.blocks.stats.hit_tokens >= 40


def test_preemption_and_resume_give_the_same_output(model, tokenizer):
    ps = prompts(6, seed=2)
    alone = [run(engine(model, tokenizer), [p])[0] for p in ps]
    eng = engine(model, tokenizer, block_size=4, kv_cache_tokens=96, max_num_seqs=6)
    assert run(eng, ps) == alone
    assert eng.scheduler.num_preemptions > 0


def test_abort_frees_every_block(model, tokenizer):
    eng = engine(model, tokenizer, block_size=4)
    total = eng.blocks.num_free_blocks
    seqs = [eng.add(p, SamplingParams(max_tokens=50, temperature=0)) for p in prompts(4)]
    eng.step()
    eng.step()
    assert eng.blocks.num_free_blocks < total
    for s in seqs:
        eng.abort(s)
    assert eng.blocks.num_free_blocks == total and not eng.has_work
    assert {s.finish_reason for s in seqs} == {"abort"}


def test_seeded_sampling_is_reproducible_in_any_batch(model, tokenizer):
    p = SamplingParams(max_tokens=10, temperature=1.0, seed=3, ignore_eos=True)
    alone = run(engine(model, tokenizer), [[5, 6, 7]], p)[0]
    mixed = run(engine(model, tokenizer), [[9, 9], [5, 6, 7], [1]], p)
    assert mixed[1] == alone


def test_bad_requests(model, tokenizer):
    eng = engine(model, tokenizer)
    with pytest.raises(ValueError, match="the prompt is empty"):
        eng.add([], GREEDY)
    with pytest.raises(ValueError, match="the prompt is 300 tokens; the model's context is 256 tokens"):
        eng.add([1] * 300, GREEDY)
    seq = eng.add([1] * 250, SamplingParams(max_tokens=100, temperature=0))
    assert seq.params.max_tokens == 6  # clipped to the context


def test_async_llm_streams_concurrent_requests(model, tokenizer):
    from zenlm.engine.llm import AsyncLLM

    llm = AsyncLLM.__new__(AsyncLLM)  # the facade over an engine, without loading a file
    llm.tokenizer, llm.engine = tokenizer, engine(model, tokenizer)
    AsyncLLM._start(llm)
    ps = prompts(5, seed=4)
    alone = [run(engine(model, tokenizer), [p])[0] for p in ps]

    async def main():
        outs = await asyncio.gather(*(llm.complete_ids(p, GREEDY) for p in ps))
        # a consumer that stops early aborts its request and frees its blocks
        stream = llm.stream_ids(ps[0], SamplingParams(max_tokens=200, temperature=0, ignore_eos=True))
        async for _ in stream:
            break
        await stream.aclose()
        return outs

    outs = asyncio.run(main())
    llm.close()
    assert [o.token_ids for o in outs] == alone
    assert llm.engine.blocks.num_free_blocks == llm.engine.blocks.num_blocks


def test_async_llm_ends_every_request_when_a_step_fails(model, tokenizer):
    from zenlm.engine.llm import AsyncLLM

    llm = AsyncLLM.__new__(AsyncLLM)
    llm.tokenizer, llm.engine = tokenizer, engine(model, tokenizer)
    AsyncLLM._start(llm)
    llm.engine.runner.run = lambda batch: (_ for _ in ()).throw(RuntimeError("boom"))
    out = asyncio.run(llm.complete_ids([1, 2, 3], GREEDY))
    llm.close()
    assert out.finish_reason == "error: boom" and not llm.engine.has_work
