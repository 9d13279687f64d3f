"""`zen train pretrain|sft|dpo|rm|grpo|ppo`: settings (flags over a YAML file) -> model, data, loss -> Trainer -> HF
directory (a reward model's with its scalar head beside it).

A preset name trains from scratch (random init, the default model's tokenizer); a .gguf file or HF
directory fine-tunes (GGUF weights dequantized to fp32; with QLoRA the base is quantized to 4 bits while it
loads instead, qlora_load.py, and the rest kept in bf16). Under torchrun every rank runs this same
function; rank 0 writes the export. This file only assembles the pieces, it has no loop of its own.
"""

from __future__ import annotations

import copy
import dataclasses
import random
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

from zenlm.train import data as data_mod
from zenlm.train import distributed as D
from zenlm.train.export import plain_state_dict, save_model_dir
from zenlm.train.lora import LoRAConfig, adapter_tensors, adapters_disabled, apply_lora, save_adapter
from zenlm.train.losses import DPO, CrossEntropy
from zenlm.train.qlora_load import heap_returns_large_blocks, load_qlora, trim_heap
from zenlm.train.reward import BradleyTerry, save_head, scalar_head
from zenlm.train.rl_run import RL_TASKS, run_rl
from zenlm.train.trainer import TrainConfig, Trainer, hidden_states

if TYPE_CHECKING:
    from zenlm.tokenizer import Tokenizer

TASKS = ("pretrain", "sft", "dpo", "rm", "grpo", "ppo")
PAIRED = ("dpo", "rm")  # tasks that read (prompt, chosen, rejected) records
QLORA_DTYPES = {"bf16": torch.bfloat16, "fp32": torch.float32}  # QLoRA's weights not in 4 bits


@dataclass(slots=True)
class RunConfig:
    task: str = "sft"
    model: str = "default"
    data: list[str] = field(default_factory=list)
    output: str = "out"
    eval_data: list[str] = field(default_factory=list)  # held-out files; else val_fraction of the data
    val_fraction: float = 0.02
    seq_len: int = 512
    tokenizer: str | None = None  # a model whose tokenizer to use with a preset; default: "default"
    device: str | None = None
    lora: bool = False
    qlora: bool = False
    qlora_type: str = "nf4"  # nf4 | int4
    qlora_dtype: str = "bf16"  # bf16 | fp32: QLoRA's weights besides the 4-bit linears (embedding, norms, head)
    lora_rank: int = 16
    lora_alpha: float = 32.0
    lora_dropout: float = 0.0
    lora_targets: list[str] = field(default_factory=lambda: ["q_proj", "k_proj", "v_proj", "o_proj",
                                                             "gate_proj", "up_proj", "down_proj"])
    beta: float = 0.1  # DPO
    # RL (grpo, ppo): rollout.RolloutConfig and rl.GRPO / rl.PPO say what each does
    reward: Any = None  # exact_number | unit_tests | module:function | a reward-model directory | a callable
    group_size: int = 4
    max_new_tokens: int = 64
    temperature: float = 1.0
    rollout_reuse: int = 1
    kl_coef: float = 0.04
    clip: float = 0.2
    value_clip: float = 0.2
    vf_coef: float = 0.1
    gamma: float = 1.0
    lam: float = 0.95
    train: TrainConfig = field(default_factory=TrainConfig)

    def __post_init__(self) -> None:
        if self.task not in TASKS:
            raise ValueError(f"unknown task {self.task!r}; choose from {', '.join(TASKS)}")
        if self.qlora_dtype not in QLORA_DTYPES:
            raise ValueError(f"qlora_dtype must be bf16 or fp32, got {self.qlora_dtype!r}")


def make_config(settings: dict) -> RunConfig:
    """Flat settings (YAML keys or flags: run keys and TrainConfig keys side by side) -> RunConfig."""
    run_keys = {f.name for f in dataclasses.fields(RunConfig)} - {"train"}
    train_keys = {f.name for f in dataclasses.fields(TrainConfig)}
    unknown = set(settings) - run_keys - train_keys
    if unknown:
        raise ValueError(f"unknown training settings: {', '.join(sorted(unknown))}")
    for key in ("data", "eval_data", "lora_targets"):
        if isinstance(settings.get(key), str):
            settings[key] = [settings[key]]
    run = {k: v for k, v in settings.items() if k in run_keys}
    train = {k: v for k, v in settings.items() if k in train_keys}
    train.setdefault("output", run.get("output", "out"))
    return RunConfig(**run, train=TrainConfig(**train))


def load_yaml(path: str | Path) -> dict:
    import yaml

    d = yaml.safe_load(Path(path).read_text()) or {}
    if not isinstance(d, dict):
        raise ValueError(f"{path}: a training config must be a mapping of settings")
    return {k.replace("-", "_"): v for k, v in d.items()}


