"""Ranks and checkpoints of ``fastload train`` / ``fastload profile``: the DDP set-up and the run's state on disk.

Why this exists: :mod:`profiling.loop` is the loop; what it needs from torch.distributed and from checkpoints lives
here. Under ``torchrun`` (``WORLD_SIZE`` > 1) :func:`init_distributed` starts the process group (nccl on GPUs, gloo
on CPUs) and picks each rank's device; :func:`save_run` writes ``last.pt`` on rank 0 with the model, the optimizer,
*every* rank's loader position (gathered, so each rank resumes its own share of the epoch), the run config and the
sampling config as run; :func:`resume_run` restores them and returns the step to continue from.

    torchrun --standalone --nproc_per_node 2 -m profiling.loop train --preset cpu_tiny --device cpu \
        --checkpoint-dir runs/ddp --stop-at 4 && ... --resume

A rank that stops taking part (frozen, killed, a node gone) must not hang the others for torch's default 30 min
(gloo) or 10 min (nccl): the group is started with ``timeout = RunConfig.dist_timeout_s`` (default 10 min;
``--set dist_timeout_s=S``), after which a waiting rank fails. gloo raises in the waiting call; with nccl the
process group's watchdog tears the process down, which it does only while ``TORCH_NCCL_ASYNC_ERROR_HANDLING`` is
not 0 (torch's default is 3) or ``TORCH_NCCL_BLOCKING_WAIT=1`` makes the waiting call raise instead
(:func:`nccl_timeout_problem`). A failed collective of this module raises :class:`CollectiveError`, naming the
rank, the collective and the setting.

A rank that fails on its own before the run's work (a report folder or checkpoint that only its node cannot use, an
exception in its set-up, rank 0's checkpoint write during the work) must not leave the others waiting for it in
their next collective either: nccl notices no process that has ended, so they would wait the whole timeout. The
loop runs each such stretch inside
:func:`all_or_none`, after which every rank says whether it passed (one small gather); all ranks then fail together,
the failing rank with its own error, the others with a :class:`RankFailedError` naming it and its message.

The ranks' settings are compared once, in the run's first checks (:func:`run_settings`,
:func:`check_same_settings`): a rank with another model shape would fail in DDP's constructor with its raw
traceback, one with other steps, ``stop_at``, ``checkpoint_every``, ``log_every`` or validation would wait in a
collective the others never join, one with another learning rate would train a diverging replica without a word.
Paths, device, threads and the loader's per-machine tuning may differ (:data:`_PER_RANK` says why).
"""

from __future__ import annotations

import atexit
import contextlib
import datetime
import importlib
import os
import warnings
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import torch

from fastload._device import default_device
from fastload.errors import ConfigError, FastloadError

from .presets import RunConfig

__all__ = ["CollectiveError", "RankFailedError", "init_distributed", "collective", "nccl_timeout_problem",
           "gather", "all_or_none", "run_settings", "check_same_settings", "save_run", "resume_run"]

_timeout_s: float | None = None
"""The collective timeout :func:`init_distributed` started this process's group with (None: it started none)."""


class CollectiveError(FastloadError, RuntimeError):
    """A collective (all-reduce, barrier, gather) failed or timed out: another rank stopped taking part."""


class RankFailedError(FastloadError, RuntimeError):
    """Another rank failed a stretch every rank runs (:func:`all_or_none`): this rank stops with it."""


def nccl_timeout_problem(env: Mapping[str, str]) -> str | None:
    """Why a stuck nccl collective would not end after the group's timeout under ``env``, or None when it would.

    ProcessGroupNCCL's watchdog acts on a timed-out collective as ``TORCH_NCCL_ASYNC_ERROR_HANDLING`` says (1: abort
    the communicator and end the process, 2: abort the communicator, 3, torch's default: end the process); 0 does
    nothing, and then only ``TORCH_NCCL_BLOCKING_WAIT=1`` (the waiting call blocks, and raises at the timeout)
    bounds the wait. The names without ``TORCH_`` are the older spellings torch still reads.
    """
    def get(name: str) -> str | None:
        v = env.get(f"TORCH_{name}", env.get(name))
        return None if v is None else v.strip().lower()

    if get("NCCL_BLOCKING_WAIT") in ("1", "true") or get("NCCL_ASYNC_ERROR_HANDLING") != "0":
        return None
    return ("TORCH_NCCL_ASYNC_ERROR_HANDLING=0 turns off nccl's watchdog handling of a timed-out collective, so "
            "dist_timeout_s cannot end a run whose rank is stuck: a frozen rank hangs the others for ever. Unset it "
            "(torch's default, 3, ends the process at the timeout) or set TORCH_NCCL_BLOCKING_WAIT=1")


