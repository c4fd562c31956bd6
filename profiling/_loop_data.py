"""The data side of :mod:`profiling.loop`: where a run's samples come from, and a batch as the model's inputs.

Why this exists: the loop (``fastload train`` / ``fastload profile``) first finds its store and sampling config. When
the run names no store (``data.store`` unset) that is the built-in synthetic dataset, synthesised once into
``$FASTLOAD_CACHE`` with its normalisation coefficients (:func:`prepare_data`; under torchrun rank 0 first, the
others then find it); a multi-stream sampling config names its own stores. :func:`model_inputs` lays a loader
:class:`~fastload.Batch` out as the Multiformer takes it. :mod:`profiling.loop` re-exports these names.
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import torch

from fastload.errors import ConfigError, StoreError

from .presets import RunConfig

__all__ = ["print_line", "url_options", "prepare_data", "model_inputs"]


def print_line(msg: str) -> None:
    print(msg, flush=True)


def url_options(cfg: RunConfig, path: Any) -> dict[str, Any] | None:
    """``data.storage_options`` for a store given as a URL; None for a local path (a multi-stream run may mix a
    local store with remote ones: local paths take no client options)."""
    return cfg.data.storage_options if "://" in str(path) else None


def prepare_data(cfg: RunConfig, log: Callable[[str], None] = print_line) -> tuple[str | None, Any]:
    """The store path and sampling config of a run: the built-in dataset is synthesised (once, cached) and its
    normalisation coefficients computed (once) when ``data.store`` is None. A multi-stream sampling config (one
    with ``[streams.NAME]`` tables) names its own stores and coefficients: the path returned is None."""
    data, sampling = cfg.data, cfg.data.sampling
    if sampling.streams:
        if data.store is not None:
            raise ConfigError(f"data.store = {data.store!r}: the sampling config has streams "
                              f"{[st.name for st in sampling.streams]}, whose stores are their streams.NAME.path; "
                              f"leave data.store (--store) unset")
        return None, sampling
    if data.store is not None:
        return data.store, sampling
    from fastload.stats import StatsConfig, compute_stats
    from fastload.synth import default_dataset

    t0 = time.perf_counter()
    path = Path(default_dataset(data.cache_dir, preset=data.synth_preset, progress=None))
    log(f"data: built-in synthetic dataset {path} ({time.perf_counter() - t0:.1f} s; cached for later runs)")
    if sampling.norm_path is None and any(f.normalization != "none" for f in sampling.fields):
        norm = path.with_name(path.name.removesuffix(".zarr") + "-norm.zarr")
        if not norm.exists():  # compute_stats renames a finished store into place: one at this path is complete
            t0 = time.perf_counter()
            try:
                compute_stats(str(path), str(norm), StatsConfig(progress=None))
            except (ConfigError, StoreError):  # "exists": a run started beside this one finished first
                if not norm.exists():
                    raise
            log(f"data: normalisation coefficients {norm} ({time.perf_counter() - t0:.1f} s; computed once)")
        sampling = dataclasses.replace(sampling, norm_path=str(norm))
    return str(path), sampling


def model_inputs(batch: Any, levelled: Sequence[str], device: torch.device) -> dict[str, Any]:
    """A loader :class:`~fastload.Batch` as the Multiformer's input dict: :func:`model.model_inputs` (see there),
    with level metadata for the fields that have levels (``levelled``) and every tensor on ``device``."""
    from model import model_inputs as inputs_of

    return inputs_of(batch, device, levelled=levelled)
