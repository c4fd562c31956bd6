"""Normalisation of a multi-stream config: each stream's coefficients, for the calendar months a plan uses.

Why this exists: every stream of :class:`fastload.streams.MultiStream` has its own coefficient store (``fastload
stats``) and its own time axis, so a sample's time points fall in different calendar months per stream (a
``previous`` daily ocean step may still be in December when the atmosphere is in January). Local coefficients are
``(months, levels, NY, NX)`` per field; the loader asks here for only the months an epoch's samples map to on each
stream's axis (:func:`months_used`, time only: cheap for a whole epoch), and the result carries those months
(:class:`StreamCoefficients`), so the gather finds each time point's coefficients without shared state.

These are :class:`~fastload.streams.MultiStream` methods (``check_coefficients``, ``months_used``,
``coefficients``); tests: ``python -m pytest tests/fastload/test_loader_streams.py tests/fastload/test_streams.py``.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np

from ._stream_time import align, sample_times
from .errors import ConfigError
from .sampling.neighborhood import month_index

__all__ = ["StreamCoefficients", "normalizers", "months_used", "coefficients", "month_of"]


class StreamCoefficients(dict):
    """Field -> ``(mean, std)`` of a multi-stream config, with ``months``: stream -> the calendar months (0-11)
    the coefficient arrays' first axis holds (:meth:`MultiStream.coefficients`)."""

    def __init__(self, *args: Any, **kw: Any):
        super().__init__(*args, **kw)
        self.months: dict[str, np.ndarray] = {}


def normalizers(ms: Any) -> list[tuple[Any, list[Any], Any]]:
    """``(stream, normalised fields, Normalizer)`` of every stream with normalised fields: opened once, checked
    against the stream's store (levels, grid, every month of the record)."""
    from .extract import _normalizer

    out = []
    for st in ms.streams:
        normed = [f for f in st.config.fields if f.normalization != "none"]
        if not normed:
            continue
        norm = ms._norm_objects.get(st.name)
        if norm is None:
            norm = _normalizer(ms._normalizers.get(st.name), st.config)
            if norm is None:
                raise ConfigError(f"stream {st.name!r}: fields {[f.name for f in normed]} normalise but the "
                                  f"stream has no norm_path (set streams.{st.name}.norm_path or pass normalizers=)")
            norm.check(st.store, st.config)
            if st.store.time is None:
                raise ConfigError(f"stream {st.name!r}: monthly normalisation needs a time axis, but it has none")
            ms._norm_objects[st.name] = norm
        out.append((st, normed, norm))
    return out


def months_used(ms: Any, boxes: Any) -> dict[str, np.ndarray]:
    """Stream -> sorted calendar months (0-11) the time points of reference ``boxes`` map to on its axis."""
    from .norm import months_of

    b = ms.reference.tokenizer.check_boxes(boxes)
    T, dt = ms.box[0], ms.config.time_step
    times = sample_times(ms.time, b[:, 0], T, dt)
    out = {}
    for st in ms.streams:
        if st.time is None:
            continue
        if st.kind == "reference":
            steps = b[:, 0:1] + np.arange(T, dtype=np.int64) * dt
        else:
            steps = np.clip(align(st.time, times, st.rule, ms.cadence)[0], 0, st.time.size - 1)
        out[st.name] = np.unique(months_of(st.time[steps])).astype(np.int64)
    return out


def coefficients(ms: Any, months: Mapping[str, Any] | None = None) -> StreamCoefficients:
    """Coefficients of every normalised field for ``months[stream]`` (default: the months of the stream's record,
    which the stream then also remembers for callers passing plain dicts)."""
    from .norm import months_of

    out = StreamCoefficients()
    for st, normed, norm in normalizers(ms):
        if months is not None and st.name in months:
            m = np.unique(np.asarray(months[st.name], np.int64))
        else:
            m = np.unique(months_of(st.store.time)).astype(np.int64)
            st.months = m
        out.months[st.name] = m
        for f in normed:
            out[f.name] = norm.coefficients(f.name, f.normalization, f.levels, m.tolist())
    return out


def month_of(st: Any, pl: Any, months: np.ndarray | None = None) -> np.ndarray:
    """``(S, T)`` index into ``months`` (default: the stream's remembered months) of each time point's calendar
    month on stream ``st``'s axis, for a :class:`~fastload.streams.Placement` ``pl`` (ConfigError when a month is
    not loaded)."""
    months = st.months if months is None else np.asarray(months, np.int64)
    if months is None:
        raise ConfigError(f"stream {st.name!r}: coefficients not loaded (use MultiStream.coefficients())")
    if st.kind == "reference":
        return st.tokenizer.month_table(pl.boxes, months)[1]
    if st.time is None:
        raise ConfigError(f"stream {st.name!r}: monthly normalisation needs a time axis, but it has none")
    cal = st.time[pl.t_steps[st.name]].astype("datetime64[M]").astype(np.int64) % 12
    return month_index(cal, months, f"stream {st.name!r}: ")
