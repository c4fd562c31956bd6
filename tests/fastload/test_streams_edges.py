"""Multi-stream edge cases found in review (s11 r3): random boxes that depend only on (seed, epoch), time rules on
jittered and gappy axes, a global lat-lon stream stored with its seam column repeated, poles on mesh token edges,
errors naming the stream. Small xarray-written stores; references are plain NumPy / xarray selections."""

from __future__ import annotations

import os

import numpy as np
import pytest

from fastload.config import FieldConfig, SamplingConfig, StreamConfig
from fastload.errors import ConfigError
from fastload.streams import MultiStream, extract_streams

pytestmark = pytest.mark.filterwarnings("ignore::fastload.streams.ChunkingWarning")  # tiny stores, one chunk

H1 = np.timedelta64(1, "h")
T0 = np.datetime64("2000-01-01T00", "ns")


def make_ll(path, lat, lon, time, name, seed=0, data=None):
    import xarray as xr

    rng = np.random.default_rng(seed)
    a = rng.standard_normal((len(time), len(lat), len(lon))).astype(np.float32) if data is None else data
    ds = xr.Dataset({name: (("time", "latitude", "longitude"), a)},
                    coords={"time": np.asarray(time, "datetime64[ns]"), "latitude": np.asarray(lat, float),
                            "longitude": np.asarray(lon, float)})
    ds.to_zarr(os.fspath(path), mode="w", zarr_format=2, consolidated=False)
    return ds


def make_mesh(path, lat, lon, time, name, seed=0):
    import xarray as xr

    rng = np.random.default_rng(seed)
    a = rng.standard_normal((len(time), len(lat))).astype(np.float32)
    ds = xr.Dataset({name: (("time", "node"), a)},
                    coords={"time": np.asarray(time, "datetime64[ns]"), "latitude": ("node", np.asarray(lat, float)),
                            "longitude": ("node", np.asarray(lon, float))})
    ds.to_zarr(os.fspath(path), mode="w", zarr_format=2, consolidated=False)
    return ds


def fld(name, stream, nt=(1, 1, 1), ts=(1, 2, 2)):
    return FieldConfig(name=name, num_tokens=nt, token_size=ts, normalization="none", stream=stream)


def two(d, ref, other, fa, fb, **kw):
    return SamplingConfig(streams=(StreamConfig(name="ref", path=os.fspath(d / f"{ref}.zarr")),
                                   StreamConfig(name=other, path=os.fspath(d / f"{other}.zarr"), **kw)),
                          fields=(fa, fb))


GLOBAL10 = (np.linspace(90, -90, 19), np.arange(36) * 10.0)


# -- H1: random boxes are a function of (seed, epoch) only ---------------------------------------------------------
@pytest.fixture(scope="module")
def regional(tmp_path_factory):
    d = tmp_path_factory.mktemp("regional")
    t = T0 + np.arange(20) * 6 * H1
    make_ll(d / "ref.zarr", *GLOBAL10, t, "a")
    make_ll(d / "reg.zarr", np.arange(-60, 61, 5.0), np.arange(0, 301, 5.0), t, "b", seed=1)  # half the globe
    return two(d, "ref", "reg", fld("a", "ref", (1, 2, 2), (1, 2, 2)), fld("b", "reg", (1, 2, 2), (1, 2, 2)))


def test_random_boxes_do_not_depend_on_what_the_object_drew_before(regional):
    fresh = [MultiStream(regional).random_boxes(2, seed=7, epoch=e) for e in range(12)]
    used = MultiStream(regional)
    seq = [used.random_boxes(2, seed=7, epoch=e) for e in range(12)]
    looked = MultiStream(regional)
    assert not looked.space_ok.all()  # the regional stream refuses some places; reading this fills the cache
    after = [looked.random_boxes(2, seed=7, epoch=e) for e in range(12)]
    for e in range(12):
        assert np.array_equal(fresh[e], seq[e]) and np.array_equal(fresh[e], after[e]), e
        assert looked.space_ok[fresh[e][:, 1], fresh[e][:, 2]].all()  # every stream serves every drawn box
        looked.check_boxes(fresh[e])


