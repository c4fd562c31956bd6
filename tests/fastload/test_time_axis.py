"""A time axis with a gap (one six-hourly step missing, as xarray writes it after dropping a time): random
placement never puts a sample window across the gap, an explicit box across it is refused naming the box, its times
and the gap; on a regular axis placement is unchanged. (Check-time refusals: tests/fastload/test_store_check.py.)

References are independent of fastload: the store is written by xarray, the valid windows come from pandas' times,
the values from the NumPy arrays written.
"""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import xarray as xr

from fastload import extract
from fastload._stream_time import first_irregular, median_step, regular_windows
from fastload.config import FieldConfig, SamplingConfig
from fastload.errors import ConfigError
from fastload.sampling.geometry import GridExtent, check_boxes, random_boxes
from fastload.store import open_store

STEP = pd.Timedelta("6h")
GAP = 10  # index of the six-hourly step left out


def write_xr(path, time, *, ny=8, nx=12, seed=0):
    """tas (time, lat, lon) and orog (lat, lon), written by xarray; ``time=None``: no time axis at all."""
    rng = np.random.default_rng(seed)
    lat, lon = np.linspace(60, -60, ny), np.arange(nx) * 30.0
    orog = rng.normal(500, 200, size=(ny, nx)).astype("f4")
    if time is None:
        tas = rng.normal(280, 5, size=(ny, nx)).astype("f4")
        ds = xr.Dataset({"tas": (("latitude", "longitude"), tas), "orog": (("latitude", "longitude"), orog)},
                        coords={"latitude": lat, "longitude": lon})
    else:
        tas = rng.normal(280, 5, size=(len(time), ny, nx)).astype("f4")
        ds = xr.Dataset({"tas": (("time", "latitude", "longitude"), tas), "orog": (("latitude", "longitude"), orog)},
                        coords={"time": time, "latitude": lat, "longitude": lon})
    ds.to_zarr(path, mode="w", zarr_format=2, consolidated=False)
    return {"tas": tas, "orog": orog}


def gap_times(n=48):
    full = pd.date_range("2000-01-01", periods=n, freq=STEP)
    return full.delete(GAP)


def xr_cfg(nt=2, tt=2, *, name="tas", norm="none", time_step=1, norm_path=None):
    return SamplingConfig(fields=(FieldConfig(name=name, num_tokens=(nt, 2, 3), token_size=(tt, 2, 2),
                                              normalization=norm),), time_step=time_step, norm_path=norm_path)


def valid_t0(times: pd.DatetimeIndex, n_points: int, time_step: int) -> set[int]:
    """Window starts whose points are each time_step x 6 h after the one before (pandas arithmetic)."""
    span = (n_points - 1) * time_step + 1
    out = set()
    for t0 in range(len(times) - span + 1):
        pts = times[t0 + np.arange(n_points) * time_step]
        if all(pts[k] == pts[0] + k * time_step * STEP for k in range(n_points)):
            out.add(t0)
    return out


@pytest.fixture(scope="module")
def gap_store(tmp_path_factory):
    path = tmp_path_factory.mktemp("gap") / "gap.zarr"
    truth = write_xr(path, gap_times())
    return open_store(path), truth, xr.open_zarr(path, consolidated=False).time.values


# ------------------------------------------------------------------------------------------------ gaps: placement
@pytest.mark.parametrize("n_points,time_step", [(4, 1), (2, 3), (3, 2), (1, 1)])
def test_random_placement_never_crosses_the_gap(gap_store, n_points, time_step):
    store, _, xtime = gap_store
    ext = GridExtent.from_store(store)
    want = valid_t0(pd.DatetimeIndex(xtime), n_points, time_step)
    box = (n_points, 4, 6)
    got = random_boxes(4000, ext, box, seed=3, epoch=1, time_step=time_step)
    assert set(got[:, 0].tolist()) == want  # every valid start drawn, no other
    # the times of every drawn window, read from xarray's axis, are evenly spaced at the config's cadence
    pts = xtime[got[:, :1] + np.arange(n_points) * time_step]
    assert (np.diff(pts, axis=1) == np.timedelta64(time_step * 6, "h")).all()


def test_placement_with_gaps_stays_deterministic_and_partitions_ranks(gap_store):
    ext = GridExtent.from_store(gap_store[0])
    kw = dict(seed=11, epoch=4, samples_per_window=3)
    a = random_boxes(60, ext, (4, 4, 6), **kw)
    np.testing.assert_array_equal(a, random_boxes(60, ext, (4, 4, 6), **kw))
    assert not np.array_equal(a, random_boxes(60, ext, (4, 4, 6), seed=11, epoch=5, samples_per_window=3))
    parts = [random_boxes(60, ext, (4, 4, 6), rank=r, world_size=3, **kw) for r in range(3)]
    merged = np.concatenate(parts)
    assert merged.shape == a.shape and sorted(map(tuple, merged.tolist())) == sorted(map(tuple, a.tolist()))


