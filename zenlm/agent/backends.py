"""Who writes the agent's turns: the in-process engine (an LLM) or any OpenAI-compatible server (a URL).

Both take the format's messages (a last assistant message is continued, not answered), the tool
schemas for formats that pass tools natively, stop strings and a token cap, and yield Pieces of text
as they are generated; the last Piece carries the turn's generated-token count and finish reason.
The engine continues a message by rendering the chat template up to the generation prompt and
appending the text. A chat API cannot, so the client appends it to the user message before it,
after a blank line (Qwen-Agent's way of simulating a text completion over chat). A server's
tool_calls come back as Hermes `<tool_call>` text, which the hermes format reads. A server's own AsyncLLM
(zen serve's code interpreter) is driven from the agent's worker thread through a private event loop, so the
turns join the server's other requests in the one engine loop.
"""

from __future__ import annotations

import asyncio
import json
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from typing import TYPE_CHECKING, Protocol

from zenlm.tokenizer.tool_calls import hermes

if TYPE_CHECKING:
    from zenlm.engine.llm import LLM


@dataclass(slots=True)
class Piece:
    text: str
    tokens: int = 0  # generated tokens, reported once, on the last piece
    finish_reason: str | None = None  # "stop" | "length" | "tool_calls", on the last piece


class Backend(Protocol):
    def generate(self, messages: list[dict], tools: list[dict] | None, stop: list[str], max_tokens: int,
                 temperature: float) -> Iterator[Piece]:
        ...

    def close(self) -> None:
        ...


class EngineBackend:
    """zenlm's engine in this process (one turn at a time, streamed step by step)."""

    def __init__(self, llm: LLM):
        self.llm = llm

    def prompt_text(self, messages: list[dict], tools: list[dict] | None) -> str:
        tok = self.llm.tokenizer
        if messages[-1]["role"] == "assistant":
            return tok.apply_chat(messages[:-1], tools=tools, add_generation_prompt=True) + messages[-1]["content"]
        return tok.apply_chat(messages, tools=tools, add_generation_prompt=True)

    def generate(self, messages: list[dict], tools: list[dict] | None, stop: list[str], max_tokens: int,
                 temperature: float) -> Iterator[Piece]:
        from zenlm.engine.sampling import SamplingParams

        ids = self.llm.tokenizer.encode(self.prompt_text(messages, tools))
        engine = self.llm.engine
        seq = engine.add(ids, SamplingParams(max_tokens=max_tokens, temperature=temperature, stop=list(stop)))
        try:
            while not seq.finished:
                for out in engine.step():
                    if out.seq is seq and out.text:
                        yield Piece(out.text)
        finally:
            engine.abort(seq)  # no-op once finished; frees the blocks of an abandoned turn
        if seq.finish_reason.startswith("error"):
            raise RuntimeError(f"generation failed ({seq.finish_reason}); the traceback is in the zenlm.engine log")
        yield Piece("", len(seq.output_ids), seq.finish_reason)

    def close(self) -> None:
        pass


class AsyncEngineBackend(EngineBackend):
    """An AsyncLLM whose engine thread is already running (zen serve's): turns are submitted to it, never
    stepped here. generate() blocks its caller: call it from a worker thread, not from a coroutine."""

    def generate(self, messages: list[dict], tools: list[dict] | None, stop: list[str], max_tokens: int,
                 temperature: float) -> Iterator[Piece]:
        from zenlm.engine.sampling import SamplingParams

        ids = self.llm.tokenizer.encode(self.prompt_text(messages, tools))
        params = SamplingParams(max_tokens=max_tokens, temperature=temperature, stop=list(stop))
        loop = asyncio.new_event_loop()
        steps = self.llm.steps(ids, params)
        try:
            while True:
                try:
                    out = loop.run_until_complete(steps.__anext__())
                except StopAsyncIteration:
                    raise RuntimeError("the engine ended the turn without finishing it") from None
                if out.text:
                    yield Piece(out.text)
                if out.finished:
                    seq = out.seq
                    break
        finally:
            loop.run_until_complete(steps.aclose())  # aborts a turn left early
            loop.close()
        if (seq.finish_reason or "").startswith("error"):
            raise RuntimeError(f"generation failed ({seq.finish_reason}); the traceback is in the zenlm.engine log")
        yield Piece("", len(seq.output_ids), seq.finish_reason)


def fold_continuation(messages: list[dict]) -> list[dict]:
    """A last assistant message (to be continued) appended to the user message before it, after a blank line."""
    if not messages or messages[-1]["role"] != "assistant":
        return messages
    if len(messages) < 2 or messages[-2]["role"] != "user":
        raise ValueError("an assistant message to continue must follow a user message")
    user = messages[-2]
    return messages[:-2] + [{**user, "content": f"{user['content']}\n\n{messages[-1]['content']}"}]


