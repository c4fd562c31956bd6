"""fastload.extract on real (tiny) zarr stores against the arrays that were written, read with plain NumPy."""

from __future__ import annotations

import dataclasses
import json

import numpy as np
import pytest
import torch

from fastload.config import FieldConfig, SamplingConfig, StreamConfig
from fastload.errors import ConfigError
from fastload.extract import extract
from fastload.norm import Normalizer
from fastload.sampling.geometry import box_to_tokens, tile_grid
from fastload.stats import StatsConfig, compute_stats
from fastload.store import open_store

from .stores import make_atmorep, make_curvilinear
from .stores import make_per_variable as _make_per_variable


def make_per_variable(path, **kw):
    """The test store with the shape these tests assume, whatever the helper's defaults."""
    kw = {"levels": (500.0, 850.0, 1000.0), "chunks": (2, 1, 4, 6), "ny": 9, "nx": 16, **kw}
    return _make_per_variable(path, **kw)


def crop(a: np.ndarray, boxes, box, *, levels=None, periodic=True, dt=1, has_time=True) -> np.ndarray:
    """(B, L, T, H, W) from a (t, [l], y, x) truth array with NumPy fancy indexing."""
    T, H, W = box
    nx = a.shape[-1]
    out = []
    for t0, y0, x0 in boxes:
        x = x0 + np.arange(W)
        if periodic:
            x %= nx
        v = a
        if has_time:
            v = v[t0 + np.arange(T) * dt]
        else:
            v = np.broadcast_to(v, (T, *v.shape))
        if levels is None:
            v = v[:, None]
        else:
            v = v[:, levels]
        v = v[:, :, y0:y0 + H][..., x]
        out.append(v.transpose(1, 0, 2, 3))
    return np.stack(out)


def tokens(x: np.ndarray, f: FieldConfig) -> np.ndarray:
    return box_to_tokens(x, f.token_size)


@pytest.mark.parametrize("fmt,sharded", [(2, False), (3, True)])
def test_per_variable_store_raw_values(tmp_path, fmt, sharded):
    truth = make_per_variable(tmp_path / "s.zarr", zarr_format=fmt, sharded=sharded, nt=7, ny=9, nx=16)
    store = open_store(tmp_path / "s.zarr")
    fields = [
        FieldConfig(name="t", levels=(1000.0, 500.0), num_tokens=(2, 2, 2), token_size=(2, 2, 3), normalization="none"),
        FieldConfig(name="q", levels=(850.0,), num_tokens=(1, 4, 1), token_size=(4, 1, 6), normalization="none"),
        FieldConfig(name="sp", num_tokens=(2, 1, 3), token_size=(2, 4, 2), normalization="none"),
        FieldConfig(name="orog", num_tokens=(4, 1, 2), token_size=(1, 4, 3), normalization="none"),
    ]
    cfg = SamplingConfig(fields=fields, time_step=1)
    boxes = np.array([[0, 0, 13], [3, 5, 0], [1, 2, 15], [3, 5, 12]])  # seam, last rows, end of time
    got = extract(store, cfg, boxes)
    ref = extract(store, cfg, boxes, jit=False)
    lev = {"t": [2, 0], "q": [1]}
    for f in fields:
        d = got[f.name].data
        assert d.shape == (4, *f.sample_shape) and d.dtype == np.float32
        assert np.array_equal(d, ref[f.name].data, equal_nan=True)
        want = crop(truth[f.name], boxes, f.box, levels=lev.get(f.name), has_time=f.name != "orog")
        assert np.array_equal(d, tokens(want, f), equal_nan=True), f.name
    q0 = got["q"].data[0]  # (L, nt=1, nlat, nlon, tt=4, tlat, tlon); q's first time chunk (2 steps) is missing
    assert np.isnan(q0[..., :2, :, :]).all() and not np.isnan(q0[..., 2:, :, :]).any()
    # metadata: token centres from the coordinates, time of the first step
    m = got["t"].meta
    lat, lon = truth["latitude"], truth["longitude"]
    assert np.allclose(m.lat[1, :, 0], [lat[5:7].mean(), lat[7:9].mean()])
    assert np.allclose(m.lon[0, 0], [(lon[13:16].mean()), (lon[[0, 1, 2]].mean())])
    assert np.array_equal(m.time[2], truth["time"][[1, 3]])
    assert np.array_equal(m.level, [1000.0, 500.0])
    assert np.isnan(got["sp"].meta.level).all()


def test_atmorep_store_fields_share_chunks(tmp_path):
    truth = make_atmorep(tmp_path / "a.zarr", nt=6, ny=9, nx=16)
    store = open_store(tmp_path / "a.zarr")
    fields = [
        FieldConfig(name="temperature", levels=(137, 96, 114), num_tokens=(2, 1, 2), token_size=(2, 3, 4),
                    normalization="none"),
        FieldConfig(name="velocity_u", levels=(105,), num_tokens=(1, 3, 1), token_size=(4, 1, 8), normalization="none"),
        FieldConfig(name="msl", num_tokens=(2, 1, 4), token_size=(2, 3, 2), normalization="none"),
    ]
    cfg = SamplingConfig(fields=fields)
    boxes = np.array([[0, 6, 12], [2, 0, 3]])
    got = extract(store, cfg, boxes)
    levels = list(truth["levels"])
    for f in fields:
        if f.name == "msl":
            src, lv = truth["data_sfc"][:, truth["sfc_fields"].index("msl")], None
        else:
            src = truth["data"][:, truth["fields"].index(f.name)]
            lv = [levels.index(v) for v in f.levels]
        assert np.array_equal(got[f.name].data, tokens(crop(src, boxes, f.box, levels=lv), f)), f.name


