"""The checks :mod:`profiling.loop` makes before a run's work: what it reads and writes must be usable.

Why this exists: a report folder that is a file, or a checkpoint that is not one, found after the steps would lose
the trained model; so the store and its fields (:func:`check_store`, from the command line's settings) and the
checkpoints the run reads and the folders it writes (:func:`check_paths`) are checked before any data is prepared or
a model built. Under torchrun every rank checks its own, then the ranks agree
(:func:`profiling.distributed.all_or_none`). Each error names the setting or flag at fault.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from fastload.errors import ConfigError, FastloadError, StoreError

from .presets import RunConfig

__all__ = ["LossNotFiniteError", "check_loss_finite", "check_output_dir", "check_input_checkpoint", "check_paths", "check_store", "checkpoint_step",
           "check_steps_left", "check_stop_without_checkpoint"]


def check_output_dir(path: str | os.PathLike[str], what: str) -> None:
    """Raise :class:`ConfigError` naming ``what`` unless ``path`` is a folder or can be made one (its first existing
    ancestor a writable folder). Nothing is created: run before the run starts, so that a file in its place fails at
    once, not after the steps when the report or checkpoint is written (the trained model was lost)."""
    p = Path(path)
    if p.exists() and not p.is_dir():
        raise ConfigError(f"{what}: {str(p)!r} is a file; expected a folder (an existing one or one to create)")
    top = p
    while not top.exists() and top != top.parent:  # (a path under a file does not exist either)
        top = top.parent
    if top.exists() and not top.is_dir():
        raise ConfigError(f"{what}: {str(p)!r} cannot be created: {str(top)!r} is a file; expected a folder "
                          "(an existing one or one to create)")
    if top.is_dir() and not os.access(top, os.W_OK | os.X_OK):
        raise ConfigError(f"{what}: {str(p)!r} cannot be written: no write permission in {str(top)!r}")


def check_input_checkpoint(path: str | os.PathLike[str], what: str) -> None:
    """Raise :class:`ConfigError` naming ``what`` unless ``path`` can be a checkpoint (a whole ``torch.save`` file:
    :func:`model.checkpoint.check_checkpoint_file`, which reads no tensors); before the run starts."""
    from model.checkpoint import check_checkpoint_file

    if not Path(path).exists():
        raise ConfigError(f"{what}: no checkpoint {str(path)!r} (no file there)")
    try:
        check_checkpoint_file(path, what)
    except (FileNotFoundError, ValueError) as e:
        raise ConfigError(str(e)) from None


def checkpoint_step(path: str | os.PathLike[str]) -> int | None:
    """The ``step`` a checkpoint holds, read without loading its tensors (``torch.load`` with ``mmap``: the pickle
    is read, the tensors' storage only mapped); None when it cannot be read so (the full read in the resume then
    names what is wrong)."""
    import torch

    try:
        payload = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
    except Exception:  # a foreign or damaged file: read_checkpoint's message, at the resume, says what it is
        return None
    step = payload.get("step") if isinstance(payload, dict) else None
    return step if isinstance(step, int) and not isinstance(step, bool) else None


def check_steps_left(start: int, steps: int, stop_at: int | None, resume: Any) -> None:
    """Raise :class:`ConfigError` unless a run at step ``start`` (0, or the ``resume`` checkpoint's) has steps left
    to train: ``start < steps``, and ``start < stop_at <= steps`` when ``stop_at`` is given. Each message names the
    setting to change (``--steps``, ``--stop-at``) and the checkpoint."""
    at = f"its checkpoint --resume {str(resume)!r} is at step {start}" if resume is not None else "it starts at step 0"
    if start >= steps:
        raise ConfigError(f"steps = {steps} (--steps): the run is already at its steps ({at}): nothing left to "
                          f"train; raise --steps above {start} to train on")
    if stop_at is not None and not start < stop_at <= steps:
        raise ConfigError(f"--stop-at {stop_at} (stop_at): the run cannot stop at step {stop_at}: expected a step "
                          f"in [{start + 1}, {steps}] ({at}; steps = {steps})")


def check_stop_without_checkpoint(stop_at: int, steps: int) -> None:
    """Raise :class:`ConfigError` for ``--stop-at`` given without ``--checkpoint-dir`` (a stop with nothing to
    resume from), with the advice that fits ``stop_at``: a step outside ``[1, steps]`` is named as such; a stop
    before the last step can be a shorter run (``--steps``, whose schedule then ends there); a stop at the last
    step is the run's own end (leave ``--stop-at`` out)."""
    what = f"--stop-at {stop_at} (stop_at) without --checkpoint-dir (checkpoint_dir)"
    if not 1 <= stop_at <= steps:
        raise ConfigError(f"{what}: expected a step in [1, {steps}] (steps = {steps}; after a resume, above its "
                          f"checkpoint's step), and --checkpoint-dir DIR for the checkpoint to resume from")
    if stop_at == steps:
        raise ConfigError(f"{what}: the run ends at step {steps} (steps = {steps}) anyway; leave out --stop-at, or "
                          f"give --checkpoint-dir DIR for a checkpoint to resume from")
    raise ConfigError(f"{what}: the run would stop at step {stop_at} with no checkpoint to resume from; give "
                      f"--checkpoint-dir DIR, or --steps {stop_at} for a shorter run (its learning-rate schedule "
                      f"then ends at step {stop_at})")


def check_paths(cfg: RunConfig, mode: str, out_dir: Path, out_flag: str, torch_profiler: Any,
                 resume: Any) -> None:
    """The run's inputs and outputs, before any data is prepared or a model built: the checkpoints it reads and the
    folders it writes (report, checkpoints, torch.profiler traces)."""
    if resume is not None:
        check_input_checkpoint(resume, "--resume")
    if cfg.model.kind == "forecaster" and cfg.forecast.multiformer_checkpoint is not None:
        check_input_checkpoint(cfg.forecast.multiformer_checkpoint, "forecast.multiformer_checkpoint")
    check_output_dir(out_dir, out_flag)
    if mode == "train" and cfg.checkpoint_dir:
        check_output_dir(cfg.checkpoint_dir, "checkpoint_dir (--checkpoint-dir)")
        if (Path(cfg.checkpoint_dir) / "last.pt").is_dir():
            raise ConfigError(f"checkpoint_dir (--checkpoint-dir) {cfg.checkpoint_dir!r}: its last.pt is a folder; "
                              "the checkpoint is written as the file last.pt")
    if torch_profiler is not None:
        check_output_dir(torch_profiler, "--torch-profiler")


def check_store(cfg: RunConfig, flag: str, *, from_file: bool) -> None:
    """Open the run's store (an error names the path when nothing is there) and check the sampling config's fields,
    levels and box against it; a preset's fields not in the store get a pointer to the run file that names yours."""
    from fastload.store import open_store

    path = cfg.data.store
    try:
        store = open_store(path, storage_options=cfg.data.storage_options, backend=cfg.data.backend)
    except (StoreError, ConfigError) as e:  # their messages name the path
        raise type(e)(f"{flag}: {e}") from None
    try:
        store.check(cfg.data.sampling)
    except ConfigError as e:
        hint = "" if from_file else (
            f" (the preset {cfg.name!r} samples the built-in dataset's fields: to sample your own store, give a run "
            f"file with [data] store and sampling, a sampling config of its fields: --config run.toml; see the "
            f"README, 'Profiling a training run')")
        raise ConfigError(f"{flag}: {e}{hint}") from None


class LossNotFiniteError(FastloadError, RuntimeError):
    """The training loss is nan or infinite: the run diverged, and stops before its next log line or checkpoint."""


def check_loss_finite(mean: float | None, first: int, last: int, cfg: RunConfig, ckpt: Any,
                      finite_to: int | None = None) -> None:
    """Raise :class:`LossNotFiniteError` when ``mean``, the loss read over steps ``first``-``last`` (the mean since
    the previous log line; None: every batch was empty), is not finite, naming the steps, the value and the
    settings that usually cause it; ``finite_to``: the last step a check of this mean passed (a checkpoint's
    between log lines), so the loss turned in the steps after it. Called before the step's log line and
    checkpoint, so a checkpoint ``ckpt`` written before is left as it was (a diverged model does not overwrite it)."""
    import math

    if mean is None or math.isfinite(mean):
        return
    steps = f"step {last}" if first == last else f"steps {first}-{last}"
    if finite_to is not None and first <= finite_to < last:
        steps += f"; finite through step {finite_to}"
    kept = (f"; no checkpoint is written from step {last} on ({str(ckpt)!r} keeps the one written before, if "
            f"any)") if ckpt is not None else ""
    raise LossNotFiniteError(
        f"the training loss is {mean} (the mean over {steps}): the run diverged and stops{kept}. Likely causes: "
        f"optim.lr = {cfg.optim.lr:g} too high (--set optim.lr=...), optim.grad_clip = {cfg.optim.grad_clip:g} "
        f"(0: no clipping; --set optim.grad_clip=1.0), bf16 = {cfg.bf16} (bfloat16 autocast; try without --bf16)")
