"""CF conventions as far as fastload needs them: decoding a time coordinate, naming a vertical level type.

Why this exists: xarray writes times as integers with ``units = "hours since 1979-01-01 00:00:00"`` and a
``calendar``; we decode them to ``datetime64[ns]`` without importing xarray or pandas (the reader must not pay for
them), and refuse what NumPy dates cannot represent (360-day or no-leap calendars) with a clear error.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any

import numpy as np

from ..errors import SchemaError

__all__ = ["decode_time", "is_date_units", "level_type_of", "LEVEL_TYPES"]

LEVEL_TYPES = ("model", "pressure", "surface", "depth", "height")
_UNIT_NS = {
    "nanoseconds": 1, "nanosecond": 1, "ns": 1,
    "microseconds": 1_000, "microsecond": 1_000, "us": 1_000,
    "milliseconds": 1_000_000, "millisecond": 1_000_000, "ms": 1_000_000,
    "seconds": 1_000_000_000, "second": 1_000_000_000, "secs": 1_000_000_000, "sec": 1_000_000_000,
    "s": 1_000_000_000,
    "minutes": 60_000_000_000, "minute": 60_000_000_000, "mins": 60_000_000_000, "min": 60_000_000_000,
    "hours": 3_600_000_000_000, "hour": 3_600_000_000_000, "hrs": 3_600_000_000_000, "hr": 3_600_000_000_000,
    "h": 3_600_000_000_000,
    "days": 86_400_000_000_000, "day": 86_400_000_000_000, "d": 86_400_000_000_000,
}  # fmt: skip
_CALENDARS = ("standard", "gregorian", "proleptic_gregorian")
_REF = re.compile(
    r"^\s*(?P<y>-?\d{1,4})-(?P<m>\d{1,2})-(?P<d>\d{1,2})"
    r"(?:[ T](?P<H>\d{1,2}):(?P<M>\d{1,2})(?::(?P<S>\d{1,2})(?:\.(?P<f>\d+))?)?)?"
    r"\s*(?:Z|UTC|GMT|\+0{1,2}(?::?00)?)?\s*$"
)


_NS_MIN, _NS_MAX = -(2**63) + 1, 2**63 - 1  # what datetime64[ns] holds (-2**63 is NaT)
NS_RANGE = "1677-09-21T00:12:43.145224193 .. 2262-04-11T23:47:16.854775807"
"""The dates ``datetime64[ns]`` can hold, for messages."""


def _days_from_civil(y: int, m: int, d: int) -> int:
    """Days from 1970-01-01 to the proleptic Gregorian date y-m-d (astronomical years: 0 is 1 BC); exact for any
    year (H. Hinnant's days_from_civil, with Python's floor division)."""
    y -= m <= 2
    era = y // 400
    yoe = y - era * 400
    doy = (153 * (m + (-3 if m > 2 else 9)) + 2) // 5 + d - 1
    return era * 146097 + yoe * 365 + yoe // 4 - yoe // 100 + doy - 719468


def _days_from_julian(y: int, m: int, d: int) -> int:
    """Days from 1970-01-01 (Gregorian) to the Julian calendar date y-m-d (astronomical years), via the Julian day
    number."""
    a = (14 - m) // 12
    yy, mm = y + 4800 - a, m + 12 * a - 3
    return d + (153 * mm + 2) // 5 + 365 * yy + yy // 4 - 32083 - 2440588


def _days_in_month(y: int, m: int, julian: bool = False) -> int:
    if m == 2:
        return 29 if y % 4 == 0 and (julian or y % 100 != 0 or y % 400 == 0) else 28
    return 30 if m in (4, 6, 9, 11) else 31


def _reference(text: str, calendar: str, where: str) -> int:
    """The reference date of CF units as exact integer nanoseconds since 1970-01-01 (any year: the reference may
    lie far outside what datetime64[ns] holds, e.g. NCEP's 'hours since 1-1-1', while the decoded dates do not).

    In the "standard"/"gregorian" calendar (CF's mixed Julian/Gregorian one, as cftime and xarray read it) a date
    before 1582-10-15 is a Julian date, and the years have no year zero (-1 is 1 BC); in "proleptic_gregorian"
    every date is Gregorian with astronomical years. So a Julian reference is converted to its proleptic Gregorian
    day; a decoded date (reference plus elapsed time) on or after 1582-10-15 is then the date cftime gives, and
    datetime64[ns] holds no earlier one.
    """
    m = _REF.match(text)
    if m is None:
        raise SchemaError(f"{where}: cannot read the reference date {text!r} (expected e.g. '1979-01-01 00:00:00')")
    g = {k: v or "0" for k, v in m.groupdict().items()}
    y, mo, d, hh, mi, ss = (int(g[k]) for k in ("y", "m", "d", "H", "M", "S"))
    frac = int((g["f"] + "000000000")[:9])
    julian = False
    if calendar in ("standard", "gregorian"):
        if y == 0:
            raise SchemaError(f"{where}: reference date {text!r}: the {calendar!r} calendar has no year 0 (1 BC is "
                              "year -1); use calendar 'proleptic_gregorian' for astronomical years")  # fmt: skip
        julian = (y, mo, d) < (1582, 10, 15)
        if julian and (y, mo, d) > (1582, 10, 4):
            raise SchemaError(f"{where}: reference date {text!r} does not exist in the {calendar!r} calendar "
                              "(1582-10-04 is followed by 1582-10-15)")  # fmt: skip
        y += y < 0  # astronomical year
    if not (1 <= mo <= 12 and 1 <= d <= _days_in_month(y, mo, julian) and hh < 24 and mi < 60 and ss < 60):
        raise SchemaError(f"{where}: invalid reference date {text!r} (no such date or time of day)")
    days = _days_from_julian(y, mo, d) if julian else _days_from_civil(y, mo, d)
    return (((days * 24 + hh) * 60 + mi) * 60 + ss) * 1_000_000_000 + frac


def is_date_units(units: Any) -> bool:
    """Whether ``units`` codes dates the CF way, ``"<time unit> since <date>"`` (``"hours since 1979-01-01"``,
    ``"months since 2000-1-1"``); not units that merely contain "since" (``"K since 273.15"``, ``"mm accumulated
    since 00 UTC"``)."""
    if not isinstance(units, str) or " since " not in units:
        return False
    unit, ref = units.split(" since ", 1)
    unit = unit.strip().lower()
    return (unit in _UNIT_NS or unit in ("weeks", "week", "months", "month", "years", "year")) and bool(_REF.match(ref))


def decode_time(values: np.ndarray, attrs: Mapping[str, Any], where: str) -> np.ndarray:
    """Time coordinate values -> ``datetime64[ns]``.

    Parameters
    ----------
    values : numpy.ndarray
        Stored values: ``datetime64`` (returned as ns), or numbers with CF ``units`` in ``attrs``.
    attrs : mapping
        The coordinate's attributes (``units``, ``calendar``).
    where : str
        The array's location, for messages.

    Raises
    ------
    SchemaError
        Missing or unreadable ``units``, a calendar NumPy cannot represent, non-finite values, or a date outside
        what datetime64[ns] holds (:data:`NS_RANGE`).

    Notes
    -----
    Exact: integer arithmetic, no float rounding of large offsets. In the "standard"/"gregorian" calendar a
    reference date before 1582-10-15 is a Julian date, as in cftime and xarray (NCEP's "hours since 1-1-1").
    """
    values = np.asarray(values)
    if values.dtype.kind == "M":
        out = values.astype("datetime64[ns]")
        if np.datetime_data(values.dtype)[0] in ("ps", "fs", "as"):  # all within ns range; ns truncates them
            return out
        wrapped = (out.astype(values.dtype) != values) & ~np.isnat(values)  # NumPy wraps what ns cannot hold
        if wrapped.any():
            raise SchemaError(
                f"{where}: time value {values[wrapped].ravel()[0]} is outside the range datetime64[ns] holds, "
                f"{NS_RANGE}; fastload reads dates only in that range"
            )
        return out
    if values.dtype.kind not in "iuf":
        raise SchemaError(f"{where}: time coordinate has dtype {values.dtype}; expected datetime64 or CF numbers")
    units = attrs.get("units")
    if not isinstance(units, str) or " since " not in units:
        raise SchemaError(
            f"{where}: time coordinate needs a CF 'units' attribute like 'hours since 1979-01-01', got {units!r}"
        )
    calendar = str(attrs.get("calendar", "standard")).lower()
    if calendar not in _CALENDARS:
        raise SchemaError(
            f"{where}: time calendar {calendar!r} cannot be represented as numpy datetime64; expected one of "
            f"{list(_CALENDARS)}"
        )
    unit, ref = units.split(" since ", 1)
    unit = unit.strip().lower()
    if unit not in _UNIT_NS:
        raise SchemaError(f"{where}: time unit {unit!r} in {units!r} is not one of seconds/minutes/hours/days")
    if values.dtype.kind == "f" and not np.all(np.isfinite(values)):
        raise SchemaError(f"{where}: time coordinate has non-finite values")
    step = _UNIT_NS[unit]
    ref_ns = _reference(ref, calendar, where)
    if values.size == 0:
        return np.empty(values.shape, "datetime64[ns]")
    # Exact: a date is whole * step + frac + ref_ns, in integers; whole = floor(value), frac = the rounded
    # nanoseconds of the float's fractional part. Checked against the datetime64[ns] range with Python integers
    # (no wrap, no NaT), then computed in int64, whose wrapping arithmetic gives the exact result modulo 2**64,
    # which is the result itself once it is known to lie in range.
    if values.dtype.kind == "f":
        v = values.astype(np.float64)
        whole = np.floor(v)
        frac = np.round((v - whole) * step)  # v - floor(v) is exact; 0 <= frac <= step
    else:
        whole, frac = values, None
    lo = -((ref_ns - _NS_MIN) // step)  # the least whole with whole * step + ref_ns >= _NS_MIN
    hi = (_NS_MAX - ref_ns) // step  # the largest whole with whole * step + ref_ns <= _NS_MAX
    wmin, wmax = int(whole.min()), int(whole.max())
    late = wmax > hi or (frac is not None and bool(((whole == hi) & (frac > _NS_MAX - (hi * step + ref_ns))).any()))
    if wmin < lo or late:
        bad = values.max() if late else values.min()
        raise SchemaError(
            f"{where}: time value {bad} in units {units!r} is a date {'after' if late else 'before'} the range "
            f"datetime64[ns] holds, {NS_RANGE}; fastload reads dates only in that range"
        )
    ref_wrapped = np.int64((ref_ns + 2**63) % 2**64 - 2**63)
    out = whole.astype(np.int64) * np.int64(step) + ref_wrapped
    if frac is not None:
        out += frac.astype(np.int64)
    return out.view("datetime64[ns]")


def level_type_of(name: str, attrs: Mapping[str, Any]) -> str | None:
    """The kind of a vertical coordinate: its ``level_type`` attribute, else guessed from CF metadata.

    ``units`` Pa/hPa/mbar -> "pressure"; m/km with ``positive = "down"`` or "depth" in the name -> "depth",
    other lengths -> "height"; "model"/"hybrid" in the name, standard_name or long_name -> "model"; else None.
    """
    lt = attrs.get("level_type")
    if isinstance(lt, str) and lt:
        return lt
    units = str(attrs.get("units", "")).strip().lower()
    text = " ".join(str(attrs.get(k, "")) for k in ("standard_name", "long_name")).lower() + " " + name.lower()
    if units in ("pa", "hpa", "mbar", "millibar", "millibars", "mb", "kpa") or "pressure" in text:
        return "pressure"
    if units in ("m", "km", "meter", "meters", "metre", "metres"):
        positive = str(attrs.get("positive", "")).lower()
        return "depth" if positive == "down" or "depth" in text else "height"
    if "depth" in text:
        return "depth"
    if "model" in text or "hybrid" in text:
        return "model"
    return None
