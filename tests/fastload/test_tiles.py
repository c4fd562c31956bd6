"""The global tiling for the forecaster (fastload.sampling.tiles): point index, blend weights, centres, neighbours.

References are plain loops (per tile, per value), haversine distances, :func:`fastload.sampling.geometry.stitch`,
and :func:`fastload.extract` on real stores.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

import fastload
from fastload.config import FieldConfig, SamplingConfig
from fastload.errors import ConfigError
from fastload.extract import extract  # not fastload.extract (the module, once imported)
from fastload.sampling.geometry import _taper, stitch, tokens_to_box
from fastload.sampling.tiles import global_tiles, great_circle, nearest_tiles
from fastload.store.grid import Grid
from model import TileBlender
from tests.fastload.stores import make_curvilinear, make_per_variable


def _grid(ny=31, nx=60, periodic=True, descending=True):
    lat = np.linspace(90.0, -90.0, ny) if descending else np.linspace(-90.0, 90.0, ny)
    lon = np.arange(nx) * (360.0 / nx) if periodic else np.linspace(-10.0, 20.0, nx)
    return Grid(kind="latlon", lat=lat, lon=lon, periodic_x=periodic, lat_descending=descending)


def _config(num_tokens=(2, 2, 3), token_size=(3, 3, 3), levels=(1.0, 2.0), other_tokens=None):
    f2 = other_tokens or (num_tokens, token_size)
    return SamplingConfig(fields=(FieldConfig(name="t", levels=levels, num_tokens=num_tokens, token_size=token_size,
                                              normalization="none"),
                                  FieldConfig(name="s", num_tokens=f2[0], token_size=f2[1], normalization="none")),
                          batch_size=1)


def _brute_index(tiles, field, grid):
    """Loop over every tile value: ((l * Tp + t) * NY + y) * NX + x, x wrapping on periodic grids."""
    ft = tiles.fields[field.name]
    T, L, nt, nlat, nlon, tt, tlat, tlon = ft.index.shape
    tp, ny, nx = nt * tt, grid.ny, grid.nx
    out = np.empty(ft.index.shape, np.int64)
    for i, (_, y0, x0) in enumerate(tiles.tiling.boxes.tolist()):
        for idx in np.ndindex(L, nt, nlat, nlon, tt, tlat, tlon):
            lv, a, b, c, u, v, w = idx
            y, x = y0 + b * tlat + v, x0 + c * tlon + w
            assert x < nx or grid.periodic_x
            out[(i, *idx)] = ((lv * tp + a * tt + u) * ny + y) * nx + x % nx
    return out


@pytest.mark.parametrize("periodic", [True, False])
@pytest.mark.parametrize("time_tokens", [None, 1])
def test_index_matches_a_loop_and_covers_the_grid(periodic, time_tokens):
    grid = _grid(ny=19, nx=30, periodic=periodic)
    cfg = _config(num_tokens=(2, 2, 2), token_size=(2, 3, 4))
    tiles = global_tiles(grid, cfg, overlap=(1, 1), neighbors=3, time_tokens=time_tokens)
    for f in cfg.fields:
        ft = tiles.fields[f.name]
        nt = f.num_tokens[0] if time_tokens is None else time_tokens
        assert ft.index.shape == (tiles.num_tiles, f.num_levels, nt, 2, 2, 2, 3, 4)
        assert ft.grid_shape == (f.num_levels, nt * 2, 19, 30)
        np.testing.assert_array_equal(ft.index, _brute_index(tiles, f, grid))
        assert np.array_equal(np.unique(ft.index), np.arange(ft.num_points))  # every point covered
    xs = tiles.tiling.boxes[:, 2]
    if periodic:
        assert (xs + 8 > 30).any()  # some tile crosses the seam...
    else:
        assert xs.max() + 8 == 30 and xs.min() == 0  # ...regional tiles stay inside, flush with both edges


def _cut(field, index):
    """(..., L, Tp, NY, NX) global field -> tiles through the flat index (the forecaster's targets)."""
    lead = field.shape[:-4]
    return field.reshape(*lead, -1)[..., index]


@pytest.mark.parametrize("periodic", [True, False])
def test_tileblender_with_these_weights_is_geometry_stitch(periodic):
    grid = _grid(periodic=periodic)
    cfg = _config()
    tiles = global_tiles(grid, cfg, overlap=(1, 1), time_tokens=1)
    ft = tiles.fields["t"]
    blend = TileBlender(torch.from_numpy(ft.index), torch.from_numpy(ft.weights), ft.num_points)

    def by_stitch(values):  # (B, T, L, nt, ...) -> (B, L, Tp, NY, NX) through geometry.stitch
        return stitch(tokens_to_box(values.transpose(0, 1)), tiles.tiling)

    def by_blender(values):
        return blend(values).reshape(values.shape[0], *ft.grid_shape)

    # a constant field comes back exactly constant from both, in float32 and float64
    for dtype in (torch.float32, torch.float64):
        const = torch.full((2, *ft.index.shape), 0.1234567, dtype=dtype)
        for out in (by_stitch(const), by_blender(const)):
            assert bool((out == const.flatten()[0]).all())
    # tiles cut from one field reconstruct it exactly, through both
    g = torch.Generator().manual_seed(0)
    field = torch.randn(2, *ft.grid_shape, generator=g)
    tiles_of_field = _cut(field, torch.from_numpy(ft.index))
    assert torch.equal(by_stitch(tiles_of_field), field)
    assert torch.equal(by_blender(tiles_of_field), field)
    # arbitrary (disagreeing) tiles: the same weighted mean, in the same tile order
    values = torch.randn(3, *ft.index.shape, dtype=torch.float64, generator=g)
    assert torch.equal(by_blender(values), by_stitch(values))
    w = torch.from_numpy(ft.weights)
    idx = torch.from_numpy(ft.index).reshape(-1)
    num = torch.zeros(3, ft.num_points, dtype=torch.float64).index_add_(1, idx, (values * w).reshape(3, -1))
    den = torch.zeros(ft.num_points, dtype=torch.float64).index_add_(0, idx, w.reshape(-1))
    torch.testing.assert_close(by_stitch(values).reshape(3, -1), num / den, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32, torch.bfloat16])
