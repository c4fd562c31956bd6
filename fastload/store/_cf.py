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
# How xarray decodes float times (xarray 2026.9 ``coding/times.py``; see decode_time's notes): the unit names its
# pandas path knows, after lower-casing and appending "s" (``_netcdf_to_numpy_timeunit``), and the units cftime
# knows with their factor to microseconds (cftime ``UNIT_CONVERSION_FACTORS``), for xarray's cftime fallback.
_PANDAS_UNITS = ("nanoseconds", "microseconds", "milliseconds", "seconds", "minutes", "hours", "days")
_CFTIME_US = {
    "microseconds": 1, "microsecond": 1,
    "milliseconds": 1_000, "millisecond": 1_000, "ms": 1_000,
    "seconds": 1_000_000, "second": 1_000_000, "sec": 1_000_000, "secs": 1_000_000, "s": 1_000_000,
    "minutes": 60_000_000, "minute": 60_000_000, "min": 60_000_000, "mins": 60_000_000,
    "hours": 3_600_000_000, "hour": 3_600_000_000, "hr": 3_600_000_000, "hrs": 3_600_000_000, "h": 3_600_000_000,
    "days": 86_400_000_000, "day": 86_400_000_000, "d": 86_400_000_000,
}  # fmt: skip
_CFTIME_FINE = ("microseconds", "microsecond", "milliseconds", "millisecond", "ms")  # no whole-second nudge
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


