"""A tensor-parallel rank other than 0: load, keep its shard, then run every forward rank 0 broadcasts.

It holds its own paged KV cache (its KV heads only) and never samples: the logits are gathered to rank 0.
A spawned worker exits when rank 0's process is gone (a watcher on its parent), or when rank 0 says stop.
"""

from __future__ import annotations

import os
import signal
import sys
import threading
import time

import torch
import torch.distributed as dist

from zenlm.engine.runner import Runner
from zenlm.model import Transformer
from zenlm.parallel import step


def serve(model: Transformer, num_blocks: int, block_size: int, kv_dtype: torch.dtype, device: str) -> None:
    """Run rank 0's forwards on this rank's shard until it says stop; then the closing barrier."""
    runner = Runner(model, num_blocks, block_size, kv_dtype, device)  # the cache of this shard's KV heads
    dev = torch.device(device)
    dist.barrier()  # ready
    with torch.inference_mode():
        while (s := step.recv(dev)) is not None:
            cache = None if s.layout is None else runner.cache.bind(*s.layout)
            model(s.tokens, s.positions, cache, logit_index=s.logit_index)
    dist.barrier()
    dist.destroy_process_group()


def main(spec, rank: int) -> None:
    """A spawned worker's entry point (launch.WorkerSpec)."""
    from zenlm.engine.llm import PRECISIONS
    from zenlm.parallel.launch import IDLE, backend
    from zenlm.parallel.plan import plan
    from zenlm.parallel.shard import shard
    from zenlm.weights.load import load

    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C reaches the whole process group: rank 0 stops us
    torch.set_num_threads(spec.threads)
    threading.Thread(target=_watch, args=(spec.parent,), name="zenlm-tp-parent", daemon=True).start()
    device = f"cuda:{rank}" if torch.device(spec.device).type == "cuda" else spec.device
    dist.init_process_group(backend(spec.device), init_method=spec.init_method, rank=rank, world_size=spec.tp,
                            timeout=IDLE)
    dtype, quant = PRECISIONS[spec.dtype]
    loaded = load(spec.model, dtype=dtype, device=device, progress=False, quant=quant)
    model = shard(loaded.model, plan(loaded.config, spec.tp, rank))
    try:
        serve(model, spec.num_blocks, spec.block_size, spec.kv_dtype, device)
    except RuntimeError as e:  # rank 0 went away mid-collective (killed): nothing left to serve
        if os.getppid() == spec.parent:
            raise
        print(f"zenlm tensor-parallel rank {rank}: rank 0 is gone ({str(e).splitlines()[0][:120]})", file=sys.stderr)
        os._exit(1)


def _watch(parent: int) -> None:
    """End this process once rank 0's is gone (its collectives would otherwise wait for ever)."""
    while os.getppid() == parent:
        time.sleep(0.5)
    os._exit(0)
