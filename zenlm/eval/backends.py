"""Who answers the samples: the in-process engine (every request at once, continuous batching does the
work) or any OpenAI-compatible server (--base-url; a few concurrent requests through a thread pool).

Both decode greedily (temperature 0, no repetition penalty) with the sample's stop strings and the
sample's tools (a server's tool_calls come back as Hermes `<tool_call>` text, as the engine writes
them) and yield (sample, output text) as each answer finishes, in finishing order. For log-likelihood
tasks both yield each continuation's log-probability after the prompt, split as lm-eval splits it
(loglik.py): the engine scores the tokens itself; a server echoes the whole text with its tokens'
logprobs and text offsets. Scoring and bookkeeping are the runner's.
"""

from __future__ import annotations

import json
import logging
import urllib.error
import urllib.request
from collections.abc import Iterator
from concurrent.futures import FIRST_COMPLETED, ThreadPoolExecutor, wait
from pathlib import Path
from typing import Protocol

from zenlm.eval.loglik import move_trailing_space, score
from zenlm.eval.task import Mode, Sample
from zenlm.eval.tokens import TokenCounter, default_counter, tokenizer_counter
from zenlm.tokenizer.tool_calls import hermes

log = logging.getLogger("zenlm.eval")


class Backend(Protocol):
    model: str  # what results.json names as the model
    dtype: str  # the precision ("int4", ...; "server" for a URL)

    def default_mode(self) -> Mode:
        """chat for an instruct/chat release with a chat template, else completion."""
        ...

    def answers(self, samples: list[Sample], max_tokens: int) -> Iterator[tuple[Sample, str]]:
        """Each sample's output text, as it finishes."""
        ...

    def loglikelihoods(self, samples: list[Sample]) -> Iterator[tuple[Sample, list[float]]]:
        """Each sample's log-probability of each of its continuations after its prompt (loglikelihood tasks)."""
        ...

    # For tasks sized in tokens (needle): context_length (the model's, None when unknown) and
    # token_counter() -> TokenCounter (zenlm/eval/tokens.py).


class EngineBackend:
    """zenlm's own engine in this process: all requests queued at once, stepped until done."""

    def __init__(self, model: str = "default", dtype: str = "auto", device: str = "cpu", progress: bool = False,
                 max_num_seqs: int = 16):
        from zenlm.engine.engine import EngineConfig
        from zenlm.engine.llm import LLM

        if max_num_seqs < 1:
            raise ValueError(f"--max-num-seqs must be at least 1, got {max_num_seqs}")
        self.llm = LLM(model, dtype=dtype, device=device, progress=progress,
                       engine=EngineConfig(max_num_seqs=max_num_seqs))
        self.model, self.dtype = model if model != "default" else self.llm.path.name, dtype
        self.max_num_seqs = max_num_seqs

    @property
    def context_length(self) -> int:
        return self.llm.config.context_length

    def token_counter(self) -> TokenCounter:
        return tokenizer_counter(self.llm.tokenizer, self.model)

    def default_mode(self) -> Mode:
        return "chat" if self.llm.tokenizer.chat_template and is_instruct(self.llm.path, self.llm.generation_config) \
            else "completion"

    def answers(self, samples: list[Sample], max_tokens: int) -> Iterator[tuple[Sample, str]]:
        from zenlm.engine.sampling import SamplingParams

        llm, engine, pending = self.llm, self.llm.engine, {}
        try:
            for s in samples:
                ids = llm.chat_ids(s.prompt, s.tools) if isinstance(s.prompt, list) else llm.tokenizer.encode(s.prompt)
                params = SamplingParams(max_tokens=max_tokens, temperature=0.0, repetition_penalty=1.0, stop=s.stop)
                seq = engine.add(ids, params)
                pending[seq.seq_id] = (seq, s)
            while engine.has_work:
                for out in engine.step():
                    if out.finished and out.seq.seq_id in pending:
                        seq, s = pending.pop(out.seq.seq_id)
                        if (seq.finish_reason or "").startswith("error"):
                            raise RuntimeError(f"generation failed for {s.id} ({seq.finish_reason})")
                        yield s, seq.text
            for seq, s in list(pending.values()):  # finished without a step output (none expected)
                assert seq.finished, f"request {s.id} left unfinished with no work queued"
                pending.pop(seq.seq_id)
                yield s, seq.text
        finally:
            for seq, _ in pending.values():
                engine.abort(seq)  # an interrupted run frees its blocks

    def tir_answers(self, samples: list[Sample], max_tokens: int) -> Iterator[tuple[Sample, str]]:
        """Each problem through the TIR loop (zenlm/eval/tir.py), max_tokens over all its rounds; as many
        problems in flight as the engine decodes sequences together."""
        from zenlm.eval.tir import tir_answers

        yield from tir_answers(self.llm, samples, max_tokens, window=self.max_num_seqs)

    def loglikelihoods(self, samples: list[Sample]) -> Iterator[tuple[Sample, list[float]]]:
        for s in samples:
            context = _text_prompt(s)
            yield s, [score(self.llm, context, c)[0] for c in s.continuations]