def test_curvilinear_store_with_land_nans(tmp_path):
    truth = make_curvilinear(tmp_path / "c.zarr", nt=4, ny=7, nx=10)
    store = open_store(tmp_path / "c.zarr")
    f = FieldConfig(name="thetao", levels=(50.0, 5.0), num_tokens=(2, 2, 2), token_size=(1, 3, 3), normalization="none")
    cfg = SamplingConfig(fields=[f], time_step=2)
    boxes = np.array([[0, 0, 7], [1, 1, 2]])
    got = extract(store, cfg, boxes)["thetao"]
    want = crop(truth["thetao"], boxes, f.box, levels=[1, 0], dt=2)
    assert np.array_equal(got.data, tokens(want, f), equal_nan=True)
    assert np.isnan(got.data).any()
    # token centres from the 2-D coordinates
    ys, xs = np.arange(0, 3), (7 + np.arange(3)) % 10
    assert np.isclose(got.meta.lat[0, 0, 0], truth["latitude"][np.ix_(ys, xs)].mean())
    lon = truth["longitude"][np.ix_(ys, xs)]
    unwrapped = lon[0, 0] + ((lon - lon[0, 0] + 180) % 360 - 180)
    assert np.isclose(got.meta.lon[0, 0, 0], unwrapped.mean() % 360)
    assert np.array_equal(got.meta.time[1], truth["time"][[1, 3]])


def test_regional_store_clamps_and_rejects_boxes_past_the_edge(tmp_path):
    truth = make_per_variable(tmp_path / "r.zarr", regional=True, nt=4, ny=9, nx=16)
    store = open_store(tmp_path / "r.zarr")
    assert not store.grid.periodic_x
    f = FieldConfig(name="sp", num_tokens=(1, 1, 2), token_size=(2, 3, 4), normalization="none")
    cfg = SamplingConfig(fields=[f])
    got = extract(store, cfg, [[2, 6, 8]])["sp"].data
    assert np.array_equal(got, tokens(crop(truth["sp"], [[2, 6, 8]], f.box, periodic=False), f))
    with pytest.raises(ConfigError, match=r"x0 = 9 is outside \[0, 8\]"):
        extract(store, cfg, [[0, 0, 9]])


def test_normalised_fields_match_the_formula(tmp_path):
    truth = make_per_variable(tmp_path / "s.zarr", nt=6, ny=9, nx=16, missing_chunk=False)
    store = open_store(tmp_path / "s.zarr")
    npath = compute_stats(store, tmp_path / "n.zarr", StatsConfig(transforms={"q": "log1p"}, progress=False))
    norm = Normalizer(npath)
    fields = [
        FieldConfig(name="t", levels=(850.0, 500.0), num_tokens=(1, 1, 2), token_size=(2, 3, 4), normalization="local"),
        FieldConfig(name="q", levels=(1000.0,), num_tokens=(2, 1, 1), token_size=(1, 3, 8), normalization="local",
                    transform="log1p"),
        FieldConfig(name="sp", num_tokens=(1, 3, 1), token_size=(2, 1, 8), normalization="global"),
    ]
    cfg = SamplingConfig(fields=fields, norm_path=str(npath))
    boxes = np.array([[0, 0, 12], [4, 6, 3]])
    got = extract(store, cfg, boxes)  # coefficients from config.norm_path
    again = extract(store, cfg, boxes, norm=norm, jit=False)
    lev = {"t": [1, 0], "q": [2]}
    for f in fields:
        raw = crop(truth[f.name], boxes, f.box, levels=lev.get(f.name)).astype(np.float32)  # (B, L, T, H, W)
        if f.transform == "log1p":
            raw = np.log1p(raw.astype(np.float64)).astype(np.float32)
        mean, std = norm.coefficients(f.name, f.normalization, f.levels, [0])  # all times are in January
        if f.normalization == "global":
            mu, sd = mean[0][None, :, None], std[0][None, :, None]
        else:
            x = [(x0 + np.arange(f.box[2])) % 16 for _, _, x0 in boxes]
            mu = np.stack([mean[0][:, y0:y0 + f.box[1]][..., xi] for (_, y0, _), xi in zip(boxes, x)])[:, :, None]
            sd = np.stack([std[0][:, y0:y0 + f.box[1]][..., xi] for (_, y0, _), xi in zip(boxes, x)])[:, :, None]
        want = tokens((raw - mu) / sd, f)
        assert np.array_equal(got[f.name].data, want), f.name
        assert np.array_equal(again[f.name].data, want), f.name
        assert abs(float(np.mean(got[f.name].data))) < 3.0  # normalised: of order one


