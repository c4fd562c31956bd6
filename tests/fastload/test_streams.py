"""Several datasets in one batch: an hourly model-level atmosphere, a daily curvilinear ocean with land, and a
6-hourly unstructured mesh, sampled together and checked against plain NumPy on the arrays that were written
(mapping recomputed here by brute force: nearest points by scanning the grid, nodes by scanning the mesh, time
steps by Python loops); time rules; random placement; the loader's plan/cache/reader over all streams; bad input."""

from __future__ import annotations

import dataclasses
import re

import numpy as np
import pytest

from fastload._backend import LoadSpec
from fastload._stream_backend import StreamBackend
from fastload._stream_time import align
from fastload.config import FieldConfig, SamplingConfig, StreamConfig
from fastload.errors import ConfigError, SchemaError
from fastload.extract import extract
from fastload.sampling.geometry import box_to_tokens
from fastload.sampling.neighborhood import allocate_outputs
from fastload.store import open_store
from fastload.streams import ChunkingWarning, MultiStream, extract_streams

from .stores import make_per_variable
from .stores_multi import make_atmosphere, make_latlon_xr, make_mesh, make_ocean
from .test_mesh import brute_bin

H6 = np.timedelta64(6, "h")
DAY = np.timedelta64(1, "D")


def fields(norm: str = "none") -> tuple[FieldConfig, ...]:
    return (
        FieldConfig(name="t", levels=(96, 137), num_tokens=(2, 2, 2), token_size=(3, 3, 4), normalization=norm,
                    stream="era5"),
        FieldConfig(name="sp", num_tokens=(1, 2, 2), token_size=(6, 3, 4), normalization="none", stream="era5"),
        FieldConfig(name="thetao", levels=(5.0, 200.0), num_tokens=(2, 2, 2), token_size=(3, 3, 4),
                    normalization="local" if norm != "none" else "none", stream="ocean"),
        FieldConfig(name="zos", num_tokens=(2, 1, 1), token_size=(3, 6, 8), normalization="none", stream="ocean"),
        FieldConfig(name="temp", levels=(5.0,), num_tokens=(2, 2, 2), token_size=(3, 3, 4), normalization=norm,
                    stream="fesom"),
        FieldConfig(name="ssh", num_tokens=(2, 1, 1), token_size=(3, 6, 8), normalization="none", stream="fesom"),
    )


def config(paths, *, ocean_rule="previous", mesh_rule="nearest", time_step=2, flds=None) -> SamplingConfig:
    return SamplingConfig(
        streams=(StreamConfig(name="era5", path=str(paths["era5"])),
                 StreamConfig(name="ocean", path=str(paths["ocean"]), time_rule=ocean_rule),
                 StreamConfig(name="fesom", path=str(paths["fesom"]), time_rule=mesh_rule)),
        fields=flds or fields(), time_step=time_step)


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    d = tmp_path_factory.mktemp("multi")
    paths = {"era5": d / "a.zarr", "ocean": d / "o.zarr", "fesom": d / "m.zarr"}
    truth = {"era5": make_atmosphere(paths["era5"]), "ocean": make_ocean(paths["ocean"]),
             "fesom": make_mesh(paths["fesom"])}
    return paths, truth, MultiStream(config(paths))


# -- independent references ------------------------------------------------------------------------------------------
def region_of(truth, y0, x0, H=6, W=8):
    lat, lon = truth["era5"]["latitude"], truth["era5"]["longitude"]  # 10-degree grid, 90 .. -90
    return (min(90.0, lat[y0] + 5.0), max(-90.0, lat[y0 + H - 1] - 5.0), (lon[x0] - 5.0) % 360.0, 10.0 * W)


def previous(times, tau):
    return max(i for i, t in enumerate(times) if t <= tau)


def nearest(times, tau):
    d = [abs(int((t - tau) / np.timedelta64(1, "s"))) for t in times]
    return min(range(len(times)), key=lambda i: (d[i], i))


