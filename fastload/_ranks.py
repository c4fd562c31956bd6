"""Ranks of a multi-process run: which rank a loader is, how an epoch's samples are shared so that every rank
makes the same number of batches, and the check of explicit per-rank plans.

Why this exists apart from ``loader.py``: these are the loader's multi-rank rules, each small, and they are where
multi-rank runs went wrong silently (a loader built before ``init_process_group`` read every sample on every
rank; explicit plans of unequal length hung NCCL; a 48-rank epoch dropped a quarter of its samples unannounced).
:class:`fastload.Loader` and :class:`fastload.rollout_data.RolloutLoader` use them. Quick look::

    python -c "from fastload._ranks import _rank_counts, _equal_batches as e; c = _rank_counts(1024, 1, 48); print(c[:3], e(c, 8, True)[0])"
"""

from __future__ import annotations

import logging
import math
import os

import torch

from .config import LoaderConfig
from .errors import ConfigError

log = logging.getLogger("fastload")


def _rank_world(cfg: LoaderConfig, what: str = "Loader") -> tuple[int, int]:
    """This process's rank and the world size: the loader's ``rank``/``world_size`` when given; else
    torch.distributed's when its process group is initialised; else the environment's ``RANK`` and ``WORLD_SIZE``
    when both are set (torchrun and SLURM-wrapped launchers set them before the script calls
    ``init_process_group``: a loader built first read the epoch as rank 0 of 1 on every rank); else 0 of 1."""
    if cfg.rank is not None:
        rank, world, source = int(cfg.rank), int(cfg.world_size), "the loader's rank/world_size"  # type: ignore[arg-type]
    else:
        import torch.distributed as dist

        if dist.is_available() and dist.is_initialized():
            rank, world, source = int(dist.get_rank()), int(dist.get_world_size()), "torch.distributed"
        elif os.environ.get("RANK", "").strip() and os.environ.get("WORLD_SIZE", "").strip():
            rank, world = _env_rank_world(os.environ["RANK"], os.environ["WORLD_SIZE"])
            source = "the environment (RANK, WORLD_SIZE; torch.distributed is not initialised yet)"
        else:
            rank, world, source = 0, 1, "the default (no rank/world_size, torch.distributed, RANK or WORLD_SIZE)"
    log.info("fastload: %s is rank %d of %d, from %s", what, rank, world, source)
    return rank, world


def _env_rank_world(rank: str, world: str) -> tuple[int, int]:
    try:
        r, w = int(rank.strip()), int(world.strip())
    except ValueError:
        r = w = -1
    if not (w >= 1 and 0 <= r < w):
        raise ConfigError(f"environment RANK={rank!r}, WORLD_SIZE={world!r}: expected integers with 0 <= RANK < "
                          f"WORLD_SIZE (set by torchrun or your launcher); give the loader rank= and world_size= "
                          f"to override them")
    return r, w


