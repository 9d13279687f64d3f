"""Engine: requests in, tokens out. One step = schedule -> run -> sample + postprocess.

Owns the scheduler (what runs), the runner (the model over paged KV blocks) and the sampler.
It knows nothing of threads or HTTP: LLM drives it synchronously, AsyncLLM from a background loop.
A failing step ends the requests it ran with an "error: ..." finish reason (logged with its
traceback); a failing logits processor ends only its own request. The engine goes on either way.
"""

from __future__ import annotations

import functools
import itertools
import logging
import operator
from dataclasses import dataclass

import torch

from zenlm.engine.kv_cache import BlockManager
from zenlm.engine.runner import Runner
from zenlm.engine.sampling import SamplingParams, logprobs, make_generator, sample, top_logprobs
from zenlm.engine.scheduler import Scheduler
from zenlm.engine.sequence import Sequence
from zenlm.engine.speculative.speculator import Speculator
from zenlm.model import Transformer, ntk_alpha
from zenlm.tokenizer import Tokenizer

log = logging.getLogger("zenlm.engine")


@dataclass(slots=True)
class EngineConfig:
    block_size: int = 16
    kv_cache_tokens: int | None = None  # None: the model's context length
    kv_dtype: torch.dtype | None = None  # None: the activation dtype
    max_num_seqs: int = 16
    max_num_batched_tokens: int = 512  # the per-step token budget (chunked prefill fills what decodes leave)
    max_waiting: int = 256  # requests queued beyond those running; AsyncLLM refuses more (Overloaded)
    cuda_graphs: bool = True  # decode steps on CUDA replay captured graphs (cuda_graphs.py)


@dataclass(slots=True)
class StepOutput:
    seq: Sequence
    text: str  # newly streamable text
    finished: bool  # whether this step finished the sequence (a snapshot: seq changes under other threads)


class Engine:
    def __init__(self, model: Transformer, tokenizer: Tokenizer, generation_config: dict, dtype: torch.dtype,
                 device: torch.device | str, config: EngineConfig | None = None):
        ec = config or EngineConfig()
        self.model, self.tokenizer, self.generation_config = model, tokenizer, generation_config
        self.device, self.context_length = torch.device(device), model.config.context_length
        tokens = ec.kv_cache_tokens or self.context_length
        num_blocks = -(-tokens // ec.block_size)
        self.blocks = BlockManager(num_blocks, ec.block_size)
        c = model.config
        epoch = functools.partial(ntk_alpha, c.seq_length) if c.use_dynamic_ntk else None  # v1's rope epochs
        self.scheduler = Scheduler(self.blocks, ec.max_num_seqs, max(ec.max_num_batched_tokens, ec.max_num_seqs),
                                   rope_epoch=epoch)
        self.runner = Runner(model, num_blocks, ec.block_size, ec.kv_dtype or dtype, device, ec.cuda_graphs)
        self.eos = set(tokenizer.eos_token_ids)
        self.max_waiting = ec.max_waiting
        self.speculator: Speculator | None = None  # speculative decoding (LLM sets it), off by default
        self._ids = itertools.count()

    def add(self, prompt_ids: list[int], params: SamplingParams | None = None) -> Sequence:
        """Queue a request; raises ValueError for an empty or too-long prompt, bad token ids or bad params."""
        seq = self.make(prompt_ids, params)
        self.submit(seq)
        return seq

    def make(self, prompt_ids: list[int], params: SamplingParams | None = None) -> Sequence:
        """A validated Sequence, not yet queued (no engine state is touched: any thread may call it)."""
        if not prompt_ids:
            raise ValueError("the prompt is empty")
        try:
            prompt_ids = [operator.index(t) for t in prompt_ids]
        except TypeError:
            raise ValueError("token ids must be integers") from None
        vocab = self.model.config.vocab_size
        if not 0 <= min(prompt_ids) <= max(prompt_ids) < vocab:
            bad = next(t for t in prompt_ids if not 0 <= t < vocab)
            raise ValueError(f"token id {bad} is outside the vocabulary (0..{vocab - 1})")
        p = (params or SamplingParams()).validate().resolved(self.generation_config).validate()
        if p.speculative and self.speculator is None:
            raise ValueError("speculative decoding is not enabled on this engine (start it with --speculative)")
        n, ctx = len(prompt_ids), self.context_length
        if n >= ctx:
            raise ValueError(f"the prompt is {n} tokens; the model's context is {ctx} tokens")
        if n + p.max_tokens > ctx:  # never run past the context: shorten max_tokens to what fits
            p.max_tokens = ctx - n
        return Sequence(prompt_ids, p, self.eos, self.tokenizer.stream(), seq_id=next(self._ids),
                        generator=make_generator(p.seed, self.device))

    def submit(self, seq: Sequence) -> None:
        self.scheduler.add(seq)

    def abort(self, seq: Sequence) -> None:
        if self.scheduler.abort(seq.seq_id) is not None and seq.finish_reason is None:
            seq.finish_reason = "abort"

    @property
    def has_work(self) -> bool:
        return self.scheduler.has_work

    def fail(self, seq: Sequence, error: BaseException) -> StepOutput:
        """End one request with an error (logged with its traceback) and free its blocks."""
        log.error("request %d failed", seq.seq_id, exc_info=error)
        self.scheduler.abort(seq.seq_id)
        seq.finish_reason = f"error: {error}"
        return StepOutput(seq, "", True)

    def step(self) -> list[StepOutput]:
        batch = self.scheduler.schedule()
        if self.speculator is not None:
            self.speculator.propose(batch, self.blocks, self.scheduler.max_num_batched_tokens)
        try:
            logits = self.runner.run(batch)  # [n, V] for batch.sampled (k + 1 rows for an entry with k drafts)
            rows = [e.seq for e in batch.sampled]
            drafted: dict[int, list[int]] = {}  # seq_id -> the verified tokens of a speculative entry
            if len(logits) > len(rows):
                logits, drafted = self.speculator.verify(batch.sampled, logits)  # the plain rows' logits
                rows = [s for s in rows if s.seq_id not in drafted]
            ks = [s.params.logprobs for s in rows]
            lp = logprobs(logits) if any(k is not None for k in ks) else None  # [n, V] of the raw model
            failed: dict[int, Exception] = {}
            tokens = torch.empty(0, dtype=torch.long)
            if rows:
                tokens = sample(logits, [s.params for s in rows], [s.all_ids for s in rows],
                                [len(s.prompt_ids) for s in rows], [s.generator for s in rows], failed)
            if lp is not None:
                for s, entry in zip(rows, top_logprobs(lp, tokens, ks)):
                    s.next_logprob = entry
        except Exception as e:  # the model or sampler failed: every request of this batch ends with it
            return [self.fail(entry.seq, e) for entry in batch.seqs if not entry.seq.finished]
        outs = [self.fail(rows[i], e) for i, e in failed.items()]  # postprocess skips these
        done = self.scheduler.postprocess(batch, dict(zip((s.seq_id for s in rows), tokens.tolist())) | drafted)
        return outs + [StepOutput(seq, text, seq.finished) for seq, text in done]