def test_a_regular_axis_draws_as_before():
    """Knowing the time axis changes nothing where it has no gap: the same boxes as an extent without it."""
    time = pd.date_range("2000-01-01", periods=40, freq=STEP).values
    with_t = GridExtent(nt=40, ny=31, nx=60, periodic_x=True, time=time)
    without = GridExtent(nt=40, ny=31, nx=60, periodic_x=True)
    for seed, dt, rng_ in ((0, 1, None), (5, 2, None), (9, 1, (4, 30))):
        kw = dict(seed=seed, epoch=2, time_step=dt, rank=1, world_size=2, samples_per_window=2, t_range=rng_)
        np.testing.assert_array_equal(random_boxes(50, with_t, (6, 9, 12), **kw),
                                      random_boxes(50, without, (6, 9, 12), **kw))
    assert with_t == without  # the axis is not part of the extent's identity


def _months_valid(times: pd.DatetimeIndex, n_points: int) -> set[int]:
    """Window starts whose points are consecutive calendar months (pandas periods), the reference for monthly data."""
    p = times.to_period("M")
    return {t0 for t0 in range(len(p) - n_points + 1)
            if all((p[t0 + k] - p[t0]).n == k for k in range(n_points))}


@pytest.mark.parametrize("kind", ["month starts", "mid-month stamps", "hourly with seconds of jitter",
                                  "float seconds since 1970 (float32 rounding)"])
