"""Ranks and checkpoints of ``fastload train`` / ``fastload profile``: the DDP set-up and the run's state on disk.

Why this exists: :mod:`profiling.loop` is the loop; what it needs from torch.distributed and from checkpoints lives
here. Under ``torchrun`` (``WORLD_SIZE`` > 1) :func:`init_distributed` starts the process group (nccl on GPUs, gloo
on CPUs) and picks each rank's device; :func:`save_run` writes ``last.pt`` on rank 0 with the model, the optimizer,
*every* rank's loader position (gathered, so each rank resumes its own share of the epoch), the run config and the
sampling config as run; :func:`resume_run` restores them and returns the step to continue from.

    torchrun --standalone --nproc_per_node 2 -m profiling.loop train --preset cpu_tiny --device cpu \
        --checkpoint-dir runs/ddp --stop-at 4 && ... --resume
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import torch

from fastload.errors import ConfigError

from .presets import RunConfig

__all__ = ["init_distributed", "gather", "save_run", "resume_run"]


def init_distributed(cfg: RunConfig) -> tuple[int, int, torch.device]:
    """(rank, world size, device); starts the process group under torchrun (WORLD_SIZE > 1)."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    want = cfg.device or cfg.loader.device
    if world > 1:
        import torch.distributed as dist

        local = int(os.environ.get("LOCAL_RANK", "0"))
        cuda = torch.cuda.is_available() and (want is None or want.startswith("cuda"))
        if not dist.is_initialized():
            dist.init_process_group("nccl" if cuda else "gloo")
        device = torch.device(f"cuda:{local}") if cuda else torch.device("cpu")
        if cuda:
            torch.cuda.set_device(device)
        return dist.get_rank(), dist.get_world_size(), device
    if want is None:
        return 0, 1, torch.device("cuda" if torch.cuda.is_available() else "cpu")
    device = torch.device(want)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ConfigError(f"device = {want!r} but CUDA is not available on this machine (use --device cpu)")
    return 0, 1, device


def gather(obj: Any, world: int) -> list[Any]:
    """Every rank's ``obj`` (picklable), in rank order; ``[obj]`` without torch.distributed."""
    if world == 1:
        return [obj]
    import torch.distributed as dist

    out: list[Any] = [None] * world
    dist.all_gather_object(out, obj)
    return out


def save_run(path: Path, net: torch.nn.Module, opt: Any, step: int, loader: Any, cfg: RunConfig, rank: int,
             world: int) -> None:
    """Write the run's checkpoint at ``path`` (rank 0; every rank takes part in gathering the loader positions)."""
    from model import save_checkpoint

    states = gather(loader.state_dict(), world)  # every rank's position: each resumes its own share
    if rank == 0:  # "sampling": the config as run (with the coefficients prepare_data found), for inference
        save_checkpoint(path, net, opt, step=step, extra={"loader": states, "world_size": world,
                                                          "run": cfg.to_dict(), "sampling": loader.config.to_dict()})
    if world > 1:
        import torch.distributed as dist

        dist.barrier()


def resume_run(path: Path, net: torch.nn.Module, opt: Any, loader: Any, rank: int, world: int) -> int:
    """Restore model, optimizer, RNG and this rank's loader position from :func:`save_run`'s ``path``; the step."""
    from model import load_checkpoint

    if not path.is_file():
        raise ConfigError(f"--resume: no checkpoint {str(path)!r}")
    try:
        info = load_checkpoint(path, net, opt)
    except ValueError as e:
        raise ConfigError(f"--resume: {e}") from None
    extra = info["extra"]
    if extra.get("world_size") != world:
        raise ConfigError(f"--resume: {path} was written by {extra.get('world_size')} rank(s); this run has {world}")
    loader.load_state_dict(extra["loader"][rank])
    return int(info["step"])