def test_tileblender_and_stitch_agree_bitwise_on_disagreeing_tiles(dtype):
    grid = _grid()
    tiles = global_tiles(grid, _config(), overlap=(1, 1), time_tokens=1)
    ft = tiles.fields["t"]
    blend = TileBlender(torch.from_numpy(ft.index), torch.from_numpy(ft.weights), ft.num_points)
    values = torch.randn(2, *ft.index.shape, dtype=dtype, generator=torch.Generator().manual_seed(1))
    a = blend(values).reshape(2, *ft.grid_shape)
    assert torch.equal(a, stitch(tokens_to_box(values.transpose(0, 1)), tiles.tiling))


def test_weights_are_stitch_tapers_per_tile():
    grid = _grid(periodic=False)
    cfg = _config()
    tiles = global_tiles(grid, cfg, overlap=(1, 2))
    ft = tiles.fields["s"]
    box = tokens_to_box(ft.weights)  # (T, L, Tp, H, W)
    h, w = tiles.tiling.box[1:]
    assert tiles.ramp == (3, 6)
    for i, (_, y0, x0) in enumerate(tiles.tiling.boxes.tolist()):
        want = np.outer(_taper(h, 3, y0 > 0, y0 + h < grid.ny), _taper(w, 6, x0 > 0, x0 + w < grid.nx))
        for lv in range(box.shape[1]):
            for t in range(box.shape[2]):
                assert np.array_equal(box[i, lv, t], want)
    assert (ft.weights > 0).all()
    corner = box[0, 0, 0]
    assert corner[0, 0] == 1.0 and corner[-1, -1] < 1.0  # the grid's corner keeps weight 1; inner edges taper


def test_neighbours_are_the_nearest_by_great_circle():
    grid = _grid()
    tiles = global_tiles(grid, _config(), overlap=(1, 1), neighbors=6)
    lat, lon, nb = tiles.lat, tiles.lon, tiles.neighbors
    assert nb.shape == (tiles.num_tiles, 6) and nb.dtype == np.int64
    r = 6371.0
    for i in range(tiles.num_tiles):
        d = []
        for j in range(tiles.num_tiles):  # haversine, one pair at a time
            p1, p2 = math.radians(lat[i]), math.radians(lat[j])
            a = (math.sin((p2 - p1) / 2) ** 2
                 + math.cos(p1) * math.cos(p2) * math.sin(math.radians(lon[j] - lon[i]) / 2) ** 2)
            d.append(2 * r * math.asin(math.sqrt(min(1.0, a))))
        d = np.array(d)
        assert i not in nb[i] and len(set(nb[i].tolist())) == 6
        others = np.sort(np.delete(d, i))
        np.testing.assert_allclose(d[nb[i]], others[:6], rtol=1e-9, atol=1e-6)  # the 6 smallest, nearest first
    assert np.allclose(great_circle(0, 0, 0, 90), math.pi / 2) and great_circle(10, 5, 10, 5) == 0


