"""zenlm as an lm-eval-harness model named "zenlm"; importing this module registers it.

    zen lm-eval --model zenlm --model_args model=default,dtype=auto --tasks TASKS ...   (lm_eval's command line)
    import zenlm.eval.harness; lm_eval.simple_evaluate(model="zenlm", model_args="model=default", tasks=[...])

model_args: model (default "default"), dtype (int4), device (else lm-eval's --device where usable, else
cuda if present, else cpu), max_num_seqs (16 sequences decoded together), max_length (4096 tokens a
log-likelihood forward pass reads at most). loglikelihood splits each request as lm-eval does and scores
it in one forward pass (zenlm/eval/loglik.py); loglikelihood_rolling scores a text in windows of
max_length tokens; generate_until hands every request to the engine at once, so continuous batching
does the work, greedy unless do_sample (or a temperature above 0) says otherwise. lm-eval 0.4 looks
models up in its own fixed table (lm_eval.models.MODEL_MAPPING) and reads no entry points, so the plain
`lm_eval` command cannot find this one: `zen lm-eval` imports it first, then runs lm_eval's own CLI.
"""

from __future__ import annotations

import logging

import lm_eval.models  # noqa: F401 - lm-eval's own models first: it fills its table only while that is empty
from lm_eval.api.model import LM
from lm_eval.api.registry import register_model
from lm_eval.utils import get_rolling_token_windows, make_disjoint_window
from tqdm import tqdm

from zenlm.eval.loglik import prefix_id, score, score_ids

log = logging.getLogger("zenlm.eval")
MAX_LENGTH = 4096  # a forward pass's logits are [tokens, vocab] floats: 2.5 GB at this length for Qwen
DEFAULT_GEN_TOKS = 256  # lm-eval's own default max_gen_toks
SAMPLING_KEYS = ("temperature", "top_p", "top_k", "min_p", "repetition_penalty", "seed")


@register_model("zenlm")
class ZenLM(LM):
    def __init__(self, model: str = "default", dtype: str = "auto", device: str | None = None,
                 max_num_seqs: int | str = 16, max_length: int | str | None = None, progress: bool = True, **unknown):
        super().__init__()
        if unknown:
            raise ValueError(f"zenlm model_args: unknown {', '.join(sorted(unknown))}; known: model, dtype, device, "
                             "max_num_seqs, max_length, progress")
        from zenlm.engine.engine import EngineConfig
        from zenlm.engine.llm import LLM

        seqs = _whole("max_num_seqs", max_num_seqs)
        self.llm = LLM(str(model), dtype=str(dtype), device=_device(device), progress=progress,
                       engine=EngineConfig(max_num_seqs=seqs))
        longest = self.llm.config.context_length - 1  # the scored tokens plus the one before them must fit
        self.max_length = min(MAX_LENGTH, longest) if max_length is None else _whole("max_length", max_length)
        if self.max_length > longest:
            raise ValueError(f"max_length {self.max_length} is over the model's {longest} (its context less one)")
        self.name, self.progress = str(model), progress

    @classmethod
    def create_from_arg_string(cls, arg_string: str, additional_config: dict | None = None) -> ZenLM:
        from lm_eval.utils import simple_parse_args_string

        return cls.create_from_arg_obj(simple_parse_args_string(arg_string), additional_config)

    @classmethod
    def create_from_arg_obj(cls, arg_dict: dict, additional_config: dict | None = None) -> ZenLM:
        """model_args win; of lm-eval's own settings only --device is used (the engine batches by itself)."""
        args = dict(arg_dict)
        if (additional_config or {}).get("device") and "device" not in args:
            args["device"] = _usable(additional_config["device"])
        return cls(**args)

    @property
    def tokenizer_name(self) -> str:
        return self.name

    def apply_chat_template(self, chat_history: list[dict], add_generation_prompt: bool = True) -> str:
        return self.llm.tokenizer.apply_chat(chat_history, add_generation_prompt=add_generation_prompt)

    def loglikelihood(self, requests, disable_tqdm: bool = False) -> list[tuple[float, bool]]:
        out = []
        for req in tqdm(requests, desc="zenlm loglikelihood", disable=disable_tqdm or not self.progress):
            result = score(self.llm, *req.args, self.max_length)
            self.cache_hook.add_partial("loglikelihood", req.args, result)
            out.append(result)
        return out

    def loglikelihood_rolling(self, requests, disable_tqdm: bool = False) -> list[float]:
        out = []
        for req in tqdm(requests, desc="zenlm loglikelihood_rolling", disable=disable_tqdm or not self.progress):
            (text,) = req.args
            windows = get_rolling_token_windows(self.llm.tokenizer.encode(text), prefix_id(self.llm.tokenizer),
                                                self.max_length, 1)
            total = sum(score_ids(self.llm, *make_disjoint_window(w), self.max_length)[0] for w in windows)
            self.cache_hook.add_partial("loglikelihood_rolling", req.args, total)
            out.append(total)
        return out

    def generate_until(self, requests, disable_tqdm: bool = False) -> list[str]:
        tok, room = self.llm.tokenizer, self.llm.config.context_length
        prompts, params = [], []
        for req in requests:
            context, kwargs = req.args
            p = sampling_params(kwargs)
            if p.max_tokens >= room:
                raise ValueError(f"max_gen_toks {p.max_tokens} leaves no room for a prompt in {room} tokens")
            ids = tok.encode(context) or [prefix_id(tok)]
            prompts.append(ids[-(room - p.max_tokens):])  # the context's end, as lm-eval's HF model keeps it
            params.append(p)
        texts = [c.text for c in self.llm.generate(prompts, params)] if prompts else []
        for req, text in zip(requests, texts):
            self.cache_hook.add_partial("generate_until", req.args, text)
        return texts


