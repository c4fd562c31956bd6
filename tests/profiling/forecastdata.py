"""A small Forecaster run config on the loop tests' tiny store (:mod:`tests.profiling.loopdata`).

100 tiles of 6 x 9 points overlapping by one token each way, a width-16 latent of 2 queries, one tail block, an
ensemble of 2, a two-step rollout loss, one initial time per batch and 4 initial times per epoch: a step takes
tens of milliseconds on one CPU thread.
"""

from __future__ import annotations

import dataclasses

from profiling.presets import ForecastConfig, RunConfig
from tests.profiling.loopdata import run_config

SMALL = ForecastConfig(latent_dim=16, latent_queries=2, num_heads=2, tail_layers=1, ensemble_size=2, rollout_steps=2,
                       overlap=(1, 1), neighbors=3)


def fc_config(tmp_path_factory, forecast: ForecastConfig = SMALL, **overrides) -> RunConfig:
    """:func:`~tests.profiling.loopdata.run_config` training a Forecaster; keyword arguments replace settings."""
    base = run_config(tmp_path_factory)
    kw = dict(model=dataclasses.replace(base.model, kind="forecaster"), forecast=forecast,
              loader=dataclasses.replace(base.loader, samples_per_epoch=4))
    kw.update(overrides)
    return run_config(tmp_path_factory, **kw)


def time_subset(src, dst, keep):
    """A copy of the zarr v2 store ``src`` at ``dst`` holding only the time indices ``keep`` (in that order) of
    every array along ``time`` (a gap where ``keep`` skips indices, another step where it strides); metadata
    re-consolidated."""
    import shutil

    import numpy as np
    import zarr

    shutil.copytree(src, dst)
    keep = np.asarray(keep, np.int64)
    group = zarr.open_group(str(dst), mode="r+", use_consolidated=False)
    for _name, arr in group.arrays():
        if tuple(arr.attrs.get("_ARRAY_DIMENSIONS", ()))[:1] == ("time",):
            data = arr[:][keep]
            arr.resize(data.shape)
            arr[...] = data
    zarr.consolidate_metadata(str(dst))
    return dst
