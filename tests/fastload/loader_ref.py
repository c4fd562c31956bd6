"""Helpers of the loader tests: small stores of every kind, and an independent NumPy reference of a batch.

The reference indexes the arrays the store builders wrote (not the store, not the kernels): for each box it takes
``data[t0 + k * time_step, level, y0 + j, (x0 + i) mod NX]``, applies the transform and normalisation with plain
float32 NumPy, and lays the box out as tokens with reshape/transpose.
"""

from __future__ import annotations

import numpy as np

from fastload.config import FieldConfig, SamplingConfig
from tests.fastload.stores import make_atmorep, make_per_variable

BOX_TOKENS = dict(num_tokens=(2, 2, 2), token_size=(2, 3, 4))  # a box of 4 x 6 x 8 points


def build(kind: str, path, *, zarr_format: int = 3, sharded: bool = False, regional: bool = False, nt: int = 10,
          codec: str = "blosc-lz4", normalization: str = "none", time_step: int = 1, out_dtype: str = "float32",
          norm_path: str | None = None, batch_size: int = 4):
    """Write a store of ``kind`` ("per_variable" or "atmorep"); return (truth, SamplingConfig)."""
    if kind == "per_variable":
        truth = make_per_variable(path, zarr_format=zarr_format, sharded=sharded, regional=regional, nt=nt,
                                  levels=(500.0, 850.0, 1000.0), ny=14, nx=20, chunks=(2, 1, 4, 6),
                                  shards=(4, 3, 8, 12), codec=codec)
        fields = (
            FieldConfig(name="t", levels=(1000.0, 500.0), normalization=normalization, **BOX_TOKENS),
            FieldConfig(name="q", levels=(850.0,), normalization="none", **BOX_TOKENS),
            FieldConfig(name="sp", normalization=normalization, **BOX_TOKENS),
            FieldConfig(name="orog", normalization="none", **BOX_TOKENS),
        )
    else:
        truth = make_atmorep(path, zarr_format=zarr_format, sharded=sharded, regional=regional, nt=nt, ny=14, nx=20,
                             levels=(96, 105, 114, 123, 137), chunks=(2, 1, 2, 4, 6), shards=(4, 2, 4, 8, 12),
                             codec=codec)
        fields = (
            FieldConfig(name="temperature", levels=(137.0, 105.0), normalization=normalization, **BOX_TOKENS),
            FieldConfig(name="velocity_u", levels=(96.0,), normalization="none", **BOX_TOKENS),
            FieldConfig(name="t2m", normalization=normalization, **BOX_TOKENS),
        )
    cfg = SamplingConfig(fields=fields, batch_size=batch_size, time_step=time_step, out_dtype=out_dtype,
                         norm_path=norm_path)
    return truth, cfg


def _field_4d(truth: dict, name: str) -> tuple[np.ndarray, np.ndarray | None]:
    """The field as (time, level, y, x) and its level values."""
    if "data" in truth:
        if name in truth["fields"]:
            return truth["data"][:, truth["fields"].index(name)], np.asarray(truth["levels"], np.float64)
        return truth["data_sfc"][:, truth["sfc_fields"].index(name)][:, None], None
    a = truth[name]
    if a.ndim == 4:
        return a, np.asarray(truth["level"], np.float64)
    if a.ndim == 3:
        return a[:, None], None
    return a[None, None], None


def reference(truth: dict, config: SamplingConfig, boxes: np.ndarray, *, periodic: bool,
              coefficients: dict | None = None, months: list[int] | None = None) -> dict[str, np.ndarray]:
    """Token tensors ``(B, L, nt, nlat, nlon, tt, tlat, tlon)`` float32 per field, computed plainly."""
    out = {}
    boxes = np.asarray(boxes)
    for f in config.fields:
        data, levels = _field_4d(truth, f.name)
        lev = [0] if f.levels is None else [int(np.flatnonzero(levels == v)[0]) for v in f.levels]
        T, H, W = f.box
        nt, nlat, nlon = f.num_tokens
        tt, tlat, tlon = f.token_size
        res = np.empty((len(boxes), len(lev), nt, nlat, nlon, tt, tlat, tlon), np.float32)
        for s, (t0, y0, x0) in enumerate(boxes.tolist()):
            static = data.shape[0] == 1 and truth.get("time") is not None and len(truth["time"]) > 1
            ti = np.zeros(T, int) if static else t0 + np.arange(T) * config.time_step
            xs = x0 + np.arange(W)
            xs = xs % data.shape[-1] if periodic else xs
            v = data[np.ix_(ti, lev, np.arange(y0, y0 + H), xs)].astype(np.float32)  # (T, L, H, W)
            if f.transform == "log1p":
                v = np.log1p(v.astype(np.float64)).astype(np.float32)
            if f.normalization != "none":
                mean, std = coefficients[f.name]
                cal = truth["time"][ti].astype("datetime64[M]").astype(np.int64) % 12
                m = np.array([months.index(int(c)) for c in cal])
                if f.normalization == "global":
                    mu, sd = mean[m][:, :, 0, 0, None, None], std[m][:, :, 0, 0, None, None]
                else:
                    mu = mean[m][:, :, y0:y0 + H][..., xs]
                    sd = std[m][:, :, y0:y0 + H][..., xs]
                v = ((v - mu) / sd).astype(np.float32)
            v = v.transpose(1, 0, 2, 3)  # (L, T, H, W)
            v = v.reshape(len(lev), nt, tt, nlat, tlat, nlon, tlon).transpose(0, 1, 3, 5, 2, 4, 6)
            res[s] = v
        out[f.name] = res
    return out


def checked_epoch(loader, truth: dict, config: SamplingConfig) -> int:
    """Iterate one epoch of ``loader`` (a periodic store), each batch's fields equal to :func:`reference` (NaN where
    it is NaN); the bytes its batches count as stored (``IOStats.bytes_stored``), summed."""
    counted = 0
    for b in loader:
        counted += b.stats.bytes_stored
        ref = reference(truth, config, b.boxes.numpy(), periodic=True)
        for f in config.field_names:
            assert np.array_equal(b[f].numpy(), ref[f], equal_nan=True)
    return counted