def _rank_counts(n: int, spw: int, world: int) -> list[int]:
    """Samples each rank gets from :func:`random_boxes` (windows of ``spw`` dealt round-robin)."""
    n_win = -(-n // spw)
    counts = []
    for r in range(world):
        wins = len(range(r, n_win, world))
        last = (n_win - 1) % world == r
        counts.append(wins * spw - ((n_win * spw - n) if last else 0))
    return counts


def _equal_batches(counts: list[int], batch_size: int, drop_last: bool) -> tuple[int, list[int]]:
    """Batches every rank makes (the same on all: DDP steps together) and the samples each rank then uses.

    ``drop_last``: ``min(counts) // batch_size`` full batches each; else ``ceil(min(counts) / batch_size)``
    batches, a rank using at most that many batches' samples (so the ranks' last batches may differ in size)."""
    low = min(counts)
    n_batches = low // batch_size if drop_last else -(-low // batch_size)
    return n_batches, [min(c, n_batches * batch_size) for c in counts]


def _warn_dropped(cfg: LoaderConfig, counts: list[int], used: list[int], batch_size: int, n_batches: int) -> None:
    """One WARNING (rank 0) naming the samples of an epoch no rank reads, why, and settings that use them all."""
    spe, spw, world = cfg.samples_per_epoch, cfg.samples_per_window, len(counts)
    low = min(counts)
    beyond = sum(c - min(c, low if cfg.drop_last else n_batches * batch_size) for c in counts)
    partial = world * (low - n_batches * batch_size) if cfg.drop_last else 0
    why = [f"{beyond} beyond the fewest samples a rank has" if beyond else "",
           f"{partial} in partial batches (drop_last=True)" if partial else ""]
    step = world * math.lcm(spw, batch_size)  # equal windows per rank, and whole batches of them
    lower = spe // step * step
    fits = " or ".join(str(v) for v in (lower, lower + step) if v > 0)
    other = sum(_equal_batches(counts, batch_size, not cfg.drop_last)[1])
    alt = f", or drop_last={not cfg.drop_last} (reads {other})" if other > sum(used) else ""
    per_rank = f"{low}" if low == max(counts) else f"{low} to {max(counts)}"
    log.warning("fastload: %d of the %d samples per epoch are not read (%s): samples_per_epoch=%d in windows of "
                "samples_per_window=%d dealt to world_size=%d ranks gives each rank %s samples, and every rank makes "
                "the same number of batches (DDP steps together), here %d of batch_size=%d. samples_per_epoch=%s "
                "(a multiple of world_size x lcm(samples_per_window, batch_size) = %d) would read every sample%s",
                spe - sum(used), spe, ", ".join(w for w in why if w), spe, spw, world, per_rank, n_batches,
                batch_size, fits, step, alt)


def _check_explicit_counts(n: int, n_batches: int, world: int, batch_size: int, drop_last: bool) -> None:
    """Explicit per-rank plans in an initialised process group of ``world`` ranks: gather every rank's sample and
    batch counts once (one small all_gather on the group's device) and raise a ConfigError naming them all when the
    batch counts differ; otherwise the rank with fewer batches leaves the epoch early and the others' next
    collective fails (gloo) or hangs (NCCL)."""
    import torch.distributed as dist

    if world <= 1 or not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() != world:
        return
    backend = str(dist.get_backend())
    device = torch.device("cpu")
    if "gloo" not in backend and backend != "mpi" and torch.cuda.is_available():
        device = torch.device("cuda", torch.cuda.current_device())
    mine = torch.tensor([n, n_batches], dtype=torch.int64, device=device)
    got = [torch.zeros_like(mine) for _ in range(world)]
    dist.all_gather(got, mine)  # sync point: once, when the caller checks (Loader.check_ranks)
    counts = [(int(t[0]), int(t[1])) for t in got]
    if len({b for _, b in counts}) == 1:
        return
    each = ", ".join(f"rank {r}: {s} samples -> {b} batch(es)" for r, (s, b) in enumerate(counts))
    rounded_up = {-(-s // batch_size) for s, _ in counts}  # batches each rank would make with drop_last=False
    alt = (f", or pass drop_last=False (every rank then makes {rounded_up.pop()}, some a partial last one)"
           if drop_last and len(rounded_up) == 1 else "")
    raise ConfigError(f"Loader(boxes=...).check_ranks(): the ranks' explicit plans make different numbers of batches of "
                      f"batch_size={batch_size} (drop_last={drop_last}): {each}. boxes= is each rank's own plan and "
                      f"DDP needs the same number of steps on every rank (else a collective fails or hangs): give "
                      f"every rank equally many batches' worth of boxes (e.g. cut the whole plan to a multiple of "
                      f"world_size x batch_size = {world * batch_size} before splitting it by rank){alt}")


def _warn_rollout_unread(total: int, world: int, per_rank: int, batch_size: int, drop_last: bool) -> None:
    """The rollout loader's counterpart of :func:`_warn_dropped`: ``total`` initial times split equally between
    ``world`` ranks (``per_rank`` each), batched; one WARNING (rank 0) when some are not read."""
    n_batches = per_rank // batch_size if drop_last else -(-per_rank // batch_size)
    read = world * min(per_rank, n_batches * batch_size)
    if read < total:
        log.warning("fastload: %d of the %d initial times per epoch are not read: each of world_size=%d ranks gets "
                    "%d, in %d batch(es) of rollout.batch_size=%d%s", total - read, total, world, per_rank, n_batches,
                    batch_size, ", the partial one dropped (drop_last=True)" if drop_last else "")