def test_bfloat16_torch_output_is_the_rounded_float32(tmp_path):
    make_per_variable(tmp_path / "s.zarr", nt=4, ny=9, nx=16)
    store = open_store(tmp_path / "s.zarr")
    f = FieldConfig(name="t", levels=(500.0,), num_tokens=(1, 1, 2), token_size=(2, 3, 4), normalization="none")
    boxes = [[0, 1, 14], [2, 6, 0]]
    f32 = extract(store, SamplingConfig(fields=[f]), boxes)["t"].data
    with pytest.warns(UserWarning, match="float16 holds"):  # raw values in float16 (this store's are small)
        f16 = SamplingConfig(fields=[f], out_dtype="float16")
    for cfg, torch_dt in ((SamplingConfig(fields=[f], out_dtype="bfloat16"), torch.bfloat16), (f16, torch.float16)):
        out = extract(store, cfg, boxes, as_torch=True)["t"].data
        assert isinstance(out, torch.Tensor) and out.dtype == torch_dt
        assert torch.equal(out, torch.from_numpy(f32).to(torch_dt))
    bits = extract(store, f16, boxes)["t"].data
    assert bits.dtype == np.uint16 and np.array_equal(bits.view(np.float16), f32.astype(np.float16))


def test_global_tiling_extracts_and_stitches_back(tmp_path):
    truth = make_per_variable(tmp_path / "s.zarr", nt=3, ny=9, nx=16)
    store = open_store(tmp_path / "s.zarr")
    from fastload.sampling.geometry import GridExtent, stitch, tokens_to_box

    f = FieldConfig(name="t", levels=(500.0, 850.0), num_tokens=(1, 2, 2), token_size=(1, 3, 3), normalization="none")
    til = tile_grid(GridExtent.from_store(store), f.num_tokens, f.token_size, overlap=(1, 1), t0=2)
    data = extract(store, SamplingConfig(fields=[f]), til.boxes)["t"].data  # (n, L, 1, 2, 2, 1, 3, 3)
    grid = stitch(tokens_to_box(data), til)  # (L, 1, NY, NX)
    assert np.allclose(grid[:, 0], truth["t"][2, [0, 1]], rtol=1e-6)


def test_errors_name_what_is_wrong(tmp_path):
    make_per_variable(tmp_path / "s.zarr", nt=4, ny=9, nx=16)
    store = open_store(tmp_path / "s.zarr")
    f = FieldConfig(name="t", levels=(500.0,), num_tokens=(1, 1, 1), token_size=(2, 3, 4), normalization="local")
    with pytest.raises(ConfigError, match=r"fields \['t'\] normalise but no coefficients"):
        extract(store, SamplingConfig(fields=[f]), [[0, 0, 0]])
    g = FieldConfig(name="t", levels=(500.0,), num_tokens=(1, 1, 1), token_size=(2, 3, 4), normalization="none")
    with pytest.raises(ConfigError, match=r"t0 = 3 is outside \[0, 2\]"):
        extract(store, SamplingConfig(fields=[g]), [[3, 0, 0]])
    with pytest.raises(ConfigError, match="700"):
        extract(store, SamplingConfig(fields=[FieldConfig(name="t", levels=(700.0,), num_tokens=(1, 1, 1),
                                                          token_size=(1, 1, 1), normalization="none")]), [[0, 0, 0]])
    streams = SamplingConfig(fields=[FieldConfig(name="t", levels=(500.0,), num_tokens=(1, 1, 1), token_size=(1, 1, 1),
                                                 normalization="none", stream="a")],
                             streams=[StreamConfig(name="a", path=str(tmp_path / "s.zarr"))])
    with pytest.raises(ConfigError, match="one store"):
        extract(store, streams, [[0, 0, 0]])


