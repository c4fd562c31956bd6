"""A validation loss during ``fastload train``: the model's loss on a held-out part of the time axis.

Why this module exists: a training run that only reports its training loss cannot tell learning from memorising.
The run file's ``[validation]`` section (:class:`profiling.run_config.ValidationConfig`) names a held-out period
(``time_range``, as ``loader.time_range`` takes it: train on ``loader.time_range``, validate on another); every
``every`` steps and at the end of the run, :class:`Validator` runs the model over the same ``samples`` samples
drawn from that period (epoch 0 of a loader of its own, seeded by ``validation.seed``, masked as training masks),
in eval mode without gradients, and reports the loss averaged over every rank's samples (one all-reduce). The
numbers go to the console (``validation at step N: loss ...``) and to ``summary.json`` (``validation``: one record
per validation, with its seconds). Its time falls between steps: the report books it as ``idle``, as it does a
checkpoint's.

    fastload train --config run.toml --set loader.time_range=1979-01-01,2016-01-01 \\
        --set validation.time_range=2016-01-01,2018-01-01 --set validation.every=500

A Forecaster run validates on initial times from the held-out period (``samples`` of them, each the whole globe,
through its rollout loader: the multi-step rollout loss). ``fastload profile`` with a validation range is a
ConfigError (it would sit inside the profiled steps).
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Callable
from typing import Any

import torch

from fastload.errors import ConfigError

__all__ = ["Validator", "check_mode", "make_validator"]


class Validator:
    """The loss of ``step_module`` over epoch 0 of ``loader`` (the same samples every call), every rank's samples
    weighted alike; :attr:`records` holds one dict per call (``step``, ``loss``, ``samples``, ``seconds``).
    ``forward(inputs)`` runs ``step_module`` on ``prepare(batch)`` and returns the batch's mean loss."""

    def __init__(self, loader: Any, step_module: torch.nn.Module, prepare: Callable[[Any], Any],
                 forward: Callable[[Any], torch.Tensor], autocast: Any, device: torch.device, world: int,
                 say: Callable[[str], None]):
        self.loader = loader
        self.step_module = step_module
        self.prepare = prepare
        self.forward = forward
        self.autocast = autocast
        self.device = device
        self.world = world
        self.say = say
        self.records: list[dict[str, Any]] = []

    def run(self, step: int) -> float:
        """Validate after ``step`` training steps; returns the loss (every rank gets the same value)."""
        t0 = time.perf_counter()
        was_training = self.step_module.training
        self.step_module.eval()
        total = torch.zeros(2, dtype=torch.float64, device=self.device)  # (sum of loss x samples, samples)
        try:
            self.loader.set_epoch(0)
            with torch.no_grad():
                for batch in self.loader:
                    n = len(batch)
                    if n == 0:  # every sample skipped for a bad chunk (loader.on_bad_chunk = "skip")
                        continue
                    with self.autocast:
                        loss = self.forward(self.prepare(batch))
                    total[0] += loss.detach().double() * n
                    total[1] += n
        finally:
            self.step_module.train(was_training)
        if self.world > 1:
            import torch.distributed as dist

            from .distributed import collective

            with collective("the validation loss (all-reduce)"):
                dist.all_reduce(total)
        loss_sum, samples = (float(v) for v in total.cpu())
        loss = loss_sum / samples if samples else float("nan")
        seconds = time.perf_counter() - t0
        self.records.append({"step": int(step), "loss": loss, "samples": int(samples), "seconds": seconds})
        said = f"loss {loss:.4f}" if samples else "no loss (every validation sample was skipped for bad chunks)"
        self.say(f"validation at step {step}: {said} over {int(samples)} samples ({seconds:.1f} s)")
        return loss

    def due(self, done: int, stop: int, every: int) -> bool:
        """Whether to validate after ``done`` steps of a run that stops at ``stop``."""
        return done == stop or (every > 0 and done % every == 0)

    def close(self) -> None:
        self.loader.close()


def check_mode(cfg: Any, mode: str) -> None:
    """A ConfigError when the run has a validation range but is not a ``train`` run, or validation settings without
    a range (:meth:`ValidationConfig.check_used`); checked with the run's folders, before any set-up."""
    v = cfg.validation
    v.check_used()
    if v.time_range is not None and mode != "train":
        raise ConfigError(f"validation.time_range = {list(v.time_range)!r}: validation runs in fastload train, not "
                          f"{mode} (it would sit inside the profiled steps); leave validation.time_range unset")


def make_validator(cfg: Any, mode: str, store: Any, sampling: Any, loader_cfg: Any,
                   train_indices: tuple[int, int] | None, step_module: torch.nn.Module,
                   prepare: Callable[[Any], Any], forward: Callable[[Any], torch.Tensor], autocast: Any,
                   device: torch.device, world: int, say: Callable[[str], None]) -> Validator | None:
    """The run's :class:`Validator` (a loader of its own on ``store`` over ``validation.time_range``: a
    :class:`fastload.Loader` masked as training's, or a Forecaster run's rollout loader), or None when the run has
    no validation range. A ConfigError for a profile run with one. ``train_indices``: the training loader's time
    indices (``time_indices``), for a note when the periods overlap."""
    v = cfg.validation
    if v.time_range is None:
        return None
    check_mode(cfg, mode)
    # threads: process workers would stay alive, idle, between validations for the whole run
    vcfg = dataclasses.replace(loader_cfg, time_range=v.time_range, samples_per_epoch=v.samples, seed=v.seed,
                               samples_per_window=1, drop_last=False, mode="thread")
    try:
        if cfg.model.kind == "forecaster":  # initial times from the held-out period, each the whole globe
            from .forecast import _loader_class, rollout_config

            loader = _loader_class()(store, sampling, rollout_config(cfg), vcfg)
        else:
            from fastload import Loader

            loader = Loader(store, sampling, vcfg,
                            masking=None if cfg.masking.strategy == "identity" else cfg.masking)
    except ConfigError as e:  # its settings are the validation's: name them so
        msg = str(e).replace("loader.time_range", "validation.time_range")
        msg = msg.replace(f"samples_per_epoch={v.samples}", f"validation.samples={v.samples}")
        raise ConfigError(msg) from None
    lo, hi = loader.time_indices
    when = f"every {v.every} steps and at the end of the run" if v.every else "at the end of the run"
    say(f"validation: {v.samples} samples from time indices [{lo}, {hi}) ({list(v.time_range)}), {when}")
    if train_indices is None:
        say("note: validation samples lie inside the training period: loader.time_range is unset, so training "
            "draws from the whole time axis; set it to a period apart from validation.time_range")
    elif max(lo, train_indices[0]) < min(hi, train_indices[1]):
        say(f"note: the validation period [{lo}, {hi}) overlaps the training period [{train_indices[0]}, "
            f"{train_indices[1]}) (loader.time_range): the two share samples")
    return Validator(loader, step_module, prepare, forward, autocast, device, world, say)
