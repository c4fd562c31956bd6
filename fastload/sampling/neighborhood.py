"""The gather step: one kernel call per field turns decoded chunks into normalised token tensors.

This module is the single place that picks Numba kernels or their NumPy references (:func:`kernels`:
an explicit ``jit`` argument wins, then a ``jit`` attribute of the config when it has one, then the environment:
``FASTLOAD_NO_JIT=1`` picks the reference). It validates every argument of the kernel cheaply (shapes, dtypes,
index ranges: the kernels do no bounds checks) and converts torch output tensors to the NumPy views the kernels
write into, so callers hand in ``torch.empty(..., pin_memory=True)`` buffers directly.

Used by the reader's worker threads (:func:`gather_batch` with ``samples=slice(s0, s1)`` per thread) and by
:func:`fastload.extract`. Debug a batch without JIT::

    FASTLOAD_NO_JIT=1 python -m pytest tests/fastload/test_extract.py -x -q
"""

from __future__ import annotations

import functools
import os
from collections.abc import Mapping
from types import ModuleType
from typing import Any

import numpy as np

from ..errors import ConfigError
from .chunks import NO_AXIS, FieldLayout

__all__ = [
    "use_jit",
    "kernels",
    "OUT_KINDS",
    "field_geometry",
    "month_index",
    "as_out_array",
    "allocate_outputs",
    "month_table",
    "gather_field",
    "gather_batch",
]

OUT_KINDS = {"float32": 0, "bfloat16": 1, "float16": 2}
"""``SamplingConfig.out_dtype`` -> ``out_kind`` of the kernel geometry."""
_NORMS = {"none": 0, "global": 1, "local": 2}


def use_jit(jit: bool | None = None, config: Any = None) -> bool:
    """Whether to run the Numba kernels: ``jit`` if given, else ``config.jit`` if set, else not ``FASTLOAD_NO_JIT``."""
    if jit is not None:
        return bool(jit)
    cj = getattr(config, "jit", None)
    if cj is not None:
        return bool(cj)
    return os.environ.get("FASTLOAD_NO_JIT", "").strip().lower() not in ("1", "true", "yes", "on")


def kernels(jit: bool | None = None, config: Any = None) -> ModuleType:
    """The kernel module in use: :mod:`._kernels` (Numba) or :mod:`._reference` (NumPy); see :func:`use_jit`."""
    if use_jit(jit, config):
        from . import _kernels

        return _kernels
    from . import _reference

    return _reference


def field_geometry(field: Any, layout: FieldLayout, *, time_step: int = 1, out_dtype: str = "float32") -> np.ndarray:
    """Pack a field's token geometry for the kernel (see :func:`fastload.sampling._kernels.gather`)."""
    if out_dtype not in OUT_KINDS:
        raise ConfigError(f"out_dtype: expected one of {list(OUT_KINDS)}, got {out_dtype!r}")
    nt, nlat, nlon = field.num_tokens
    tt, tlat, tlon = field.token_size
    return np.array([nt, nlat, nlon, tt, tlat, tlon, int(time_step), layout.shape[-1], int(layout.periodic_x),
                     int(field.transform == "log1p"), _NORMS[field.normalization], OUT_KINDS[out_dtype]],
                    dtype=np.int64)


def as_out_array(out: Any, out_dtype: str) -> np.ndarray:
    """The NumPy array the kernel writes into: ``out`` itself, or a zero-copy view of a CPU torch tensor.

    float32 for ``out_dtype="float32"``; uint16 bit patterns for bfloat16 / float16 (a torch ``bfloat16`` or
    ``float16`` tensor is viewed as its bits).
    """
    if type(out).__module__.startswith("torch"):
        import torch

        if out.device.type != "cpu":
            raise ConfigError(f"gather: output tensors must be on the CPU (pinned is fine), got {out.device}")
        if out.dtype in (torch.bfloat16, torch.float16):
            out = out.view(torch.int16).numpy().view(np.uint16)
        else:
            out = out.numpy()
    want = np.float32 if out_dtype == "float32" else np.uint16
    if not isinstance(out, np.ndarray) or out.dtype != want:
        raise ConfigError(f"gather: out_dtype {out_dtype!r} needs a {np.dtype(want).name} output buffer, "
                          f"got {getattr(out, 'dtype', type(out))}")
    if not out.flags.c_contiguous or not out.flags.writeable:
        raise ConfigError("gather: the output buffer must be C-contiguous and writeable")
    return out