def test_a_mesh_store_extracts_what_the_loader_serves(tmp_path):
    """extract on a mesh store picks the Loader's tokenizer (the mesh one): the same tokens and metadata as the
    Loader's batch for the same explicit boxes, and the brute-force binning of the written nodes."""
    from fastload.loader import Loader

    from .stores_multi import make_mesh
    from .test_mesh import brute_bin

    truth = make_mesh(tmp_path / "m.zarr", nt=10)
    store = open_store(tmp_path / "m.zarr")
    fields = (FieldConfig(name="temp", levels=(100.0, 5.0), num_tokens=(2, 2, 3), token_size=(2, 2, 2),
                          normalization="none"),
              FieldConfig(name="ssh", num_tokens=(1, 1, 1), token_size=(4, 4, 6), normalization="none"))
    cfg = SamplingConfig(fields=fields, time_step=2)
    boxes = np.array([[0, 2, 0], [2, 5, 20], [1, 16, 43]])  # the last crosses the placement grid's seam
    got = extract(store, cfg, boxes)
    ref = extract(store, cfg, boxes, jit=False)
    with Loader(store, cfg, boxes=boxes, batch_size=3, workers=1, device="cpu") as loader:
        res = loader.tokenizer.resolution
        assert loader.extent.nx < 43 + 6
        batch = next(iter(loader))
    for f in fields:
        assert np.array_equal(got[f.name].data, batch[f.name].numpy()), f.name
        assert np.array_equal(got[f.name].data, ref[f.name].data), f.name
        m = got[f.name].meta
        for k, v in m.to_torch().items():
            assert np.array_equal(v.numpy(), batch.meta[f.name][k].numpy(), equal_nan=v.is_floating_point()), k
        nt, nlat, nlon = f.num_tokens
        tt, tlat, tlon = f.token_size
        lev = [1, 0] if f.name == "temp" else [0]
        data = truth[f.name] if f.name == "temp" else truth[f.name][:, None]
        for s, (t0, y0, x0) in enumerate(boxes.tolist()):
            region = (90 - res * y0, 90 - res * (y0 + nlat * tlat), res * x0, res * nlon * tlon)
            nodes, count = brute_bin(store.grid.lat, store.grid.lon, region, nlat, nlon, tlat * tlon)
            want = data[t0 + np.arange(nt * tt) * 2][:, lev][:, :, np.maximum(nodes, 0)]
            want = np.where(nodes >= 0, want, 0).reshape(nt, tt, len(lev), nlat, nlon, tlat, tlon)
            assert np.array_equal(got[f.name].data[s], want.transpose(2, 0, 3, 4, 1, 5, 6)), (f.name, s)
            assert np.array_equal(m.valid[s], nodes >= 0) and np.array_equal(m.count[s], count)
    assert (~got["temp"].meta.valid).any()  # the continent leaves padding slots


def test_a_float16_array_is_a_clear_config_error(tmp_path):
    """The kernels cannot read float16 chunks: say so up front, naming field, array and store."""
    import zarr

    from .loader_ref import build

    _, cfg = build("per_variable", tmp_path / "s.zarr", zarr_format=3, codec="none")
    g = zarr.open_group(str(tmp_path / "s.zarr"), mode="r+")
    a = g["t"]
    data, attrs, dims = a[...], dict(a.attrs), a.metadata.dimension_names
    del g["t"]
    b = g.create_array("t", shape=data.shape, chunks=a.chunks, dtype="float16", compressors=None,
                       dimension_names=dims)
    b[...] = data.astype(np.float16)
    b.attrs.update(attrs)
    with pytest.raises(ConfigError, match=r"field 't': array 't' .* holds float16"):
        extract(open_store(tmp_path / "s.zarr"), cfg, np.zeros((1, 3), np.int64))


def _rewrite(path, name, data, *, fill_value, attrs):
    """Replace array ``name`` of the zarr v2 store at ``path`` by ``data`` with this fill value (:data:`NULL`: null)
    and attributes."""
    import zarr

    from .stores import _array

    g = zarr.open_group(str(path), mode="r+")
    a = g[name]
    chunks, dims = a.chunks, a.attrs["_ARRAY_DIMENSIONS"]
    attrs = {**{k: v for k, v in a.attrs.items() if k != "_ARRAY_DIMENSIONS"}, **attrs}
    del g[name]
    _array(g, name, data, dims, zarr_format=2, chunks=chunks, attrs=attrs,
           fill_value=np.nan if fill_value is NULL else fill_value)
    if fill_value is NULL:  # "fill_value": null in .zarray (every chunk is written, so none reads as the fill)
        meta = path / name / ".zarray"
        meta.write_text(json.dumps({**json.loads(meta.read_text()), "fill_value": None}))


NULL = object()  # _rewrite: a null zarr v2 fill_value
F32_1E20 = float(np.float32(1e20))  # CMIP's float32 _FillValue 1e20 as a JSON attribute holds it: 1.0000000200408773e+20


