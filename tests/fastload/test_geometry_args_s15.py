"""Arguments of the placement and tiling functions (fastload.sampling.geometry, fastload._stream_place): a
``t_range`` outside the time axis, reversed or too short for a box is refused naming it and the valid range (it was
clamped silently); the other range arguments of both ``random_boxes`` likewise; ``stitch`` and the layout
functions take a list of equal-shape tiles (stacked) and refuse what is not an array of numbers naming the
argument. References: plain index arithmetic, the field the tiles were cut from, exact values."""

from __future__ import annotations

import os

import numpy as np
import pytest
import torch

from fastload.config import FieldConfig, SamplingConfig, StreamConfig
from fastload.errors import ConfigError
from fastload.sampling.geometry import (
    GridExtent,
    box_to_tokens,
    random_boxes,
    stitch,
    tile_grid,
    tokens_to_box,
)

pytestmark = pytest.mark.filterwarnings("ignore::fastload.streams.ChunkingWarning")  # tiny stores, one chunk

EXT = GridExtent(nt=40, ny=31, nx=60, periodic_x=True)
BOX = (6, 9, 12)  # with time_step 2 a box spans 11 time indices


# ------------------------------------------------------------------------------------------------------- t_range
def test_a_t_range_inside_the_axis_draws_only_windows_inside_it():
    b = random_boxes(500, EXT, BOX, seed=0, epoch=0, time_step=2, t_range=(10, 30))
    starts = set(b[:, 0].tolist())
    assert starts == set(range(10, 30 - 11 + 1))  # every start whose 11 indices lie in [10, 30), and no other
    whole = random_boxes(500, EXT, BOX, seed=0, epoch=0, time_step=2, t_range=(0, 40))
    np.testing.assert_array_equal(whole, random_boxes(500, EXT, BOX, seed=0, epoch=0, time_step=2))


@pytest.mark.parametrize("t_range, why", [
    ((-5, 30), "lies outside the time axis"),
    ((10, 41), "lies outside the time axis"),
    ((10, 1000), "lies outside the time axis"),
    ((30, 10), r"is reversed \(start > stop\)"),
    ((12, 12), "is empty"),
    ((10, 20), "holds 10 time steps, fewer than a box spans"),
])
def test_a_t_range_outside_reversed_or_too_short_is_refused_naming_it_and_the_valid_range(t_range, why):
    """(-5, 30) and (10, 1000) drew boxes before (clamped to [0, 40)), silently."""
    with pytest.raises(ValueError, match=r"random_boxes: t_range = \[" + f"{t_range[0]}, {t_range[1]}" + r"\] "
                       + why + r": expected .*0 <= start < stop <= 40 .* at least 11 apart"):
        random_boxes(5, EXT, BOX, seed=0, epoch=0, time_step=2, t_range=t_range)


@pytest.mark.parametrize("t_range", [(10.7, 30), (10,), (1, 2, 3), "ab", 5, (True, 30)])
def test_a_t_range_that_is_not_two_integers_is_refused(t_range):
    """(10.7, 30) was truncated to (10, 30); (10,) and "ab" failed with an unpacking or int() error naming nothing."""
    with pytest.raises(ConfigError, match=r"random_boxes: t_range = .*expected two integer store time indices"):
        random_boxes(5, EXT, BOX, seed=0, epoch=0, t_range=t_range)


def test_a_t_range_on_a_grid_without_time_is_refused():
    with pytest.raises(ConfigError, match=r"t_range = \(0, 1\) .* the grid has none"):
        random_boxes(5, GridExtent(nt=None, ny=31, nx=60), (1, 9, 12), seed=0, epoch=0, t_range=(0, 1))


def test_numpy_integers_are_a_valid_t_range():
    got = random_boxes(50, EXT, BOX, seed=3, epoch=1, t_range=np.array([4, 20]))
    np.testing.assert_array_equal(got, random_boxes(50, EXT, BOX, seed=3, epoch=1, t_range=(4, 20)))