class OpenAIBackend:
    """Any OpenAI-compatible /v1/chat/completions, streamed (zen serve, vLLM, llama.cpp, ...)."""

    def __init__(self, base_url: str, model: str | None = None, api_key: str | None = None,
                 timeout: float = 600.0):
        import httpx2

        if not base_url.startswith(("http://", "https://")):
            raise ValueError(f"the base URL must start with http:// or https://, got {base_url!r}")
        self.base = base_url.rstrip("/")
        if not self.base.endswith("/v1"):
            self.base += "/v1"
        headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
        self.client = httpx2.Client(timeout=timeout, headers=headers)
        self.model = model or self._first_model()

    def _first_model(self) -> str:
        import httpx2

        try:
            r = self.client.get(f"{self.base}/models")
        except httpx2.TransportError as e:
            raise OSError(f"cannot reach {self.base}/models ({type(e).__name__}: {e})") from None
        if r.status_code != 200:
            raise OSError(f"{self.base}/models answered HTTP {r.status_code}: {r.text[:300]}")
        models = r.json().get("data") or []
        if not models:
            raise ValueError(f"{self.base}/models lists no model; name one")
        return models[0]["id"]

    def generate(self, messages: list[dict], tools: list[dict] | None, stop: list[str], max_tokens: int,
                 temperature: float) -> Iterator[Piece]:
        import httpx2

        body = {"model": self.model, "messages": fold_continuation(messages), "stream": True,
                "stream_options": {"include_usage": True}, "max_tokens": max_tokens, "temperature": temperature}
        if stop:
            body["stop"] = list(stop)[:4]  # OpenAI allows four
        if tools:
            body["tools"] = tools
        url = f"{self.base}/chat/completions"
        try:
            with self.client.stream("POST", url, json=body) as r:
                if r.status_code != 200:
                    r.read()
                    raise OSError(f"{url} answered HTTP {r.status_code}: {r.text[:300]}")
                yield from self._read(r.iter_lines(), url)
        except httpx2.TransportError as e:
            raise OSError(f"cannot reach {url} ({type(e).__name__}: {e})") from None

    def _read(self, lines: Iterator[str], url: str) -> Iterator[Piece]:
        calls: dict[int, list[str]] = {}  # index -> [name, arguments]
        content, chunks, tokens, finish = "", 0, None, None
        for line in lines:
            if not line.startswith("data:"):
                continue
            data = line[len("data:"):].strip()
            if data == "[DONE]":
                break
            chunk = json.loads(data)
            if chunk.get("error"):
                raise OSError(f"{url} reported an error mid-stream: {json.dumps(chunk['error'])[:300]}")
            if chunk.get("usage"):
                tokens = chunk["usage"].get("completion_tokens")
            for choice in chunk.get("choices") or []:
                delta = choice.get("delta") or {}
                if delta.get("content"):
                    content += delta["content"]
                    chunks += 1
                    yield Piece(delta["content"])
                for tc in delta.get("tool_calls") or []:
                    entry = calls.setdefault(tc.get("index", len(calls)), ["", ""])
                    fn = tc.get("function") or {}
                    entry[0] += fn.get("name") or ""
                    entry[1] += fn.get("arguments") or ""
                    chunks += 1
                finish = choice.get("finish_reason") or finish
        if calls:
            sep = "" if not content or content.endswith("\n") else "\n"
            yield Piece(sep + hermes([(name, args or "{}") for name, args in (calls[i] for i in sorted(calls))]))
        yield Piece("", tokens if tokens is not None else chunks, finish)  # no usage reported: about a token a chunk

    def close(self) -> None:
        self.client.close()


def backend_for(model_or_url, model: str | None = None, api_key: str | None = None, dtype: str = "auto") -> Backend:
    """An LLM, a URL, a model name ("default", a path, a hub name) or an object with generate() -> a Backend."""
    if isinstance(model_or_url, str):
        if model_or_url.startswith(("http://", "https://")):
            return OpenAIBackend(model_or_url, model=model, api_key=api_key)
        from zenlm.engine.llm import LLM

        return EngineBackend(LLM(model_or_url, dtype=dtype, progress=False))
    llm_module = sys.modules.get("zenlm.engine.llm")  # an LLM instance means the module is loaded
    if llm_module is not None and isinstance(model_or_url, llm_module.AsyncLLM):
        return AsyncEngineBackend(model_or_url)
    if llm_module is not None and isinstance(model_or_url, llm_module.LLM):
        return EngineBackend(model_or_url)
    if callable(getattr(model_or_url, "generate", None)):
        return model_or_url
    raise ValueError(f"expected an LLM, a URL, a model name or a backend, got {type(model_or_url).__name__}")