def test_a_loader_with_a_regional_stream_resumes_exactly(regional):
    import torch

    from fastload.loader import Loader

    kw = dict(batch_size=1, samples_per_epoch=2, workers=1, device="cpu", seed=0, samples_per_window=1)
    with Loader(None, regional, **kw) as a:
        for e in range(2):  # epoch 1's draw falls back on the served places (filling the object's cache)
            a.set_epoch(e)
            list(a)
        a.set_epoch(2)
        it = iter(a)
        next(it)
        state = a.state_dict()
        rest = list(it)
    with Loader(None, regional, **kw) as b:
        b.load_state_dict(state)
        resumed = list(b)
    with Loader(None, regional, **kw) as c:
        fresh = c.epoch_boxes(2)
    assert np.array_equal(np.concatenate([x.boxes.numpy() for x in rest]), fresh[1:])
    assert len(rest) == len(resumed) == 1
    for x, y in zip(rest, resumed):
        assert torch.equal(x.boxes, y.boxes)
        for name in ("a", "b"):
            assert torch.equal(x.fields[name], y.fields[name]), name


# -- M1: inside / previous tolerate float-encoded times (seconds of jitter) ----------------------------------------
def xr_values(ds, name, want_time, meta):
    """``(S, 1, nt, nlat, nlon, 1, K)`` (a field's tokens, slots flattened) values of ``ds[name]`` selected by coordinates with xarray: time
    ``want_time[s, i]`` (exact), the slot's point latitude and longitude (exact), 0 for padding."""
    import xarray as xr

    S, nlat, nlon, K = meta.valid.shape
    nt = want_time.shape[1]
    tt = xr.DataArray(np.broadcast_to(want_time[:, :, None, None, None], (S, nt, nlat, nlon, K)))
    la = xr.DataArray(np.broadcast_to(np.nan_to_num(meta.point_lat)[:, None], (S, nt, nlat, nlon, K)))
    lo = xr.DataArray(np.broadcast_to(np.nan_to_num(meta.point_lon)[:, None], (S, nt, nlat, nlon, K)))
    v = ds[name].sel(time=tt, latitude=la, longitude=lo).values
    v = np.where(meta.valid[:, None], v, 0)
    return v.reshape(S, 1, nt, nlat, nlon, 1, K)


@pytest.fixture(scope="module")
def jitter(tmp_path_factory):
    d = tmp_path_factory.mktemp("jitter")
    t = T0 + np.arange(40) * 6 * H1
    make_ll(d / "ref.zarr", *GLOBAL10, t, "a")
    early = make_ll(d / "early.zarr", *GLOBAL10, t - np.timedelta64(1, "s"), "b", seed=1)  # 1 s before each step
    late = make_ll(d / "late.zarr", *GLOBAL10, t + np.timedelta64(1, "s"), "c", seed=2)  # 1 s after
    return d, t, early, late


@pytest.mark.parametrize("rule, store, name", [("inside", "early", "b"), ("previous", "late", "c"),
                                               ("nearest", "early", "b"), ("nearest", "late", "c")])
def test_a_stream_stored_a_second_off_the_reference_keeps_its_steps(jitter, rule, store, name):
    d, t, early, late = jitter
    ds = early if store == "early" else late
    cfg = two(d, "ref", store, fld("a", "ref", (2, 1, 1)), fld(name, store, (2, 1, 1)), time_rule=rule)
    ms = MultiStream(cfg)
    assert ms.valid_t0.tolist() == list(range(39))  # every window of the reference is served
    boxes = np.array([[0, 4, 4], [10, 0, 35], [38, 17, 0]])
    out = extract_streams(ms, boxes)[name]
    # the stream step 1 s from each reference time point, found by xarray
    want = np.stack([ds.time.sel(time=t[[b, b + 1]], method="nearest").values for b in boxes[:, 0]])
    assert np.array_equal(out.meta.time, want)
    assert np.array_equal(out.meta.t_steps, boxes[:, :1] + [0, 1])
    want_v = xr_values(ds, name, want, out.meta)
    assert np.array_equal(out.data.reshape(want_v.shape), want_v)


