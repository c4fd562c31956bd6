"""The Forecaster side of ``fastload train`` / ``fastload profile`` (``model.kind = "forecaster"``).

Why this module exists: :mod:`profiling.loop` stays one top-to-bottom loop for both models; what differs for a
Forecaster lives here: building it on a Multiformer's encoder (a ``fastload train`` checkpoint, or a fresh
Multiformer, said so in the log), the data source (:class:`fastload.rollout_data.RolloutLoader`: the globe's tiles
at ``t`` and targets at ``t + k * lead``), and :class:`RolloutStep`, the module whose forward is the multi-step
rollout loss (DistributedDataParallel wraps it, so gradients are all-reduced as for the Multiformer).

    fastload train --preset cpu_tiny_forecaster --steps 20 --checkpoint-dir runs/fc
    fastload train --set model.kind=forecaster --set forecast.multiformer_checkpoint=runs/mf/last.pt
    fastload profile --preset cpu_tiny_forecaster
"""

from __future__ import annotations

import functools
import warnings
from collections.abc import Callable, Sequence
from typing import Any

import torch

from fastload.errors import ConfigError

__all__ = ["rollout_config", "forecaster_config", "multiformer_for", "build_forecaster", "run_forecaster", "geometry",
           "RolloutStep", "rollout_data_and_step", "rollout_inputs", "dummy_rollout_inputs", "count_rollout_flops"]


def rollout_config(cfg: Any) -> Any:
    """The :class:`~fastload.rollout_data.RolloutConfig` of a run's ``[forecast]`` section."""
    from fastload.rollout_data import RolloutConfig

    f = cfg.forecast
    return RolloutConfig(steps=f.rollout_steps, lead=f.lead, input_window=f.input_window,
                         readout_time_tokens=f.readout_time_tokens, overlap=f.overlap, neighbors=f.neighbors,
                         batch_size=f.batch_size)


def forecaster_config(cfg: Any, ramp: Sequence[int]) -> Any:
    """The :class:`model.ForecasterConfig` of a run; ``ramp`` is the tiling's taper width in points (its overlap)."""
    from model import ForecasterConfig

    f = cfg.forecast
    try:
        return ForecasterConfig(latent_dim=f.latent_dim, latent_queries=f.latent_queries, num_heads=f.num_heads,
                                adapter_layers=f.adapter_layers, tail_layers=f.tail_layers,
                                readout_layers=f.readout_layers, mlp_ratio=f.mlp_ratio,
                                ensemble_size=f.ensemble_size, input_window=f.input_window,
                                readout_time_tokens=f.readout_time_tokens,
                                overlap=(int(ramp[0]), int(ramp[1])), freeze_encoder=f.freeze_encoder)
    except ValueError as e:
        raise ConfigError(f"forecast: {e}") from None


def multiformer_for(cfg: Any, sampling: Any, build: Callable[[Any, Any], torch.nn.Module],
                    log: Callable[[str], None]) -> torch.nn.Module:
    """The Multiformer whose encoder the Forecaster uses: ``forecast.multiformer_checkpoint`` loaded into a model of
    the saved config (checked against the sampling config's fields), or ``build(cfg, sampling)`` fresh."""
    from model import Multiformer, MultiformerConfig, load_checkpoint

    path = cfg.forecast.multiformer_checkpoint
    if path is None:
        net = build(cfg, sampling)
        log("forecaster: no forecast.multiformer_checkpoint given: the encoder is a freshly initialised "
            f"(untrained) Multiformer's{', frozen' if cfg.forecast.freeze_encoder else ''}")
        return net
    from model.checkpoint import read_checkpoint

    try:  # a missing file, a folder, a file that is no checkpoint (a TOML file, a truncated .pt): named
        payload = read_checkpoint(path, "forecast.multiformer_checkpoint")
    except (FileNotFoundError, ValueError) as e:
        raise ConfigError(str(e)) from None
    if not isinstance(payload, dict) or payload.get("kind") != "multiformer":
        raise ConfigError(f"forecast.multiformer_checkpoint {path!r}: not a Multiformer checkpoint "
                          f"(kind {payload.get('kind') if isinstance(payload, dict) else None!r})")
    try:
        mcfg = MultiformerConfig.from_dict(payload["config"])
    except ValueError as e:
        raise ConfigError(f"forecast.multiformer_checkpoint {path!r}: {e}") from None
    for f in sampling.fields:
        try:
            spec = mcfg.field(f.name)
        except ValueError:
            raise ConfigError(f"forecast.multiformer_checkpoint {path!r} has no field {f.name!r} "
                              f"(it has {list(mcfg.field_names)})") from None
        levels = tuple(float(v) for v in f.levels) if f.levels else (0.0,)
        for key, want in (("levels", levels), ("num_tokens", f.num_tokens), ("token_size", f.token_size)):
            if tuple(getattr(spec, key)) != tuple(want):
                raise ConfigError(f"forecast.multiformer_checkpoint {path!r}: fields.{f.name}.{key} is "
                                  f"{list(getattr(spec, key))}, the sampling config has {list(want)}")
    net = Multiformer(mcfg)
    load_checkpoint(path, net, restore_rng=False)
    log(f"forecaster: encoder from the Multiformer checkpoint {path} (step {payload.get('step')})"
        f"{', frozen' if cfg.forecast.freeze_encoder else ''}")
    return net