@contextlib.contextmanager
def collective(what: str, *, among_other_work: bool = False) -> Iterator[None]:
    """Run the collective(s) in the ``with`` block; one that fails (another rank died, or did not join within the
    group's timeout) raises :class:`CollectiveError` naming this rank, ``what`` and the timeout setting.
    ``among_other_work``: the block also does other work (DDP's backward), so only an error from the collective
    layer (torch's DistError, or a message of gloo or nccl) is one; any other RuntimeError passes unchanged."""
    try:
        yield
    except RuntimeError as e:  # torch's DistError / DistBackendError, gloo's "Timed out waiting 600000ms ..."
        import torch.distributed as dist

        if isinstance(e, FastloadError) or not dist.is_initialized():
            raise
        if among_other_work and not (isinstance(e, dist.DistError) or any(
                k in str(e) for k in ("gloo", "Gloo", "NCCL", "nccl", "Timed out waiting", "Connection closed by peer",
                                      "Connection reset by peer"))):
            raise
        limit = f"dist_timeout_s = {_timeout_s:g} s" if _timeout_s is not None else "the process group's timeout"
        raise CollectiveError(
            f"rank {dist.get_rank()} of {dist.get_world_size()}: {what} did not complete ({e}). Another rank "
            f"stopped taking part: it died, froze, or is far behind (rank 0 synthesising the built-in dataset); a "
            f"rank waits {limit} for the others (run file: dist_timeout_s = S; command line: --set "
            f"dist_timeout_s=S)") from e


