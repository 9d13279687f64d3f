"""Engine: requests in, tokens out. One step = schedule -> run -> sample + postprocess.

Owns the scheduler (what runs), the runner (the model over paged KV blocks) and the sampler.
It knows nothing of threads or HTTP: LLM drives it synchronously, AsyncLLM from a background loop.
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass

import torch

from zenlm.engine.kv_cache import BlockManager
from zenlm.engine.runner import Runner
from zenlm.engine.sampling import SamplingParams, logprobs, make_generator, sample, top_logprobs
from zenlm.engine.scheduler import Scheduler
from zenlm.engine.sequence import Sequence
from zenlm.model import Transformer


@dataclass(slots=True)
class EngineConfig:
    block_size: int = 16
    kv_cache_tokens: int | None = None  # None: the model's context length
    kv_dtype: torch.dtype | None = None  # None: the activation dtype
    max_num_seqs: int = 16
    max_num_batched_tokens: int = 512  # the per-step token budget (chunked prefill fills what decodes leave)


@dataclass(slots=True)
class StepOutput:
    seq: Sequence
    text: str  # newly streamable text
    finished: bool  # whether this step finished the sequence (a snapshot: seq changes under other threads)


class Engine:
    def __init__(self, model: Transformer, tokenizer, generation_config: dict, dtype: torch.dtype,
                 device: torch.device | str, config: EngineConfig | None = None):
        ec = config or EngineConfig()
        self.model, self.tokenizer, self.generation_config = model, tokenizer, generation_config
        self.device, self.context_length = torch.device(device), model.config.context_length
        tokens = ec.kv_cache_tokens or self.context_length
        num_blocks = -(-tokens // ec.block_size)
        self.blocks = BlockManager(num_blocks, ec.block_size)
        self.scheduler = Scheduler(self.blocks, ec.max_num_seqs, max(ec.max_num_batched_tokens, ec.max_num_seqs))
        self.runner = Runner(model, num_blocks, ec.block_size, ec.kv_dtype or dtype, device)
        self.eos = set(tokenizer.eos_token_ids)
        self._ids = itertools.count()

    def add(self, prompt_ids: list[int], params: SamplingParams | None = None) -> Sequence:
        """Queue a request; raises ValueError for an empty or too-long prompt or bad params."""
        if not prompt_ids:
            raise ValueError("the prompt is empty")
        p = (params or SamplingParams()).validate().resolved(self.generation_config).validate()
        n, ctx = len(prompt_ids), self.context_length
        if n >= ctx:
            raise ValueError(f"the prompt is {n} tokens; the model's context is {ctx} tokens")
        if n + p.max_tokens > ctx:  # never run past the context: shorten max_tokens to what fits
            p.max_tokens = ctx - n
        seq = Sequence(list(prompt_ids), p, self.eos, self.tokenizer.stream(), seq_id=next(self._ids),
                       generator=make_generator(p.seed, self.device))
        self.scheduler.add(seq)
        return seq

    def abort(self, seq: Sequence) -> None:
        if self.scheduler.abort(seq.seq_id) is not None and seq.finish_reason is None:
            seq.finish_reason = "abort"

    @property
    def has_work(self) -> bool:
        return self.scheduler.has_work

    def step(self) -> list[StepOutput]:
        batch = self.scheduler.schedule()
        logits = self.runner.run(batch)  # [n, V] for batch.sampled
        rows = [e.seq for e in batch.sampled]
        ks = [s.params.logprobs for s in rows]
        lp = logprobs(logits) if any(k is not None for k in ks) else None  # [n, V] of the raw model
        tokens = sample(logits, [s.params for s in rows], [s.all_ids for s in rows],
                        [len(s.prompt_ids) for s in rows], [s.generator for s in rows])
        if lp is not None:
            for s, entry in zip(rows, top_logprobs(lp, tokens, ks)):
                s.next_logprob = entry
        tokens = tokens.tolist()
        return [StepOutput(seq, text, seq.finished) for seq, text in self.scheduler.postprocess(batch, tokens)]