def test_the_time_tolerance_is_one_percent_of_the_step_and_no_more():
    from fastload._stream_time import align

    day = np.timedelta64(1, "D")
    m = np.timedelta64(1, "m")
    daily = T0 + np.arange(5) * day  # tolerance: 1 % of a day = 14.4 min
    taus = np.array([[T0 + day - 14 * m, T0 + day - 15 * m, T0 + 3 * day + 23 * H1]])
    # previous: a step up to 14.4 min after tau counts as at tau; 15 min is the next step (the one before is taken)
    assert align(daily, taus, "previous", day)[0].tolist() == [[1, 0, 3]]
    assert align(daily, (T0 - 14 * m)[None, None], "previous", day)[1].all()  # the first step, 14 min late
    assert not align(daily, (T0 - 15 * m)[None, None], "previous", day)[1].any()
    # inside: [tau - tol, tau + cadence - tol), so consecutive points never share a step
    hourly = T0 + np.arange(10) * H1  # 36 s tolerance
    s = np.timedelta64(1, "s")
    idx, ok = align(hourly, np.array([[T0 + H1 + 36 * s, T0 + 2 * H1 + 37 * s]]), "inside", H1)
    assert idx.tolist() == [[1, 3]] and ok.all()
    assert not align(hourly[::3], np.array([[T0 + H1 + 37 * s]]), "inside", H1)[1].any()  # nothing in the hour


# -- M2: nearest does not fill a gap of the stream's record ----------------------------------------------------------
def test_nearest_refuses_points_inside_a_gap_of_the_record_as_previous_does(tmp_path):
    day = np.timedelta64(1, "D")
    tref = T0 + np.arange(80) * 6 * H1  # 6-hourly, 20 days
    days = np.arange(20)
    days = days[(days < 5) | (days > 14)]  # a daily stream missing days 5 .. 14
    make_ll(tmp_path / "ref.zarr", *GLOBAL10, tref, "a")
    ds = make_ll(tmp_path / "day.zarr", *GLOBAL10, T0 + days * day, "b", seed=1)
    for rule in ("nearest", "previous"):
        ms = MultiStream(two(tmp_path, "ref", "day", fld("a", "ref", (2, 1, 1)), fld("b", "day", (2, 1, 1)),
                             time_rule=rule))
        # brute force over the reference's windows (2 points 6 h apart): each point's step by the rule (xarray's
        # selection), within half a day (nearest) or less than a day (previous) of the point
        want = []
        for t0 in range(79):
            taus = tref[[t0, t0 + 1]]
            if rule == "nearest":
                st = ds.time.sel(time=taus, method="nearest").values
                ok = np.all(np.abs(st - taus) <= 12 * H1)
            else:
                ok = np.all(taus >= ds.time.values[0]) and np.all(
                    taus - ds.time.sel(time=taus, method="ffill").values < day)
            want.append(ok)
        assert ms.valid_t0.tolist() == np.flatnonzero(want).tolist(), rule
        with pytest.raises(ConfigError, match=rf"stream 'day' cannot serve the window .* time_rule '{rule}'"):
            extract_streams(ms, np.array([[40, 4, 4]]))  # day 10: inside the gap
    ms = MultiStream(two(tmp_path, "ref", "day", fld("a", "ref", (2, 1, 1)), fld("b", "day", (2, 1, 1)),
                         time_rule="nearest"))
    out = extract_streams(ms, np.array([[17, 4, 4], [59, 4, 4]]))["b"]  # 4 d 6 h .. 4 d 12 h, 14 d 18 h .. 15 d
    assert np.array_equal(out.meta.time, ds.time.sel(time=tref[[17, 18, 59, 60]], method="nearest").values
                          .reshape(2, 2))