@pytest.mark.parametrize("declared", ["fill_value", "attribute", "nan_fill_value_and_attribute"])
def test_declared_missing_values_come_out_nan(tmp_path, declared):
    """A field whose store declares a missing value (a CMIP-style float32 _FillValue of 1e20, as a zarr v2
    fill_value, or as an attribute where the fill_value is null; a missing_value attribute) comes out NaN exactly
    where xarray (``xr.open_zarr``) decodes NaN, on the kernel and reference paths and through the Loader. In zarr
    v2 a non-null fill_value wins over the attribute, as in xarray: with a NaN fill_value and a _FillValue
    attribute of 1e20, 1e20 stays data. A field with zarr's default fill_value 0 and no _FillValue attribute keeps
    its zeros (they are data)."""
    import xarray as xr

    from fastload.loader import Loader

    path = tmp_path / "s.zarr"
    truth = make_per_variable(path, zarr_format=2, nt=7, missing_chunk=False)
    rng = np.random.default_rng(0)
    t = truth["t"].copy()
    land = rng.random(t.shape) < 0.2
    t[land] = np.float32(F32_1E20)
    fill, attrs = {"fill_value": (1e20, {}), "attribute": (NULL, {"_FillValue": F32_1E20}),
                   "nan_fill_value_and_attribute": (np.nan, {"_FillValue": F32_1E20})}[declared]
    _rewrite(path, "t", t, fill_value=fill, attrs=attrs)
    sp = truth["sp"].copy()
    sp[rng.random(sp.shape) < 0.2] = 0.0
    _rewrite(path, "sp", sp, fill_value=0.0, attrs={})  # zarr's default: 0 is data
    orog = truth["orog"].copy()
    orog[rng.random(orog.shape) < 0.2] = -999.0
    _rewrite(path, "orog", orog, fill_value=np.nan, attrs={"missing_value": -999.0})
    store = open_store(path)
    fields = [
        FieldConfig(name="t", levels=(1000.0, 500.0), num_tokens=(2, 2, 1), token_size=(2, 2, 8), normalization="none"),
        FieldConfig(name="sp", num_tokens=(2, 1, 2), token_size=(2, 4, 4), normalization="none"),
        FieldConfig(name="orog", num_tokens=(4, 1, 1), token_size=(1, 4, 8), normalization="none"),
    ]
    cfg = SamplingConfig(fields=fields, batch_size=3)
    boxes = np.array([[0, 0, 10], [3, 5, 0], [2, 2, 15]])  # across the seam
    with xr.open_zarr(path, consolidated=False) as ds:
        xt = ds["t"].values  # what xarray decodes
    assert xt.dtype == np.float32 and np.array_equal(np.isnan(xt), land if declared != "nan_fill_value_and_attribute"
                                                     else np.zeros_like(land))  # (the cases are what they say)
    want = {"t": xt, "sp": sp, "orog": np.where(orog == -999.0, np.nan, orog)}
    lev = {"t": [2, 0]}
    expected = {f.name: tokens(crop(want[f.name], boxes, f.box, levels=lev.get(f.name), has_time=f.name != "orog"),
                               f) for f in fields}
    for jit in (True, False):
        got = extract(store, cfg, boxes, jit=jit)
        for f in fields:
            assert np.array_equal(got[f.name].data, expected[f.name], equal_nan=True), (f.name, jit)
    assert (expected["sp"] == 0).any() and np.isnan(expected["orog"]).any()
    with Loader(store, cfg, boxes=boxes, workers=1, device="cpu") as loader:
        batch = next(iter(loader))
    for f in fields:
        assert np.array_equal(batch.fields[f.name].numpy(), expected[f.name], equal_nan=True), f.name


def test_a_missing_value_the_dtype_cannot_hold_masks_nothing(tmp_path):
    """An int16 field declaring a _FillValue of 1e20 (no int16 value is 1e20): nothing is masked, its zeros stay."""
    path = tmp_path / "s.zarr"
    truth = make_per_variable(path, zarr_format=2, nt=4, missing_chunk=False)
    values = truth["orog"].astype(np.int16)
    values.flat[::3] = 0
    _rewrite(path, "orog", values, fill_value=0, attrs={"_FillValue": 1e20})
    cfg = SamplingConfig(fields=[FieldConfig(name="orog", num_tokens=(1, 1, 1), token_size=(2, 4, 8),
                                             normalization="none")])
    got = extract(open_store(path), cfg, np.zeros((1, 3), np.int64))["orog"].data
    assert not np.isnan(got).any() and (got == 0).any()


def _empty_case(kind, tmp_path):
    """(store, config, two boxes) of one store kind, for the empty-boxes test."""
    if kind == "grid":  # normalised fields: no months are used, so no coefficients are taken
        make_per_variable(tmp_path / "s.zarr", nt=6, missing_chunk=False)
        store = open_store(tmp_path / "s.zarr")
        npath = compute_stats(store, tmp_path / "n.zarr", StatsConfig(progress=False))
        fields = [FieldConfig(name="t", levels=(850.0, 500.0), num_tokens=(1, 1, 2), token_size=(2, 3, 4),
                              normalization="local"),
                  FieldConfig(name="sp", num_tokens=(1, 3, 1), token_size=(2, 1, 8), normalization="global")]
        return store, SamplingConfig(fields=fields, norm_path=str(npath)), [[0, 0, 12], [4, 6, 3]]
    if kind == "curvilinear":
        make_curvilinear(tmp_path / "c.zarr", nt=4, ny=7, nx=10)
        f = FieldConfig(name="thetao", levels=(50.0, 5.0), num_tokens=(2, 2, 2), token_size=(1, 3, 3),
                        normalization="none")
        return open_store(tmp_path / "c.zarr"), SamplingConfig(fields=[f], time_step=2), [[0, 0, 7], [1, 1, 2]]
    from .stores_multi import make_mesh

    make_mesh(tmp_path / "m.zarr", nt=10)
    fields = [FieldConfig(name="temp", levels=(100.0, 5.0), num_tokens=(2, 2, 3), token_size=(2, 2, 2),
                          normalization="none")]
    return open_store(tmp_path / "m.zarr"), SamplingConfig(fields=fields, time_step=2), [[0, 2, 0], [2, 5, 20]]


