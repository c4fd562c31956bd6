"""CF time decoding (:func:`fastload.store._cf.decode_time`) against xarray's and cftime's decoding.

Review s11 r1 findings: dates outside what ``datetime64[ns]`` holds (1677-09-21 .. 2262-04-11) wrapped silently
(integers) or became NaT (floats), so NCEP-style float "days since 0001-01-01" was refused with a misleading
message; "standard"/"gregorian" reference dates before 1582-10-15 were read as proleptic Gregorian, not Julian.
Review s11 r5 M3: float times were decoded exactly to the float's value, so hourly "days since" floats (k/24 in
float64) came out some ns off the hour where xarray gives whole hours, and rechunk refused them; floats are now
decoded with xarray's own rounding, compared bit for bit below.
"""

from __future__ import annotations

import warnings
from fractions import Fraction

import numpy as np
import pandas as pd
import pytest

from fastload.errors import SchemaError
from fastload.store import open_store
from fastload.store._cf import decode_time

xr = pytest.importorskip("xarray")
times = pytest.importorskip("xarray.coding.times")


def _xarray(values, units, calendar):
    """xarray's decoding, as datetime64[ns] (it falls back to cftime objects for a reference outside the ns range
    even where the dates are inside it; those are converted as xarray's ``cftime_to_nptime`` does, raising for a
    date outside the ns range rather than wrapping it as ``np.datetime64(iso, "ns")`` would)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        out = times.decode_cf_datetime(np.asarray(values), units, calendar)
    if out.dtype.kind == "M":
        return out.astype("datetime64[ns]")
    return np.array([pd.Timestamp(np.datetime64(d.isoformat())).as_unit("ns").to_datetime64()
                     for d in out.ravel()]).reshape(out.shape)  # fmt: skip


@pytest.mark.parametrize("values,units,calendar", [
    (np.array([0, 6, 12, 18], "i8"), "hours since 2000-01-01", "standard"),
    (np.array([0, 6, 12, 18], "i4"), "hours since 1979-1-1 00:00:00", "gregorian"),
    (np.array([0, 2**32], "u8"), "seconds since 2000-01-01", "proleptic_gregorian"),
    (np.array([10_000_000_000], "i8"), "seconds since 1700-01-01", "standard"),
    (np.array([10_000_000_000.0]), "seconds since 1700-01-01", "standard"),
    (np.array([3_000_000], "i8"), "hours since 1900-01-01", "standard"),
    (np.array([0.0, 0.25, 0.5, 1e-9]), "days since 1979-01-01", "standard"),
    (np.array([-1.5, -0.25, 0.0]), "days since 2000-03-01 06:00", "proleptic_gregorian"),
    # NCEP-style: a reference in year 1, far outside datetime64[ns], dates inside it; integers and floats
    (np.array([730134, 730286, 730469], "i8"), "days since 0001-01-01 00:00:00", "proleptic_gregorian"),
    (np.array([730134.0, 730286.5, 730469.25]), "days since 0001-01-01 00:00:00", "proleptic_gregorian"),
    (np.array([17522904.0, 17522910.0]), "hours since 0001-01-01", "proleptic_gregorian"),
])  # fmt: skip
def test_decodes_as_xarray(values, units, calendar):
    got = decode_time(values, {"units": units, "calendar": calendar}, "t")
    np.testing.assert_array_equal(got, _xarray(values, units, calendar))


@pytest.mark.parametrize("values,units,side", [
    (np.array([3_300_000], "i8"), "hours since 1900-01-01", "after"),  # ~2276: wrapped to 1691 before
    (np.array([0, 24], "i8"), "hours since 1600-01-01", "before"),  # wrapped to 2184 before
    (np.array([3_300_000.0]), "hours since 1900-01-01", "after"),  # NaT before
    (np.array([2**63 + 5], "u8"), "hours since 2000-01-01", "after"),  # wrapped to 2000-01-01T05 before
    (np.array([-(2**62)], "i8"), "days since 2000-01-01", "before"),
    (np.array([1e300]), "days since 2000-01-01", "after"),
    (np.array([0.0, 164000.0]), "days since 1850-01-01", "after"),  # CMIP6 extension runs to 2300
])  # fmt: skip
def test_dates_outside_the_ns_range_are_refused_naming_units_and_range(values, units, side):
    cal = "proleptic_gregorian"
    if abs(float(values.max())) < 1e15:  # cftime's dates as the reference: some do lie outside the range
        import cftime

        key = [(d.year, d.month, d.day, d.hour, d.minute, d.second, d.microsecond)
               for d in np.ravel(cftime.num2date(values.astype(np.float64), units, cal))]  # fmt: skip
        assert min(key) < (1677, 9, 21, 0, 12, 43, 145225) or max(key) > (2262, 4, 11, 23, 47, 16, 854775)
    with pytest.raises(SchemaError, match=rf"t: time value .* in units '{units}' is a date {side} the range "
                       r"datetime64\[ns\] holds, 1677-09-21.*2262-04-11"):  # fmt: skip
        decode_time(values, {"units": units, "calendar": cal}, "t")


def test_the_edges_of_the_ns_range_exactly():
    """The last and first nanoseconds datetime64[ns] holds decode (pandas' Timestamp.max/min); one past is refused,
    also for a float's fractional part."""
    ns = {"units": "nanoseconds since 1970-01-01", "calendar": "standard"}
    got = decode_time(np.array([-(2**63) + 1, 2**63 - 1], "i8"), ns, "t")
    np.testing.assert_array_equal(got, np.array([pd.Timestamp.min.to_datetime64(), pd.Timestamp.max.to_datetime64()]))
    with pytest.raises(SchemaError, match="before the range"):
        decode_time(np.array([-(2**63)], "i8"), ns, "t")  # would be NaT
    last = pd.Timestamp.max - pd.Timestamp("2262-04-11")  # 23:47:16.854775807 into the day
    ok = last / pd.Timedelta(days=1) - 1e-9
    days = {"units": "days since 2262-04-11", "calendar": "proleptic_gregorian"}
    np.testing.assert_array_equal(decode_time(np.array([ok]), days, "t"), _xarray(np.array([ok]), **days))
    with pytest.raises(SchemaError, match="after the range"):
        decode_time(np.array([last / pd.Timedelta(days=1) + 1e-9]), days, "t")
    with pytest.raises(SchemaError, match="after the range"):
        decode_time(np.array([1], "i8"), days, "t")


def test_datetime64_values_outside_the_ns_range_are_refused():
    t = np.array(["2000-01-01", "2300-01-01"], "datetime64[D]")
    with pytest.raises(SchemaError, match=r"2300-01-01 is outside the range datetime64\[ns\] holds"):
        decode_time(t, {}, "t")
    ok = np.array(["1700-01-01", "2262-04-11", "NaT"], "datetime64[D]")
    np.testing.assert_array_equal(decode_time(ok, {}, "t"), ok.astype("datetime64[ns]"))
    fine = np.array([1500, 2_000_000], "datetime64[ps]")  # finer than ns: truncated as NumPy does, not refused
    np.testing.assert_array_equal(decode_time(fine, {}, "t"), fine.astype("datetime64[ns]"))
    np.testing.assert_array_equal(decode_time(np.array(["2262"], "datetime64[Y]"), {}, "t"),
                                  np.array([pd.Timestamp("2262-01-01").to_datetime64()]))  # fmt: skip


# the ends of the ns range, the steps just inside and outside them, and dates around them in each resolution
_EDGES = [
    "1677-09-21T00:12:43.145224", "1677-09-21T00:12:43.145225", "2262-04-11T23:47:16.854775",
    "2262-04-11T23:47:16.854776", "1677-09-21T00:12:43", "1677-09-21T00:12:44", "2262-04-11T23:47:16",
    "2262-04-11T23:47:17", "1677-09-20", "1677-09-21", "1677-09-22", "2262-04-11", "2262-04-12", "1677-09",
    "1677-10", "2262-04", "2262-05", "1677", "1678", "2262", "2263", "1500", "2300-06-01",
]


@pytest.mark.parametrize("unit", ["s", "m", "h", "D", "W", "M", "Y", "ms", "us", "3h", "10D", "2Y", "5M"])
def test_datetime64_values_at_the_ns_range_ends_decode_or_are_refused_as_pandas_bounds_say(unit):
    """In each datetime64 unit, the dates at and around the ends of the ns range (cast down to the unit, so also
    a day, month or year that starts outside the range and ends inside it) decode exactly or are refused, as
    pandas' Timestamp.min/max say of their exact nanoseconds (Python ints, from microseconds). NumPy >= 2.5
    raises OverflowError converting them (also some inside the range); older NumPy wrapped them."""
    dtype = np.dtype(f"datetime64[{unit}]")
    for v in sorted({np.datetime64(e).astype(dtype) for e in _EDGES}):
        ns = int(v.astype("datetime64[us]").astype(np.int64)) * 1000  # us holds +-290k years: exact here
        if pd.Timestamp.min.value <= ns <= pd.Timestamp.max.value:
            got = decode_time(np.array([v, np.datetime64("NaT", unit)], dtype), {}, "t")
            assert int(got[0].astype(np.int64)) == ns and np.isnat(got[1]), (unit, v)
            assert int(decode_time(np.array(v, dtype), {}, "t").astype(np.int64)) == ns  # 0-d
        else:
            with pytest.raises(SchemaError, match=f"t: time value {v} is outside the range"):
                decode_time(np.array([np.datetime64("2000-01-01"), v], dtype), {}, "t")
            with pytest.raises(SchemaError, match="outside the range"):
                decode_time(np.array(v, dtype), {}, "t")


@pytest.mark.parametrize("unit, per_ns", [("1000000000ps", 1000), ("3000ps", 1000), ("7000000fs", 10**6),
                                           ("2000000000as", 10**9), ("3ps", 1000)])  # fmt: skip
def test_units_finer_than_ns_with_a_long_step_decode_or_are_refused_as_pandas_bounds_say(unit, per_ns):
    """A unit finer than ns with a count that makes its step long (``M8[1000000000ps]`` is a ms) was not range
    checked: NumPy < 2.5 wrapped the values, >= 2.5 raised OverflowError. Around the ends of the range, in the
    unit: decoded to floor(value * count / per_ns) ns, or refused where pandas' Timestamp.min/max say so."""
    dtype = np.dtype(f"datetime64[{unit}]")
    count = np.datetime_data(dtype)[1]
    lo, hi = pd.Timestamp.min.value, pd.Timestamp.max.value
    ints = {0, -1, 1, 2**62, -(2**62), 2**63 - 1, -(2**63) + 1}
    for end in (lo, hi):
        k = end * per_ns // count
        ints |= {k + d for d in range(-3, 4)}
    for i in sorted(x for x in ints if -(2**63) < x < 2**63):
        v = np.array([i], np.int64).view(dtype)
        ns = i * count // per_ns  # Python ints: exact
        for arr in (v, v.astype(dtype.newbyteorder(">"))):
            if lo <= ns <= hi:
                got = decode_time(arr, {}, "t")
                assert got.dtype == np.dtype("datetime64[ns]") and int(got.astype(np.int64)[0]) == ns, (unit, i)
            else:
                shown = np.datetime64(ns // 10**9, "s")
                with pytest.raises(SchemaError, match=f"t: time value {shown} is outside the range"):
                    decode_time(arr, {}, "t")


def test_big_endian_and_3ns_values_are_checked_as_values_and_named(tmp_path):
    """A big-endian ``>M8`` array was range checked on its raw bytes (2000-01-01 refused, 2300 let through to
    wrap); an ``M8[3ns]`` value outside the range could not be printed in the message (NumPy 2.5 OverflowError)."""
    be = np.array(["2000-01-01", "2262-04-11T23:47:16"], ">M8[s]")
    np.testing.assert_array_equal(decode_time(be, {}, "t"), be.astype("M8[ns]"))
    assert decode_time(be, {}, "t")[0] == np.datetime64("2000-01-01", "ns")
    with pytest.raises(SchemaError, match="t: time value 2300-01-01T00:00:00 is outside the range"):
        decode_time(np.array(["2000-01-01", "2300-01-01"], ">M8[s]"), {}, "t")
    with pytest.raises(SchemaError, match="t: time value 1600-01-01 is outside the range"):
        decode_time(np.array(["1600-01-01"], ">M8[D]"), {}, "t")
    s = int(np.datetime64("2300-01-01T00:00:01", "s").astype(np.int64))  # the first 3 ns step in that second
    with pytest.raises(SchemaError, match="t: time value 2300-01-01T00:00:01 is outside the range"):
        decode_time(np.array([-(-s * 10**9 // 3)], np.int64).view("M8[3ns]"), {}, "t")
    first = -((2**63 - 1) // 3)  # the first 3 ns step inside the range (its start is -(2**63 - 1) ns)
    early = first - 1  # the one before it
    assert int(decode_time(np.array([first], np.int64).view("M8[3ns]"), {}, "t").astype(np.int64)[0]) == 3 * first
    with pytest.raises(SchemaError, match=f"time value {np.datetime64(early * 3 // 10**9, 's')} is outside"):
        decode_time(np.array([early], np.int64).view("M8[3ns]"), {}, "t")


def _store_with_time(path, values, attrs):
    import zarr

    g = zarr.open_group(str(path), mode="w", zarr_format=2)
    a = g.create_array("time", shape=values.shape, dtype=values.dtype, chunks=values.shape,
                       attributes={"_ARRAY_DIMENSIONS": ["time"], **attrs})  # fmt: skip
    a[:] = values
    for n, v in (("latitude", np.array([10.0, 0.0])), ("longitude", np.array([0.0, 1.0, 2.0]))):
        b = g.create_array(n, shape=v.shape, dtype="f8", chunks=v.shape, attributes={"_ARRAY_DIMENSIONS": [n]})
        b[:] = v
    c = g.create_array("t", shape=(len(values), 2, 3), dtype="f4", chunks=(len(values), 2, 3), fill_value=np.nan,
                       attributes={"_ARRAY_DIMENSIONS": ["time", "latitude", "longitude"]})  # fmt: skip
    c[:] = 1.0
    return str(path)


def test_ncep_float_days_since_year_1_open_like_xarray(tmp_path):
    """Review rep4b: float 'days since 0001-01-01' was refused with 'not strictly increasing: NaT at index 0'."""
    true = np.array(["2000-01-15", "2000-06-15", "2000-12-15"], "datetime64[D]")
    days = (true - np.datetime64("0001-01-01", "D")).astype(np.int64).astype("f8")
    p = _store_with_time(tmp_path / "s.zarr", days,
                         {"units": "days since 0001-01-01 00:00:00", "calendar": "proleptic_gregorian"})  # fmt: skip
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        want = xr.open_zarr(p, consolidated=False).time.values
    np.testing.assert_array_equal(open_store(p).time, want)
    np.testing.assert_array_equal(want, true.astype("datetime64[ns]"))


@pytest.mark.parametrize("units,calendar", [
    ("hours since 1-1-1 00:00:0.0", "standard"),  # NCEP reanalysis: 2 days off when read as proleptic Gregorian
    ("hours since 0001-01-01", "gregorian"),
    ("days since 1500-02-29", "standard"),  # a Julian leap day (1500 is no Gregorian leap year)
    ("days since 1582-10-04 12:00", "gregorian"),  # the last Julian day
    ("days since 1582-10-15", "standard"),  # the first Gregorian day
    ("minutes since -0044-03-15", "standard"),  # no year 0: -44 is 44 BC, astronomical -43
    ("hours since 1-1-1 00:00:0.0", "proleptic_gregorian"),
    ("days since 1582-10-10", "proleptic_gregorian"),
])  # fmt: skip
def test_mixed_calendar_reference_before_1582_is_julian_as_in_cftime_and_xarray(units, calendar):
    """Review rep5: 'standard'/'gregorian' reference dates before 1582-10-15 are Julian dates (cftime, xarray)."""
    import cftime

    true = [cftime.datetime(*ymdh, calendar=calendar) for ymdh in ((2000, 1, 31, 12), (2000, 3, 1, 6), (2000, 12, 1))]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # cftime's CFWarning for negative years
        num = np.asarray(cftime.date2num(true, units, calendar), np.float64)
    for values in [num] + ([num.astype("i8")] if (num == np.round(num)).all() else []):
        got = decode_time(values, {"units": units, "calendar": calendar}, "t")
        np.testing.assert_array_equal(got, _xarray(values, units, calendar))
        np.testing.assert_array_equal(got, np.array(["2000-01-31T12", "2000-03-01T06", "2000-12-01"], "M8[ns]"))


@pytest.mark.parametrize("units,match", [
    ("hours since 1582-10-10", r"reference date '1582-10-10' does not exist in the 'standard' calendar"),
    ("hours since 0000-01-01", "calendar has no year 0"),
    ("hours since 1700-02-29", "invalid reference date"),  # a leap day in Julian years only
])  # fmt: skip
def test_mixed_calendar_refuses_what_cftime_refuses(units, match):
    import cftime

    if "1700" not in units:
        with pytest.raises(ValueError):
            cftime.num2date([0], units, "standard")
    with pytest.raises(SchemaError, match=match):
        decode_time(np.array([0], "i8"), {"units": units, "calendar": "standard"}, "t")


def test_ncep_standard_calendar_store_opens_like_xarray(tmp_path):
    """Review rep5 end to end: a store with NCEP units and calendar 'standard' has xarray's times and months."""
    import cftime

    true = np.array(["2000-01-31T12", "2000-03-01T06", "2000-12-01"], "datetime64[ns]")
    units = "hours since 1-1-1 00:00:0.0"
    hours = cftime.date2num([pd.Timestamp(t).to_pydatetime() for t in true], units, "standard").astype("i8")
    p = _store_with_time(tmp_path / "s.zarr", hours, {"units": units, "calendar": "standard"})
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        want = xr.open_zarr(p, consolidated=False).time.values
    np.testing.assert_array_equal(want, true)
    np.testing.assert_array_equal(open_store(p).time, want)


# --- float times: the nanoseconds xarray gives, bit for bit (review s11 r5 M3) ---------------------------------

_FLOAT_REFS = [  # (reference, calendar, days from the reference to 2000-01-01 in that calendar)
    ("2000-01-01", "standard", 0),
    ("1979-1-1 00:00:00", "gregorian", 7670),
    ("1900-01-01 00:00:00", "proleptic_gregorian", 36524),
    ("2020-06-15 12:30:00", "standard", -7471.520833333333),  # dates before the reference: negative values
    ("1979-01-01 00:00:00.5", "standard", 7669.999994212963),  # a fractional reference
    ("2262-04-11", "proleptic_gregorian", -95932),  # the last day datetime64[ns] holds: all values negative
    ("1677-09-22", "standard", 117937),  # its first whole day
    # references outside the ns range: xarray falls back to cftime (microseconds, long double)
    ("0001-01-01", "proleptic_gregorian", 730119),
    ("1-1-1 00:00:0.0", "standard", 730121),  # a Julian reference (NCEP)
    ("1600-01-01 00:00:00.1234567", "proleptic_gregorian", 146097),
]
_FLOAT_UNITS = {  # unit -> units per day; the long names take xarray's pandas path, the short ones its cftime one
    "days": 1, "day": 1, "hours": 24, "hour": 24, "minutes": 1440, "seconds": 86_400, "milliseconds": 86_400_000,
    "microseconds": 86_400_000_000, "d": 1, "h": 24, "hrs": 24, "min": 1440, "secs": 86_400, "ms": 86_400_000,
}  # fmt: skip


def _float_encodings(base: float, per: int, rng: np.random.Generator) -> dict[str, np.ndarray]:
    """Float time values as writers produce them, ``base`` days from the reference to 2000-01-01, ``per`` units
    a day; dates from 1682 to 2260."""
    k = np.concatenate([np.arange(0, 48), rng.integers(-24 * 115_000, 24 * 95_000, 40)])  # hours from 2000
    m = rng.integers(-1440 * 115_000, 1440 * 95_000, 40)  # minutes from 2000
    days = rng.uniform(-115_000, 95_000, 40)
    return {
        "k/24 days, float64": (k / 24 + base) * per,
        "k/1440 days, float64": (m / 1440 + base) * per,
        "k * (per/24), float64": k * (per / 24) + base * per,
        "k/24 days, float32": ((k / 24 + base) * per).astype(np.float32),
        "k/24 in float32 arithmetic": (k.astype(np.float32) / np.float32(24) + np.float32(base)) * np.float32(per),
        "k/1440 days, float32": ((m / 1440 + base) * per).astype(np.float32),
        "sub-second, large offsets": (days + base) * per,
        "sub-microsecond": (np.array([0.5e-6, 1.5e-6, -0.5e-6, 1 - 1e-6, 1 + 1e-6, 0.9999995, 1e-7, 3600.0000005])
                            / 86_400 + base) * per,  # fmt: skip
    }


@pytest.mark.parametrize("ref,calendar,base", _FLOAT_REFS)
def test_float_times_decode_bit_for_bit_as_xarray(ref, calendar, base):
    """Many float encodings against xarray's decoding (pandas path and cftime fallback), datetime64[ns] equal."""
    rng = np.random.default_rng(sum(ref.encode()))  # fixed per reference (hash() of a str is salted)
    failures, compared = [], 0
    for unit, per in _FLOAT_UNITS.items():
        units = f"{unit} since {ref}"
        for name, values in _float_encodings(base, per, rng).items():
            try:
                want = _xarray(values, units, calendar)
            except (ValueError, OverflowError):  # neither xarray nor cftime decodes it (e.g. > 2**63 us)
                with pytest.raises(SchemaError):
                    decode_time(values, {"units": units, "calendar": calendar}, "t")
                continue
            got = decode_time(values, {"units": units, "calendar": calendar}, "t")
            compared += 1
            if not np.array_equal(got.view("i8"), want.view("i8")):
                i = np.flatnonzero(got != want)[0]
                failures.append(f"{units!r} {name}: {values[i]!r} -> {got[i]}, xarray {want[i]}")
    assert not failures, "\n".join(failures[:20])
    assert compared >= 0.9 * len(_FLOAT_UNITS) * 8


def test_hourly_float_days_decode_to_whole_hours():
    """Review s11 r5 M3: k/24 'days since 2000-01-01' in float64 (2000 to 2100) is k whole hours, as in xarray;
    decoded exactly to the float's value it was up to some ns off (01:00:00.000000026)."""
    k = np.arange(24 * 36_525)
    got = decode_time(k / 24, {"units": "days since 2000-01-01"}, "t")
    np.testing.assert_array_equal(got, np.datetime64("2000-01-01", "ns") + k.astype("timedelta64[h]"))


def test_float_offset_beyond_int64_ns_is_refused_not_nat():
    """A float more than 2**63 ns from the reference: xarray gives NaT (its int64 cast overflows); refused."""
    v = np.array([0.0, 106_751.995])
    units = "days since 1677-09-22"
    assert np.isnat(_xarray(v, units, "standard")[1])
    with pytest.raises(SchemaError, match=r"t: time value 106751.995 in units 'days since 1677-09-22' lies more "
                       r"than 2\*\*63 ns from the reference date"):  # fmt: skip
        decode_time(v, {"units": units}, "t")


def test_float_nanoseconds_far_from_the_reference():
    """'nanoseconds since 0001-01-01' floats (neither pandas nor cftime decodes them in xarray): the float's
    value, truncated, even where it exceeds int64."""
    ns_2000 = 730_119 * 86_400 * 10**9  # 2000-01-01 from 0001-01-01, proleptic; exact in float64 (6.3e19)
    v = np.array([float(ns_2000), float(ns_2000 + 8192), float(ns_2000 - 2**20)])
    got = decode_time(v, {"units": "nanoseconds since 0001-01-01", "calendar": "proleptic_gregorian"}, "t")
    want = np.datetime64("2000-01-01", "ns") + np.array([0, 8192, -(2**20)], "timedelta64[ns]")
    np.testing.assert_array_equal(got, want)


def test_float_days_store_opens_and_rechunks_like_xarray(tmp_path):
    """Review s11 r5 M3 end to end: xarray writes hourly times as float64 'days since 2000-01-01'; fastload's
    store has xarray's (whole-hour) times and rechunk accepts them (it refused: 'time stamps must be whole
    seconds')."""
    from fastload.rechunk import rechunk

    t = pd.date_range("2020-01-01", periods=30, freq="h")
    ds = xr.Dataset(
        {"t": (("time", "latitude", "longitude"), np.ones((30, 2, 3), "f4"))},
        coords={"time": t, "latitude": [10.0, 0.0], "longitude": [0.0, 1.0, 2.0]},
    )
    src, out = str(tmp_path / "src.zarr"), str(tmp_path / "out.zarr")
    ds.to_zarr(src, zarr_format=2, encoding={"time": {"units": "days since 2000-01-01", "dtype": "float64"}})
    import zarr

    stored = zarr.open_array(src, path="time")[:]
    assert stored.dtype == np.float64  # and the floats are not exactly whole hours: their exact value is off
    assert any(Fraction(x) * 24 != round(Fraction(x) * 24) for x in stored.tolist())
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        want = xr.open_zarr(src, consolidated=False).time.values
    np.testing.assert_array_equal(want, t.values.astype("datetime64[ns]"))
    np.testing.assert_array_equal(open_store(src).time, want)
    rechunk(src, out, chunks=(8, 2, 3), progress=False)
    np.testing.assert_array_equal(open_store(out).time, want)