def test_nearest_serves_every_point_of_a_monthly_record():
    from fastload._stream_time import align

    months = np.array([f"2000-{m:02d}-01" for m in range(1, 13)], "datetime64[ns]")  # 29 .. 31 days apart
    taus = np.arange(months[0], months[-1], np.timedelta64(1, "h"))
    idx, ok = align(months, taus[:, None], "nearest", np.timedelta64(1, "h"))
    assert ok.all()
    want = np.abs(months[None, :] - taus[:, None]).argmin(axis=1)  # ties: argmin takes the earlier step
    assert np.array_equal(idx[:, 0], want)


# -- M3: a global lat-lon stream whose last longitude repeats the first -----------------------------------------------
def test_a_stream_repeating_its_seam_column_wraps_like_the_global_grid(tmp_path):
    t = T0 + np.arange(4) * 6 * H1
    lat = np.linspace(90, -90, 37)
    make_ll(tmp_path / "ref.zarr", *GLOBAL10, t, "a")
    glob = make_ll(tmp_path / "glob.zarr", lat, np.arange(72) * 5.0, t, "c", seed=3)  # 0 .. 355
    v = glob["c"].values
    seam = make_ll(tmp_path / "seam.zarr", lat, np.arange(73) * 5.0, t, "b",  # 0 .. 360: column 0 repeated
                   data=np.concatenate([v, v[..., :1]], axis=-1))
    cfg = SamplingConfig(streams=(StreamConfig(name="ref", path=os.fspath(tmp_path / "ref.zarr")),
                                  StreamConfig(name="seam", path=os.fspath(tmp_path / "seam.zarr")),
                                  StreamConfig(name="glob", path=os.fspath(tmp_path / "glob.zarr"))),
                         fields=(fld("a", "ref", (1, 2, 4)), fld("b", "seam", (1, 2, 4)), fld("c", "glob", (1, 2, 4))))
    ms = MultiStream(cfg)
    boxes = np.array([[0, 6, x] for x in range(36)] + [[1, 0, 35], [2, 15, 34]])
    out = extract_streams(ms, boxes)
    b, c = out["b"].meta, out["c"].meta
    plon = b.point_lon.reshape(len(boxes), -1)
    # every box is centred on its region (within half a column), on both sides of the seam
    clon = (ms.regions.regions(boxes)[:, 2] + ms.regions.regions(boxes)[:, 3] / 2) % 360
    off = np.angle(np.exp(1j * np.deg2rad(plon)).mean(axis=1), deg=True) - clon
    assert np.all(np.abs((off + 180) % 360 - 180) <= 2.5 + 1e-9)
    assert np.all(plon < 360.0)  # the repeated column (360) is never read
    # the same places and values as the stream stored without the repeated column, and as xarray selects them
    assert np.array_equal(b.point_lon, c.point_lon) and np.array_equal(b.point_lat, c.point_lat)
    assert np.array_equal(out["b"].data, out["c"].data)
    want = xr_values(seam.rename({"b": "c"}), "c", b.time, b)
    assert np.array_equal(out["b"].data.reshape(want.shape), want)


