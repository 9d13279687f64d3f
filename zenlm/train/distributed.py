"""torchrun + FSDP2 + distributed checkpoints; the same calls work in a single process.

`setup()` reads torchrun's environment (gloo on CPU, nccl on GPU); `shard()` applies `fully_shard`
per block and then to the root, which keeps the embedding, final norm and (tied) head together.
Checkpoints are torch.distributed.checkpoint directories, written atomically (temp dir, fsync,
rename): they load on any number of ranks, including one process without a process group. Export
gathers a full state dict on rank 0.
"""

from __future__ import annotations

import os
import random
import shutil
import warnings
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.distributed as dist
import torch.distributed.checkpoint as dcp
from torch import nn
from torch.distributed.checkpoint.state_dict import (
    StateDictOptions,
    get_model_state_dict,
    get_state_dict,
    set_state_dict,
)


@dataclass(slots=True)
class Dist:
    rank: int = 0
    world: int = 1
    device: torch.device = torch.device("cpu")

    @property
    def main(self) -> bool:
        return self.rank == 0

    @property
    def active(self) -> bool:
        return self.world > 1


def setup(device: str | None = None) -> Dist:
    """Join the torchrun job if there is one (gloo on CPU, nccl on CUDA); else a single process."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    want = device or ("cuda" if torch.cuda.is_available() and world > 1 else "cpu")
    if world == 1:
        return Dist(0, 1, torch.device(want))
    rank, local = int(os.environ["RANK"]), int(os.environ.get("LOCAL_RANK", "0"))
    if want.startswith("cuda"):
        torch.cuda.set_device(local)
        dev = torch.device("cuda", local)
    else:
        dev = torch.device("cpu")
    if not dist.is_initialized():
        dist.init_process_group("nccl" if dev.type == "cuda" else "gloo")
    return Dist(rank, world, dev)


def shard(root: nn.Module, blocks: nn.ModuleList, d: Dist) -> None:
    """FSDP2: one unit per block, then the root (embedding + norm + tied head stay one unit).

    FSDP averages gradients over ranks; the loop multiplies its loss (already divided by the global
    token count) by the world size, so the average is the sum it wants. (A divide factor of 1 would
    say the same, but gloo has no PREMUL_SUM reduction.)
    """
    from torch.distributed.device_mesh import init_device_mesh
    from torch.distributed.fsdp import fully_shard

    mesh = init_device_mesh(d.device.type, (d.world,))
    for block in blocks:
        fully_shard(block, mesh=mesh)
    fully_shard(root, mesh=mesh)


def all_reduce_sum(x: torch.Tensor, d: Dist) -> torch.Tensor:
    if d.active:
        dist.all_reduce(x, op=dist.ReduceOp.SUM)
    return x


def barrier(d: Dist) -> None:
    if d.active:
        dist.barrier()


def _options(frozen_too: bool) -> StateDictOptions:
    """Without frozen_too (LoRA) only trainable tensors are saved; the frozen base comes from its source."""
    return StateDictOptions(ignore_frozen_params=not frozen_too, strict=frozen_too)


def _save_synced(obj, path: Path) -> None:
    """torch.save, flushed to the disk before it returns."""
    with open(path, "wb") as f:
        torch.save(obj, f)
        f.flush()
        os.fsync(f.fileno())


def _fsync_dir(path: Path) -> None:
    """Make a directory's entries (new files, renames) durable."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _clear_unfinished(directory: Path) -> None:
    """Remove what killed saves left behind: `.tmp-step_N` being written, `.old-step_N` being replaced."""
    for p in list(directory.glob(".tmp-step_*")) + list(directory.glob(".old-step_*")):
        shutil.rmtree(p, ignore_errors=True)


def save_checkpoint(path: Path, model: nn.Module, optimizer, trainer_state: dict, d: Dist,
                    frozen_too: bool = True) -> None:
    """Model and optimizer as a DCP directory; trainer state (step, scheduler, data) and each rank's RNG beside.

    Atomic: everything goes into a sibling `.tmp-step_N`, is fsynced, marked COMPLETE and renamed to
    `path` in one os.replace. A run killed while saving leaves the earlier checkpoints as they were.
    """
    tmp = path.with_name(f".tmp-{path.name}")
    if d.main:
        path.parent.mkdir(parents=True, exist_ok=True)
        _clear_unfinished(path.parent)
        tmp.mkdir()
    barrier(d)
    msd, osd = get_state_dict(model, optimizer, options=_options(frozen_too))
    with warnings.catch_warnings():  # "assuming the intent is to save in a single process": it is
        warnings.simplefilter("ignore", UserWarning)
        dcp.save({"model": msd, "optim": osd}, storage_writer=dcp.FileSystemWriter(tmp, sync_files=True))
    rng = {"torch": torch.get_rng_state(), "python": random.getstate(),
           "cuda": torch.cuda.get_rng_state() if d.device.type == "cuda" else None}
    _save_synced(rng, tmp / f"rng_rank{d.rank}.pt")
    if d.main:
        _save_synced(trainer_state, tmp / "trainer.pt")
    barrier(d)
    if d.main:
        with open(tmp / "COMPLETE", "wb") as f:
            os.fsync(f.fileno())
        _fsync_dir(tmp)
        old = path.with_name(f".old-{path.name}")
        if path.exists():  # the same step saved by an earlier run: set aside, dropped once replaced
            os.replace(path, old)
        os.replace(tmp, path)
        _fsync_dir(path.parent)
        shutil.rmtree(old, ignore_errors=True)
    barrier(d)


def load_checkpoint(path: Path, model: nn.Module, optimizer, d: Dist, frozen_too: bool = True) -> dict:
    """Restore model, optimizer and this rank's RNG (when saved with the same rank count); returns trainer state."""
    opts = _options(frozen_too)
    msd, osd = get_state_dict(model, optimizer, options=opts)
    state = {"model": msd, "optim": osd}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        dcp.load(state, checkpoint_id=str(path))
    set_state_dict(model, optimizer, model_state_dict=state["model"], optim_state_dict=state["optim"], options=opts)
    rng_file = path / f"rng_rank{d.rank}.pt"
    if rng_file.exists():
        rng = torch.load(rng_file, weights_only=False)
        torch.set_rng_state(rng["torch"])
        random.setstate(rng["python"])
        if rng["cuda"] is not None and d.device.type == "cuda":
            torch.cuda.set_rng_state(rng["cuda"])
    return torch.load(path / "trainer.pt", weights_only=False)


def latest_checkpoint(directory: Path) -> Path | None:
    """The complete checkpoint with the highest step (`step_N` with its COMPLETE marker), or None."""
    done = [p for p in directory.glob("step_*") if p.name[5:].isdigit() and (p / "COMPLETE").exists()]
    return max(done, key=lambda p: int(p.name[5:]), default=None)


def full_state_dict(model: nn.Module, d: Dist) -> dict[str, torch.Tensor]:
    """Every parameter and buffer as a plain CPU tensor (on rank 0 when sharded; empty elsewhere)."""
    if not d.active:
        return {k: v.detach().cpu() for k, v in model.state_dict().items()}
    return get_model_state_dict(model, options=StateDictOptions(full_state_dict=True, cpu_offload=True))