def test_calendars_and_jitter_keep_their_windows(kind):
    """The cadence rule takes the nearest whole step (a review found exact equality refused monthly stores for 12
    points, drew only July and December windows for 3, and refused hourly stores with seconds of jitter), while a
    missing month or hour is still a gap."""
    rng = np.random.default_rng(1)
    if kind == "month starts":
        times = pd.date_range("2000-01-01", periods=72, freq="MS")
    elif kind == "mid-month stamps":
        times = pd.date_range("2000-01-01", periods=72, freq="MS") + pd.to_timedelta(rng.integers(13, 16, 72), "D")
    elif kind == "hourly with seconds of jitter":
        times = pd.date_range("2000-01-01", periods=200, freq="h") + pd.to_timedelta(rng.integers(-3, 4, 200), "s")
    else:
        secs = (pd.date_range("2000-01-01", periods=200, freq="6h").astype("int64") // 10**9).to_numpy()
        times = pd.to_datetime(secs.astype(np.float32).astype(np.float64), unit="s")
    for n_points in (2, 3, 12):
        assert regular_windows(times.values, n_points, 1).all(), (kind, n_points)
    gapped = times.delete(30)
    ok = regular_windows(gapped.values, 3, 1)
    assert not ok.all() and set(np.flatnonzero(~ok).tolist()) == {28, 29}  # the windows across the missing one
    if kind.startswith("month"):
        assert set(np.flatnonzero(ok).tolist()) == _months_valid(gapped, 3)
    assert first_irregular(gapped.values) == 29 and first_irregular(times.values) is None


def test_an_even_count_of_steps_takes_a_step_the_axis_has():
    """50 steps of 3 h and 50 of 1 h: the median step is one of them (the mean of the two middle ones, 2 h, refused
    the whole store); windows of the part on that step are drawn."""
    times = pd.DatetimeIndex(list(pd.date_range("2000-01-01", periods=51, freq="3h"))
                             + list(pd.date_range("2000-01-07 07:00", periods=50, freq="h")))
    assert median_step(times.values) in (np.timedelta64(1, "h"), np.timedelta64(3, "h"))
    assert regular_windows(times.values, 2, 1).sum() >= 49


def test_t_range_with_gaps_draws_only_regular_windows_inside(gap_store):
    store, _, xtime = gap_store
    ext = GridExtent.from_store(store)
    got = random_boxes(2000, ext, (4, 4, 6), seed=0, epoch=0, t_range=(5, 20))
    want = {t for t in valid_t0(pd.DatetimeIndex(xtime), 4, 1) if 5 <= t and t + 4 <= 20}
    assert set(got[:, 0].tolist()) == want
    with pytest.raises(ConfigError, match=r"no window of 4 time points .* regular step .* time index 9 -> 10"):
        random_boxes(10, ext, (4, 4, 6), seed=0, epoch=0, t_range=(7, 13))
    # the step named lies in the range asked for (it named the axis' first irregular step, outside it)
    late = GridExtent(nt=60, ny=31, nx=60, periodic_x=True,
                      time=pd.date_range("2000-01-01", periods=62, freq=STEP).delete([9, 40]).values)
    with pytest.raises(ConfigError, match=r"time index 38 -> 39"):
        random_boxes(10, late, (4, 4, 6), seed=0, epoch=0, t_range=(36, 42))


# ------------------------------------------------------------------------------------------ gaps: explicit boxes
def test_an_explicit_box_across_the_gap_is_refused_naming_box_times_and_gap(gap_store):
    store, _, xtime = gap_store
    ext = GridExtent.from_store(store)
    ok = sorted(valid_t0(pd.DatetimeIndex(xtime), 4, 1))
    check_boxes([[t, 0, 0] for t in ok], ext, (4, 4, 6))  # every regular window passes
    with pytest.raises(ConfigError) as e:
        check_boxes([[0, 0, 0], [8, 2, 5]], ext, (4, 4, 6))
    msg = str(e.value)
    a, b = (str(np.datetime_as_string(xtime[i], "m")) for i in (GAP - 1, GAP))  # the step across the gap
    assert "boxes[1] [8, 2, 5] crosses a gap" in msg and f"{a} -> {b}" in msg and "is 12 h" in msg
    assert "should be 6 h apart" in msg and str(np.datetime_as_string(xtime[8], "m")) in msg


def test_extract_of_windows_drawn_from_the_store_has_evenly_spaced_tokens(gap_store):
    """GridExtent.from_store (the Loader's placement extent when a tokenizer has none) -> extract: token times
    and values equal xarray's."""
    store, truth, xtime = gap_store
    cfg = xr_cfg(nt=2, tt=2)
    boxes = random_boxes(40, GridExtent.from_store(store), cfg.box, seed=1, epoch=0)
    out = extract(store, cfg, boxes)["tas"]
    np.testing.assert_array_equal(out.meta.time, xtime[boxes[:, :1] + np.arange(2) * 2])
    assert (np.diff(out.meta.time, axis=1) == np.timedelta64(12, "h")).all()
    for i in range(len(boxes)):  # the 4 time points of the first grid point of each sample, as written
        t0, y, x = boxes[i]
        np.testing.assert_array_equal(out.data[i, 0, :, 0, 0, :, 0, 0].reshape(4), truth["tas"][t0:t0 + 4, y, x])


def test_extract_refuses_a_box_across_the_gap(gap_store):
    store, _, _ = gap_store
    with pytest.raises(ConfigError, match=r"boxes\[0\] \[8, 2, 3\] crosses a gap .* is 12 h"):
        extract(store, xr_cfg(nt=2, tt=2), [[8, 2, 3]])


def test_the_loader_draws_no_window_across_the_gap(gap_store):
    from fastload import Loader

    store, _, xtime = gap_store
    cfg = xr_cfg(nt=2, tt=2)
    with Loader(store, cfg, samples_per_epoch=64, batch_size=16, workers=1) as loader:
        boxes = loader.epoch_boxes(0)
    assert set(boxes[:, 0].tolist()) <= valid_t0(pd.DatetimeIndex(xtime), 4, 1)


def test_multi_stream_windows_skip_a_gap_of_the_reference():
    """servable (the multi-stream valid_t0) leaves out reference windows across the reference's own gap."""
    from fastload._stream_time import servable

    times = gap_times()
    for n_points, dt in ((4, 1), (2, 2)):
        ok, _, _ = servable(times.values, n_points, dt, [("daily", None, "nearest")])
        assert set(np.flatnonzero(ok).tolist()) == valid_t0(times, n_points, dt)


@pytest.mark.parametrize("zarr_format", [2, 3])
def test_a_cfgrib_forecast_steps_along_valid_time(tmp_path, zarr_format):
    """A forecast written by xarray from cfgrib: scalar ``time`` (the initial time), dimension ``step`` and
    ``valid_time(step)``. Its time axis is ``step`` with the valid times (it failed: "coordinate 'time' has shape
    (); expected 1-D"), and a box reads as xarray indexes it."""
    import warnings

    from fastload.store import open_store

    steps = pd.to_timedelta(np.arange(0, 48, 6), "h")
    t2m = np.random.default_rng(0).normal(280, 5, (8, 19, 36)).astype("f4")
    ds = xr.Dataset({"t2m": (("step", "latitude", "longitude"), t2m)},
                    coords={"time": np.datetime64("2024-01-01T00", "ns"), "step": steps,
                            "valid_time": ("step", np.datetime64("2024-01-01T00", "ns") + steps.values),
                            "latitude": np.linspace(90, -90, 19), "longitude": np.arange(0, 360, 10.0)})
    path = tmp_path / "fc.zarr"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        ds.to_zarr(path, zarr_format=zarr_format)
    s = open_store(path)
    assert list(s.fields) == ["t2m"]
    np.testing.assert_array_equal(s.time, ds.valid_time.values)
    cfg = SamplingConfig.from_dict(dict(batch_size=1, time_step=1, fields={
        "t2m": dict(num_tokens=[2, 2, 2], token_size=[2, 3, 3], normalization="none")}))  # fmt: skip
    got = extract(path, cfg, np.array([[3, 5, 33]]))["t2m"].data[0, 0]
    want = t2m[3:7, 5:11][:, :, (33 + np.arange(6)) % 36]
    np.testing.assert_array_equal(got, want.reshape(2, 2, 2, 3, 2, 3).transpose(0, 2, 4, 1, 3, 5))
