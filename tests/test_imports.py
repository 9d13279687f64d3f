"""The one-way import rules of ARCHITECTURE.md, checked by walking every module's imports."""

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent / "zenlm"
# module prefix -> zenlm packages it may import (besides itself)
ALLOWED = {
    "zenlm.config": set(),
    "zenlm.tokenizer": set(),
    "zenlm.model": {"zenlm.config"},
    "zenlm.kernels": {"zenlm.cache"},  # the bottom: native code and its loader, nothing of zenlm's torch code
    # quantize on load; kernels: the native RMSNorm swapped in
    "zenlm.weights": {"zenlm.config", "zenlm.model", "zenlm.tokenizer", "zenlm.quant", "zenlm.kernels", "zenlm.cache"},
    # the release writers read checkpoints through weights (beside the engine, as train/ does); the layouts
    # weights itself imports (linear.py) may not: test_quantized_layouts_do_not_import_weights
    # a GPTQ/AWQ directory's config.json is the one train/export.py writes for an HF checkpoint
    "zenlm.quant.hf_export": {"zenlm.quant", "zenlm.config", "zenlm.model", "zenlm.weights", "zenlm.train"},
    "zenlm.quant": {"zenlm.config", "zenlm.model", "zenlm.kernels", "zenlm.cache", "zenlm.weights", "zenlm.tokenizer"},
    # weights: llm.py only; kernels: the C attention the paged cache calls, argmax for greedy sampling
    "zenlm.engine": {"zenlm.config", "zenlm.model", "zenlm.tokenizer", "zenlm.weights", "zenlm.kernels",
                     "zenlm.parallel"},  # llm.py starts tensor parallelism (lazily, only for tp > 1)
    # tensor parallelism: shards the model, runs the engine's runner on each rank; a spawned worker loads
    "zenlm.parallel": {"zenlm.config", "zenlm.model", "zenlm.quant", "zenlm.engine", "zenlm.weights"},
    # /v1/embeddings serves the RAG embedding model (listed first: the first matching prefix rules)
    "zenlm.server.embeddings": {"zenlm.server", "zenlm.agent.rag.embed"},
    # the web chat's code interpreter runs the agent loop (its python tool runs code in the agent's sandbox)
    "zenlm.server.code_interpreter": {"zenlm.server", "zenlm.agent"},
    "zenlm.server": {"zenlm.engine", "zenlm.tokenizer"},  # HTTP over the engine, nothing below it
    # RL's rollout stage samples with the batched engine (issue 14), around the model being trained
    "zenlm.train.rollout": {"zenlm.train", "zenlm.config", "zenlm.model", "zenlm.tokenizer", "zenlm.weights",
                            "zenlm.engine"},
    # verifiable rewards: eval's answer extractors and its sandboxed code runner
    "zenlm.train.rewards": {"zenlm.train", "zenlm.config", "zenlm.model", "zenlm.tokenizer", "zenlm.weights",
                            "zenlm.eval"},
    "zenlm.train": {"zenlm.config", "zenlm.model", "zenlm.tokenizer", "zenlm.weights"},  # otherwise never the engine
    # drives the engine or an OpenAI URL; never the server (tool-call parsing is shared through tokenizer);
    # runs model-written code in the agent's sandbox, and its TIR loop (--mode tir)
    "zenlm.eval": {"zenlm.config", "zenlm.model", "zenlm.tokenizer", "zenlm.weights", "zenlm.engine",
                   "zenlm.agent.sandbox", "zenlm.agent.tir"},
}


def imports(path: Path) -> set[str]:
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.module:
            found.add(node.module)
        elif isinstance(node, ast.Import):
            found.update(a.name for a in node.names)
    return found


def module_name(path: Path) -> str:
    return ".".join(("zenlm",) + path.relative_to(ROOT).with_suffix("").parts).removesuffix(".__init__")


def test_import_rules():
    broken = []
    for path in ROOT.rglob("*.py"):
        name = module_name(path)
        rule = next((k for k in ALLOWED if name == k or name.startswith(k + ".")), None)
        if rule is None:
            continue
        for mod in imports(path):
            if mod.startswith("zenlm") and not mod.startswith(rule):
                if not any(mod == a or mod.startswith(a + ".") for a in ALLOWED[rule]):
                    broken.append(f"{name} imports {mod}")
    # only engine/llm.py may load weights
    for path in (ROOT / "engine").rglob("*.py"):
        if path.name != "llm.py":
            assert not any(m.startswith("zenlm.weights") for m in imports(path)), path
    assert not broken, broken


def test_quantized_layouts_do_not_import_weights():
    assert not any(m.startswith(("zenlm.weights", "zenlm.tokenizer")) for m in imports(ROOT / "quant" / "linear.py"))


def test_config_and_tokenizer_do_not_import_torch():
    for path in [ROOT / "config.py", *(ROOT / "tokenizer").rglob("*.py")]:
        assert "torch" not in {m.split(".")[0] for m in imports(path)}, path


def test_every_module_has_a_docstring():
    for path in ROOT.rglob("*.py"):
        assert ast.get_docstring(ast.parse(path.read_text())), f"{path} has no docstring"
