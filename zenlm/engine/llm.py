"""LLM: the synchronous Python facade: load a model, generate, chat, stream.

    llm = LLM("default")
    llm.generate(["def fib(n):"], SamplingParams(max_tokens=32, temperature=0))
    for piece in llm.stream_chat([{"role": "user", "content": "hi"}]): print(piece, end="")

Requests run one after another through a contiguous KV cache: prefill, then decode token by token.
Continuous batching and paged KV blocks are the scheduler's job (engine/scheduler.py, later).
"""

from __future__ import annotations

from collections.abc import Iterator

import torch

from zenlm.engine.sampling import SamplingParams, make_generator, sample
from zenlm.engine.sequence import Completion, Sequence
from zenlm.model import KVCache

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


class LLM:
    def __init__(self, model: str = "default", dtype: str = "float32", device: str = "cpu", progress: bool = True):
        from zenlm.weights.load import load  # the one place in the engine that loads weights

        if dtype not in DTYPES:
            raise ValueError(f"unknown dtype {dtype!r}; choose one of {', '.join(DTYPES)}")
        loaded = load(model, dtype=DTYPES[dtype], device=device, progress=progress)
        self.config, self.model, self.tokenizer = loaded.config, loaded.model, loaded.tokenizer
        self.generation_config, self.path = loaded.generation_config, loaded.path
        self.device, self.dtype = torch.device(device), DTYPES[dtype]

    # ---- public API ------------------------------------------------------------------------------
    def generate(self, prompts: str | list[str] | list[list[int]],
                 params: SamplingParams | None = None) -> list[Completion]:
        """Complete each prompt (text, or token ids) as it is, without a chat template."""
        if isinstance(prompts, str) or (prompts and isinstance(prompts[0], int)):
            prompts = [prompts]
        return [self._complete(self._ids(p), params) for p in prompts]

    def chat(self, messages: list[dict], params: SamplingParams | None = None,
             tools: list[dict] | None = None) -> Completion:
        """Answer a conversation (OpenAI-style messages) through the model's chat template."""
        return self._complete(self.chat_ids(messages, tools), params)

    def stream(self, prompt: str | list[int], params: SamplingParams | None = None) -> Iterator[str]:
        """Yield text pieces as they are generated (raw prompt, no chat template)."""
        seq = self._sequence(self._ids(prompt), params)
        yield from self._run(seq)

    def stream_chat(self, messages: list[dict], params: SamplingParams | None = None,
                    tools: list[dict] | None = None) -> Iterator[str]:
        seq = self._sequence(self.chat_ids(messages, tools), params)
        yield from self._run(seq)

    def chat_ids(self, messages: list[dict], tools: list[dict] | None = None) -> list[int]:
        return self.tokenizer.encode(self.tokenizer.apply_chat(messages, tools=tools, add_generation_prompt=True))

    # ---- internals -------------------------------------------------------------------------------
    def _ids(self, prompt: str | list[int]) -> list[int]:
        ids = self.tokenizer.encode(prompt) if isinstance(prompt, str) else list(prompt)
        if not ids:
            raise ValueError("the prompt is empty")
        return ids

    def _sequence(self, ids: list[int], params: SamplingParams | None) -> Sequence:
        p = (params or SamplingParams()).validate().resolved(self.generation_config).validate()
        ctx = self.config.context_length
        if len(ids) >= ctx:
            raise ValueError(f"the prompt is {len(ids)} tokens; the model's context is {ctx} tokens")
        eos = set(self.tokenizer.eos_token_ids)
        return Sequence(ids, p, eos, self.tokenizer.stream())

    def _complete(self, ids: list[int], params: SamplingParams | None) -> Completion:
        seq = self._sequence(ids, params)
        for _ in self._run(seq):
            pass
        return seq.result()

    @torch.inference_mode()
    def _run(self, seq: Sequence) -> Iterator[str]:
        """Prefill the prompt, then decode until the sequence finishes; yields streamable text."""
        n = len(seq.prompt_ids)
        max_len = min(self.config.context_length, n + seq.params.max_tokens)
        cache = KVCache(self.config, 1, max_len, self.dtype, self.device)
        gen = make_generator(seq.params.seed, self.device)
        tokens = torch.tensor([seq.prompt_ids], device=self.device)
        positions = torch.arange(n, device=self.device)[None]
        while True:
            logits = self.model(tokens, positions, cache, last_only=True)[:, -1].float()  # [1, V]
            token = int(sample(logits, [seq.params], [seq.all_ids], [n], [gen])[0])
            piece = seq.append(token)
            if piece:
                yield piece
            pos = n + len(seq.output_ids)
            if not seq.finished and pos >= max_len:
                if tail := seq.finish("length"):
                    yield tail
            if seq.finished:
                return
            tokens = torch.tensor([[token]], device=self.device)
            positions = torch.tensor([[pos - 1]], device=self.device)
