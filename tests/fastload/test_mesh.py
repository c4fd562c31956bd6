"""Unstructured meshes: opening mesh stores (and refusing bad ones; leaving out, with why, arrays along the nodes that
cannot be fields), the node index and binning rule against a brute-force count, the point gather against NumPy on
the written arrays, kernels against their NumPy twins."""

from __future__ import annotations

import dataclasses
import logging

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from fastload.config import FieldConfig, SamplingConfig
from fastload.errors import ConfigError, SchemaError
from fastload.sampling.mesh import MeshIndex, MeshTokenizer, cell_centres
from fastload.sampling.points import PointLayout, field_points, gather_field_points, plan_points
from fastload.store import open_store

from .stores import _array
from .stores_multi import make_mesh, mesh_nodes


@pytest.fixture(scope="module")
def mesh(tmp_path_factory):
    path = tmp_path_factory.mktemp("mesh") / "m.zarr"
    truth = make_mesh(path, lon_range="-180-180")
    return open_store(path), truth


def brute_bin(lat, lon, region, nlat, nlon, k):
    """Cells by explicit edge comparisons, nodes sorted by (distance to the cell centre, node) with Python."""
    lf, ll, lo0, width = region
    lo0 %= 360.0
    nodes = np.full((nlat, nlon, k), -1, np.int64)
    count = np.zeros((nlat, nlon), np.int64)
    for b in range(nlat):
        e0, e1 = lf + b * (ll - lf) / nlat, lf + (b + 1) * (ll - lf) / nlat
        lo, hi = min(e0, e1), max(e0, e1)
        clat = lf + (b + 0.5) * (ll - lf) / nlat
        for c in range(nlon):
            w0, w1 = c * width / nlon, (c + 1) * width / nlon
            rel = (lon - lo0) % 360.0
            if b == nlat - 1 and abs(ll) == 90.0:  # the last row is closed at a pole
                in_row = (lat >= lo) & (lat <= hi)
            else:
                in_row = (lat >= lo) & (lat < hi) if ll > lf else (lat > lo) & (lat <= hi)
            inside = in_row & (rel >= w0) & (rel < w1)
            clon = lo0 + (c + 0.5) * width / nlon
            dx = ((lon - clon + 180.0) % 360.0 - 180.0) * np.cos(np.deg2rad(clat))
            d = (lat - clat) ** 2 + dx**2
            got = sorted(np.flatnonzero(inside).tolist(), key=lambda i: (d[i], i))
            count[b, c] = len(got)
            nodes[b, c, : min(k, len(got))] = got[:k]
    return nodes, count


# -- store ---------------------------------------------------------------------------------------------------------
def test_mesh_store_opens_with_nodes_faces_and_fields(mesh):
    store, truth = mesh
    g = store.grid
    assert g.kind == "mesh" and g.ny == 1 and g.nx == truth["latitude"].size and g.shape == (1, g.nx)
    assert np.allclose(g.lat, truth["latitude"]) and np.allclose(g.lon, truth["longitude"])  # stored in -180..180
    assert g.lon.min() >= 0 and g.lon.max() < 360
    assert np.array_equal(g.face_nodes, truth["face_nodes"])
    temp, ssh = store.fields["temp"], store.fields["ssh"]
    assert temp.axes == (0, None, 1, None, 2) and temp.level_type == "depth" and list(temp.levels) == [5.0, 100.0]
    assert ssh.axes == (0, None, None, None, 1) and ssh.levels is None
    got = store.read("temp", [1, 5], [1], None, [0, 63, 64, g.nx - 1])
    assert got.shape == (2, 1, 1, 4)
    assert np.array_equal(got[:, 0, 0], truth["temp"][[1, 5], 1][:, [0, 63, 64, g.nx - 1]])


@pytest.mark.parametrize("bad,match", [("outside", r"node 7 has latitude = 95.0, outside"),
                                       ("duplicate", r"nodes 3 and 20 are at the same place")])
def test_bad_meshes_are_refused_at_open(tmp_path, bad, match):
    make_mesh(tmp_path / "bad.zarr", bad=bad, nt=2)
    with pytest.raises(SchemaError, match=match):
        open_store(tmp_path / "bad.zarr")