def load_model(name: str, tokenizer_name: str | None, seed: int):
    """(config, model in fp32 with grads on, tokenizer, generation_config) for a preset or a checkpoint."""
    from zenlm.weights.registry import resolve

    src = resolve(name)
    if src.kind == "preset":
        from zenlm.model import Transformer

        config = src.config()
        torch.manual_seed(seed)
        model = Transformer(config)
        tokenizer = resolve(tokenizer_name or "default").tokenizer()
        if tokenizer.vocab_size > config.vocab_size:
            raise ValueError(f"tokenizer has {tokenizer.vocab_size} tokens, the preset {config.vocab_size}")
        return config, model, tokenizer, {}
    from zenlm.weights.load import load

    loaded = load(name, dtype=torch.float32, progress=False)
    return loaded.config, loaded.model.train().requires_grad_(True), loaded.tokenizer, loaded.generation_config


def build_data(rc: RunConfig, tokenizer: Tokenizer) -> tuple[list, list, Callable[[list], data_mod.Batch]]:
    """(train items, held-out items, collate) for the task."""
    def items_of(paths):
        if rc.task == "pretrain":
            return data_mod.pretrain_rows(paths, tokenizer, rc.seq_len)
        if rc.task == "sft":
            return data_mod.sft_rows(paths, tokenizer, rc.seq_len)
        return data_mod.dpo_rows(paths, tokenizer, rc.seq_len)

    if not rc.data:
        raise ValueError("give training data (--data FILE...)")
    items = items_of(rc.data)
    if rc.eval_data:
        held = items_of(rc.eval_data)
    else:
        order = list(range(len(items)))
        random.Random(rc.train.seed).shuffle(order)
        k = int(len(items) * rc.val_fraction) if len(items) > 1 else 0
        held = [items[i] for i in order[:k]]
        items = [items[i] for i in sorted(order[k:])]
    collate = data_mod.collate_pairs if rc.task in PAIRED else data_mod.collate
    return items, held, collate


def run(rc: RunConfig) -> Trainer:
    d = D.setup(rc.device)
    lora_cfg = None
    if rc.lora or rc.qlora:
        lora_cfg = LoRAConfig(rc.lora_rank, rc.lora_alpha, rc.lora_dropout, tuple(rc.lora_targets),
                              rc.qlora_type if rc.qlora else None)
    if rc.qlora:  # the base quantized while it loads: no fp32 copy of it ever exists
        heap_returns_large_blocks()  # QLoRA is about memory: RSS should be what the process holds
        config, model, tokenizer, gen = load_qlora(rc.model, lora_cfg, QLORA_DTYPES[rc.qlora_dtype], rc.tokenizer,
                                                   rc.train.seed)
        model.to(d.device)
    else:
        config, model, tokenizer, gen = load_model(rc.model, rc.tokenizer, rc.train.seed)
        model.to(d.device)
        if lora_cfg is not None:
            apply_lora(model, lora_cfg)
    if rc.task in RL_TASKS:
        return run_rl(rc, d, config, model, tokenizer, gen, lora_cfg)
    items, held, collate = build_data(rc, tokenizer)
    heads = None
    if rc.task == "rm":
        heads = scalar_head(config.hidden_size).to(d.device)
        loss = BradleyTerry(heads)
    elif rc.task == "dpo":
        if lora_cfg is not None:
            def reference(b):
                with adapters_disabled(model):
                    return hidden_states(model, b), model.lm_head.weight
        else:
            frozen = copy.deepcopy(model).eval().requires_grad_(False)

            def reference(b):
                return hidden_states(frozen, b), frozen.lm_head.weight
        loss = DPO(reference, rc.beta)
    else:
        loss = CrossEntropy()
    per_step = rc.train.batch_size * rc.train.grad_accum * d.world
    loader = data_mod.Loader(items, per_step, seed=rc.train.seed)
    trainer = Trainer(model, loss, loader, collate, rc.train, held_out=held, dist=d, heads=heads)
    trainer.fit()
    if rc.qlora:
        trim_heap()  # the step's freed activations back to the OS before export allocates its own
    export(trainer, rc, config, tokenizer, gen, lora_cfg)
    if heads is not None and trainer.d.main:
        save_head(rc.output, heads)
    return trainer


def export(trainer: Trainer, rc: RunConfig, config, tokenizer, gen: dict, lora_cfg: LoRAConfig | None) -> None:
    sd = trainer.state_dict_for_export()
    if not trainer.d.main:
        return
    scale = None if lora_cfg is None else lora_cfg.alpha / lora_cfg.rank
    model = trainer.model

    def dequantize(prefix: str, _sd) -> torch.Tensor:
        return model.get_submodule(prefix).base.dequantize()

    dtype = QLORA_DTYPES[rc.qlora_dtype] if rc.qlora else torch.float32  # QLoRA's export: no fp32 embedding copy
    save_model_dir(rc.output, config, plain_state_dict(sd, scale, dequantize), tokenizer, gen, dtype)
    if lora_cfg is not None:  # from the gathered tensors: under FSDP the model's own are shards
        save_adapter(None, Path(rc.output) / "adapter", lora_cfg, adapter_tensors(sd))