@pytest.mark.parametrize("kind", ["grid", "curvilinear", "mesh"])
def test_no_boxes_give_empty_results_of_the_right_shapes(tmp_path, kind):
    """extract with a (0, 3) boxes array returns, per field, data of shape (0, *sample_shape) and metadata whose
    per-sample arrays have batch axis 0 (the others as for any boxes), on the kernel and reference paths, as NumPy
    and torch. Reference: the same field's results for one and for two boxes (an array whose first axis goes 1 -> 2
    is per sample). Before, normalised fields raised a ConfigError about the coefficients' shape."""
    store, cfg, two = _empty_case(kind, tmp_path)
    one_box, two_boxes = extract(store, cfg, two[:1]), extract(store, cfg, two)
    for jit in (True, False):
        for as_torch in (False, True):
            got = extract(store, cfg, np.zeros((0, 3), np.int64), jit=jit, as_torch=as_torch)
            assert list(got) == list(one_box)
            for name, e in got.items():
                ref = one_box[name].data
                assert tuple(e.data.shape) == (0, *ref.shape[1:]) and isinstance(e.data, torch.Tensor) == as_torch
                assert str(e.data.dtype).removeprefix("torch.") == str(ref.dtype)
                assert type(e.meta) is type(one_box[name].meta)
                for key in [f.name for f in dataclasses.fields(e.meta)]:
                    v, v1, v2 = (getattr(m.meta, key) for m in (e, one_box[name], two_boxes[name]))
                    if not isinstance(v1, np.ndarray):  # (a mesh field's names and settings)
                        assert v == v1, (name, key)
                    elif v1.shape[:1] == (1,) and v2.shape[:1] == (2,):  # per sample
                        assert v.shape == (0, *v1.shape[1:]) and v.dtype == v1.dtype, (name, key)
                    else:
                        assert np.array_equal(v, v1, equal_nan=v.dtype.kind == "f"), (name, key)


def test_extract_takes_a_store_path_and_a_config_file_as_the_loader_does(tmp_path):
    """extract(path or URL, TOML path, boxes) equals extract(open_store(path), SamplingConfig.from_file(toml), boxes)
    (the config's norm_path relative to the file); anything else as the config is a ConfigError naming it."""
    truth = make_per_variable(tmp_path / "s.zarr", nt=6, missing_chunk=False)
    store = open_store(tmp_path / "s.zarr")
    compute_stats(store, tmp_path / "n.zarr", StatsConfig(progress=False))
    toml = tmp_path / "sample.toml"
    toml.write_text('norm_path = "n.zarr"\n\n[fields.t]\nlevels = [500.0]\nnum_tokens = [1, 1, 2]\n'
                    'token_size = [2, 3, 4]\nnormalization = "local"\n\n[fields.sp]\nnum_tokens = [1, 1, 2]\n'
                    'token_size = [2, 3, 4]\nnormalization = "none"\n')
    boxes = [[0, 0, 12], [4, 6, 3]]
    want = extract(store, SamplingConfig.from_file(toml), boxes)
    for s, c in ((str(tmp_path / "s.zarr"), str(toml)), (tmp_path / "s.zarr", toml),
                 ((tmp_path / "s.zarr").as_uri(), toml)):
        got = extract(s, c, boxes)
        for name in ("t", "sp"):
            assert np.array_equal(got[name].data, want[name].data), (s, name)
            assert np.array_equal(got[name].meta.lat, want[name].meta.lat)
    f = SamplingConfig.from_file(toml).fields[1]
    assert np.array_equal(want["sp"].data, tokens(crop(truth["sp"], boxes, f.box), f))  # the raw field, as written
    with pytest.raises(ConfigError, match="config: expected a SamplingConfig or the path"):
        extract(store, {"fields": {}}, boxes)


class _Requests:
    """Wraps ``store.chunk_bytes``: counts the store requests, and blocks those for which ``hang(n)`` (n: 1, 2, ...)
    is true until ``release`` is set (a store that does not answer), or sleeps ``delay`` seconds in each."""

    def __init__(self, store, hang=lambda n: False, delay=0.0):
        import threading

        self.real, self.hang, self.delay = store.chunk_bytes, hang, delay
        self.lock, self.release = threading.Lock(), threading.Event()
        self.n = self.hung = 0
        store.chunk_bytes = self

    def __call__(self, array, chunk):
        import time

        with self.lock:
            self.n += 1
            hang = self.hang(self.n)
            self.hung += hang
        if hang:
            self.release.wait(60)
        elif self.delay:
            time.sleep(self.delay)
        return self.real(array, chunk)


def _in_thread(fn, timeout=30.0):
    """``fn()`` on a thread, joined at most ``timeout`` s: (result or exception, still running)."""
    import threading

    got = []

    def run():
        try:
            got.append(fn())
        except BaseException as e:  # noqa: BLE001 - looked at by the test
            got.append(e)

    t = threading.Thread(target=run, daemon=True)
    t.start()
    t.join(timeout)
    return (got[0] if got else None), t.is_alive()


def _t_config():
    return SamplingConfig(fields=[FieldConfig(name="t", levels=(500.0, 850.0), num_tokens=(2, 2, 2),
                                              token_size=(2, 3, 3), normalization="none")], time_step=1)