# ------------------------------------------------------------------------------------ multi-stream random_boxes
@pytest.fixture(scope="module")
def two_streams(tmp_path_factory):
    import xarray as xr

    from fastload.streams import MultiStream

    d = tmp_path_factory.mktemp("two")
    t = np.datetime64("2000-01-01T00", "ns") + np.arange(12) * np.timedelta64(6, "h")
    lat, lon = np.linspace(90, -90, 19), np.arange(36) * 10.0
    for i, name in enumerate(("a", "b")):
        a = np.random.default_rng(i).standard_normal((12, 19, 36)).astype(np.float32)
        xr.Dataset({name: (("time", "latitude", "longitude"), a)},
                   coords={"time": t, "latitude": lat, "longitude": lon}).to_zarr(
            os.fspath(d / f"{name}.zarr"), mode="w", zarr_format=2, consolidated=False)
    fld = [FieldConfig(name=n, num_tokens=(1, 2, 2), token_size=(1, 2, 2), normalization="none", stream=n)
           for n in ("a", "b")]
    return MultiStream(SamplingConfig(streams=(StreamConfig(name="a", path=os.fspath(d / "a.zarr")),
                                               StreamConfig(name="b", path=os.fspath(d / "b.zarr"))),
                                      fields=tuple(fld)))


@pytest.mark.parametrize("key, value, bound", [
    ("samples_per_window", 2.7, ">= 1"),  # was int(2.7) = 2
    ("rank", 0.5, ">= 0"),  # drew an empty share
    ("world_size", 0, ">= 1"),
    ("world_size", 2.0, ">= 1"),
    ("seed", -1, ">= 0"),
    ("epoch", "1", ">= 0"),
    ("n", True, ">= 0"),
])
def test_multi_stream_random_boxes_refuses_bad_arguments_naming_them(two_streams, key, value, bound):
    kw = dict(seed=0, epoch=0, rank=0, world_size=1, samples_per_window=1)
    kw[key] = value
    n = kw.pop("n", 6)
    with pytest.raises(ConfigError, match=rf"random_boxes: {key} must be an integer {bound}, got {value!r}"):
        two_streams.random_boxes(n, **kw)


def test_multi_stream_random_boxes_still_split_by_rank(two_streams):
    full = two_streams.random_boxes(12, seed=1, epoch=2, samples_per_window=2)
    parts = [two_streams.random_boxes(12, seed=1, epoch=2, samples_per_window=2, rank=r, world_size=3)
             for r in range(3)]
    win = np.arange(12) // 2
    for r in range(3):
        np.testing.assert_array_equal(parts[r], full[win % 3 == r])
    assert full.shape == (12, 3)


# ------------------------------------------------------------------------------------------------------- stitch
def _tiled_field(periodic=True):
    """A field, a tiling of it with overlap, and its tiles cut by plain index arithmetic: stitched back, the tiles
    must give the field exactly (each blend step of equal values is exact)."""
    ext = GridExtent(nt=4, ny=20, nx=30, periodic_x=periodic)
    tiling = tile_grid(ext, (1, 3, 4), (1, 3, 3), overlap=(1, 1))
    field = np.random.default_rng(0).standard_normal((2, 20, 30))  # (lead, NY, NX)
    h, w = tiling.box[1], tiling.box[2]
    tiles = [field[:, y0:y0 + h][:, :, (x0 + np.arange(w)) % 30] for _, y0, x0 in tiling.boxes]
    return field, tiling, tiles