# -- L2: a stream's grid errors name the stream and its store ----------------------------------------------------------
def test_grid_errors_name_the_stream_and_its_store(tmp_path):
    t = T0 + np.arange(4) * 6 * H1
    make_ll(tmp_path / "ref.zarr", *GLOBAL10, t, "a")
    make_ll(tmp_path / "desc.zarr", GLOBAL10[0], np.arange(35, -1, -1) * 10.0, t, "b")  # 350 .. 0
    make_ll(tmp_path / "one.zarr", np.array([0.0]), GLOBAL10[1], t, "c")  # one row
    f = (1, 1, 2)
    with pytest.raises(ConfigError, match=r"streams\.ocean \(.*desc\.zarr\): a lat-lon stream's longitudes must "
                                          r"increase .* they run 350, 340 \.\. 0"):
        MultiStream(SamplingConfig(streams=(StreamConfig(name="ref", path=os.fspath(tmp_path / "ref.zarr")),
                                            StreamConfig(name="ocean", path=os.fspath(tmp_path / "desc.zarr"))),
                                   fields=(fld("a", "ref", f, f), fld("b", "ocean", f, f))))
    with pytest.raises(ConfigError, match=r"streams\.sfc \(.*one\.zarr\): the grid needs at least two latitudes "
                                          r"to define cells, it has 1"):
        MultiStream(SamplingConfig(streams=(StreamConfig(name="ref", path=os.fspath(tmp_path / "ref.zarr")),
                                            StreamConfig(name="sfc", path=os.fspath(tmp_path / "one.zarr"))),
                                   fields=(fld("a", "ref", f, f), fld("c", "sfc", f, f))))
    with pytest.raises(ConfigError, match=r"streams\.first \(.*desc\.zarr\): the first stream's longitudes must "
                                          r"increase"):
        MultiStream(SamplingConfig(streams=(StreamConfig(name="first", path=os.fspath(tmp_path / "desc.zarr")),
                                            StreamConfig(name="ref", path=os.fspath(tmp_path / "ref.zarr"))),
                                   fields=(fld("b", "first", f, f), fld("a", "ref", f, f))))


# -- s13 r3: a refused draw's replacement is independent of it; regions that never meet are refused -----------------
def _allowed_places(ref_lat, ref_lon, reg_lat, reg_lon, H, W):
    """``(NY - H + 1, NX)`` bool, plain NumPy from the coordinates: the box starts of a periodic reference grid whose
    region (the union of its points' cells, edges half-way between points, latitudes clipped to +-90) has its centre
    inside a regional lat-lon grid's coordinates plus half a cell (the rule in ``fastload._stream_space``)."""
    ref_lat, ref_lon = np.asarray(ref_lat, float), np.asarray(ref_lon, float)
    dy, dx = ref_lat[1] - ref_lat[0], ref_lon[1] - ref_lon[0]
    yedge = np.clip(np.concatenate([ref_lat - dy / 2, [ref_lat[-1] + dy / 2]]), -90, 90)
    y0 = np.arange(ref_lat.size - H + 1)
    clat = (yedge[y0] + yedge[y0 + H]) / 2
    x0 = np.arange(ref_lon.size)
    clon = (ref_lon[x0] - dx / 2 + W * dx / 2) % 360
    rdy, rdx = reg_lat[1] - reg_lat[0], reg_lon[1] - reg_lon[0]
    lat_ok = (clat >= reg_lat.min() - rdy / 2) & (clat <= reg_lat.max() + rdy / 2)
    lon_ok = (clon - (reg_lon[0] - rdx / 2)) % 360 <= reg_lon[-1] - reg_lon[0] + rdx
    return lat_ok[:, None] & lon_ok[None, :]


def test_small_regional_epochs_draw_every_allowed_row_equally(regional):
    """Epochs of 1 and 2 samples beside a regional stream: every drawn box is an allowed place (computed here from
    the coordinates), and each allowed row is drawn as often as uniform over the allowed places says, within 15 %.
    The redraw after a refused first draw reused the refused draw's generator: its places were nearly a remap of
    the refused ones, and the first and last allowed rows (2 and 13) came 1.56-1.73x as often as uniform."""
    ms = MultiStream(regional)
    allowed = _allowed_places(*GLOBAL10, np.arange(-60, 61, 5.0), np.arange(0, 301, 5.0), 4, 4)
    assert allowed.shape == ms.space_ok.shape and 0 < allowed.sum() < allowed.size
    want = allowed.sum(1) / allowed.sum()  # row shares of a uniform draw over the allowed places
    rows = np.flatnonzero(want)
    assert rows.tolist() == list(range(2, 14))
    for n, epochs in ((1, 4800), (2, 2400)):
        b = np.concatenate([ms.random_boxes(n, seed=11, epoch=e) for e in range(epochs)])
        assert b.shape == (n * epochs, 3) and allowed[b[:, 1], b[:, 2]].all()
        got = np.bincount(b[:, 1], minlength=allowed.shape[0]) / b.shape[0]
        ratio = got[rows] / want[rows]
        assert 0.85 < ratio.min() and ratio.max() < 1.15, (n, dict(zip(rows.tolist(), ratio.round(2).tolist())))