def test_periodic_seam_centres_and_neighbours_across_it():
    grid = _grid(ny=31, nx=60)  # 6 degree columns
    tiles = global_tiles(grid, _config(), overlap=(0, 1), neighbors=2)
    boxes = tiles.tiling.boxes
    first_row = np.flatnonzero(boxes[:, 1] == 0)
    xs = boxes[first_row, 2]
    west, east = first_row[np.argmax(xs)], first_row[np.argmin(xs)]
    # the last tile of a row crosses 360 -> 0; its centre is the circular mean of its columns
    cols = (boxes[west, 2] + np.arange(9)) % 60
    assert cols[-1] < cols[0]
    lon = grid.lon[cols]
    want = (lon[0] + np.mean((lon - lon[0] + 180) % 360 - 180)) % 360
    assert math.isclose(tiles.lon[west], want, abs_tol=1e-9)
    assert east in tiles.neighbors[west] and west in tiles.neighbors[east]  # neighbours across the seam
    assert ((tiles.lon >= 0) & (tiles.lon < 360)).all()


def test_curvilinear_centres_are_box_means(tmp_path):
    truth = make_curvilinear(tmp_path / "c.zarr", ny=7, nx=10)
    store = fastload.open_store(tmp_path / "c.zarr")
    cfg = SamplingConfig(fields=(FieldConfig(name="zos", num_tokens=(1, 2, 2), token_size=(1, 2, 2),
                                             normalization="none"),), batch_size=1)
    tiles = global_tiles(store, cfg, overlap=(1, 1), neighbors=2)
    for i, (_, y0, x0) in enumerate(tiles.tiling.boxes.tolist()):
        ys, xs = np.arange(y0, y0 + 4), (x0 + np.arange(4)) % 10
        lat = truth["latitude"][np.ix_(ys, xs)]
        lon = truth["longitude"][np.ix_(ys, xs)]
        assert math.isclose(tiles.lat[i], lat.mean(), abs_tol=1e-9)
        d = (lon - lon[0, 0] + 180) % 360 - 180
        assert math.isclose(tiles.lon[i], (lon[0, 0] + d.mean()) % 360, abs_tol=1e-9)


@pytest.mark.parametrize("regional", [False, True])
def test_extracted_tiles_are_the_store_through_the_index(tmp_path, regional):
    truth = make_per_variable(tmp_path / "s.zarr", regional=regional, nt=4, ny=9, nx=16, missing_chunk=False)
    store = fastload.open_store(tmp_path / "s.zarr")
    cfg = SamplingConfig(fields=(FieldConfig(name="t", levels=(500.0, 850.0), num_tokens=(2, 2, 2),
                                             token_size=(1, 2, 3), normalization="none"),
                                 FieldConfig(name="sp", num_tokens=(2, 2, 2), token_size=(1, 2, 3),
                                             normalization="none")), batch_size=1)
    tiles = global_tiles(store, cfg, overlap=(1, 1), neighbors=2)
    got = extract(store, cfg, tiles.boxes(1))
    for name, field in (("t", truth["t"][1:3].transpose(1, 0, 2, 3)), ("sp", truth["sp"][None, 1:3])):
        np.testing.assert_array_equal(got[name].data, field.reshape(-1)[tiles.fields[name].index])
    assert tiles.boxes(np.array([0, 2])).shape == (2, tiles.num_tiles, 3)


def test_fields_with_other_token_sizes_share_the_tiling():
    cfg = _config(num_tokens=(2, 2, 3), token_size=(3, 3, 3), other_tokens=((1, 1, 1), (6, 6, 9)))
    grid = _grid()
    tiles = global_tiles(grid, cfg, overlap=(1, 1))
    assert tiles.fields["s"].index.shape == (tiles.num_tiles, 1, 1, 1, 1, 6, 6, 9)
    np.testing.assert_array_equal(tiles.fields["s"].index, _brute_index(tiles, cfg.fields[1], grid))
    const = torch.ones(tiles.fields["s"].index.shape, dtype=torch.float64)
    out = TileBlender(torch.from_numpy(tiles.fields["s"].index), torch.from_numpy(tiles.fields["s"].weights),
                      tiles.fields["s"].num_points)(const)
    assert bool((out == 1).all())


def test_bad_settings_name_the_problem():
    grid, cfg = _grid(), _config()
    with pytest.raises(ConfigError, match="overlap along rows"):
        global_tiles(grid, cfg, overlap=(2, 1))
    with pytest.raises(ConfigError, match="overlap"):
        global_tiles(grid, cfg, overlap=(1,))
    with pytest.raises(ConfigError, match="neighbors"):
        global_tiles(grid, cfg, neighbors=10_000)
    with pytest.raises(ConfigError, match=r"time_tokens.*\[1, 2\]"):
        global_tiles(grid, cfg, time_tokens=3)
    mesh = Grid(kind="mesh", lat=np.zeros(5), lon=np.zeros(5), periodic_x=False, lat_descending=False)
    with pytest.raises(ConfigError, match="mesh"):
        global_tiles(mesh, cfg)
    assert nearest_tiles(np.zeros(3), np.array([0.0, 10.0, 20.0]), 0).shape == (3, 0)