def allocate_outputs(config: Any, batch: int, *, torch: bool = False, pin_memory: bool = False) -> dict[str, Any]:
    """Empty output buffers ``(batch, L, nt, nlat, nlon, tt, tlat, tlon)`` per field, in ``config.out_dtype``."""
    outs: dict[str, Any] = {}
    for f in config.fields:
        shape = (batch, *f.sample_shape)
        if torch:
            import torch as _torch

            dt = {"float32": _torch.float32, "bfloat16": _torch.bfloat16, "float16": _torch.float16}[config.out_dtype]
            outs[f.name] = _torch.empty(shape, dtype=dt, pin_memory=pin_memory)
        else:
            outs[f.name] = np.empty(shape, dtype=np.float32 if config.out_dtype == "float32" else np.uint16)
    return outs


def month_table(times: np.ndarray | None, boxes: np.ndarray, n_steps: int, time_step: int = 1,
                months: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Calendar months the batch uses and, per sample and time step, the index of its month among them.

    Parameters
    ----------
    times : datetime64 array (NT,)
        The store's time axis.
    boxes : (S, 3) int64
        Sample placements.
    n_steps : int
        Time points per sample (``nt * tt``).
    months : array of int in 0..11, optional
        Coefficient months already loaded (e.g. all twelve); default: the sorted months the batch touches.

    Returns
    -------
    months : (M,) int64
        Month indices 0 (January) .. 11 (December), as :meth:`fastload.norm.Normalizer.coefficients` takes them.
    month_of : (S, n_steps) int32
        Index into ``months`` of each time step's month.
    """
    if times is None:
        raise ConfigError("monthly normalisation needs a time axis, but the store has none")
    t = boxes[:, 0:1] + np.arange(n_steps) * int(time_step)
    cal = np.asarray(times)[t].astype("datetime64[M]").astype(np.int64) % 12  # (S, n_steps) in 0..11
    if months is None:
        months = np.unique(cal)
    months = np.asarray(months, dtype=np.int64)
    if months.size and (months.min() < 0 or months.max() > 11):
        raise ConfigError(f"month_table: months must be indices 0-11, got {months.tolist()}")
    return months, month_index(cal, months)


def month_index(cal: np.ndarray, months: np.ndarray, where: str = "") -> np.ndarray:
    """Index into ``months`` (loaded coefficient months, 0..11) of each calendar month in ``cal`` (int32, C order);
    ConfigError (prefixed with ``where``) naming the months the batch needs but are not loaded."""
    lookup = np.full(12, -1, dtype=np.int32)
    lookup[months] = np.arange(months.size, dtype=np.int32)
    out = lookup[cal]
    if (out < 0).any():
        missing = sorted(set(np.unique(cal).tolist()) - set(np.asarray(months).tolist()))
        raise ConfigError(f"{where}normalisation coefficients are loaded for months {np.asarray(months).tolist()} "
                          f"but the batch needs months {missing}")
    return np.ascontiguousarray(out)


@functools.lru_cache(maxsize=512)
def _static(layout: FieldLayout, field: Any, time_step: int, out_dtype: str) -> tuple[np.ndarray, np.ndarray, tuple]:
    """Per (layout, field) constants of a kernel call: geometry, view, and what bounds checks need."""
    geo = field_geometry(field, layout, time_step=time_step, out_dtype=out_dtype)
    view = layout.view()
    ext = layout.extent
    T, H, W = field.box
    ta, ya, xa = layout.axes[0], layout.axes[3], layout.axes[4]
    hi = np.array(ext.max_start(field.box, time_step), dtype=np.int64)
    if ta is None:
        hi[0] = np.iinfo(np.int64).max  # t0 is irrelevant to a field without time (checked against the store)
    chunk = np.array([layout.chunks[ta] if ta is not None else NO_AXIS, layout.chunks[ya], layout.chunks[xa]],
                     dtype=np.int64)
    span = np.array([(T - 1) * time_step, H - 1, W - 1], dtype=np.int64)
    ncx = -(-ext.nx // layout.chunks[xa])
    return geo, view, (hi, chunk, span, ext.nx, ncx, layout.periodic_x)


def _needed(boxes: np.ndarray, static: tuple) -> np.ndarray:
    """Chunks per axis (t, y, x) the slot table must span for these boxes."""
    _, chunk, span, nx, ncx, periodic = static
    if boxes.shape[0] == 0:
        return np.ones(3, np.int64)
    last = boxes + span
    if periodic:
        last[:, 2] %= nx
    rel = last // chunk - boxes // chunk
    if periodic:
        rel[:, 2] %= ncx
    return rel.max(axis=0) + 1


def gather_field(slots: np.ndarray, table: np.ndarray, layout: FieldLayout, field: Any, boxes: np.ndarray, out: Any,
                 *, time_step: int = 1, out_dtype: str = "float32", mean: np.ndarray | None = None,
                 std: np.ndarray | None = None, month_of: np.ndarray | None = None, jit: bool | None = None) -> None:
    """Gather one field of the samples ``boxes`` into ``out`` with one kernel call (validated first).

    ``slots`` is the field's array arena ``(n_slots, chunk_elems)``; ``table`` the slot table
    (:meth:`~fastload.sampling.chunks.BatchPlan.slot_tables`) of these samples; ``field`` a
    :class:`~fastload.config.FieldConfig`; ``mean``/``std`` ``(M, L, 1, 1)`` (global) or ``(M, L, NY, NX)``
    (local) float32 and ``month_of`` ``(S, nt * tt)`` int32 when the field normalises. Stored values equal to
    one of ``layout.missing`` (the store's declared missing values) are written as NaN.
    """
    geo, view, static = _static(layout, field, int(time_step), out_dtype)
    name = field.name
    S, L = boxes.shape[0], layout.lev_idx.shape[0]
    n_steps = field.num_tokens[0] * field.token_size[0]
    if boxes.dtype != np.int64 or boxes.ndim != 2 or boxes.shape[1] != 3 or not boxes.flags.c_contiguous:
        raise ConfigError(f"field {name!r}: boxes must be a C-contiguous (S, 3) int64 array, got {boxes.dtype} "
                          f"{boxes.shape}")
    if slots.ndim != 2 or slots.shape[1] != layout.chunk_elems or not slots.flags.c_contiguous:
        raise ConfigError(f"field {name!r}: slots must be a C-contiguous (n_slots, {layout.chunk_elems}) array, "
                          f"got shape {slots.shape}")
    out = as_out_array(out, out_dtype)
    if out.shape != (S, *field.sample_shape):
        raise ConfigError(f"field {name!r}: output buffer has shape {out.shape}, expected {(S, *field.sample_shape)}")
    if S:
        lo, hi = boxes.min(axis=0), boxes.max(axis=0)
        if (lo < 0).any() or (hi > static[0]).any():
            raise ConfigError(f"field {name!r}: a box reaches outside the grid (starts range over {lo.tolist()} .. "
                              f"{hi.tolist()}, allowed 0 .. {static[0].tolist()})")
    need = _needed(boxes, static)
    if (table.dtype != np.int32 or table.ndim != 5 or table.shape[:2] != (S, L)
            or (np.asarray(table.shape[2:]) < need).any() or not table.flags.c_contiguous):
        raise ConfigError(f"field {name!r}: slot table must be C-contiguous int32 of shape ({S}, {L}, >={need[0]}, "
                          f">={need[1]}, >={need[2]}), got {table.dtype} {table.shape}")
    norm = int(geo[10])
    if norm:
        if mean is None or std is None or month_of is None:
            raise ConfigError(f"fields.{name}.normalization = {field.normalization!r} needs mean, std and month_of")
        mshape = (L, 1, 1) if norm == 1 else (L, layout.shape[-2], layout.shape[-1])
        for key, a in (("mean", mean), ("std", std)):
            if (not isinstance(a, np.ndarray) or a.dtype != np.float32 or a.ndim != 4 or a.shape[1:] != mshape
                    or a.shape[0] < 1 or not a.flags.c_contiguous):
                raise ConfigError(f"field {name!r}: {field.normalization} {key} must be C-contiguous float32 of shape "
                                  f"(M, {', '.join(map(str, mshape))}), got {getattr(a, 'dtype', None)} "
                                  f"{getattr(a, 'shape', None)}")
        if mean.shape != std.shape:
            raise ConfigError(f"field {name!r}: mean {mean.shape} and std {std.shape} differ in shape")
        if (month_of.dtype != np.int32 or month_of.shape != (S, n_steps) or not month_of.flags.c_contiguous
                or (S and (month_of.min() < 0 or month_of.max() >= mean.shape[0]))):
            raise ConfigError(f"field {name!r}: month_of must be C-contiguous int32 ({S}, {n_steps}) with values in "
                              f"[0, {mean.shape[0]}), got {month_of.dtype} {month_of.shape}")
    else:
        mean = std = np.zeros((0, L, 1, 1), dtype=np.float32)
        month_of = np.zeros((S, n_steps), dtype=np.int32)
    kernels(jit).gather(slots, table, view, boxes, layout.lev_idx, geo, mean, std, month_of, out, layout.missing)


def gather_batch(config: Any, layouts: Mapping[str, FieldLayout], slots: Mapping[str, np.ndarray],
                 tables: Mapping[str, np.ndarray], boxes: np.ndarray, outs: Mapping[str, Any], *,
                 coefficients: Mapping[str, tuple[np.ndarray, np.ndarray]] | None = None,
                 month_of: np.ndarray | None = None, samples: slice | None = None, jit: bool | None = None) -> None:
    """Gather every field of a batch (or of the sample range ``samples``) into ``outs``.

    Parameters
    ----------
    config : SamplingConfig
        Fields, ``time_step``, ``out_dtype``.
    layouts : {field: FieldLayout}
    slots : {array: (n_slots, chunk_elems) array}
        Per array, the arena the reader decoded the batch's chunks into.
    tables : {field: (B, L, nct, ncy, ncx) int32}
        Slot tables of the whole batch (:meth:`BatchPlan.slot_tables`).
    boxes : (B, 3) int64
    outs : {field: array or CPU tensor (B, L, nt, nlat, nlon, tt, tlat, tlon)}
    coefficients : {field: (mean, std)}
        For fields that normalise; see :func:`gather_field`.
    month_of : (B, nt * tt) int32
        From :func:`month_table`.
    samples : slice, optional
        Only these samples (each worker thread takes its own range; the kernels release the GIL).
    jit : bool, optional
        Override the kernel choice (see :func:`use_jit`).
    """
    sl = samples if samples is not None else slice(None)
    jit = use_jit(jit, config)
    for f in config.fields:
        lay = layouts[f.name]
        mean = std = None
        if f.normalization != "none":
            if coefficients is None or f.name not in coefficients:
                raise ConfigError(f"fields.{f.name}.normalization = {f.normalization!r} but no coefficients given")
            mean, std = coefficients[f.name]
        gather_field(slots[lay.array], tables[f.name][sl], lay, f, boxes[sl], outs[f.name][sl],
                     time_step=config.time_step, out_dtype=config.out_dtype, mean=mean, std=std,
                     month_of=None if month_of is None else month_of[sl], jit=jit)