@pytest.mark.parametrize("which", [1, 3])
def test_a_store_request_that_never_answers_is_a_chunk_timeout_after_read_timeout_s(tmp_path, which):
    """A chunk request that never answers (the first, or a later one) fails extract with a ChunkTimeoutError naming
    the store, the field, the chunk (one the boxes need) and the setting, after read_timeout_s; extract waited for
    ever (no read_timeout_s: a TypeError before). The thread and the join only guard against that hang."""
    import threading

    from fastload.errors import ChunkReadError, ChunkTimeoutError

    make_per_variable(tmp_path / "s.zarr", nt=8)
    store = open_store(tmp_path / "s.zarr")
    cfg, boxes = _t_config(), np.array([[0, 0, 3], [4, 3, 10]])
    plan_chunks = {tuple(c) for c in _plan_chunks(store, cfg, boxes)}
    assert len(plan_chunks) > which
    requests = _Requests(store, hang=lambda n: n == which)
    try:
        got, running = _in_thread(lambda: extract(store, cfg, boxes, read_timeout_s=0.3))
        assert not running, "extract still waits for a store request that never answers"
        assert isinstance(got, ChunkTimeoutError) and isinstance(got, ChunkReadError), got
        assert got.array == "t" and got.chunk in plan_chunks
        msg = str(got)
        assert repr(store.path) in msg and "['t']" in msg and "read_timeout_s = 0.3" in msg and "no answer" in msg
        assert got.path is not None and got.path.endswith(store.arrays["t"].key(got.chunk)), got.path
        assert requests.hung == 1 and requests.n == which  # (nothing is requested after the one that hangs)
    finally:
        requests.release.set()  # the hung request returns, and its thread ends
        for t in threading.enumerate():
            if t.name.startswith("fastload-extract"):
                t.join(10)


def _plan_chunks(store, cfg, boxes):
    from fastload._backend import make_tokenizer

    tok = make_tokenizer(store, cfg)
    return tok.plan(tok.check_boxes(boxes)).chunks["t"].tolist()


def test_the_read_timeout_bounds_each_request_not_the_whole_extract(tmp_path):
    """Every request answers after 0.05 s and read_timeout_s = 2: more requests than fit in 2 s all answer (each
    with 1.95 s to spare, so a loaded machine does not time one out),
    and the samples are those of an extract without a timeout (on the calling thread) and of the NumPy truth."""
    truth = make_per_variable(tmp_path / "s.zarr", nt=8)
    store = open_store(tmp_path / "s.zarr")
    cfg, boxes = _t_config(), np.array([[0, 0, 3], [4, 3, 10], [2, 2, 14]])
    plain = extract(store, cfg, boxes, read_timeout_s=None)
    requests = _Requests(store, delay=0.05)
    got = extract(store, cfg, boxes, read_timeout_s=2.0)
    assert requests.n == len(_plan_chunks(store, cfg, boxes)) > 2.0 / 0.05  # (longer than the timeout in all)
    f = cfg.fields[0]
    assert np.array_equal(got["t"].data, plain["t"].data, equal_nan=True)
    want = crop(truth["t"], boxes, f.box, levels=[0, 1])
    assert np.array_equal(got["t"].data, tokens(want, f), equal_nan=True)


def test_a_failing_request_is_still_its_chunk_read_error_and_read_timeout_s_is_checked(tmp_path):
    """A request that fails (not a timeout) raises its own ChunkReadError through the I/O thread, naming the chunk;
    a bad read_timeout_s is a ConfigError naming it."""
    from fastload.errors import ChunkReadError, ChunkTimeoutError

    make_per_variable(tmp_path / "s.zarr", nt=8)
    store = open_store(tmp_path / "s.zarr")
    cfg, boxes = _t_config(), np.array([[0, 0, 3]])

    def broken(array, chunk):
        raise ChunkReadError(array, chunk, "injected failure")

    store.chunk_bytes = broken
    with pytest.raises(ChunkReadError, match="injected failure") as info:
        extract(store, cfg, boxes)
    assert not isinstance(info.value, ChunkTimeoutError) and info.value.array == "t"
    for bad in (0, -1.0, float("nan"), float("inf"), True, "5"):
        with pytest.raises(ConfigError, match="read_timeout_s"):
            extract(store, cfg, boxes, read_timeout_s=bad)


def test_a_multi_stream_request_that_never_answers_names_its_stream_store_and_fields(tmp_path):
    """read_plan on a MultiStream (extract_streams' reads) with the ocean stream's requests hanging: the
    ChunkTimeoutError names the stream's array, its store, the chunk's file there and the fields that need it."""
    import threading

    from fastload.errors import ChunkTimeoutError
    from fastload.extract import read_plan
    from fastload.streams import MultiStream

    from .stores_multi import make_atmosphere, make_mesh, make_ocean
    from .test_streams import BOXES, config

    paths = {"era5": tmp_path / "a.zarr", "ocean": tmp_path / "o.zarr", "fesom": tmp_path / "m.zarr"}
    make_atmosphere(paths["era5"]), make_ocean(paths["ocean"]), make_mesh(paths["fesom"])
    ms = MultiStream(config(paths))
    plan = ms.plan(BOXES)
    ocean = ms.by_name["ocean"].store
    requests = _Requests(ocean, hang=lambda n: True)
    try:
        got, running = _in_thread(lambda: read_plan(ms, plan, read_timeout_s=0.3))
        assert not running
        assert isinstance(got, ChunkTimeoutError), got
        array = got.array.partition("/")[2]
        assert got.array.startswith("ocean/") and array in ocean.arrays, got.array
        assert repr(ocean.path) in str(got) and "read_timeout_s = 0.3" in str(got)
        assert got.path is not None and got.path.endswith(ocean.arrays[array].key(got.chunk)), got.path
        assert "thetao" in str(got) or "zos" in str(got), str(got)
        assert requests.hung == 1
    finally:
        requests.release.set()
        for t in threading.enumerate():
            if t.name.startswith("fastload-extract"):
                t.join(10)


