"""Run configurations for ``fastload train`` / ``fastload profile``: one typed :class:`RunConfig`, presets as functions.

Why this module exists: a training or profiling run combines settings owned by several parts (what to sample,
how to load it, the model, the optimiser, masking, steps, precision). :class:`RunConfig` puts them in one frozen,
validated object that a report or checkpoint stores with ``to_dict()`` (the typed sections live in
:mod:`profiling.run_config`; this module re-exports them). Presets are plain functions
(torchtitan's recipes): :func:`cpu_tiny` (the default of ``fastload profile`` with no arguments: the built-in
tiny synthetic dataset and a width-32 Multiformer, seconds on a laptop CPU), :func:`cpu_tiny_forecaster` (the same
data, a Forecaster trained with a multi-step latent rollout loss on global tiles; ``model.kind = "forecaster"``
and the ``[forecast]`` section), :func:`small_h100` and :func:`atmorep_h100` (GPU runs on larger synthetic
stores). The command line picks one (``--preset``) or reads a
TOML file (``--config run.toml``; ``preset = "cpu_tiny"`` in the file takes a preset as the base) and then
applies dotted overrides (``--set loader.batch_size=8``) through :func:`fastload.apply_overrides`.

A run file::

    preset = "cpu_tiny"                 # optional base; everything below overrides it
    steps = 200
    checkpoint_dir = "runs/ckpt"
    [data]
    store = "era5.zarr"                 # omit for the built-in synthetic dataset
    sampling = "sampling.toml"          # a path (relative to this file) or an inline table
    [loader]
    workers = 4
    [model]
    embed_dim = 64
    [optim]
    lr = 3e-4

Run ``python -m profiling.presets`` to print every preset as such a TOML-like dict.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import sys
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

from fastload.config import FieldConfig, LoaderConfig, SamplingConfig
from fastload.errors import ConfigError

from .run_config import DATA_MODES, DataConfig, ForecastConfig, ModelConfig, OptimConfig, RunConfig
from .run_config import redact as redact  # (re-exported: profiling.loader_profile imports it from here)

__all__ = [
    "DATA_MODES",
    "DataConfig",
    "ModelConfig",
    "OptimConfig",
    "ForecastConfig",
    "RunConfig",
    "PRESETS",
    "cpu_tiny",
    "cpu_tiny_forecaster",
    "small_h100",
    "atmorep_h100",
    "get_preset",
    "load_run_config",
]


# -- presets ------------------------------------------------------------------------------------------------------


def _fields(names: Sequence[str], levels: Sequence[float] | None, num_tokens: Sequence[int],
            token_size: Sequence[int], surface: Sequence[str] = ()) -> tuple[FieldConfig, ...]:
    out = [FieldConfig(name=n, levels=tuple(levels) if levels else None, num_tokens=tuple(num_tokens),
                       token_size=tuple(token_size)) for n in names]
    out += [FieldConfig(name=n, num_tokens=tuple(num_tokens), token_size=tuple(token_size)) for n in surface]
    return tuple(out)


def cpu_tiny() -> RunConfig:
    """The built-in tiny dataset (61 x 120 grid, 48 h) and a width-32 Multiformer: seconds on a CPU.

    Two fields on two model levels and one surface field, 2 x 3 x 4 tokens of 3 h x 3 x 3 points; batch 4;
    20 steps of which 3 are warm-up. The default of ``fastload profile`` with no arguments.
    """
    sampling = SamplingConfig(fields=_fields(("temperature", "velocity_u"), (96, 137), (2, 3, 4), (3, 3, 3),
                                             surface=("t2m",)), batch_size=4)
    return RunConfig(
        name="cpu_tiny",
        data=DataConfig(sampling=sampling, synth_preset="tiny"),
        loader=LoaderConfig(workers=2, prefetch=2, samples_per_epoch=256, cache_bytes=64 * 2**20),
        model=ModelConfig(embed_dim=32, num_heads=2, encoder_layers=2, decoder_layers=2, ensemble_size=4),
        optim=OptimConfig(lr=1e-3, min_lr=1e-4, warmup_steps=2),
        steps=20, warmup=3, log_every=5,
    )


def cpu_tiny_forecaster() -> RunConfig:
    """:func:`cpu_tiny`'s data and Multiformer sizes, training a Forecaster: global tiles overlapping by one token,
    a two-step rollout loss, one initial time per batch, 10 steps; the encoder is frozen (a fresh Multiformer's
    unless ``forecast.multiformer_checkpoint`` names a trained one).
    """
    base = cpu_tiny()
    return dataclasses.replace(
        base, name="cpu_tiny_forecaster", model=dataclasses.replace(base.model, kind="forecaster"),
        forecast=ForecastConfig(latent_dim=32, latent_queries=4, num_heads=2, tail_layers=2, rollout_steps=2,
                                overlap=(1, 1), neighbors=4, batch_size=1),
        optim=OptimConfig(lr=1e-3, min_lr=1e-4, warmup_steps=2), steps=10, warmup=2, log_every=2,
    )


def small_h100() -> RunConfig:
    """The ``small`` synthetic dataset (91 x 180, 72 h, four fields x five levels) and a width-256 model on a GPU.

    6 x 6 x 8 tokens of 3 h x 6 x 6 points per field, batch 32, bf16, compiled, 8 loader threads.
    """
    sampling = SamplingConfig(fields=_fields(("temperature", "specific_humidity", "velocity_u", "velocity_v"),
                                             (96, 105, 114, 123, 137), (6, 6, 8), (3, 6, 6)), batch_size=32)
    return RunConfig(
        name="small_h100",
        data=DataConfig(sampling=sampling, synth_preset="small"),
        loader=LoaderConfig(workers=8, prefetch=4, samples_per_epoch=8192, cache_bytes=4 * 2**30),
        model=ModelConfig(embed_dim=256, num_heads=8, encoder_layers=4, decoder_layers=4, ensemble_size=8),
        optim=OptimConfig(lr=3e-4, min_lr=3e-5, warmup_steps=20),
        steps=100, warmup=15, bf16=True, compile=True, device="cuda", log_every=20,
    )


def atmorep_h100() -> RunConfig:
    """AtmoRep's geometry on the 0.25 degree synthetic dataset: temperature on five model levels, 12 x 6 x 12
    tokens of 3 h x 9 x 9 points (36 h x 54 x 108 points), the AtmoRep-sized Multiformer (width 1024, 16 heads,
    6 + 6 layers, ensemble 16), bf16, compiled, 14 loader threads, batch 16.
    """
    sampling = SamplingConfig(fields=_fields(("temperature",), (96, 105, 114, 123, 137), (12, 6, 12), (3, 9, 9)),
                              batch_size=16)
    return RunConfig(
        name="atmorep_h100",
        data=DataConfig(sampling=sampling, synth_preset="era5-025"),
        loader=LoaderConfig(workers=14, prefetch=4, samples_per_epoch=16384, cache_bytes=24 * 2**30),
        model=ModelConfig(embed_dim=1024, num_heads=16, encoder_layers=6, decoder_layers=6, ensemble_size=16),
        optim=OptimConfig(lr=1e-4, min_lr=1e-5, warmup_steps=50),
        steps=60, warmup=15, bf16=True, compile=True, device="cuda", log_every=20,
    )


PRESETS: dict[str, Callable[[], RunConfig]] = {"cpu_tiny": cpu_tiny, "cpu_tiny_forecaster": cpu_tiny_forecaster,
                                               "small_h100": small_h100, "atmorep_h100": atmorep_h100}
"""Preset name -> function returning its :class:`RunConfig`."""


def get_preset(name: str) -> RunConfig:
    """The :class:`RunConfig` of a preset by name (:data:`PRESETS`)."""
    if name not in PRESETS:
        raise ConfigError(f"preset: expected one of {list(PRESETS)}, got {name!r}")
    return PRESETS[name]()


def _merge(base: Mapping[str, Any], top: Mapping[str, Any]) -> dict[str, Any]:
    """Tables merge key by key; ``fields``/``streams`` tables and plain values replace."""
    out = dict(base)
    for k, v in top.items():
        if isinstance(v, Mapping) and isinstance(out.get(k), Mapping) and k not in ("fields", "streams"):
            out[k] = _merge(out[k], v)
        else:
            out[k] = v
    return out


def load_run_config(path: str | os.PathLike[str] | None = None, *, preset: str | None = None,
                    overrides: Sequence[str] = ()) -> RunConfig:
    """The run config of a TOML file and/or a preset, with dotted overrides applied.

    Parameters
    ----------
    path : path, optional
        A run file (TOML). A top-level ``preset = NAME`` in it takes that preset as the base. Relative paths in
        it (store, sampling file, an inline sampling table's norm_path and stream paths, checkpoint and report
        folders) are relative to the file.
    preset : str, optional
        Base preset when the file names none. Without a file the default is ``cpu_tiny``; a file naming no
        preset (here or in it) is the whole run config and needs its own ``[data]`` section.
    overrides : sequence of str
        ``key=value`` items (:meth:`RunConfig.override`).
    """
    if path is None:
        cfg = get_preset(preset or "cpu_tiny")
    else:
        import tomllib

        p = Path(path)
        if not p.is_file():
            raise ConfigError(f"run config file {str(p)!r} does not exist")
        try:
            d = tomllib.loads(p.read_text())
        except tomllib.TOMLDecodeError as e:
            raise ConfigError(f"{p}: not a valid TOML file: {e}") from None
        name = d.pop("preset", None) or preset
        base: dict[str, Any] = get_preset(name).to_dict() if name else {}
        merged = _merge(base, d)
        try:
            cfg = RunConfig.from_dict(merged, base=p.resolve().parent)
        except ConfigError as e:
            raise ConfigError(f"{p}: {e}") from None
    return cfg.override(overrides) if overrides else cfg


def _summary(preset: Callable[[], RunConfig]) -> str:
    """A preset's docstring's first sentence, without reST markup (``--help``)."""
    text = " ".join((preset.__doc__ or "").split()).replace(":func:", "").replace("``", "").replace("`", "")
    return text.split(". ")[0].rstrip(".") + "." if text else ""


def main(argv: Sequence[str] | None = None) -> int:
    """Print every preset's settings as JSON (``python -m profiling.presets [NAME ...]``; ``--help`` lists them)."""
    p = argparse.ArgumentParser(
        prog="python -m profiling.presets",
        description="Print run presets' settings as JSON: every preset, or those named. Any of these settings can "
                    "go in a run file (fastload train/profile --config run.toml) or in --set KEY=VALUE.",
        epilog="presets:\n" + "\n".join(f"  {n:<21}{_summary(f)}" for n, f in PRESETS.items()),
        formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("names", nargs="*", metavar="NAME", help=f"a preset: {', '.join(PRESETS)} (default: all)")
    a = p.parse_args(list(argv) if argv is not None else None)
    unknown = [n for n in a.names if n not in PRESETS]
    if unknown:
        p.error(f"NAME: {', '.join(map(repr, unknown))}: expected presets from {list(PRESETS)}")
    names = a.names or list(PRESETS)
    for n in names:
        print(f"# {n}: {PRESETS[n].__doc__.splitlines()[0] if n in PRESETS else ''}")
        print(json.dumps(get_preset(n).to_dict(), indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