def init_distributed(cfg: RunConfig) -> tuple[int, int, torch.device]:
    """(rank, world size, device); starts the process group under torchrun (WORLD_SIZE > 1), whose collectives
    fail after ``cfg.dist_timeout_s`` seconds instead of waiting for ever on a rank that stopped."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    want = cfg.device or cfg.loader.device
    if world > 1:
        import torch.distributed as dist

        local = int(os.environ.get("LOCAL_RANK", "0"))
        # asked for before what the machine has: a bad FASTLOAD_DEVICE or a cuda device on a machine without CUDA
        # is an error, not a silent CPU run
        cuda = want.startswith("cuda") if want else default_device().type == "cuda"
        if cuda and not torch.cuda.is_available():
            raise ConfigError(f"device = {want!r} but CUDA is not available on this machine (use --device cpu)")
        if not dist.is_initialized():  # (one started by the caller keeps its own timeout)
            global _timeout_s
            if cuda and (problem := nccl_timeout_problem(os.environ)):
                warnings.warn(problem, RuntimeWarning, stacklevel=2)
            # imported before the group exists: its functions take ``group=group.WORLD`` as a default argument,
            # evaluated at import, and DistributedDataParallel imports it; imported after, they would hold the
            # default group for the process's life, so that no destroy_process_group ends it (_destroy_at_exit)
            importlib.import_module("torch.distributed.nn.functional")
            dist.init_process_group("nccl" if cuda else "gloo",
                                    timeout=datetime.timedelta(seconds=cfg.dist_timeout_s))
            _timeout_s = cfg.dist_timeout_s
            atexit.register(_destroy_at_exit)
        device = torch.device(f"cuda:{local}") if cuda else torch.device("cpu")
        if cuda:
            torch.cuda.set_device(device)
        return dist.get_rank(), dist.get_world_size(), device
    if want is None:
        return 0, 1, default_device()
    device = torch.device(want)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ConfigError(f"device = {want!r} but CUDA is not available on this machine (use --device cpu)")
    return 0, 1, device


def _destroy_at_exit() -> None:
    """Destroy the process group :func:`init_distributed` started, at interpreter exit while Python is still whole
    (a no-op if someone destroyed it before), so that its worker threads are joined before the interpreter
    finalizes.

    Why: a gloo worker thread releases a collective's work (and its tensors) only after the collective has returned
    to Python. Releasing a tensor Python also saw takes the GIL, and a thread that asks for the GIL while the
    interpreter finalizes is ended by ``pthread_exit``, whose unwinding through the work's destructor (noexcept)
    calls ``std::terminate``: "terminate called without an active exception", exit status -6 instead of the
    process's own (pytorch issue 190489; core dump: ``~AsyncAllgatherWork`` -> ``decref_pyobject`` ->
    ``take_gil`` -> ``PyThread_exit_thread`` on a ``pt_gloo_runloop`` thread). A rank that exits right after a
    collective is at risk: one that failed the run's checks (:func:`all_or_none`) exited -6 instead of 2 in 1 run
    of 21 on a loaded machine (5ce1627, Python 3.12).

    The group ends only with its last reference: garbage still holding it (DistributedDataParallel's reducer, in
    a reference cycle) is collected first, and :func:`init_distributed` imports ``torch.distributed.nn.functional``
    before the group exists (its default arguments would hold it). A model the caller still holds at exit keeps
    the group, and its threads, alive."""
    import gc

    import torch.distributed as dist

    if dist.is_initialized():
        gc.collect()  # a DistributedDataParallel no longer used, in a cycle, holds the group through its reducer
        try:
            dist.destroy_process_group()
        except Exception:  # noqa: BLE001 - exiting anyway; the run's own error (if any) is already out
            pass


def gather(obj: Any, world: int, what: str = "an object") -> list[Any]:
    """Every rank's ``obj`` (picklable), in rank order; ``[obj]`` without torch.distributed. ``what`` names it in
    the :class:`CollectiveError` of a rank that did not join."""
    if world == 1:
        return [obj]
    import torch.distributed as dist

    out: list[Any] = [None] * world
    with collective(f"gathering {what} from every rank"):
        dist.all_gather_object(out, obj)
    return out


_SAID_CHARS = 2000
"""The most characters of a failed rank's message the others repeat (its own error is whole)."""


@contextlib.contextmanager
def all_or_none(what: str, world: int) -> Iterator[None]:
    """Run the ``with`` block on every rank, then agree: every rank reports whether its block raised (one
    ``all_gather_object`` of None or its error), and if any did, every rank fails at once, not in its next collective
    after ``dist_timeout_s``. The rank whose block raised re-raises its own error; the others raise
    :class:`RankFailedError` naming each failed rank and its message. ``what`` names the stretch in that message.

    The block must run no collective (a rank that failed before it would leave the others waiting there). Nothing
    is gathered without torch.distributed (``world == 1``): the block's error passes as it is."""
    if world == 1:
        yield
        return
    failure: Exception | None = None
    try:
        yield
    except Exception as e:  # any error of the block: the ranks must hear of it, then it is raised
        failure = e
    said = None if failure is None else f"{type(failure).__name__}: {failure}"[:_SAID_CHARS]
    try:
        reports = gather(said, world, f"whether every rank passed {what}")
    except CollectiveError:
        if failure is not None:  # this rank's own error says more than the others' silence
            raise failure from None
        raise
    if failure is not None:
        raise failure
    failed = [(r, msg) for r, msg in enumerate(reports) if msg is not None]
    if failed:
        import torch.distributed as dist

        ranks = ", ".join(str(r) for r, _ in failed)
        raise RankFailedError(f"rank {dist.get_rank()} of {world}: stopping because rank(s) {ranks} failed {what}: "
                              + "; ".join(f"rank {r}: {msg}" for r, msg in failed))


