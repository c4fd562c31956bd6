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


def _reference(text: str, where: str) -> np.datetime64:
    m = _REF.match(text)
    if m is None:
        raise SchemaError(f"{where}: cannot read the reference date {text!r} (expected e.g. '1979-01-01 00:00:00')")
    g = {k: v or "0" for k, v in m.groupdict().items()}
    frac = (g["f"] + "000000000")[:9]
    iso = (
        f"{int(g['y']):04d}-{int(g['m']):02d}-{int(g['d']):02d}T{int(g['H']):02d}:{int(g['M']):02d}:"
        f"{int(g['S']):02d}.{frac}"
    )
    try:
        return np.datetime64(iso, "ns")
    except ValueError as e:
        raise SchemaError(f"{where}: invalid reference date {text!r} ({e})") from None


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
        Missing or unreadable ``units``, a calendar NumPy cannot represent, or non-finite values.
    """
    values = np.asarray(values)
    if values.dtype.kind == "M":
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
    if values.dtype.kind in "iu":
        offs = values.astype(np.int64) * np.int64(step)
    else:
        offs = np.round(values.astype(np.float64) * step).astype(np.int64)
    return _reference(ref, where) + offs.astype("timedelta64[ns]")


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