def test_a_refused_draw_is_replaced_independently_of_it(regional):
    """The replacement's rows do not follow the refused draw's (correlation 0.995 when both came from one
    generator), and the epoch stays a function of (seed, epoch): drawn twice, the same boxes."""
    from fastload.sampling.geometry import GridExtent, random_boxes

    ms = MultiStream(regional)
    ext = GridExtent(nt=int(ms.valid_t0.size), ny=int(ms.grid.ny), nx=int(ms.grid.nx), periodic_x=True)
    first, got = [], []
    for e in range(100):
        b = ms.random_boxes(64, seed=0, epoch=e)
        first.append(random_boxes(64, ext, (1, 4, 4), seed=0, epoch=e)[:, 1])
        got.append(b[:, 1])
    again = MultiStream(regional)
    for e in (0, 1, 99):
        assert np.array_equal(again.random_boxes(64, seed=0, epoch=e), ms.random_boxes(64, seed=0, epoch=e))
    assert abs(np.corrcoef(np.concatenate(first), np.concatenate(got))[0, 1]) < 0.1


def _disjoint(d):
    t = T0 + np.arange(20) * 6 * H1
    make_ll(d / "ref.zarr", *GLOBAL10, t, "a")
    make_ll(d / "north.zarr", np.arange(30, 71, 2.0), np.arange(0, 41, 2.0), t, "b", seed=1)
    make_ll(d / "south.zarr", np.arange(-70, -29, 2.0), np.arange(180, 221, 2.0), t, "c", seed=2)
    return SamplingConfig(streams=tuple(StreamConfig(name=n, path=os.fspath(d / f"{n}.zarr"))
                                        for n in ("ref", "north", "south")),
                          fields=(fld("a", "ref", (1, 2, 2), (1, 2, 2)), fld("b", "north", (1, 2, 2), (1, 2, 2)),
                                  fld("c", "south", (1, 2, 2), (1, 2, 2))))


def test_streams_whose_regions_never_meet_are_refused_at_construction(tmp_path):
    """Each regional stream overlaps the global reference, but no place is served by both: a ConfigError naming the
    streams and their latitudes and longitudes when the config is opened (it passed, and the Loader's first epoch
    raised NumPy's bare 'a must be a positive integer')."""
    from fastload.loader import Loader

    cfg = _disjoint(tmp_path)
    for make in (lambda: MultiStream(cfg), lambda: Loader(None, cfg, batch_size=2, samples_per_epoch=8,
                                                           device="cpu", workers=1)):
        with pytest.raises(ConfigError) as e:
            make()
        msg = str(e.value)
        assert "no place of the first stream 'ref'" in msg and "served by every stream at once" in msg, msg
        assert "'north' (" in msg and "latitudes 30.00 .. 70.00, longitudes 0.00 .. 40.00" in msg, msg
        assert "'south' (" in msg and "latitudes -70.00 .. -30.00, longitudes 180.00 .. 220.00" in msg, msg
        assert str(tmp_path / "north.zarr") in msg, msg


def test_random_boxes_with_no_common_place_name_the_streams(regional):
    """The guard behind the construction check: an epoch that must be redrawn with no place every stream serves is
    a ConfigError naming the streams, not NumPy's ValueError from choosing among no places."""
    ms = MultiStream(regional)
    ms._space_full = np.zeros_like(ms.space_ok)  # as if no place were served by every stream
    with pytest.raises(ConfigError, match=r"no place of the first stream 'ref' .* 'reg' \("):
        ms.random_boxes(64, seed=0, epoch=0)