def test_connectivity_naming_missing_nodes_is_refused(tmp_path):
    import zarr

    truth = make_mesh(tmp_path / "m.zarr", nt=2)
    faces = zarr.open_array(str(tmp_path / "m.zarr" / "face_nodes"), mode="r+")
    f = np.asarray(faces[...])
    f[5, 1] = truth["latitude"].size + 3
    faces[...] = f
    with pytest.raises(SchemaError, match=r"face_nodes\[5, 1\] = .* names a node outside"):
        open_store(tmp_path / "m.zarr")


# -- arrays along the nodes that cannot be fields ------------------------------------------------------------------
NODE_WHY = "a field has dims (time, [level], nod2)"
LEFT_OUT = {  # array -> why it is not a field (as the per-variable layout says it)
    "node_vertices": f"dims ('nod2', 'nv'); {NODE_WHY}",
    "mask": f"dims ('nod2', 'time'); {NODE_WHY}",
    "ens": f"dims ('time', 'nz1', 'member', 'nod2'); {NODE_WHY}",
    "salt": "dimension 'lev2' has no 1-D coordinate array 'lev2' giving level values",
    "label": "dtype <U3; a field must be numeric",
    "seen": "dtype datetime64[s]; a field must be numeric",
    "obs_time": "it holds dates coded as numbers (units 'seconds since 2000-01-01'); a field must hold values, "
                "not dates",
}


def _add_extras(path, truth, zarr_format):
    """To a :func:`make_mesh` store: ``area(nod2)`` and FESOM's ``nlevels_nod2D(nod2)`` (static fields), one array
    along the nodes per way of not being a field (:data:`LEFT_OUT`), and ``node_bounds(nod2, nv)`` (a bounds array:
    ignored, as on lat-lon grids)."""
    import zarr

    rng = np.random.default_rng(1)
    nt, nz, n = truth["temp"].shape
    root = zarr.open_group(str(path), mode="r+", zarr_format=zarr_format)
    extras = {
        "area": (rng.uniform(1, 2, n), ("nod2",), {"units": "km2"}),
        "nlevels_nod2D": (rng.integers(1, 48, n).astype(np.int16), ("nod2",), {}),  # integers are values: a field
        "node_vertices": (rng.uniform(0, 1, (n, 3)), ("nod2", "nv"), {}),
        "node_bounds": (rng.uniform(0, 1, (n, 3)), ("nod2", "nv"), {}),
        "mask": (rng.uniform(0, 1, (n, nt)), ("nod2", "time"), {}),
        "ens": (rng.uniform(0, 1, (nt, nz, 2, n)), ("time", "nz1", "member", "nod2"), {}),
        "salt": (rng.uniform(30, 35, (nt, 3, n)), ("time", "lev2", "nod2"), {}),
        "label": (rng.choice(np.array(["sea", "ice", "lnd"]), n), ("nod2",), {}),
        "seen": (np.datetime64("2020-01-01", "s") + rng.integers(0, 10**6, n).astype("m8[s]"), ("nod2",), {}),
        "obs_time": (rng.integers(0, 10**8, (nt, n)), ("time", "nod2"), {"units": "seconds since 2000-01-01"}),
    }
    for name, (data, dims, attrs) in extras.items():
        fill = "" if data.dtype.kind == "U" else np.datetime64("NaT", "s") if data.dtype.kind == "M" else None
        _array(root, name, data, dims, attrs=attrs, fill_value=fill, zarr_format=zarr_format,
               chunks=(8,) * (data.ndim - 1) + (64,))
    return {k: v[0] for k, v in extras.items()}


def _fastload_warnings(caplog):
    return [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING and r.name == "fastload"]