_PER_RANK = ("name", "device", "threads", "dist_timeout_s", "checkpoint_dir", "report_dir",
             "data.store", "data.cache_dir", "data.storage_options", "data.backend", "data.latency_ms",
             "data.sampling.norm_path", "forecast.multiformer_checkpoint",
             "loader.workers", "loader.mode", "loader.prefetch", "loader.cache_bytes", "loader.fetch_concurrency",
             "loader.read_ahead_bytes", "loader.device", "loader.pin_memory", "loader.rank", "loader.world_size",
             "loader.retries", "loader.read_timeout_s", "loader.worker_start_timeout_s")
"""Settings that may differ between ranks, left out of :func:`check_same_settings` (any key under one of them too,
and a stream's ``path`` and ``norm_path``): where this rank's node finds or writes things (paths, the cache folder, storage options,
the store backend), which device and how many threads it uses, the label ``name`` of the preset, and the loader's
per-machine tuning (workers, thread/process mode, prefetch, cache, fetch concurrency, read-ahead, pin_memory,
retries and timeouts, the simulated latency). None of them changes the model, the data a step trains on, the
number or order of collectives, or the update, so ranks on machines of another kind may tune them apart.
``dist_timeout_s`` is the process group's, started before the settings can be compared."""


def run_settings(cfg: RunConfig, mode: str, stop_at: int | None, resuming: bool) -> dict[str, Any]:
    """The settings every rank of a run must share, flat (``model.embed_dim``: 32): the run config's
    :meth:`RunConfig.to_dict` without :data:`_PER_RANK`, and the run's arguments that decide its collectives
    (``mode``, ``stop_at``, ``resume`` whether it resumes)."""
    flat: dict[str, Any] = {}

    def walk(prefix: str, value: Any) -> None:
        if prefix in _PER_RANK or (prefix.startswith("data.sampling.streams.")
                                   and prefix.endswith((".path", ".norm_path"))):
            return
        if isinstance(value, Mapping) and value:
            for k, v in value.items():
                walk(f"{prefix}.{k}" if prefix else str(k), v)
        else:
            flat[prefix] = value

    walk("", cfg.to_dict())
    flat.update({"mode": mode, "stop_at (--stop-at)": stop_at, "resume (--resume)": resuming})
    return flat


def check_same_settings(settings: list[dict[str, Any]]) -> None:
    """Raise :class:`ConfigError` naming each setting whose value differs between the ranks (``settings``: each
    rank's :func:`run_settings`, in rank order) and each rank's value; every rank raises the same error, so the
    run stops on all of them at once, before a model of another shape reaches DDP's broadcast, a rank with other
    steps waits for ever in a collective, or replicas with another learning rate silently diverge."""
    keys = sorted({k for s in settings for k in s})
    missing = object()
    bad = []
    for k in keys:
        values = [s.get(k, missing) for s in settings]
        if any(v != values[0] for v in values[1:]):
            bad.append(f"{k}: " + ", ".join(f"rank {r} = {'(unset)' if v is missing else repr(v)}"
                                            for r, v in enumerate(values)))
    if bad:
        raise ConfigError(f"the ranks' settings differ ({len(bad)}): " + "; ".join(bad) + " (every rank of a run "
                          "needs the same run file, --set and flags, except paths, device, threads and the "
                          "loader's tuning)")


def save_run(path: Path, net: torch.nn.Module, opt: Any, step: int, loader: Any, cfg: RunConfig, rank: int,
             world: int) -> None:
    """Write the run's checkpoint at ``path`` (rank 0; every rank takes part in gathering the loader positions).

    The write is agreed on (:func:`all_or_none`, which also stands for the barrier after it): when rank 0 cannot
    write (a full disk, a folder gone), every rank stops at once naming rank 0's error, instead of the others going
    on to their next collective and waiting there ``dist_timeout_s``."""
    from model import save_checkpoint

    states = gather(loader.state_dict(), world, "the loader positions for the checkpoint")  # each resumes its own
    with all_or_none(f"writing the checkpoint {path}", world):
        if rank == 0:  # "sampling": the config as run (with the coefficients prepare_data found), for inference
            save_checkpoint(path, net, opt, step=step,
                            extra={"loader": states, "world_size": world, "run": cfg.to_dict(),
                                   "sampling": loader.config.to_dict()})


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