@pytest.mark.parametrize("periodic", [True, False])
def test_stitch_takes_a_list_of_tiles(periodic):
    """A list of tiles failed with AttributeError: 'list' object has no attribute 'shape'."""
    field, tiling, tiles = _tiled_field(periodic)
    assert isinstance(tiles, list) and len(tiles) == tiling.boxes.shape[0] > 1
    np.testing.assert_array_equal(stitch(tiles, tiling), field)
    np.testing.assert_array_equal(stitch(tuple(tiles), tiling), field)
    got = stitch([torch.as_tensor(t) for t in tiles], tiling)
    assert isinstance(got, torch.Tensor) and got.dtype == torch.float64
    np.testing.assert_array_equal(got.numpy(), field)
    # integer tiles blend as float64, exactly here (small integers)
    ints = [np.rint(t * 10).astype(np.int32) for t in tiles]
    np.testing.assert_array_equal(stitch(ints, tiling), np.rint(field * 10))


def test_stitch_refuses_tiles_that_are_not_equal_shape_real_arrays():
    _, tiling, tiles = _tiled_field()
    with pytest.raises(ConfigError, match=r"stitch: tiles holds arrays of different shapes \(tiles\[0\] \(2, 9, 12\), "
                                          r"tiles\[3\] \(2, 9, 11\)\)"):
        stitch(tiles[:3] + [tiles[3][..., :11]] + tiles[4:], tiling)
    with pytest.raises(TypeError, match="stitch: tiles mixes torch tensors and other values"):
        stitch([torch.as_tensor(tiles[0])] + tiles[1:], tiling)
    with pytest.raises(TypeError, match="stitch: tiles must be a NumPy array, a torch tensor or a list .* got float"):
        stitch(1.0, tiling)
    with pytest.raises(ConfigError, match="stitch: tiles is an empty list"):
        stitch([], tiling)
    stacked = np.stack(tiles)
    # complex lost its imaginary part (a ComplexWarning); strings of numbers were parsed silently
    for bad in (stacked.astype(np.complex128), stacked.astype(str), stacked.astype(object)):
        with pytest.raises(TypeError, match=rf"stitch: tiles must hold real numbers .* got dtype {bad.dtype}"):
            stitch(bad, tiling)
    with pytest.raises(TypeError, match="stitch: tiles must hold real numbers .* got dtype torch.complex64"):
        stitch(torch.zeros(stacked.shape, dtype=torch.complex64), tiling)
    with pytest.raises(ConfigError, match=rf"stitch: expected tiles of shape \({len(tiles)}, \.\.\., 9, 12\), got \(\)"):
        stitch(np.float64(1.0), tiling)  # was an IndexError
    with pytest.raises(TypeError, match="stitch: tiling must be the Tiling that tile_grid returned, got tuple"):
        stitch(stacked, (stacked.shape, 3))


# ------------------------------------------------------------------------------------------- token <-> box layout
def test_layouts_take_lists_and_match_index_arithmetic():
    rng = np.random.default_rng(1)
    tok = rng.standard_normal((2, 2, 3, 2, 2, 2, 3))  # (B, nt, nlat, nlon, tt, tlat, tlon)
    want = np.empty((2, 4, 6, 6))
    for b, t, y, x, a, c, d in np.ndindex(*tok.shape):
        want[b, t * 2 + a, y * 2 + c, x * 3 + d] = tok[b, t, y, x, a, c, d]
    np.testing.assert_array_equal(tokens_to_box(list(tok)), want)  # AttributeError on a list before
    np.testing.assert_array_equal(box_to_tokens(list(want), (2, 2, 3)), tok)
    np.testing.assert_array_equal(box_to_tokens([torch.as_tensor(v) for v in want], (2, 2, 3)).numpy(), tok)
    with pytest.raises(ConfigError, match=r"box_to_tokens: token_size must be 3 integers >= 1 .* got \(0, 2, 3\)"):
        box_to_tokens(want, (0, 2, 3))  # a ZeroDivisionError before
    with pytest.raises(ConfigError, match=r"box_to_tokens: expected at least 3 axes \(T, H, W\), got shape \(6, 6\)"):
        box_to_tokens(want[0, 0], (2, 2, 3))  # a ValueError from unpacking before
    with pytest.raises(TypeError, match="tokens_to_box: x must be a NumPy array"):
        tokens_to_box("tokens")