def _reference(text: str, calendar: str, where: str, cftime: bool = False) -> int:
    """The reference date of CF units as exact integer nanoseconds since 1970-01-01 (any year: the reference may
    lie far outside what datetime64[ns] holds, e.g. NCEP's 'hours since 1-1-1', while the decoded dates do not).
    Fractional seconds to the nanosecond as pandas reads them, or with ``cftime`` to the microsecond as cftime
    reads them (``int(float("0.<digits>") * 1e6)``, cftime ``_parse_date``).

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
    frac = int(float(f"0.{g['f']}") * 1e6) * 1000 if cftime else int((g["f"] + "000000000")[:9])
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


_PER_NS = {"ps": 10**3, "fs": 10**6, "as": 10**9}  # units finer than ns: how many make one ns


def outside_ns_range(values: np.ndarray) -> np.ndarray:
    """Where ``datetime64`` values fall outside what datetime64[ns] holds.

    In integers, without converting the values: NumPy < 2.5 wraps what ns cannot hold silently, NumPy >= 2.5
    raises ``OverflowError`` for the whole array, and also for a value inside the range but within one unit of
    its end (its floor division overflows). A unit of fixed length (weeks to ns, with a count) is checked against
    the range's ends in that unit, rounded inward; months and years against the first month and year that start
    inside the range and the last one. A unit finer than ns holds only dates in range unless its count makes
    its step long (``M8[1000000000ps]`` is ms): those are checked against the range's ends in ns, floored as
    NumPy converts them. Big-endian values (``>M8``) are read as values, not bytes.
    """
    unit, count = np.datetime_data(values.dtype)
    if unit == "generic":  # only NaT has no unit
        return np.zeros(values.shape, bool)
    i = values.astype(values.dtype.newbyteorder("="), copy=False).view(np.int64)
    nat = np.iinfo(np.int64).min
    if unit in ("Y", "M"):
        first, last = ("1678", "2262") if unit == "Y" else ("1677-10", "2262-04")
        lo = -(-int(np.datetime64(first, unit).astype(np.int64)) // count)  # ceil: the first whole step inside
        hi = int(np.datetime64(last, unit).astype(np.int64)) // count
    elif unit in _PER_NS:  # the value in ns is floor(i * count / per_ns), in range when in [nat + 1, -(nat + 1)]
        per_ns = _PER_NS[unit]
        lo = -((-(nat + 1) * per_ns) // count)  # ceil((nat + 1) * per_ns / count)
        hi = (-nat * per_ns - 1) // count  # the largest i with i * count < 2**63 * per_ns
        if lo <= nat + 1 and hi >= -(nat + 1):  # every int64 is inside
            return np.zeros(values.shape, bool)
    else:
        step = int(np.timedelta64(1, unit).astype("timedelta64[ns]").astype(np.int64)) * count
        lo, hi = -((-(nat + 1)) // step), (-(nat + 1)) // step
    return np.asarray(((i < lo) | (i > hi)) & (i != nat))


def _shown(value: np.datetime64) -> Any:
    """``value`` as a message shows it: a unit of ns or finer with a count (``M8[3ns]``) in whole seconds, which
    NumPy cannot print outside the ns range (>= 2.5 raises OverflowError, older versions print it wrapped)."""
    unit, count = np.datetime_data(value.dtype)
    if unit not in ("ns", *_PER_NS) or count == 1:
        return value
    i = int(np.asarray(value).astype(value.dtype.newbyteorder("=")).view(np.int64))
    return np.datetime64(i * count // (10**9 * _PER_NS.get(unit, 1)), "s")


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
    Integers decode exactly (integer arithmetic, no float rounding of large offsets). Floats decode to the
    nanoseconds xarray's default decoding (``time_unit="ns"``) gives, rounding included, so that a time axis read
    here and one read by xarray agree bit for bit (a float such as ``1/24`` days is not exactly one hour, and how
    it is rounded decides whether the date is a whole second):

    - xarray's pandas path, taken when the unit is one of its names (``hours``, ``hour``, ``days`` ..., not
      ``h``/``hrs``/``d``/``secs``), the reference date lies in the datetime64[ns] range, and so do the reference
      plus the smallest and the largest value cut to whole units: the value times the unit's nanoseconds in
      float64, truncated toward zero, plus the reference (``_numbers_to_timedelta``). A product beyond int64,
      which xarray turns into NaT, is refused.
    - otherwise xarray falls back to cftime (``num2date``): the value times the unit's microseconds in long
      double, rounded to the nearest microsecond, except that a result 1 us past or short of a whole second is
      floored or ceiled onto it (cftime ``cast_to_int``), plus the reference cut to microseconds.

    Floats xarray cannot decode at all (units ``ns``/``us``, which pandas does not name and cftime does not know;
    ``nanoseconds`` off the pandas path) take the pandas formula. In the "standard"/"gregorian" calendar a
    reference date before 1582-10-15 is a Julian date, as in cftime and xarray (NCEP's "hours since 1-1-1").
    """
    values = np.asarray(values)
    if values.dtype.kind == "M":
        outside = outside_ns_range(values)
        if outside.any():
            raise SchemaError(
                f"{where}: time value {_shown(values[outside].ravel()[0])} is outside the range datetime64[ns] "
                f"holds, {NS_RANGE}; fastload reads dates only in that range"
            )
        unit, count = np.datetime_data(values.dtype)
        if unit in _PER_NS and count > 1:  # NumPy multiplies by the count before it divides: int64 overflows
            i = values.astype(values.dtype.newbyteorder("="), copy=False).view(np.int64)
            nat = i == np.iinfo(np.int64).min
            exact = np.asarray(np.where(nat, 0, i).astype(object) * count // _PER_NS[unit])  # floored, as NumPy
            return np.where(nat, i, exact.astype(np.int64)).view("datetime64[ns]")
        return values.astype("datetime64[ns]")
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
    # A date is whole * step + ref_ns, in integers. Checked against the datetime64[ns] range with Python
    # integers (no wrap, no NaT), then computed in int64, whose wrapping arithmetic gives the exact result modulo
    # 2**64, which is the result itself once it is known to lie in range.
    if values.dtype.kind != "f":
        whole = values
    else:
        whole, step, ref_ns = _float_offsets(values, unit, step, ref, calendar, ref_ns, f"{where}: time value", units)
    lo = -((ref_ns - _NS_MIN) // step)  # the least whole with whole * step + ref_ns >= _NS_MIN
    hi = (_NS_MAX - ref_ns) // step  # the largest whole with whole * step + ref_ns <= _NS_MAX
    wmin, wmax = int(whole.min()), int(whole.max())
    late = wmax > hi
    if wmin < lo or late:
        bad = values.max() if late else values.min()
        raise SchemaError(
            f"{where}: time value {bad} in units {units!r} is a date {'after' if late else 'before'} the range "
            f"datetime64[ns] holds, {NS_RANGE}; fastload reads dates only in that range"
        )
    ref_wrapped = np.int64((ref_ns + 2**63) % 2**64 - 2**63)
    if whole.dtype.kind == "f":  # integral floats, maybe beyond int64 (e.g. "ns since 1-1-1"): those mod 2**64
        big = np.abs(whole) >= 2.0**63  # multiples of 2**11, so is the remainder: exact
        wrapped = whole - np.floor(whole / 2.0**64) * 2.0**64
        whole = np.where(big, np.where(wrapped >= 2.0**63, wrapped - 2.0**64, wrapped), whole)
    out = whole.astype(np.int64) * np.int64(step) + ref_wrapped
    return out.view("datetime64[ns]")


def _float_offsets(
    values: np.ndarray, unit: str, step: int, ref: str, calendar: str, ref_ns: int, what: str, units: str
) -> tuple[np.ndarray, int, int]:
    """Float times as xarray decodes them (see :func:`decode_time`'s notes): ``(whole, step, ref_ns)``, the date
    being ``whole * step + ref_ns`` nanoseconds, ``whole`` integral (float or int64 array)."""
    v = values.astype(np.float64)  # xarray/coding/times.py:525 (pandas path), 568 (cftime fallback)
    if (unit if unit.endswith("s") else unit + "s") in _PANDAS_UNITS and _NS_MIN <= ref_ns <= _NS_MAX:
        # Pandas path (reference aligned to ns, times.py:494-497), unless its check of the extreme values
        # (times.py:507-514, 414-422) fails: the value cut to whole units (NumPy's float * timedelta64
        # truncates) as a pandas Timedelta in ns, added to the reference; a failure falls back (times.py:566).
        ends = [int(np.trunc(v.min())) * step, int(np.trunc(v.max())) * step]
        if all(abs(e) <= _NS_MAX and _NS_MIN <= ref_ns + e <= _NS_MAX for e in ends):
            whole = np.trunc(v * np.float64(step))  # times.py:637 (float64 product), 670 (int64 cast truncates)
            if whole.max() >= 2.0**63 or whole.min() < -(2.0**63):
                bad = values.max() if whole.max() >= 2.0**63 else values.min()
                raise SchemaError(
                    f"{what} {bad} in units {units!r} lies more than 2**63 ns from the reference date, which "
                    "xarray decodes to NaT; store times closer to the reference or as integers"
                )
            return whole, 1, ref_ns
    if unit not in _CFTIME_US:  # "us", "ns": neither pandas' names nor cftime's, xarray cannot decode it at all
        return np.trunc(v * np.float64(step)), 1, ref_ns
    # xarray's cftime fallback (times.py:566-569, 601, 824; cftime _cftime.pyx:631-636, 440-445): the value
    # times the unit's microseconds in long double, rounded to the nearest microsecond, then nudged onto a whole
    # second from 1 us either side for units of seconds and up; the reference cut to microseconds (pyx:798)
    us = v.astype(np.longdouble) * _CFTIME_US[unit]
    if us.max() >= 2.0**63 or us.min() < -(2.0**63):  # cftime refuses it (OverflowError); the caller refuses it
        return np.trunc(us), 1_000, ref_ns
    whole = np.rint(us).astype(np.int64)
    if unit not in _CFTIME_FINE:
        whole = np.where(whole % 1_000_000 == 1, np.floor(us).astype(np.int64), whole)
        whole = np.where(whole % 1_000_000 == 999_999, np.ceil(us).astype(np.int64), whole)
    return whole, 1_000, _reference(ref, calendar, "", cftime=True)


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