def sampling_params(kwargs: dict):
    """lm-eval's gen_kwargs -> SamplingParams: until, max_gen_toks; greedy (no repetition penalty) unless
    do_sample is true, or absent with a temperature above 0; sampling settings not given are the model's."""
    from zenlm.engine.sampling import SamplingParams

    kw = dict(kwargs or {})
    until = kw.pop("until", None) or []
    until = [until] if isinstance(until, str) else list(until)
    max_tokens = _whole("max_gen_toks", kw.pop("max_gen_toks", DEFAULT_GEN_TOKS))
    do_sample = kw.pop("do_sample", None)
    sample = bool(do_sample) if do_sample is not None else float(kw.get("temperature") or 0) > 0
    chosen = {k: kw.pop(k) for k in SAMPLING_KEYS if k in kw}
    if kw:
        log.warning("zenlm ignores these generation settings: %s", ", ".join(sorted(kw)))
    if not sample:
        chosen = {"temperature": 0.0, "repetition_penalty": chosen.get("repetition_penalty", 1.0)}
    elif not chosen.get("temperature"):
        chosen.pop("temperature", None)  # do_sample with temperature 0 or none: the model's temperature
    return SamplingParams(max_tokens=max_tokens, stop=until, **chosen).validate()


def _whole(name: str, value) -> int:
    try:
        n = int(value)
    except (TypeError, ValueError):
        raise ValueError(f"{name} must be a whole number, got {value!r}") from None
    if n < 1 or str(n) != str(value).strip():
        raise ValueError(f"{name} must be a whole number of at least 1, got {value!r}")
    return n


def _device(asked: str | None) -> str:
    import torch

    return asked or ("cuda" if torch.cuda.is_available() else "cpu")


def _usable(asked: str) -> str:
    """lm-eval's --device (its default is cuda:0) where this machine has it, else cpu."""
    import torch

    if asked.startswith("cuda") and not torch.cuda.is_available():
        log.warning("lm-eval asked for device %s; there is no CUDA device here, so zenlm runs on cpu", asked)
        return "cpu"
    return asked