def ocean_box(truth, region, H=6, W=8):
    lat, lon = truth["ocean"]["latitude"], truth["ocean"]["longitude"]
    clat, clon = (region[0] + region[1]) / 2, (region[2] + region[3] / 2) % 360
    d = (lat - clat) ** 2 + (((lon - clon + 180) % 360 - 180) * np.cos(np.deg2rad(clat))) ** 2
    yc, xc = divmod(int(np.argmin(d)), lat.shape[1])
    return int(np.clip(yc - (H - 1) // 2, 0, lat.shape[0] - H)), (xc - (W - 1) // 2) % lat.shape[1]


def crop(a, t, levels, y0, x0, H, W):
    """(L, T, H, W) from a (time, [level], y, x) array; x wraps."""
    v = a[np.asarray(t)]
    v = v[:, levels] if levels is not None else v[:, None]
    return v[:, :, y0:y0 + H][..., (x0 + np.arange(W)) % a.shape[-1]].transpose(1, 0, 2, 3)


BOXES = np.array([[0, 0, 32], [40, 13, 5], [61, 7, 17], [20, 4, 1]])  # north pole + seam, south pole, end, land


def test_three_streams_equal_their_numpy_references(world):
    paths, truth, ms = world
    out = extract_streams(ms, BOXES)
    cfg = ms.config
    for f in cfg.fields:
        assert out[f.name].data.shape == (len(BOXES), *f.sample_shape) and out[f.name].stream == f.stream
    atmo_t, ocean_t, mesh_t = truth["era5"]["time"], truth["ocean"]["time"], truth["fesom"]["time"]
    g = open_store(paths["fesom"]).grid
    for s, (t0, y0, x0) in enumerate(BOXES):
        taus = atmo_t[t0 + 2 * np.arange(6)]
        reg = region_of(truth, y0, x0)
        # reference: a plain crop of the written arrays
        for name, lev in (("t", [0, 3]), ("sp", None)):
            f = cfg.field(name)
            want = crop(truth["era5"][name], t0 + 2 * np.arange(6), lev, y0, x0, 6, 8)
            assert np.array_equal(out[name].data[s], box_to_tokens(want, f.token_size)), (name, s)
        # ocean: previous daily step of every time point, box around the grid point nearest the region's centre
        ti = [previous(ocean_t, tau) for tau in taus]
        oy, ox = ocean_box(truth, reg)
        for name, lev in (("thetao", [0, 2]), ("zos", None)):
            f, m = cfg.field(name), out[name].meta
            want = box_to_tokens(crop(truth["ocean"][name], ti, lev, oy, ox, 6, 8), f.token_size)
            assert np.array_equal(out[name].data[s], want, equal_nan=True), (name, s)
            assert m.t_steps[s].tolist() == ti and m.time_rule == "previous"
            assert m.valid[s].all()
            assert np.all(ocean_t[m.t_steps[s]] <= taus) and np.all(taus - ocean_t[m.t_steps[s]] < DAY)
        # mesh: nearest 6-hourly step; nodes binned into the token cells
        ti = [nearest(mesh_t, tau) for tau in taus]
        for name, lev in (("temp", [0]), ("ssh", None)):
            f, m = cfg.field(name), out[name].meta
            nt, nlat, nlon = f.num_tokens
            tt, tlat, tlon = f.token_size
            nodes, count = brute_bin(g.lat, g.lon, reg, nlat, nlon, tlat * tlon)
            assert np.array_equal(m.points[s], nodes) and np.array_equal(m.count[s], count), (name, s)
            assert np.array_equal(m.valid[s], nodes >= 0) and m.t_steps[s].tolist() == ti
            v = truth["fesom"][name][ti]
            v = v[:, lev] if lev else v[:, None]
            want = np.where(nodes >= 0, v[:, :, np.maximum(nodes, 0)], 0)  # (T, L, nlat, nlon, K)
            want = want.reshape(nt, tt, -1, nlat, nlon, tlat, tlon).transpose(2, 0, 3, 4, 1, 5, 6)
            assert np.array_equal(out[name].data[s], want), (name, s)
            assert np.all(np.abs(mesh_t[m.t_steps[s]] - taus) <= np.timedelta64(3, "h"))
    assert not out["temp"].meta.valid[1].all()  # the south-polar box has cells with fewer nodes than slots
    assert np.isnan(out["thetao"].data[3]).any()  # the last box reaches the ocean's land


def test_coordinates_lie_inside_the_sample_box_and_window(world):
    paths, truth, ms = world
    out = extract_streams(ms, BOXES)
    pl = ms.place(BOXES)
    for s, (_, y0, x0) in enumerate(BOXES):
        lf, ll, lo0, width = region_of(truth, y0, x0)
        assert np.allclose(pl.regions[s], (lf, ll, lo0, width))
        lo, hi = min(lf, ll), max(lf, ll)
        start, end = pl.window[s]
        for name in ("t", "sp", "thetao", "zos", "temp", "ssh"):
            m = out[name].meta
            assert np.all((m.lat[s] > lo) & (m.lat[s] < hi)), name
            assert np.all((m.lon[s] - lo0) % 360 < width), name
            none = np.timedelta64(0, "ns")  # with its unit: a unitless timedelta64 is deprecated in NumPy 2.5
            step = {"t": none, "sp": none, "thetao": DAY, "zos": DAY}.get(name, H6 / 2)
            assert np.all((m.time[s] >= start - step) & (m.time[s] < end)), name
        for name in ("temp", "ssh"):  # every mesh node of a token lies in the sample's region
            m = out[name].meta
            ok = m.valid[s]
            assert np.all((m.point_lat[s][ok] >= lo) & (m.point_lat[s][ok] <= hi))
            assert np.all((m.point_lon[s][ok] - lo0) % 360 < width)
        m = out["thetao"].meta  # curvilinear points: inside the region, give or take one ocean cell
        assert np.all((m.point_lat[s] > lo - 12) & (m.point_lat[s] < hi + 12))
        assert np.all(((m.point_lon[s] - lo0 + 12) % 360) < width + 24)


def test_reference_stream_equals_single_store_extract_and_jit_equals_numpy(world):
    paths, truth, ms = world
    got = extract_streams(ms, BOXES, jit=True)
    ref = extract_streams(ms, BOXES, jit=False)
    for name in got:
        assert np.array_equal(got[name].data, ref[name].data, equal_nan=True), name
    era5 = SamplingConfig(fields=tuple(dataclasses.replace(f, stream=None) for f in ms.config.fields
                                       if f.stream == "era5"), time_step=2)
    single = extract(open_store(paths["era5"]), era5, BOXES)
    for name in ("t", "sp"):
        assert np.array_equal(got[name].data, single[name].data)
        assert np.array_equal(got[name].meta.lat, single[name].meta.lat)


# -- time rules ------------------------------------------------------------------------------------------------------
def test_time_rules_on_a_daily_axis():
    t0 = np.datetime64("2000-01-01T00:00", "ns")
    daily = t0 + np.arange(5) * DAY
    h, m = np.timedelta64(1, "h"), np.timedelta64(1, "m")
    taus = np.array([[t0, t0 + h, t0 + 12 * h, t0 + 12 * h + m, t0 + 4 * DAY + 12 * h, t0 - 12 * h]])
    idx, ok = align(daily, taus[:, :5], "nearest", DAY)
    assert idx.tolist() == [[0, 0, 0, 1, 4]] and ok.all()  # a tie goes to the earlier step
    assert not align(daily, (t0 + 4 * DAY + 12 * h + m)[None, None], "nearest", DAY)[1].any()
    assert align(daily, taus[:, 5:], "nearest", DAY)[1].all()  # half a step before the record still served
    idx, ok = align(daily, np.array([[t0, t0 + DAY - h, t0 + 4 * DAY + 23 * h]]), "previous", DAY)  # tolerance 14 min
    assert idx.tolist() == [[0, 0, 4]] and ok.all()
    assert not align(daily, (t0 - h)[None, None], "previous", DAY)[1].any()
    assert not align(daily, (t0 + 5 * DAY)[None, None], "previous", DAY)[1].any()
    idx, ok = align(daily, np.array([[t0, t0 + h, t0 + DAY]]), "inside", DAY)
    assert idx.tolist() == [[0, 1, 1]] and ok.all()  # first step in [tau, tau + cadence)
    assert not align(daily, np.array([[t0, t0 + h]]), "inside", 2 * h)[1].any()  # nothing in [01:00, 03:00)
    assert align(None, taus, "inside", h)[1].all()  # a stream without time serves every window


def test_servable_windows_match_a_brute_force_scan(world):
    paths, truth, ms = world
    atmo_t, ocean_t, mesh_t = truth["era5"]["time"], truth["ocean"]["time"], truth["fesom"]["time"]
    want = []
    for t0 in range(72 - 10):
        taus = atmo_t[t0 + 2 * np.arange(6)]
        ok = all(ocean_t[0] <= tau < ocean_t[-1] + DAY for tau in taus)
        ok &= all(mesh_t[0] - H6 / 2 <= tau <= mesh_t[-1] + H6 / 2 for tau in taus)
        want.append(ok)
    assert np.array_equal(np.flatnonzero(want), ms.valid_t0)
    short = tuple(dataclasses.replace(f, token_size=(f.token_size[0] // 3, *f.token_size[1:])) for f in fields())
    inside = MultiStream(config(paths, mesh_rule="inside", time_step=6, flds=short))
    # 2 time points 6 h apart: the mesh must have a step in [tau, tau + 6 h) for both
    want = [t for t in range(72 - 6) if all(any(tau <= m < tau + H6 for m in mesh_t) for tau in atmo_t[[t, t + 6]])
            and all(ocean_t[0] <= tau < ocean_t[-1] + DAY for tau in atmo_t[[t, t + 6]])]
    assert inside.valid_t0.tolist() == want and len(want) > 0
    assert np.all(inside.place(inside.valid_t0[:, None] * [1, 0, 0]).t_steps["fesom"] ==
                  [[next(i for i, m in enumerate(mesh_t) if m >= atmo_t[t]), next(i for i, m in enumerate(mesh_t)
                                                                                 if m >= atmo_t[t + 6])]
                   for t in inside.valid_t0])


# -- random placement --------------------------------------------------------------------------------------------------
def test_random_boxes_are_servable_deterministic_and_split_by_rank(world):
    _, _, ms = world
    a = ms.random_boxes(40, seed=3, epoch=1, samples_per_window=2)
    assert np.array_equal(a, ms.random_boxes(40, seed=3, epoch=1, samples_per_window=2))
    assert not np.array_equal(a, ms.random_boxes(40, seed=3, epoch=2, samples_per_window=2))
    assert np.isin(a[:, 0], ms.valid_t0).all() and np.all(a[0::2, 0] == a[1::2, 0])
    ms.check_boxes(a)  # every stream serves every box
    r0 = ms.random_boxes(40, seed=3, epoch=1, rank=0, world_size=2, samples_per_window=2)
    r1 = ms.random_boxes(40, seed=3, epoch=1, rank=1, world_size=2, samples_per_window=2)
    assert len(r0) + len(r1) == 40
    assert sorted(map(tuple, np.concatenate([r0, r1]).tolist())) == sorted(map(tuple, a.tolist()))


# -- the loader's path: one plan, one cache, one reader for all streams -----------------------------------------------
def test_stream_backend_batches_equal_extract_streams(world):
    _, _, ms = world
    spec = LoadSpec(batch_size=4, drop_last=True, prefetch=2, workers=2, cache_bytes=1 << 16, fetch_concurrency=4,
                    retries=0, on_bad_chunk="raise", months=None, useful_bytes_per_sample=ms.useful_bytes_per_sample,
                    jit=None, pin=False)
    backend = StreamBackend(ms, spec, None)
    boxes = ms.random_boxes(12, seed=5, epoch=0)
    before = ms.stream_counters()
    try:
        backend.start(boxes, 0)
        hits = 0
        for b in range(3):
            outs = allocate_outputs(ms.config, 4)
            stats, kept = backend.read(b, outs, None, lambda: False)
            assert kept.tolist() == [0, 1, 2, 3] and stats.misses + stats.hits == stats.chunks
            hits += stats.hits
            want = extract_streams(ms, boxes[4 * b:4 * b + 4])
            for name, o in outs.items():
                assert np.array_equal(o, want[name].data, equal_nan=True), (b, name)
        assert hits > 0  # chunks shared across batches were kept decoded
    finally:
        backend.close()
    after = ms.stream_counters()
    assert all(after[s]["decodes"] > before[s]["decodes"] for s in ("era5", "ocean", "fesom"))
    assert set(backend.capacity) == set(ms.bounds) == set(ms.arrays)


# -- normalisation, per stream ----------------------------------------------------------------------------------------
class FakeNorm:
    """Coefficients that differ by field, month and level (global: (M, L, 1, 1); local: (M, L, NY, NX))."""

    def __init__(self, shape):
        self.shape = shape

    def check(self, store, config):
        pass

    def coefficients(self, field, mode, levels, months):
        L = 1 if levels is None else len(levels)
        sp = (1, 1) if mode == "global" else self.shape
        base = np.arange(len(months))[:, None, None, None] * 10.0 + np.arange(L)[None, :, None, None]
        grid = np.arange(int(np.prod(sp))).reshape(1, 1, *sp) * 1e-3
        return ((200.0 + base + grid).astype(np.float32), (2.0 + 0 * base + 0.5 * grid + 1).astype(np.float32))


def test_normalised_fields_use_each_streams_own_months(world):
    paths, truth, _ = world
    ms = MultiStream(config(paths, flds=fields("global")),
                     normalizers={"era5": FakeNorm((19, 36)), "ocean": FakeNorm((17, 36)), "fesom": FakeNorm((1, 1))})
    raw = extract_streams(MultiStream(config(paths)), BOXES)
    got = extract_streams(ms, BOXES)
    co = ms.coefficients()
    for name in ("t", "thetao", "temp"):
        st = ms.by_name[ms.config.field(name).stream]
        m = got[name].meta
        T = 6
        steps = m.t_steps if hasattr(m, "t_steps") else BOXES[:, :1] + 2 * np.arange(T)
        cal = st.store.time[steps].astype("datetime64[M]").astype(int) % 12
        mi = np.searchsorted(st.months, cal)  # (B, T)
        mean, std = co[name]
        f = ms.config.field(name)
        nt, nlat, nlon = f.num_tokens
        tt = f.token_size[0]
        x = raw[name].data  # (B, L, nt, nlat, nlon, tt, ...)
        mo = mi.reshape(len(BOXES), nt, tt)[:, None, :, None, None, :, None, None]
        lv = np.arange(f.num_levels)[None, :, None, None, None, None, None, None]
        if name == "thetao":  # local: coefficient at each point's own grid position
            pts = m.points.reshape(len(BOXES), 1, 1, nlat, nlon, 1, *f.token_size[1:])
            y, xx = np.divmod(pts, 36)
            want = (x - mean[mo, lv, y, xx]) / std[mo, lv, y, xx]
        else:
            want = (x - mean[mo, lv, 0, 0]) / std[mo, lv, 0, 0]
        if name == "temp":
            want = np.where(m.valid.reshape(len(BOXES), 1, 1, nlat, nlon, 1, *f.token_size[1:]), want, 0)
        assert np.allclose(got[name].data, want, equal_nan=True, rtol=1e-6, atol=1e-6), name


# -- bad input ---------------------------------------------------------------------------------------------------------
def test_streams_that_miss_the_sampled_region_are_refused(tmp_path, world):
    paths, _, _ = world
    make_per_variable(tmp_path / "regional.zarr", regional=True, nt=8)  # lat 30..34, lon -10..-2, 6-hourly
    make_ocean(tmp_path / "patch.zarr", regional=True)  # lat 20..27, lon 180..189
    cfg = SamplingConfig(
        streams=(StreamConfig(name="era5", path=str(tmp_path / "regional.zarr")),
                 StreamConfig(name="ocean", path=str(tmp_path / "patch.zarr"), time_rule="previous")),
        fields=(FieldConfig(name="t", levels=(500.0,), num_tokens=(1, 1, 1), token_size=(2, 3, 4),
                            normalization="none", stream="era5"),
                FieldConfig(name="zos", num_tokens=(1, 1, 1), token_size=(2, 3, 4), normalization="none",
                            stream="ocean")))
    with pytest.raises(ConfigError, match=r"streams.ocean: its curvilinear grid .* does not overlap the region"):
        MultiStream(cfg)
    # a global first stream: the patch is served from one place only; random boxes go there, others are refused
    cfg = SamplingConfig(
        streams=(StreamConfig(name="era5", path=str(paths["era5"])),
                 StreamConfig(name="ocean", path=str(tmp_path / "patch.zarr"), time_rule="previous")),
        fields=(FieldConfig(name="t", levels=(96,), num_tokens=(2, 1, 1), token_size=(3, 3, 4),
                            normalization="none", stream="era5"),
                FieldConfig(name="zos", num_tokens=(2, 1, 1), token_size=(3, 3, 4), normalization="none",
                            stream="ocean")))
    ms = MultiStream(cfg)
    drawn = ms.random_boxes(10, seed=0, epoch=0)  # the first draw misses the patch: every place is then mapped
    assert np.all(drawn[:, 1:] == [6, 17]) and np.isin(drawn[:, 0], ms.valid_t0).all()
    assert np.argwhere(ms.space_ok).tolist() == [[6, 17]]
    r = [ms.random_boxes(10, seed=0, epoch=0, rank=k, world_size=2) for k in (0, 1)]
    assert sorted(map(tuple, np.concatenate(r).tolist())) == sorted(map(tuple, drawn.tolist()))
    with pytest.raises(ConfigError, match=r"boxes\[1\] \[3, 2, 2\]: the region .* does not overlap the grid of "
                                          r"stream 'ocean'"):
        ms.check_boxes([[3, 6, 17], [3, 2, 2]])


def test_time_axes_without_a_common_period_are_refused(tmp_path, world):
    paths, _, _ = world
    make_ocean(tmp_path / "o2001.zarr", t0=np.datetime64("2001-01-01", "ns"))
    with pytest.raises(ConfigError, match=r"no common period: stream\(s\) \['ocean'\] serve no window.*2001-01-01"):
        MultiStream(config({**paths, "ocean": tmp_path / "o2001.zarr"}))
    with pytest.raises(ConfigError, match=r"stream\(s\) \['ocean'\] serve no window"):  # daily steps, 2-hourly points
        MultiStream(config(paths, ocean_rule="inside"))
    late = make_ocean(tmp_path / "late.zarr", t0=np.datetime64("2000-01-02", "ns"))
    ms = MultiStream(config({**paths, "ocean": tmp_path / "late.zarr"}))
    assert ms.valid_t0.min() == 24 and late["time"][0] == np.datetime64("2000-01-02", "ns")
    with pytest.raises(ConfigError, match=r"boxes\[0\] .*stream 'ocean' cannot serve the window .* by time_rule "
                                          r"'previous'"):
        ms.check_boxes([[3, 2, 2]])


@pytest.mark.parametrize("bad", ["outside", "duplicate"])
def test_bad_mesh_nodes_fail_when_the_streams_open(tmp_path, world, bad):
    paths, _, _ = world
    make_mesh(tmp_path / "bad.zarr", bad=bad, nt=14)
    with pytest.raises(SchemaError, match="outside the valid range" if bad == "outside" else "same place"):
        MultiStream(config({**paths, "fesom": tmp_path / "bad.zarr"}))


def test_a_stream_chunked_as_its_whole_record_warns_with_a_recommendation(tmp_path, world):
    paths, _, _ = world
    make_ocean(tmp_path / "whole.zarr", chunks=(5, 3, 17, 36))
    with pytest.warns(ChunkingWarning) as rec:
        MultiStream(config({**paths, "ocean": tmp_path / "whole.zarr"}))
    msgs = sorted(str(r.message) for r in rec)
    assert len(msgs) == 2  # thetao and zos; the well-chunked streams say nothing
    assert re.match(r"stream 'ocean': one sample decodes about 100% of array 'thetao' .* most of the record "
                    r"is read for every sample. Recommended chunks \(2, 1, 6, 8\)", msgs[0])
    assert re.match(r"stream 'ocean': .* array 'zos' .* Recommended chunks \(2, 6, 8\)", msgs[1])


def test_a_finer_lat_lon_stream_finds_the_same_place(tmp_path, world):
    paths, truth, _ = world
    fine = make_per_variable(tmp_path / "fine.zarr", ny=37, nx=72, nt=12, levels=(500.0,), chunks=(4, 1, 8, 12),
                             lat_descending=False, missing_chunk=False)  # 5-degree, south to north, 6-hourly
    cfg = SamplingConfig(streams=(StreamConfig(name="era5", path=str(paths["era5"])),
                                  StreamConfig(name="fine", path=str(tmp_path / "fine.zarr"), time_rule="previous")),
                         fields=(dataclasses.replace(fields()[0], levels=(96,)),
                                 FieldConfig(name="q", levels=(500.0,), num_tokens=(2, 2, 2), token_size=(3, 3, 4),
                                             normalization="none", stream="fine")), time_step=2)
    ms = MultiStream(cfg)
    got = extract_streams(ms, BOXES)
    pl = ms.place(BOXES)
    for s, (t0, y0, x0) in enumerate(BOXES):
        lf, ll, lo0, width = region_of(truth, y0, x0)
        clat, clon = (lf + ll) / 2, (lo0 + width / 2) % 360
        fy, fx = pl.where["fine"][s]
        # the 6 x 8 box of 5-degree points is centred on the region's centre, to within one fine cell
        mid_lat = (fine["latitude"][fy + 2] + fine["latitude"][fy + 3]) / 2
        mid_lon = fine["longitude"][(fx + 3) % 72] + 2.5
        assert abs(mid_lat - clat) <= 5.0 and abs((mid_lon - clon + 180) % 360 - 180) <= 5.0, s
        ti = [previous(fine["time"], tau) for tau in truth["era5"]["time"][t0 + 2 * np.arange(6)]]
        # the fine grid runs south to north: its box comes out from its last row up, north to south as era5's
        want = box_to_tokens(crop(fine["q"], ti, [0], fy, fx, 6, 8)[:, :, ::-1], (3, 3, 4))
        assert np.array_equal(got["q"].data[s], want)
        m = got["q"].meta
        assert np.all(np.diff(m.lat[s], axis=0) < 0)
        assert np.all((m.lat[s] > min(lf, ll)) & (m.lat[s] < max(lf, ll)))  # token centres inside the region
        assert np.all((m.lon[s] - lo0) % 360 < width)


def test_a_twin_lat_lon_stream_reads_the_reference_box(tmp_path, world):
    paths, truth, _ = world
    twin = make_atmosphere(tmp_path / "twin.zarr", seed=99)
    cfg = SamplingConfig(streams=(StreamConfig(name="era5", path=str(paths["era5"])),
                                  StreamConfig(name="twin", path=str(tmp_path / "twin.zarr"))),
                         fields=(fields()[1], FieldConfig(name="t", levels=(96, 137), num_tokens=(2, 2, 2),
                                                          token_size=(3, 3, 4), normalization="none",
                                                          stream="twin")), time_step=2)
    ms = MultiStream(cfg)
    out = extract_streams(ms, BOXES)
    assert np.array_equal(ms.place(BOXES).where["twin"], BOXES[:, 1:])  # the same grid: the same box
    for s, (t0, y0, x0) in enumerate(BOXES):
        t = t0 + 2 * np.arange(6)
        assert out["t"].meta.t_steps[s].tolist() == t.tolist()  # 'inside' on the same hourly axis
        want = box_to_tokens(crop(twin["t"], t, [0, 3], y0, x0, 6, 8), (3, 3, 4))
        assert np.array_equal(out["t"].data[s], want)


def test_other_bad_configs(world):
    paths, _, _ = world
    with pytest.raises(ConfigError, match=r"streams.era5.time_rule = 'nearest': the first stream sets"):
        MultiStream(dataclasses.replace(config(paths), streams=(
            dataclasses.replace(config(paths).streams[0], time_rule="nearest"), *config(paths).streams[1:])))
    with pytest.raises(ConfigError, match="must be on a regular lat-lon grid"):
        MultiStream(SamplingConfig(
            streams=(StreamConfig(name="ocean", path=str(paths["ocean"])),
                     StreamConfig(name="era5", path=str(paths["era5"]))),
            fields=tuple(f for f in fields() if f.stream in ("ocean", "era5"))))
    with pytest.raises(ConfigError, match=r"streams.fesom: no field names this stream"):
        MultiStream(config(paths, flds=tuple(f for f in fields() if f.stream != "fesom")))
    with pytest.raises(ConfigError, match="needs a sampling config with streams"):
        MultiStream(SamplingConfig(fields=(FieldConfig(name="t", num_tokens=(1, 1, 1), token_size=(1, 1, 1)),)))
    with pytest.raises(ConfigError, match=r"fields.temp: not in stream 'ocean'"):
        MultiStream(config(paths, flds=tuple(dataclasses.replace(f, stream="ocean") if f.name == "temp" else f
                                             for f in fields())))
    ms = MultiStream(config(paths))
    with pytest.raises(ConfigError, match=r"boxes\[0\]: t0 = 70 is outside"):
        ms.check_boxes([[70, 0, 0]])


# -- row order: every stream's tokens in the reference's row order ----------------------------------------------------
@pytest.fixture(scope="module")
def sea(tmp_path_factory):
    """One 5-degree sea field stored twice by xarray: south to north with longitudes -180 .. 175, and north to south
    with 0 .. 355 (the second also under other variable names, to stand beside the first in one config)."""
    d = tmp_path_factory.mktemp("rows")
    paths = {"asc": d / "asc.zarr", "desc": d / "desc.zarr", "desc_n": d / "desc_n.zarr"}
    make_latlon_xr(paths["asc"], ascending=True, lon_start=-180.0)
    make_latlon_xr(paths["desc"], ascending=False)
    make_latlon_xr(paths["desc_n"], ascending=False, names=("sst_n", "uo_n"), zarr_format=3)
    return paths


def sea_fields(stream: str, names=("sst", "uo")) -> tuple[FieldConfig, ...]:
    return (FieldConfig(name=names[0], num_tokens=(2, 2, 2), token_size=(3, 3, 4), normalization="none",
                        stream=stream),
            FieldConfig(name=names[1], levels=(0.0, 50.0), num_tokens=(1, 3, 1), token_size=(6, 2, 8),
                        normalization="none", stream=stream))


def sea_config(paths, sea_path) -> SamplingConfig:
    """era5 (north to south) + a sea stream + the mesh, time_step 2."""
    flds = fields()
    return SamplingConfig(streams=(StreamConfig(name="era5", path=str(paths["era5"])),
                                   StreamConfig(name="sea", path=str(sea_path), time_rule="previous"),
                                   StreamConfig(name="fesom", path=str(paths["fesom"]), time_rule="nearest")),
                          fields=(flds[0], *sea_fields("sea"), flds[4]), time_step=2)


def xarray_at(path, name, meta, s, levels=None):
    """``(L, T, nlat, nlon, K)`` values of ``name`` read by xarray at sample ``s``'s point coordinates and time
    steps (as in the audit's check: a selection by coordinate values, in the store's own longitude convention)."""
    import xarray as xr

    da = xr.open_zarr(str(path), consolidated=False)[name]
    lon0 = float(da["longitude"].min())
    plat, plon = meta.point_lat[s], (meta.point_lon[s] - lon0) % 360.0 + lon0
    sel = dict(latitude=xr.DataArray(plat, dims=("b", "c", "k")), longitude=xr.DataArray(plon, dims=("b", "c", "k")),
               time=xr.DataArray(da["time"].values[meta.t_steps[s]], dims="t"))
    if levels is not None:
        sel["depth"] = xr.DataArray(np.asarray(levels), dims="l")
    v = da.sel(sel).transpose(*(("l",) if levels is not None else ()), "t", "b", "c", "k").values
    return v if levels is not None else v[None]


@pytest.mark.parametrize("jit", [True, False])
def test_a_lat_lon_stream_comes_out_in_the_reference_row_order(world, sea, jit):
    paths, truth, ms = world
    outs = {k: extract_streams(MultiStream(sea_config(paths, sea[k])), BOXES, jit=jit) for k in ("asc", "desc")}
    for k, out in outs.items():
        for name, lev in (("sst", None), ("uo", (0.0, 50.0))):
            f, m = sea_fields("sea")[0 if name == "sst" else 1], out[name].meta
            nt, nlat, nlon = f.num_tokens
            tt, tlat, tlon = f.token_size
            # token centres and the points' rows run north to south, as the reference's (and the mesh's) do
            assert np.all(np.diff(m.lat, axis=1) < 0), (k, name)
            rows = m.point_lat.reshape(len(BOXES), nlat, nlon, tlat, tlon).transpose(0, 1, 3, 2, 4)
            rows = rows.reshape(len(BOXES), nlat * tlat, nlon * tlon)
            assert np.all(np.diff(rows, axis=1) < 0) and np.all(rows == rows[:, :, :1]), (k, name)
            for s in range(len(BOXES)):
                want = xarray_at(sea[k], name, m, s, lev)  # (L, T, nlat, nlon, K)
                want = want.reshape(-1, nt, tt, nlat, nlon, tlat * tlon).transpose(0, 1, 3, 4, 2, 5)
                got = np.asarray(out[name].data[s]).reshape(want.shape)
                assert np.array_equal(got, want), (k, name, s)
    for name in ("sst", "uo"):  # the same field stored either way round: the same samples, the same metadata
        a, d = outs["asc"][name], outs["desc"][name]
        assert np.array_equal(a.data, d.data), name
        for key in ("lat", "lon", "point_lat", "point_lon", "t_steps", "valid", "count"):
            assert np.array_equal(getattr(a.meta, key), getattr(d.meta, key)), (name, key)
    # the reference and the mesh stream are untouched by the sea stream beside them
    alone = extract_streams(ms, BOXES, jit=jit)
    for name in ("t", "temp"):
        for out in outs.values():
            assert np.array_equal(out[name].data, alone[name].data), name
            assert np.array_equal(out[name].meta.lat, alone[name].meta.lat), name
            assert np.array_equal(out[name].meta.lon, alone[name].meta.lon), name
    assert np.all(np.diff(alone["t"].meta.lat, axis=1) < 0) and np.all(np.diff(alone["temp"].meta.lat, axis=1) < 0)


@pytest.mark.parametrize("jit", [True, False])
def test_a_south_to_north_reference_turns_a_north_to_south_stream_round(sea, jit):
    """Reference: the sea store south to north; beside it, the same field stored north to south (zarr v3, other
    names) on the same 'inside' time axis: its samples must be the reference's own, row for row."""
    cfg = SamplingConfig(streams=(StreamConfig(name="south", path=str(sea["asc"])),
                                  StreamConfig(name="north", path=str(sea["desc_n"]))),
                         fields=(*sea_fields("south"), *sea_fields("north", ("sst_n", "uo_n"))), time_step=1)
    ms = MultiStream(cfg)
    boxes = np.array([[0, 0, 10], [3, 31, 70], [10, 12, 40], [5, 20, 0]])  # south pole, north pole + seam, ...
    out = extract_streams(ms, boxes, jit=jit)
    for a, b in (("sst", "sst_n"), ("uo", "uo_n")):
        assert np.array_equal(out[b].data, out[a].data), a
        assert np.allclose(out[b].meta.lat, out[a].meta.lat), a
        assert np.all(np.diff(out[b].meta.lat, axis=1) > 0), a  # south to north, as the reference
        m = out[b].meta
        for s in range(len(boxes)):
            f = cfg.field(b)
            nt, nlat, nlon = f.num_tokens
            tt, tlat, tlon = f.token_size
            want = xarray_at(sea["desc_n"], b, m, s, f.levels)
            want = want.reshape(-1, nt, tt, nlat, nlon, tlat * tlon).transpose(0, 1, 3, 4, 2, 5)
            assert np.array_equal(np.asarray(out[b].data[s]).reshape(want.shape), want), (b, s)