def build_forecaster(cfg: Any, sampling: Any, ramp: Sequence[int], build: Callable[[Any, Any], torch.nn.Module],
                     log: Callable[[str], None]) -> torch.nn.Module:
    """The Forecaster of a run (seeded by ``cfg.seed``), on :func:`multiformer_for`'s Multiformer."""
    from model import Forecaster

    mf = multiformer_for(cfg, sampling, build, log)
    fcfg = forecaster_config(cfg, ramp)
    torch.manual_seed(cfg.seed + 1)  # the new parts' initialisation, apart from the Multiformer's seed
    try:
        net = Forecaster(fcfg, mf)
    except ValueError as e:
        raise ConfigError(f"forecast: {e}") from None
    if cfg.model.activation_checkpointing:
        from model import apply_activation_checkpointing

        apply_activation_checkpointing(net)
    return net


def run_forecaster(cfg: Any, sampling: Any, build: Callable[[Any, Any], torch.nn.Module], device: torch.device,
                   log: Callable[[str], None], where: str = "") -> torch.nn.Module:
    """The run's Forecaster (:func:`build_forecaster`, the taper ramp from ``forecast.overlap`` in the first field's
    token points) on ``device``, said in the log (``where``: what to add after the device, e.g. threads)."""
    first = sampling.fields[0]
    ramp = (cfg.forecast.overlap[0] * first.token_size[1], cfg.forecast.overlap[1] * first.token_size[2])
    net = build_forecaster(cfg, sampling, ramp, build, log).to(device)
    log(f"model: Forecaster, {net.num_parameters() / 1e6:.3f} M parameters "
        f"({net.num_parameters(trainable_only=True) / 1e6:.3f} M trainable), fields {list(sampling.field_names)}, "
        f"device {device}{where}")
    return net


def geometry(tiles: Any, device: torch.device) -> Any:
    """``model.TileGeometry`` (centres and neighbours) of a :class:`fastload.sampling.tiles.GlobalTiles`."""
    from model import TileGeometry

    return TileGeometry(lat=torch.as_tensor(tiles.lat, dtype=torch.float32, device=device),
                        lon=torch.as_tensor(tiles.lon, dtype=torch.float32, device=device),
                        neighbors=torch.as_tensor(tiles.neighbors, dtype=torch.long, device=device))


class RolloutStep(torch.nn.Module):
    """``forward(windows, targets, lead_hours) -> loss``: encode, roll out, score every step (one training step's
    forward). Wraps the Forecaster so DistributedDataParallel sees one forward per step; holds the tile geometry.
    Every batch has samples: the rollout loader refuses ``loader.on_bad_chunk = "skip"``.

    Parameters
    ----------
    forecaster : model.Forecaster
    geometry : model.TileGeometry
        On the model's device.
    kinds : mapping
        Loss kinds and weights (``{"mse": 1.0}``).
    tiles_per_chunk : int, optional
        Tiles encoded at once.
    """

    def __init__(self, forecaster: torch.nn.Module, geometry: Any, kinds: dict[str, float],
                 tiles_per_chunk: int | None = None):
        super().__init__()
        self.forecaster = forecaster
        self.geometry = geometry
        self.kinds = dict(kinds)
        self.tiles_per_chunk = tiles_per_chunk

    def forward(self, windows: Sequence[Any], targets: Sequence[Any], lead_hours: torch.Tensor) -> torch.Tensor:
        f = self.forecaster
        state = f.initial_state([f.encode(w, self.tiles_per_chunk) for w in windows])
        loss, _ = f.rollout_loss(state, targets, lead_time=lead_hours, geometry=self.geometry, kinds=self.kinds)
        return loss


