"""Starting and stopping a tensor-parallel group: rank 0 is the process that made the LLM.

Two ways in. By default rank 0 spawns tp - 1 worker processes on this machine, which meet it over
loopback on a free port. Under torchrun (RANK and WORLD_SIZE set; any number of machines) every process
builds the same LLM: rank 0 goes on to run the engine, and on every other rank the constructor serves
rank 0's forwards and then exits the process. gloo on CPU, nccl on CUDA (one device per rank).
TPGroup.close() stops the workers (a STOP step, a barrier, then destroy_process_group); it also runs at exit,
and SIGTERM (left at its default) becomes SystemExit so that exit is a clean one.
"""

from __future__ import annotations

import atexit
import datetime
import logging
import os
import signal
import socket
import sys
import threading
from dataclasses import dataclass

import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from zenlm.model import Transformer
from zenlm.parallel import worker
from zenlm.parallel.plan import check, plan
from zenlm.parallel.shard import shard
from zenlm.parallel.step import Leader

log = logging.getLogger("zenlm.parallel")
# Workers wait in a broadcast while the server idles; the collective timeout must outlast any idle spell.
IDLE = datetime.timedelta(days=30)


@dataclass(slots=True)
class WorkerSpec:
    """What a spawned rank needs to build its shard and its KV cache the way rank 0 did."""

    model: str
    dtype: str  # an LLM dtype name (PRECISIONS)
    device: str
    tp: int
    num_blocks: int
    block_size: int
    kv_dtype: torch.dtype
    threads: int
    init_method: str
    parent: int  # rank 0's pid: a worker exits when it is gone


def under_torchrun() -> bool:
    return int(os.environ.get("WORLD_SIZE", "1")) > 1 and "RANK" in os.environ


def rank_device(device: str, tp: int) -> str:
    """The device this process's shard lives on: one CUDA device per local rank under torchrun."""
    if tp > 1 and under_torchrun() and torch.device(device).type == "cuda":
        return f"cuda:{os.environ.get('LOCAL_RANK', '0')}"
    return device


def backend(device: str) -> str:
    return "nccl" if torch.device(device).type == "cuda" else "gloo"


class TPGroup:
    """Rank 0's handle on the running group."""

    def __init__(self, leader: Leader, procs: list, device: torch.device):
        self.leader, self.procs, self.device, self.closed = leader, procs, device, False
        atexit.register(self.close)
        if threading.current_thread() is threading.main_thread() and signal.getsignal(signal.SIGTERM) is signal.SIG_DFL:
            signal.signal(signal.SIGTERM, _exit_on_term)  # so atexit runs and the workers stop cleanly

    def close(self, timeout: float = 60.0) -> None:
        """Stop every worker: a STOP step (after any forward in flight), a barrier, destroy_process_group.
        Workers that do not finish in time (a forward broken off mid-way) are ended."""
        if self.closed:
            return
        self.closed = True
        done = threading.Event()

        def finish() -> None:
            try:
                self.leader.stop(self.device)
                dist.barrier()
                done.set()
            except Exception:  # noqa: BLE001 - a worker already gone: nothing to wait for
                log.warning("tensor-parallel workers did not stop cleanly", exc_info=True)

        t = threading.Thread(target=finish, name="zenlm-tp-close", daemon=True)
        t.start()
        t.join(timeout)
        if done.is_set():
            dist.destroy_process_group()
        for p in self.procs:
            p.join(timeout if done.is_set() else 0)
            if p.is_alive():
                p.kill()
                p.join()


def start(model: Transformer, tp: int, name: str, dtype: str, device: str, num_blocks: int, block_size: int,
          kv_dtype: torch.dtype) -> TPGroup:
    """Shard `model` (rank 0's, already loaded) over tp ranks and start the others; under torchrun on a rank
    other than 0, serve rank 0's forwards instead and exit the process when it stops."""
    c = model.config
    check(c, tp)
    torchrun = under_torchrun()
    rank = int(os.environ["RANK"]) if torchrun else 0
    if torchrun and int(os.environ["WORLD_SIZE"]) != tp:
        raise ValueError(f"tp={tp} but torchrun started {os.environ['WORLD_SIZE']} processes (WORLD_SIZE); "
                         "they must match")
    shard(model, plan(c, tp, rank))  # a model that cannot be cut (quantized groups) fails here, before any process
    procs = []
    if torchrun:
        dist.init_process_group(backend(device), timeout=IDLE)
        if rank != 0:
            worker.serve(model, num_blocks, block_size, kv_dtype, device)
            sys.exit(0)
    else:
        spec = WorkerSpec(name, dtype, device, tp, num_blocks, block_size, kv_dtype, torch.get_num_threads(),
                          f"tcp://127.0.0.1:{_free_port()}", os.getpid())
        ctx = mp.get_context("spawn")
        procs = [ctx.Process(target=worker.main, args=(spec, r), name=f"zenlm-tp{r}", daemon=True)
                 for r in range(1, tp)]
        for p in procs:
            p.start()
    try:
        if not torchrun:
            dist.init_process_group(backend(device), init_method=spec.init_method, rank=0, world_size=tp,
                                    timeout=IDLE)
        dist.barrier()  # every rank has its shard and its cache
    except BaseException:
        for p in procs:
            p.kill()
        raise
    log.info("tensor parallel: %d ranks (%s)", tp, backend(device))
    return TPGroup(Leader(model), procs, torch.device(device))


def _exit_on_term(signum, frame) -> None:
    raise SystemExit(128 + signum)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]