def _text_prompt(sample: Sample) -> str:
    """A log-likelihood sample's prompt, which must be raw text with continuations to score after it."""
    if not isinstance(sample.prompt, str) or not sample.continuations:
        raise ValueError(f"{sample.id}: a log-likelihood sample needs a text prompt and continuations")
    return sample.prompt


def is_instruct(path: Path, generation_config: dict) -> bool:
    """Whether a checkpoint is a chat release: a GGUF's general.finetune ("Instruct"/"Chat"), an HF
    directory's generation_config (chat releases sample; base ones set do_sample false or nothing)."""
    from zenlm.weights.defaults import CHAT_FINETUNES

    if path.is_file() and path.suffix == ".gguf":
        from zenlm.weights.gguf_reader import read_gguf

        meta = read_gguf(path)[0]
        return str(meta.get("general.finetune", "")).lower().startswith(CHAT_FINETUNES)
    return bool(generation_config.get("do_sample"))


def chat_text(message: dict) -> str:
    """A chat reply as the model wrote it: the content, then its tool_calls as the Hermes `<tool_call>` blocks
    the chat template asks for, so a task reads a server's calls as it reads the engine's text."""
    content = message.get("content") or ""
    calls = [(c["function"]["name"], c["function"].get("arguments") or "{}") for c in message.get("tool_calls") or []]
    if not calls:
        return content
    return content + ("" if not content or content.endswith("\n") else "\n") + hermes(calls)