def rollout_data_and_step(cfg: Any, net: torch.nn.Module, store: Any, sampling: Any, loader_cfg: Any,
                          device: torch.device, kinds: dict[str, float], *, count_flops: bool = False,
                          wrap_model: Callable[[Any], Any] | None = None) -> tuple[Any, torch.nn.Module, int | None]:
    """A Forecaster run's data and step: ``(RolloutLoader, the module one step's forward runs, FLOPs per step)``.

    The :class:`~fastload.rollout_data.RolloutLoader` reads the globe's tiles at ``t`` and targets at ``t + k *
    lead`` from ``store`` (its state, which every checkpoint saves, also records the store's time step in hours,
    ``time_step_hours``, which ``fastload rollout`` checks a store against); the step is a :class:`RolloutStep` on its tile geometry (``wrap_model`` applied to it);
    FLOPs of one step (forward + backward, on zeros of a batch's shapes) only with ``count_flops``, else None.
    """
    loader = _loader_class()(store, sampling, rollout_config(cfg), loader_cfg)
    step: torch.nn.Module = RolloutStep(net, geometry(loader.tiles, device), kinds, cfg.forecast.tiles_per_chunk)
    if wrap_model is not None:
        step = wrap_model(step)
    flops = None
    if count_flops:
        flops = count_rollout_flops(step, dummy_rollout_inputs(sampling, loader.tiles, loader.rollout, device),
                                    cfg.bf16, device)
    return loader, step, flops


@functools.cache
def _loader_class() -> type:
    """:class:`~fastload.rollout_data.RolloutLoader` whose :meth:`state_dict` (saved with every checkpoint, one per
    rank) records the store's time step in hours as ``time_step_hours``: the lead and the time tokens are counted in
    store steps, so a rollout checks that its store steps the same (:func:`profiling.rollout.check_time_step`)."""
    from fastload.rollout_data import RolloutLoader

    from .rollout import same_step, step_hours

    class ForecastLoader(RolloutLoader):  # imported lazily, as elsewhere in this module
        def state_dict(self) -> dict[str, Any]:
            return {**super().state_dict(), "time_step_hours": step_hours(self.times)}

        def load_state_dict(self, state: Any) -> None:  # --resume on a store with another step: refused
            saved, have = state.get("time_step_hours"), step_hours(self.times)
            if saved is None:  # a run saved before the step was recorded: its next checkpoint records this store's
                warnings.warn(f"load_state_dict: the saved run does not record its store's time step (saved before "
                              f"it was recorded): cannot check that {self.store.path} steps as that store did",
                              UserWarning, stacklevel=2)
            elif not same_step(saved, have):
                raise ConfigError(f"load_state_dict: the saved run's store stepped every {saved:g} h, "
                                  f"{self.store.path} every {'?' if have is None else f'{have:g}'} h; resume needs a store with the same step")
            super().load_state_dict(state)

    return ForecastLoader


def rollout_inputs(batch: Any, device: torch.device) -> tuple:
    """A :class:`~fastload.rollout_data.RolloutBatch` as :class:`RolloutStep`'s arguments on ``device``: ``(windows,
    targets, lead_hours)``."""
    windows, targets = batch.model_inputs(device)
    return windows, targets, batch.lead_hours.to(device, non_blocking=True)


def dummy_rollout_inputs(sampling: Any, tiles: Any, rollout: Any, device: torch.device) -> tuple:
    """Zeros shaped like one batch's ``model_inputs`` (for FLOP counting before the data flows)."""
    b, t = rollout.batch_size, tiles.num_tiles
    windows, targets = [], [{} for _ in range(rollout.steps)]
    for _ in range(rollout.input_window):
        win = {}
        for f in sampling.fields:
            grid = (b, t, f.num_levels, *f.num_tokens)
            meta = {k: torch.zeros(grid, device=device) for k in ("time_of_day", "day_of_year", "lat", "lon")}
            win[f.name] = {"tokens": torch.zeros((*grid, *f.token_size), device=device), "meta": meta}
        windows.append(win)
    for f in sampling.fields:
        grid = (b, t, f.num_levels, rollout.readout_time_tokens, *f.num_tokens[1:])
        for step in targets:
            step[f.name] = {"tokens": torch.zeros((*grid, *f.token_size), device=device),
                            "lat": torch.zeros(grid, device=device)}
    return windows, targets, torch.full((b,), 6.0, device=device)


def count_rollout_flops(step: RolloutStep, inputs: tuple, bf16: bool, device: torch.device) -> int:
    """Matmul/attention FLOPs of one rollout-loss forward + backward (``torch.utils.flop_counter``); grads cleared."""
    from torch.utils.flop_counter import FlopCounterMode

    with FlopCounterMode(display=False) as counter:
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=bf16):
            loss = step(*inputs)
        loss.backward()
    step.zero_grad(set_to_none=True)
    return int(counter.get_total_flops())
