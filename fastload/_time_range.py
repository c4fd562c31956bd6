"""``loader.time_range``: the part of the time axis a loader draws its random windows from (training years apart
from validation years).

Given as two store time indices ``[start, stop)`` (integers: in a run file, from Python, or in brackets on the
command line, ``--set loader.time_range=[0,8760]``) or two dates/times (ISO strings such as ``"1979-01-01"`` or
``"2016-01-01T06"``, UTC, start included, stop excluded); a bare number as a string (``"1979"``) is refused: a year
to numpy, an index to the user, or the other way round. Every time
point of a drawn sample lies in the range. Dates are mapped onto the store's time axis (the first stream's, for a
multi-stream config) when the loader is built; a range that reaches more than 1.5 time steps beyond either end of
the axis is refused, not clamped (a typo in the years would otherwise train on other years), as is one too short
for one sample's window.
"""

from __future__ import annotations

import warnings
from typing import Any

import numpy as np

from ._stream_time import median_step
from .errors import ConfigError

__all__ = ["check_time_range_form", "loader_time_range", "time_range_indices"]

_KEY = "loader.time_range"
_FORM = ("expected two store time indices [start, stop) (integers) or two dates/times (ISO strings such as "
         "'1979-01-01' or '2016-01-01T06', UTC; start included, stop excluded)")


def _date(v: str, key: str) -> np.datetime64:
    """``v`` as a datetime64, or a ConfigError naming the setting ``key``."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error")  # numpy only warns on a time zone ("...Z", "+01:00")
            d = np.datetime64(v)
    except (ValueError, UserWarning, DeprecationWarning) as e:
        raise ConfigError(f"{key}: cannot read {v!r} as a date/time ({e}); {_FORM}") from None
    if np.isnat(d):
        raise ConfigError(f"{key}: {v!r} is not a date/time; {_FORM}")
    return d


def check_time_range_form(value: Any, key: str = _KEY) -> tuple[int, int] | tuple[str, str] | None:
    """``value`` as the config holds it (a tuple of two ints or two strings, or None); a ConfigError naming the
    setting ``key`` when it is anything else, or when its start is not before its stop."""
    if value is None:
        return None
    if isinstance(value, (str, bytes)) or not hasattr(value, "__len__") or len(value) != 2:
        raise ConfigError(f"{key}: {value!r}: {_FORM}")
    a, b = value
    if all(isinstance(v, (int, np.integer)) and not isinstance(v, bool) for v in (a, b)):
        if a < 0 or a >= b:
            raise ConfigError(f"{key}: {[int(a), int(b)]}: expected 0 <= start < stop (store time indices)")
        return int(a), int(b)
    if all(isinstance(v, str) for v in (a, b)):
        bare = [v for v in (a, b) if v.strip().lstrip("+-").isdigit()]
        if bare:  # "1979" is a year to numpy, "0" the year 0: either reading could be the wrong one
            raise ConfigError(f"{key}: {[a, b]}: {bare[0]!r} reads as a year or as a store time index; write a "
                              "date as 1979-01-01, or give store time indices as integers (on the command line "
                              f"in brackets: --set {key}=[0,8760])")
        if _date(a, key) >= _date(b, key):
            raise ConfigError(f"{key}: {[a, b]}: the start is not before the stop (start included, stop "
                              "excluded)")
        return a, b
    raise ConfigError(f"{key}: {list(value)!r} mixes or holds other types; {_FORM}")


def time_range_indices(value: Any, time: np.ndarray | None, nt: int | None, span: int,
                       where: str, key: str = _KEY) -> tuple[int, int] | None:
    """The store time indices ``[start, stop)`` of ``value`` (see the module notes) on an axis of ``nt`` steps
    (``time``: its datetime64 values, None when the store has none), checked: inside the axis and at least ``span``
    steps (one sample's window) long. ``where`` names the store in errors."""
    value = check_time_range_form(value, key)
    if value is None:
        return None
    if nt is None:
        raise ConfigError(f"{key} = {list(value)!r}, but {where} has no time axis")
    if isinstance(value[0], int):
        start, stop = value
        if stop > nt:
            raise ConfigError(f"{key} = {[start, stop]}: past the end of the time axis of {where} ({nt} steps, "
                              f"indices 0 .. {nt - 1}); expected stop <= {nt}")
        said = f"{key} = {[start, stop]}"
    else:
        if time is None:
            raise ConfigError(f"{key} = {list(value)!r} gives dates, but the time axis of {where} has no dates "
                              f"(no CF units); give store time indices [start, stop) instead")
        t = np.asarray(time)
        lo, hi = (_date(v, key).astype(t.dtype) for v in value)
        # slack of 1.5 steps at either end: a range written in whole days (or months: a monthly axis' steps are
        # 28-31 days) covers an axis stamped at 12:00 or mid-month; a typo in the years is far beyond it
        step = median_step(t)
        slack = np.timedelta64(0, "ns") if step is None else step + step // 2
        if lo < t[0] - slack or hi > t[-1] + slack or hi <= t[0] or lo > t[-1]:
            a, b = (str(v.astype("datetime64[s]")) for v in (t[0], t[-1]))
            raise ConfigError(f"{key} = {list(value)!r} reaches beyond the time axis of {where} ({a} .. {b}, "
                              f"{nt} steps); expected a range within it (a typo in the years would "
                              "otherwise draw others)")
        start, stop = int(np.searchsorted(t, lo, "left")), int(np.searchsorted(t, hi, "left"))
        said = f"{key} = {list(value)!r} (time indices [{start}, {stop}))"
    if stop - start < span:
        raise ConfigError(f"{said} holds {stop - start} time steps of {where}, fewer than one sample's window "
                          f"spans ({span}); expected a longer range")
    return start, stop


def loader_time_range(loader: Any, boxes: Any) -> tuple[int, int] | None:
    """A :class:`fastload.Loader`'s ``loader.time_range`` as store time indices ``[start, stop)`` of its (first
    stream's) time axis, checked against it; None without one. Refused with an explicit plan (``boxes``)."""
    value = loader.loader_config.time_range
    if value is None:
        return None
    if boxes is not None:
        raise ConfigError(f"{_KEY} = {list(value)!r} restricts the random placement, but an explicit plan (boxes) "
                          "was given; choose the plan's boxes in the range instead")
    if loader.multi is not None:
        ms = loader.multi
        ref = ms.reference
        return time_range_indices(value, ms.time, None if ms.time is None else len(ms.time), ms.time_spread[ref.name],
                                  f"stream {ref.name!r} ({ref.store.path})")
    span = (int(loader.config.box[0]) - 1) * int(loader.config.time_step) + 1
    return time_range_indices(value, loader.extent.time, loader.extent.nt, span, str(loader.store.path))