@pytest.mark.parametrize("zarr_format", [2, 3])
def test_arrays_along_the_nodes_that_cannot_be_fields_are_left_out_with_why(tmp_path, caplog, capsys, zarr_format):
    """node_vertices(node, nv), mask(node, time), a (time, level, member, node) ensemble, a level dim without its
    coordinate, strings, datetimes and CF-coded dates along the nodes made the store unopenable (SchemaError) or a
    field of dates; now each is listed with why, warned of at open, and named when asked for; the fields read
    exactly the arrays written."""
    from fastload.inspect import main as inspect_main

    path = tmp_path / "m.zarr"
    truth = make_mesh(path, nt=6, zarr_format=zarr_format)
    extras = _add_extras(path, truth, zarr_format)
    with caplog.at_level(logging.WARNING, logger="fastload"):
        store = open_store(path)
    assert sorted(store.fields) == ["area", "nlevels_nod2D", "ssh", "temp"]
    assert store.not_fields == LEFT_OUT  # node_bounds: a bounds array, ignored as on lat-lon grids
    warned = _fastload_warnings(caplog)
    assert sorted(warned) == sorted(f"{path}: array {n!r} spans the grid ('nod2',) but is not a field, so fastload "
                                    f"leaves it out: {why}" for n, why in LEFT_OUT.items())

    area = store.fields["area"]
    assert area.axes == (None, None, None, None, 0) and not area.has_time and area.units == "km2"
    n = store.grid.nx
    for name in ("area", "nlevels_nod2D"):
        got = store.read(name, None, None, None, None)[0, 0, 0]
        assert got.dtype == extras[name].dtype and np.array_equal(got, extras[name])
    assert np.array_equal(store.read("temp", None, None, None, None)[:, :, 0], truth["temp"])
    got = store.read("ssh", [0, 5], None, None, [n - 1, 0, 7])[:, 0, 0]
    assert np.array_equal(got, truth["ssh"][[0, 5]][:, [n - 1, 0, 7]])
    assert store.fields["temp"].level_type == "depth" and list(store.fields["temp"].levels) == [5.0, 100.0]

    for name, why in LEFT_OUT.items():  # asked for by name: why it is not a field
        cfg = SamplingConfig(fields=(FieldConfig(name=name, num_tokens=(1, 1, 1), token_size=(1, 2, 2),
                                                 normalization="none"),))
        with pytest.raises(ConfigError) as e:
            store.check(cfg)
        assert str(e.value) == (f"fields.{name}: array {name!r} in store {store.path} is not a field: {why}; the "
                                f"fields are {list(store.fields)}")
        with pytest.raises(KeyError, match=f"no field {name!r}: array {name!r} in store .* is not a field"):
            store.read(name)

    assert inspect_main([str(path), "--sizes", "never"]) == 0
    printed = capsys.readouterr().out
    for name, why in LEFT_OUT.items():
        assert f"  {name}  not a field: {why}" in printed


def test_mesh_arrays_that_would_sample_wrong_are_still_refused(tmp_path):
    """A would-be field whose shape disagrees with the coordinates (one node short, one time step too many) still
    fails at open, as do a non-numeric level coordinate and a time axis without a time coordinate."""
    import zarr

    cases = [  # name, shape (given the node count), dims, extra coordinate arrays, message
        ("short", lambda n: (4, n - 1), ("time", "nod2"), {},
         lambda n: rf"array 'short' has shape \(4, {n - 1}\) over dims \('time', 'nod2'\), but the coordinates give "
                   rf"\(4, {n}\)"),
        ("long", lambda n: (5, 2, n), ("time", "nz1", "nod2"), {},
         lambda n: rf"array 'long' has shape \(5, 2, {n}\) over dims \('time', 'nz1', 'nod2'\), but the coordinates "
                   rf"give \(4, 2, {n}\)"),
        ("sal", lambda n: (4, 2, n), ("time", "lay", "nod2"), {"lay": np.array(["a", "b"])},
         lambda n: r"level coordinate 'lay' has dtype <U1; expected numbers"),
    ]
    for name, shape, dims, extra, match in cases:
        path = tmp_path / f"{name}.zarr"
        n = make_mesh(path, nt=4, faces=False)["latitude"].size
        root = zarr.open_group(str(path), mode="r+", zarr_format=2)
        _array(root, name, np.ones(shape(n), "f4"), dims, zarr_format=2, chunks=(8,) * (len(dims) - 1) + (64,))
        for k, v in extra.items():
            _array(root, k, v, (k,), zarr_format=2, chunks=(8,), fill_value="")
        with pytest.raises(SchemaError, match=match(n)):
            open_store(path)
    path = tmp_path / "timeless.zarr"
    make_mesh(path, nt=4, faces=False)
    root = zarr.open_group(str(path), mode="r+", zarr_format=2)
    del root["time"]
    with pytest.raises(SchemaError, match=r"array '(temp|ssh)' has a 'time' axis but the store has no time coordinate"):
        open_store(path)


