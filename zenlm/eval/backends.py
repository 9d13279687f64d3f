"""Who answers the samples: the in-process engine (every request at once, continuous batching does the
work) or any OpenAI-compatible server (--base-url; a few concurrent requests through a thread pool).

Both decode greedily (temperature 0, no repetition penalty) with the sample's stop strings and the
sample's tools (a server's tool_calls come back as Hermes `<tool_call>` text, as the engine writes
them) and yield (sample, output text) as each answer finishes, in finishing order. Scoring and
bookkeeping are the runner's.
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

from zenlm.eval.task import Mode, Sample
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


class EngineBackend:
    """zenlm's own engine in this process: all requests queued at once, stepped until done."""

    def __init__(self, model: str = "default", dtype: str = "int4", device: str = "cpu", progress: bool = False,
                 max_num_seqs: int = 16):
        from zenlm.engine.engine import EngineConfig
        from zenlm.engine.llm import LLM

        if max_num_seqs < 1:
            raise ValueError(f"--max-num-seqs must be at least 1, got {max_num_seqs}")
        self.llm = LLM(model, dtype=dtype, device=device, progress=progress,
                       engine=EngineConfig(max_num_seqs=max_num_seqs))
        self.model, self.dtype = model if model != "default" else self.llm.path.name, dtype

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

    def _first_model(self) -> str:
        models = self._request("/models").get("data") or []
        if not models:
            raise ValueError(f"{self.base}/models lists no model; give --model")
        return models[0]["id"]

    def _one(self, sample: Sample, max_tokens: int) -> str:
        body = {"model": self.model, "max_tokens": max_tokens, "temperature": 0, "repetition_penalty": 1.0}
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