class OpenAIBackend:
    """Any OpenAI-compatible server: /v1/chat/completions (chat mode) or /v1/completions (completion mode)."""

    def __init__(self, base_url: str, model: str | None = None, api_key: str | None = None, concurrency: int = 4,
                 timeout: float = 600.0):
        if not base_url.startswith(("http://", "https://")):
            raise ValueError(f"--base-url must start with http:// or https://, got {base_url!r}")
        if concurrency < 1:
            raise ValueError(f"--concurrency must be at least 1, got {concurrency}")
        self.base = base_url.rstrip("/")
        if not self.base.endswith("/v1"):
            self.base += "/v1"
        self.api_key, self.concurrency, self.timeout, self.dtype = api_key, concurrency, timeout, "server"
        self._cards: list[dict] | None = None
        self.model = model if model and model != "default" else self._first_model()

    def default_mode(self) -> Mode:
        return "chat"  # a server's model is most often a chat release; --mode completion says otherwise

    def _request(self, route: str, body: dict | None = None) -> dict:
        headers = {"Content-Type": "application/json"}
        if self.api_key:
            headers["Authorization"] = f"Bearer {self.api_key}"
        data = json.dumps(body).encode() if body is not None else None
        req = urllib.request.Request(self.base + route, data=data, headers=headers)
        try:
            with urllib.request.urlopen(req, timeout=self.timeout) as r:
                return json.loads(r.read())
        except urllib.error.HTTPError as e:
            raise OSError(f"{self.base}{route} answered {e.code}: {e.read()[:300]!r}") from None
        except urllib.error.URLError as e:
            raise OSError(f"cannot reach {self.base}{route}: {e.reason}") from None

    def _models(self) -> list[dict]:
        """What /v1/models lists (asked once)."""
        if self._cards is None:
            self._cards = self._request("/models").get("data") or []
        return self._cards

    def _first_model(self) -> str:
        models = self._models()
        if not models:
            raise ValueError(f"{self.base}/models lists no model; give --model")
        return models[0]["id"]

    @property
    def context_length(self) -> int | None:
        """The served model's context as /v1/models says it (max_model_len: zen serve, vLLM), else None."""
        try:
            models = self._models()
        except OSError:
            return None
        card = next((m for m in models if m.get("id") == self.model), {})
        length = card.get("max_model_len")
        return length if isinstance(length, int) and length > 0 else None

    def token_counter(self) -> TokenCounter:
        """The default model's tokenizer (Qwen2/2.5's, shared by the family) when installed, else an
        approximation: the server's own tokenizer is not asked."""
        return default_counter()

    def _one(self, sample: Sample, max_tokens: int) -> str:
        # Greedy with no repetition penalty under both names: vLLM's and zen serve's, and llama.cpp's (whose
        # Python server penalizes repeats by 1.1 unless told otherwise).
        body = {"model": self.model, "max_tokens": max_tokens, "temperature": 0, "repetition_penalty": 1.0,
                "repeat_penalty": 1.0}
        if sample.stop:
            body["stop"] = sample.stop[:4]  # OpenAI allows four
        if isinstance(sample.prompt, list):
            tools = {"tools": sample.tools} if sample.tools else {}
            r = self._request("/chat/completions", body | {"messages": sample.prompt} | tools)
            return chat_text(r["choices"][0]["message"])
        r = self._request("/completions", body | {"prompt": sample.prompt})
        return r["choices"][0].get("text") or ""

    def answers(self, samples: list[Sample], max_tokens: int) -> Iterator[tuple[Sample, str]]:
        queue = iter(samples)
        with ThreadPoolExecutor(self.concurrency, thread_name_prefix="zen-eval-http") as pool:
            running = {}
            for s in queue:  # keep `concurrency` requests in flight, no more
                running[pool.submit(self._one, s, max_tokens)] = s
                if len(running) >= self.concurrency:
                    break
            try:
                while running:
                    done, _ = wait(running, return_when=FIRST_COMPLETED)
                    for f in done:
                        s = running.pop(f)
                        text = f.result()
                        nxt = next(queue, None)
                        if nxt is not None:
                            running[pool.submit(self._one, nxt, max_tokens)] = nxt
                        yield s, text
            finally:
                for f in running:
                    f.cancel()

    def loglikelihoods(self, samples: list[Sample]) -> Iterator[tuple[Sample, list[float]]]:
        pool = ThreadPoolExecutor(self.concurrency, thread_name_prefix="zen-eval-http")
        try:
            yield from zip(samples, pool.map(self._scored, samples))
        finally:
            pool.shutdown(cancel_futures=True)  # an interrupted run asks nothing more

    def _scored(self, sample: Sample) -> list[float]:
        """All of a sample's continuations in one request: each whole text echoed with its tokens'
        logprobs (max_tokens 1, logprobs 1, as lm-eval's local-completions asks); a continuation's
        log-likelihood sums the tokens whose text_offset lies in it, the one generated token left out."""
        pairs = [move_trailing_space(_text_prompt(sample), c) for c in sample.continuations]
        wholes = [context + cont for context, cont in pairs]
        body = {"model": self.model, "prompt": wholes, "max_tokens": 1, "temperature": 0, "echo": True, "logprobs": 1}
        choices = sorted(self._request("/completions", body)["choices"], key=lambda c: c["index"])
        if len(choices) != len(wholes):
            raise OSError(f"{self.base}/completions gave {len(choices)} choices for {len(wholes)} prompts")
        return [_span_logprob(c, whole, len(context), sample.id)
                for c, (context, _), whole in zip(choices, pairs, wholes)]


def _span_logprob(choice: dict, whole: str, start: int, sample_id: str) -> float:
    """The summed logprobs of an echoed choice's tokens whose text_offset lies in whole[start:]."""
    text, lp = choice.get("text") or "", choice.get("logprobs") or {}
    if not text.startswith(whole):
        raise OSError(f"{sample_id}: the server's echo is not the text it was sent (echo unsupported, or a "
                      "tokenizer that normalizes the text?)")
    end = len(whole)
    picked = [x for o, x in zip(lp.get("text_offset") or [], lp.get("token_logprobs") or []) if start <= o < end]
    if not picked or any(x is None for x in picked):
        raise OSError(f"{sample_id}: the server gave no logprobs for the continuation's tokens")
    return float(sum(picked))