def test_a_given_up_group_makes_no_further_request(tmp_path):
    """Once extract has given up a request, its I/O thread, when that request answers, requests nothing more of
    its group (review r3: 39 more requests for nobody), and the thread ends."""
    import threading
    import time

    from fastload.errors import ChunkTimeoutError

    make_per_variable(tmp_path / "s.zarr", nt=8)
    store = open_store(tmp_path / "s.zarr")
    cfg = SamplingConfig(fields=[FieldConfig(name="t", levels=(500.0, 850.0), num_tokens=(2, 2, 2),
                                             token_size=(2, 3, 3), normalization="none")])  # fmt: skip
    real, calls, after = store.chunk_bytes, [], []
    gave_up, answered = threading.Event(), threading.Event()

    def chunk_bytes(a, c):
        calls.append((a, c))
        if len(calls) == 1:
            gave_up.wait(60)  # answers only after extract has given it up
            answered.set()
        elif gave_up.is_set():
            after.append((a, c))
        return real(a, c)

    store.chunk_bytes = chunk_bytes
    with pytest.raises(ChunkTimeoutError):
        extract(store, cfg, np.array([[0, 0, 3], [4, 3, 10]]), read_timeout_s=0.3)
    gave_up.set()
    assert answered.wait(60)
    deadline = time.monotonic() + 60  # a guard, not a timing check: the thread ends once its request returned
    while any(t.name.startswith("fastload-extract") for t in threading.enumerate()) and time.monotonic() < deadline:
        time.sleep(0.01)
    assert not [t.name for t in threading.enumerate() if t.name.startswith("fastload-extract")]
    assert after == [], f"{len(after)} requests made for nobody after extract gave up"


def test_coefficients_for_the_boxes_months_are_enough(tmp_path):
    """Coefficients of January only (``fastload stats --time-range``) for a store of January and February: boxes
    whose every time step is in January extract, normalised with January's coefficients (NumPy's formula); the
    first box that reads a February step is named. (extract checked the whole record and refused both.)"""
    from .test_stats import write_per_variable

    data, time = write_per_variable(tmp_path / "s.zarr", nt=12, start="2000-01-30", freq="12h")
    assert str(time[3])[:10] == "2000-01-31" and str(time[4])[:10] == "2000-02-01"
    npath = compute_stats(str(tmp_path / "s.zarr"), tmp_path / "jan.zarr",
                          StatsConfig(time_range=(None, "2000-01"), progress=False))
    norm = Normalizer(npath)
    assert norm.months_present("temperature") == (0,)
    store = open_store(tmp_path / "s.zarr")
    f = FieldConfig(name="temperature", levels=(105.0, 96.0), num_tokens=(2, 1, 2), token_size=(1, 3, 3),
                    normalization="local")
    cfg = SamplingConfig(fields=[f], norm_path=str(npath))
    boxes = np.array([[0, 0, 10], [2, 6, 0]])  # time steps 0-1 and 2-3: January
    got = extract(store, cfg, boxes)["temperature"].data
    mean, std = norm.coefficients("temperature", "local", f.levels, [0])  # (1, L, NY, NX)
    x = [(x0 + np.arange(f.box[2])) % 12 for _, _, x0 in boxes]
    mu = np.stack([mean[0][:, y0:y0 + f.box[1]][..., xi] for (_, y0, _), xi in zip(boxes, x)])[:, :, None]
    sd = np.stack([std[0][:, y0:y0 + f.box[1]][..., xi] for (_, y0, _), xi in zip(boxes, x)])[:, :, None]
    raw = crop(data["temperature"], boxes, f.box, levels=[1, 0]).astype(np.float32)  # (B, L, T, H, W)
    assert np.array_equal(got, tokens((raw - mu) / sd, f), equal_nan=True)
    with pytest.raises(ConfigError, match=r"field 'temperature': box 1 \(store time steps 3\.\.4, 2000-01-31T12:00 "
                                          r"\.\. 2000-02-01T00:00\) reads times in \['Feb'\].*only for \['Jan'\]"):
        extract(store, cfg, [[0, 0, 0], [3, 0, 0], [6, 0, 0]])
    with pytest.raises(ConfigError, match=r"the data store has times in \['Feb'\]"):  # the Loader: whole record
        norm.check(store, cfg)