def test_a_mesh_store_with_no_field_names_each_array_and_why(tmp_path):
    import zarr

    path = tmp_path / "m.zarr"
    truth = make_mesh(path, nt=4, faces=False)
    root = zarr.open_group(str(path), mode="r+", zarr_format=2)
    for name in ("temp", "ssh"):
        del root[name]
    _array(root, "mask", np.ones((truth["latitude"].size, 4), "f4"), ("nod2", "time"), zarr_format=2, chunks=(64, 4))
    with pytest.raises(SchemaError, match=r"mesh store \(nodes along 'nod2'\) has no data arrays with dims \(time, "
                                          r"\[level\], nod2\); arrays present: .*; 'mask' is not a field: dims "
                                          r"\('nod2', 'time'\); a field has dims \(time, \[level\], nod2\)"):
        open_store(path)


# -- index and binning ---------------------------------------------------------------------------------------------
def test_index_buckets_hold_their_nodes_and_small_regions_visit_few():
    rng = np.random.default_rng(3)
    lat = np.rad2deg(np.arcsin(rng.uniform(-1, 1, 20000)))
    lon = rng.uniform(0, 360, 20000)
    idx = MeshIndex(lat, lon)
    dlat, dlon, nby, nbx = idx.bgeo
    assert sorted(idx.bnodes.tolist()) == list(range(20000))
    for bk in rng.integers(0, int(nby * nbx), 50):
        members = idx.bnodes[idx.bstart[bk]:idx.bstart[bk + 1]]
        r, c = divmod(int(bk), int(nbx))
        assert np.all((lat[members] >= -90 + r * dlat - 1e-9) & (lat[members] <= -90 + (r + 1) * dlat + 1e-9))
        assert np.all((lon[members] >= c * dlon - 1e-9) & (lon[members] <= (c + 1) * dlon + 1e-9))
    # a 10 x 10 degree region touches a handful of buckets, not the whole mesh
    rows = np.arange(int((10 + 90) // dlat), int((20 + 90) // dlat) + 1)
    cols = np.arange(int(30 // dlon), int(40 // dlon) + 1)
    visited = sum(idx.bstart[r * int(nbx) + c + 1] - idx.bstart[r * int(nbx) + c] for r in rows for c in cols)
    assert visited < 20000 / 20


regions = st.tuples(
    st.floats(-95, 95), st.floats(1, 120), st.booleans(), st.floats(-400, 400), st.floats(0.5, 400)
).map(lambda v: (v[0], v[0] + (v[1] if v[2] else -v[1]), v[3], v[4]))


@settings(max_examples=40, deadline=None)
@given(reg=st.lists(regions, min_size=1, max_size=4), nlat=st.integers(1, 4), nlon=st.integers(1, 4),
       k=st.integers(1, 9), jit=st.booleans())
def test_binning_matches_brute_force(reg, nlat, nlon, k, jit):
    lat, lon = mesh_nodes(900, seed=5)
    idx = MeshIndex(lat, lon)
    r = np.asarray(reg, np.float64)
    nodes, count = idx.bin(r, nlat, nlon, k, jit=jit)
    for s in range(r.shape[0]):
        region = (r[s, 0], r[s, 1], r[s, 2], min(r[s, 3], 360.0))
        want_nodes, want_count = brute_bin(idx.lat, idx.lon, region, nlat, nlon, k)
        assert np.array_equal(count[s], want_count)
        assert np.array_equal(nodes[s], want_nodes)


def test_binning_kernel_equals_reference_on_a_dense_mesh():
    rng = np.random.default_rng(9)
    idx = MeshIndex(rng.uniform(-90, 90, 5000), rng.uniform(-180, 180, 5000))
    r = np.array([[60.0, 0.0, 350.0, 40.0], [-30, 10, 10, 80], [89.9, -89.9, 0, 360], [10, 20, 100, 1], [0, 0, 0, 5]])
    a, b = idx.bin(r, 3, 4, 7, jit=True), idx.bin(r, 3, 4, 7, jit=False)
    assert np.array_equal(a[0], b[0]) and np.array_equal(a[1], b[1])
    assert a[1][2].sum() > 4900 and a[1][4].sum() == 0  # the whole globe; a region of zero height
    near = idx.nearest([10.0, -45.0], [20.0, 100.0], 8.0)
    d = [(idx.lat - la) ** 2 + (((idx.lon - lo + 180) % 360 - 180) * np.cos(np.deg2rad(la))) ** 2
         for la, lo in ((10.0, 20.0), (-45.0, 100.0))]
    assert near.tolist() == [int(np.argmin(x)) for x in d]


@pytest.mark.parametrize("jit", [True, False])
def test_a_node_at_the_pole_falls_in_the_last_row_of_a_region_ending_there(jit):
    lat, lon = mesh_nodes(900, seed=5)
    lat, lon = np.concatenate([[90.0, -90.0], lat]), np.concatenate([[0.0, 0.0], lon])  # nodes 0, 1: the poles
    idx = MeshIndex(lat, lon)
    r = np.array([[70.0, 90.0, 350.0, 40.0], [-70.0, -90.0, 340.0, 40.0],  # the pole on the far side (last row)
                  [90.0, 70.0, 350.0, 40.0], [-90.0, -70.0, 340.0, 40.0],  # on the near side (row 0)
                  [80.0, 89.0, 350.0, 40.0]])  # ending short of the pole: half-open as before
    nodes, count = idx.bin(r, 2, 2, 300, jit=jit)
    for s in range(r.shape[0]):
        want_nodes, want_count = brute_bin(idx.lat, idx.lon, tuple(r[s]), 2, 2, 300)
        assert np.array_equal(count[s], want_count) and np.array_equal(nodes[s], want_nodes)
    # every node of the mesh within a region's latitudes and longitudes is in exactly one of its cells
    for s, pole in enumerate([0, 1, 0, 1]):
        la0, la1 = sorted(r[s, :2])
        rel = (lon - r[s, 2]) % 360.0
        want = np.flatnonzero((lat >= la0) & (lat <= la1) & (rel < r[s, 3]))
        got = nodes[s][nodes[s] >= 0]
        assert pole in got and np.array_equal(np.sort(got), want)


# -- point gather --------------------------------------------------------------------------------------------------
def _slots(store, plan):
    out = {}
    for array, chunks in plan.chunks.items():
        info = store.arrays[array]
        arena = np.empty((chunks.shape[0], int(np.prod(info.chunks))), info.dtype)
        for u, c in enumerate(chunks.tolist()):
            store.read_chunk(array, tuple(c), out=arena[u])
        out[array] = arena
    return out, plan.slot_tables({a: np.arange(c.shape[0]) for a, c in plan.chunks.items()})


def test_mesh_tokenizer_tokens_equal_numpy_on_the_written_arrays(mesh):
    store, truth = mesh
    fields = (FieldConfig(name="temp", levels=(100.0, 5.0), num_tokens=(2, 2, 3), token_size=(2, 2, 2),
                          normalization="none"),
              FieldConfig(name="ssh", num_tokens=(1, 1, 1), token_size=(4, 4, 6), normalization="none"))
    cfg = SamplingConfig(fields=fields, time_step=3)
    tok = MeshTokenizer.from_store(store, cfg, resolution=10.0)
    assert tok.extent.ny == 18 and tok.extent.nx == 36
    boxes = tok.check_boxes(np.array([[0, 0, 35], [2, 7, 3], [4, 14, 20], [1, 3, 12]]))  # pole, seam, land
    slots, tables = _slots(store, tok.plan(boxes))
    meta = tok.meta(boxes)
    for jit in (True, False):
        outs = {f.name: np.full((4, *f.sample_shape), np.nan, np.float32) for f in fields}
        tok.gather(slots, tables, boxes, outs, jit=jit)
        for f in fields:
            m = meta[f.name]
            nt, nlat, nlon = f.num_tokens
            tt, tlat, tlon = f.token_size
            lev = [1, 0] if f.name == "temp" else [0]
            data = truth[f.name] if f.name == "temp" else truth[f.name][:, None]
            for s, (t0, y0, x0) in enumerate(boxes):
                region = (90 - 10 * y0, 90 - 10 * (y0 + nlat * tlat), 10 * x0, 10 * nlon * tlon)
                nodes, count = brute_bin(store.grid.lat, store.grid.lon, region, nlat, nlon, tlat * tlon)
                assert np.array_equal(m.points[s], nodes) and np.array_equal(m.count[s], count)
                assert np.array_equal(m.valid[s], nodes >= 0)
                t = t0 + np.arange(nt * tt) * 3
                assert np.array_equal(m.t_steps[s], t) and np.array_equal(m.t_index[s], t[::tt])
                want = data[t][:, lev][:, :, np.maximum(nodes, 0)]  # (T, L, nlat, nlon, K)
                want = np.where(nodes >= 0, want, 0).reshape(nt, tt, len(lev), nlat, nlon, tlat, tlon)
                assert np.array_equal(outs[f.name][s], want.transpose(2, 0, 3, 4, 1, 5, 6)), (f.name, s, jit)
                ok = m.valid[s]
                assert np.allclose(m.point_lat[s][ok], store.grid.lat[nodes[ok]])
                assert np.isnan(m.point_lat[s][~ok]).all()
    m = meta["temp"]
    assert m.valid[2].sum() < m.valid[2].size  # the box over the continent has padded slots
    clat, clon = cell_centres(tok.regions(boxes), 2, 3)
    assert np.allclose(m.lat, clat) and np.allclose(m.lon, clon)
    assert m.time[1, 0] == truth["time"][2] and m.level.tolist() == [100.0, 5.0]


@pytest.mark.parametrize("norm", ["none", "global", "local"])
@pytest.mark.parametrize("out_dtype", ["float32", "bfloat16", "float16"])
def test_point_gather_kernel_equals_reference(mesh, norm, out_dtype):
    store, truth = mesh
    f = FieldConfig(name="temp", levels=(5.0, 100.0), num_tokens=(2, 2, 2), token_size=(2, 3, 2),
                    normalization=norm, transform="log1p" if norm == "global" else None)
    lay = PointLayout.from_store(store, "temp", f.levels)
    rng = np.random.default_rng(4)
    S, P, T = 5, 2 * 2 * 6, 4
    points = rng.integers(-1, store.grid.nx, (S, P))
    t_steps = np.sort(rng.integers(0, 14, (S, T)), axis=1)  # repeated and irregular time indices
    fp = field_points(lay, t_steps, points)
    slots, tables = _slots(store, plan_points([(lay, fp)], np.zeros((S, 3), np.int64)))
    mean = std = month_of = None
    if norm != "none":
        ns = (1, 1) if norm == "global" else (1, store.grid.nx)
        mean = rng.normal(10, 1, (3, 2, *ns)).astype(np.float32)
        std = rng.uniform(0.5, 2, (3, 2, *ns)).astype(np.float32)
        month_of = rng.integers(0, 3, (S, T)).astype(np.int32)
    outs = []
    for jit in (True, False):
        out = np.empty((S, *f.sample_shape), np.float32 if out_dtype == "float32" else np.uint16)
        gather_field_points(slots["temp"], tables["temp"], lay, f, fp, out, out_dtype=out_dtype, mean=mean, std=std,
                            month_of=month_of, jit=jit)
        outs.append(out)
    assert np.array_equal(outs[0], outs[1])
    if out_dtype == "float32":  # and against the written values
        v = truth["temp"][t_steps[:, :, None, None], np.arange(2)[None, None, :, None], np.maximum(points, 0)[:, None, None]]
        v = v.astype(np.float32)  # (S, T, L, P)
        if f.transform == "log1p":
            v = np.log1p(v.astype(np.float64)).astype(np.float32)
        if norm != "none":
            g = 0 if norm == "global" else np.maximum(points, 0)[:, None, None]
            mo = month_of[:, :, None, None]
            m3, s3 = mean.reshape(3, 2, -1), std.reshape(3, 2, -1)
            v = (v - m3[mo, np.arange(2)[None, None, :, None], g]) / s3[mo, np.arange(2)[None, None, :, None], g]
        v = np.where(points[:, None, None] >= 0, v, 0).reshape(S, 2, 2, 2, 2, 2, 6)  # (S, nt, tt, L, nlat, nlon, K)
        assert np.array_equal(outs[0].reshape(S, 2, 2, 2, 2, 2, 6), v.transpose(0, 3, 1, 4, 5, 2, 6))


@pytest.mark.parametrize("norm", ["none", "global", "local"])
@pytest.mark.parametrize("out_dtype", ["float32", "bfloat16"])
@pytest.mark.parametrize("dtype, marker", [(np.float32, 1e20), (np.int16, -999)])
def test_point_gather_masks_missing_markers(mesh, norm, out_dtype, dtype, marker):
    """Stored values equal to a field's missing marker come out NaN (padding still 0): kernel and reference bit
    for bit, and the other values as without markers."""
    store, _ = mesh
    f = FieldConfig(name="temp", levels=(5.0, 100.0), num_tokens=(2, 2, 2), token_size=(2, 3, 2),
                    normalization=norm)
    lay0 = PointLayout.from_store(store, "temp", f.levels)
    assert lay0.missing.size == 0  # the mesh store declares none
    lay = dataclasses.replace(lay0, missing=np.array([dtype(marker)], np.float64))  # as the stored dtype holds it
    raw = dataclasses.replace(f, normalization="none")
    rng = np.random.default_rng(5)
    S, P, T = 4, 2 * 2 * 6, 4
    points = rng.integers(-1, store.grid.nx, (S, P))
    fp = field_points(lay, np.sort(rng.integers(0, 14, (S, T)), axis=1), points)
    slots, tables = _slots(store, plan_points([(lay, fp)], np.zeros((S, 3), np.int64)))
    arena = np.nan_to_num(slots["temp"] * 10).astype(dtype)  # (NaN: padding of partial chunks)
    arena[rng.random(arena.shape) < 0.2] = marker
    coef = {}
    if norm != "none":
        ns = (1, 1) if norm == "global" else (1, store.grid.nx)
        coef = dict(mean=rng.normal(10, 1, (3, 2, *ns)).astype(np.float32),
                    std=rng.uniform(0.5, 2, (3, 2, *ns)).astype(np.float32),
                    month_of=rng.integers(0, 3, (S, T)).astype(np.int32))

    def run(layout, field, jit, out_dtype="float32", **kw):
        out = np.empty((S, *field.sample_shape), np.float32 if out_dtype == "float32" else np.uint16)
        gather_field_points(arena, tables["temp"], layout, field, fp, out, out_dtype=out_dtype, jit=jit, **kw)
        return out

    got, ref = (run(lay, f, jit, out_dtype, **coef) for jit in (True, False))
    assert np.array_equal(got, ref, equal_nan=out_dtype == "float32")
    masked = run(lay0, raw, True) == np.float32(marker)
    assert masked.any() and (~masked).any()
    nan = np.isnan(ref) if out_dtype == "float32" else (ref & 0x7FFF) > 0x7F80
    assert np.array_equal(nan, masked)
    assert np.array_equal(ref[~masked], run(lay0, f, True, out_dtype, **coef)[~masked])


def test_point_gather_refuses_bad_tables_and_coefficients(mesh):
    store, _ = mesh
    f = FieldConfig(name="ssh", num_tokens=(1, 1, 1), token_size=(1, 1, 2), normalization="local")
    lay = PointLayout.from_store(store, "ssh")
    fp = field_points(lay, np.zeros((1, 1), np.int64), np.array([[0, 5]]))
    slots, tables = _slots(store, plan_points([(lay, fp)], np.zeros((1, 3), np.int64)))
    out = np.empty((1, *f.sample_shape), np.float32)
    with pytest.raises(ConfigError, match="needs mean, std and month_of"):
        gather_field_points(slots["ssh"], tables["ssh"], lay, f, fp, out)
    bad = np.zeros((1, 1, 1, 7), np.float32)
    with pytest.raises(ConfigError, match="values per level"):
        gather_field_points(slots["ssh"], tables["ssh"], lay, f, fp, out, mean=bad, std=bad,
                            month_of=np.zeros((1, 1), np.int32))
    with pytest.raises(ConfigError, match="outside"):
        field_points(lay, np.zeros((1, 1), np.int64), np.array([[0, store.grid.nx]]))


def test_mesh_tokenizer_chunk_bound_covers_every_sample(mesh):
    store, _ = mesh
    cfg = SamplingConfig(fields=(FieldConfig(name="temp", levels=(5.0, 100.0), num_tokens=(2, 2, 3),
                                             token_size=(2, 2, 2), normalization="none"),
                                 FieldConfig(name="ssh", num_tokens=(1, 1, 1), token_size=(4, 4, 6),
                                             normalization="none")), time_step=3)
    tok = MeshTokenizer.from_store(store, cfg, resolution=10.0)
    bound = tok.sample_chunk_bound()
    hi = tok.extent.max_start(cfg.box, cfg.time_step)
    rng = np.random.default_rng(0)
    boxes = np.stack([rng.integers(0, hi[i] + 1, 60) for i in range(3)], axis=1)
    for b in boxes:
        plan = tok.plan(b[None])
        assert all(plan.chunks[a].shape[0] <= bound[a] for a in plan.chunks), (b, bound)
