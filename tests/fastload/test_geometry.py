"""Placement, box validation, chunk planning, global tiling and stitching (fastload.sampling.geometry/chunks)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from fastload.errors import ConfigError
from fastload.sampling.chunks import FieldLayout, plan_batch
from fastload.sampling.geometry import (
    GridExtent,
    box_to_tokens,
    check_boxes,
    random_boxes,
    stitch,
    tile_grid,
    tokens_to_box,
)

GLOBAL = GridExtent(nt=40, ny=31, nx=60, periodic_x=True)
REGIONAL = GridExtent(nt=40, ny=31, nx=60, periodic_x=False)
BOX = (6, 9, 12)


# ------------------------------------------------------------------------------------------------- validation
def test_box_bigger_than_grid_names_the_numbers():
    with pytest.raises(ConfigError, match="12 rows .* only 10"):
        GridExtent(nt=5, ny=10, nx=20).max_start((1, 12, 4))
    with pytest.raises(ConfigError, match="spans 9 time steps .* only 5"):
        GridExtent(nt=5, ny=10, nx=20).max_start((3, 2, 2), time_step=4)
    with pytest.raises(ConfigError, match="24 columns .* only 20"):
        GridExtent(nt=5, ny=10, nx=20, periodic_x=True).max_start((1, 2, 24))


def test_check_boxes_rejects_out_of_range_and_bad_shapes():
    ok = check_boxes([[0, 0, 59], [34, 22, 0]], GLOBAL, BOX)
    assert ok.dtype == np.int64 and ok.flags.c_contiguous
    with pytest.raises(ConfigError, match=r"boxes\[1\]: x0 = 49 is outside \[0, 48\]"):
        check_boxes([[0, 0, 0], [0, 0, 49]], REGIONAL, BOX)
    with pytest.raises(ConfigError, match=r"t0 = 35 is outside \[0, 34\]"):
        check_boxes([[35, 0, 0]], GLOBAL, BOX)
    with pytest.raises(ConfigError, match=r"y0 = -1"):
        check_boxes([[0, -1, 0]], GLOBAL, BOX)
    with pytest.raises(ConfigError, match="shape"):
        check_boxes([[0, 0]], GLOBAL, BOX)
    with pytest.raises(ConfigError, match="integer"):
        check_boxes([[0.5, 0, 0]], GLOBAL, BOX)


# ------------------------------------------------------------------------------------------------ placement
@settings(max_examples=30, deadline=None)
@given(seed=st.integers(0, 2**31), epoch=st.integers(0, 50), world=st.integers(1, 5), spw=st.integers(1, 4),
       periodic=st.booleans(), coslat=st.booleans(), n=st.integers(0, 60), dt=st.integers(1, 3))
def test_random_boxes_in_bounds_deterministic_and_ranks_partition_the_epoch(seed, epoch, world, spw, periodic, coslat,
                                                                             n, dt):
    ext = GLOBAL if periodic else REGIONAL
    lat = np.linspace(90, -90, ext.ny)
    kw = dict(seed=seed, epoch=epoch, time_step=dt, samples_per_window=spw, centers="coslat" if coslat else "uniform",
              lat=lat)
    full = random_boxes(n, ext, BOX, **kw)
    assert full.shape == (n, 3)
    check_boxes(full, ext, BOX, dt)  # in bounds
    assert np.array_equal(full, random_boxes(n, ext, BOX, **kw))  # deterministic
    win = np.arange(n) // spw
    assert all(len(set(full[win == w, 0])) == 1 for w in np.unique(win))  # a window shares t0
    parts = [random_boxes(n, ext, BOX, rank=r, world_size=world, **kw) for r in range(world)]
    # rank r holds exactly the windows r, r + world, ...: disjoint, and together the whole epoch
    for r in range(world):
        assert np.array_equal(parts[r], full[win % world == r])
    assert sum(p.shape[0] for p in parts) == n
    counts = [p.shape[0] for p in parts]
    assert max(counts) - min(counts) <= spw


def test_epochs_and_seeds_differ():
    a = random_boxes(50, GLOBAL, BOX, seed=1, epoch=0)
    assert not np.array_equal(a, random_boxes(50, GLOBAL, BOX, seed=1, epoch=1))
    assert not np.array_equal(a, random_boxes(50, GLOBAL, BOX, seed=2, epoch=0))


def test_t_range_restricts_windows():
    b = random_boxes(200, GLOBAL, BOX, seed=0, epoch=0, time_step=2, t_range=(10, 30))
    assert b[:, 0].min() >= 10 and (b[:, 0] + (BOX[0] - 1) * 2).max() < 30
    with pytest.raises(ConfigError, match="t_range"):
        random_boxes(5, GLOBAL, BOX, seed=0, epoch=0, t_range=(10, 12))


def test_coslat_prefers_low_latitudes_and_uniform_does_not():
    ext = GridExtent(nt=10, ny=181, nx=360, periodic_x=True)
    lat = np.linspace(90, -90, 181)
    box = (1, 9, 9)
    centre = lambda b: np.abs(lat[b[:, 1] + 4])  # noqa: E731
    uni = random_boxes(20000, ext, box, seed=0, epoch=0)
    cos = random_boxes(20000, ext, box, seed=0, epoch=0, centers="coslat", lat=lat)
    assert abs(centre(uni).mean() - 43.0) < 2.0  # uniform over |lat| <= 86: mean about 43
    assert abs(centre(cos).mean() - 32.7) < 2.0  # cos-weighted: mean |lat| = 90 - 180/pi ... about 32.7
    with pytest.raises(ConfigError, match="needs the grid's latitudes"):
        random_boxes(5, ext, box, seed=0, epoch=0, centers="coslat")


def test_coslat_on_curvilinear_grid():
    ext = GridExtent(nt=4, ny=40, nx=30, periodic_x=True)
    lat2 = np.linspace(-85, 85, 40)[:, None] + np.zeros((1, 30))
    b = random_boxes(3000, ext, (1, 4, 4), seed=3, epoch=0, centers="coslat", lat=lat2)
    check_boxes(b, ext, (1, 4, 4))
    assert np.abs(lat2[b[:, 1] + 2, 0]).mean() < 40.0


# --------------------------------------------------------------------------------------------- chunk planning
def test_plan_lists_exactly_the_chunks_each_box_touches():
    lay = FieldLayout(name="a", array="arr", shape=(20, 3, 16, 24), chunks=(2, 2, 5, 7), axes=(0, None, 1, 2, 3),
                      lev_idx=[2, 0], periodic_x=True)
    boxes = np.array([[0, 0, 20], [11, 7, 3], [2, 11, 23]])
    box, dt = (3, 5, 9), 3
    plan = plan_batch(boxes, [lay], box, dt)
    want = set()
    for t0, y0, x0 in boxes:
        for t in t0 + np.arange(box[0]) * dt:
            for lev in (2, 0):
                for y in range(y0, y0 + box[1]):
                    for x in (x0 + np.arange(box[2])) % 24:
                        want.add((t // 2, lev // 2, y // 5, x // 7))
    got = [tuple(c) for c in plan.chunks["arr"].tolist()]
    assert got == sorted(want)
    # every needed table entry points at the right chunk; unneeded ones are -1
    table = plan.tables["a"]
    assert table.dtype == np.int32
    t0, y0, x0 = boxes[0]
    first = (t0 // 2, y0 // 5, x0 // 7)
    for it in range(table.shape[2]):
        for iy in range(table.shape[3]):
            for ix in range(table.shape[4]):
                u = table[0, 0, it, iy, ix]
                if u >= 0:
                    assert tuple(plan.chunks["arr"][u]) == (first[0] + it, 1, first[1] + iy, (first[2] + ix) % 4)
    # time chunks skipped by a time_step longer than the chunk stay -1 (box 0 reads t = 0, 3, 6: chunks 0, 1, 3)
    assert (table[0, :, 2] == -1).all() and (table[0, :, 3, 0] >= 0).all()


def test_plan_shares_chunks_of_fields_in_one_array():
    mk = lambda name, fi: FieldLayout(name=name, array="data", shape=(8, 2, 3, 10, 12), chunks=(2, 2, 3, 5, 6),  # noqa: E731
                                      axes=(0, 1, 2, 3, 4), field_index=fi, lev_idx=[0, 2])
    plan = plan_batch([[0, 0, 0], [2, 5, 6]], [mk("u", 0), mk("v", 1)], (2, 5, 6))
    assert plan.chunks["data"].shape[0] == 2  # both fields live in the same two chunks
    assert np.array_equal(plan.tables["u"], plan.tables["v"])
    slots = plan.slot_tables({"data": np.array([7, 3])})
    assert set(np.unique(slots["u"])) == {3, 7}


# ------------------------------------------------------------------------------------------ tiling, stitching
@pytest.mark.parametrize("ext", [GLOBAL, REGIONAL, GridExtent(nt=8, ny=27, nx=36, periodic_x=False)])
@pytest.mark.parametrize("overlap", [(0, 0), (1, 1), (2, 3)])
def test_tiles_cover_the_grid_with_at_least_the_overlap(ext, overlap):
    nt, tok = (1, 3, 4), (1, 3, 3)
    til = tile_grid(ext, nt, tok, overlap=overlap, t0=5)
    h, w = til.box[1], til.box[2]
    cover = np.zeros((ext.ny, ext.nx), int)
    for _, y0, x0 in til.boxes:
        cover[y0:y0 + h, (x0 + np.arange(w)) % ext.nx] += 1
    assert (cover >= 1).all()
    check_boxes(til.boxes, ext, til.box)
    assert (til.boxes[:, 0] == 5).all()
    ys, xs = np.unique(til.boxes[:, 1]), np.unique(til.boxes[:, 2])
    assert ys[0] == 0 and ys[-1] == ext.ny - h  # clamped at the edges
    assert (np.diff(ys) <= h - overlap[0] * tok[1]).all()
    step_x = np.diff(np.concatenate([xs, [xs[0] + ext.nx]])) if ext.periodic_x else np.diff(xs)
    assert (step_x <= w - overlap[1] * tok[2]).all()
    if not ext.periodic_x:
        assert xs[-1] == ext.nx - w


def test_tile_grid_errors():
    with pytest.raises(ConfigError, match="overlap"):
        tile_grid(GLOBAL, (1, 3, 4), (1, 3, 3), overlap=(3, 0))
    with pytest.raises(ConfigError, match="rows"):
        tile_grid(GridExtent(nt=2, ny=5, nx=40), (1, 3, 4), (1, 3, 3))


LAT = np.linspace(90, -90, GLOBAL.ny)
_LAT2 = np.repeat(LAT[:, None], GLOBAL.nx, axis=1)
_LAT2[4, 7] = 95.0


@pytest.mark.parametrize("call,match", [
    (lambda: random_boxes(4, GLOBAL, BOX, seed=0, epoch=0, rank=0.5, world_size=2),
     r"^random_boxes: rank must be an integer >= 0, got 0\.5$"),
    (lambda: random_boxes(4, GLOBAL, BOX, seed=0, epoch=0, time_step=0),
     r"^random_boxes: time_step must be an integer >= 1, got 0$"),
    (lambda: random_boxes(4, GLOBAL, BOX, seed=0, epoch=0, centers="coslat",
                          lat=np.where(np.arange(31) == 3, np.nan, LAT)),
     r"^coslat: lat must be finite latitudes in degrees within \[-90, 90\]; got nan at index \[3\] \(1 val"),
    (lambda: random_boxes(4, GLOBAL, BOX, seed=0, epoch=0, centers="coslat", lat=2 * LAT),
     r"^coslat: lat must be .* degrees within \[-90, 90\]; got 180\.0 at index \[0\] \(16 value"),
    (lambda: random_boxes(4, GLOBAL, BOX, seed=0, epoch=0, centers="coslat", lat=_LAT2),
     r"^coslat: lat must be .* degrees within \[-90, 90\]; got 95\.0 at index \[4, 7\] \(1 value"),
    (lambda: tile_grid(GLOBAL, (1, 3, 4), (1, 3, 3), time_step=0),
     r"^tile_grid: time_step must be an integer >= 1, got 0$"),
    (lambda: tile_grid(GLOBAL, (1, 3, 4), (1, 3, 3), overlap=(1,)),
     r"^tile_grid: overlap must be 2 integers \(rows, columns, in tokens\), got \(1,\)$"),
    (lambda: tile_grid(GLOBAL, (1, 3, 4), (1, -3, 3)),
     r"^tile_grid: token_size must be 3 integers >= 1 \(time, lat, lon\), got \(1, -3, 3\)$"),
    (lambda: tile_grid(GLOBAL, (1, 3.5, 4), (1, 3, 3)),
     r"^tile_grid: num_tokens must be 3 integers \(time, lat, lon\), got \(1, 3\.5, 4\)$"),
    (lambda: tile_grid(GLOBAL, (1, 3, 4), (1, 3, 3), t0="1"),
     r"^tile_grid: t0 must be an integer >= 0, got '1'$"),
    (lambda: check_boxes(np.array([[0, 0, 2**63 + 5]], np.uint64), GLOBAL, BOX),
     r"^boxes\[0\]: x0 = 9223372036854775813 is outside \[0, 59\]"),
    (lambda: check_boxes([[0, 0, 0]], GLOBAL, BOX, time_step=0),
     r"^sample box: time_step must be an integer >= 1, got 0$"),
    (lambda: GLOBAL.max_start((1, 0, 4)), r"^sample box: box must be 3 integers >= 1 .*, got \(1, 0, 4\)$"),
], ids=["rank-float", "random-time_step-0", "coslat-nan", "coslat-over-90", "coslat-2d-over-90",
        "tile-time_step-0", "tile-overlap-short", "tile-token-negative", "tile-tokens-float", "tile-t0-str",
        "boxes-uint64-huge", "boxes-time_step-0", "box-zero-rows"])
def test_bad_arguments_are_config_errors_naming_argument_value_and_expectation(call, match):
    with pytest.raises(ConfigError, match=match):
        call()


def test_integer_arguments_of_numpy_types_still_work():
    a = random_boxes(9, GLOBAL, BOX, seed=0, epoch=0, rank=np.int64(1), world_size=2, time_step=np.int32(2))
    assert np.array_equal(a, random_boxes(9, GLOBAL, BOX, seed=0, epoch=0, rank=1, world_size=2, time_step=2))
    t = tile_grid(GLOBAL, np.array([1, 3, 4]), [1, 3, 3], overlap=np.array([1, 1]), t0=np.int64(2))
    assert np.array_equal(t.boxes, tile_grid(GLOBAL, (1, 3, 4), (1, 3, 3), overlap=(1, 1), t0=2).boxes)
    assert check_boxes(np.array([[1, 2, 59]], np.uint64), GLOBAL, BOX).tolist() == [[1, 2, 59]]


def test_coslat_takes_the_latitudes_open_store_takes():
    """open_store accepts latitudes up to 1e-9 beyond the poles (rounding in a stored coordinate); so does coslat
    placement (review rv2: it refused 90.0000000005), with the same boxes as the rounded grid."""
    lat = LAT.copy()
    lat[0], lat[-1] = 90 + 5e-10, -90 - 5e-10
    kw = dict(seed=0, epoch=0, centers="coslat")
    assert np.array_equal(random_boxes(50, GLOBAL, BOX, lat=lat, **kw), random_boxes(50, GLOBAL, BOX, lat=LAT, **kw))


@pytest.mark.parametrize("ext", [GLOBAL, REGIONAL])
def test_stitch_round_trips_a_constant_field_exactly(ext):
    til = tile_grid(ext, (1, 3, 4), (1, 3, 3), overlap=(1, 2))
    n = til.boxes.shape[0]
    c = np.float32(273.15000915527344)
    tiles = np.full((n, 2, *til.box[1:]), c, np.float32)
    out = stitch(tiles, til)
    assert out.shape == (2, ext.ny, ext.nx) and out.dtype == np.float32
    assert (out == c).all()
    tt = stitch(torch.from_numpy(tiles), til)
    assert isinstance(tt, torch.Tensor) and bool((tt == c).all())


def test_stitch_recovers_a_field_its_tiles_agree_on():
    ext = GLOBAL
    til = tile_grid(ext, (1, 3, 4), (1, 3, 3), overlap=(1, 1))
    yy, xx = np.meshgrid(np.arange(ext.ny), np.arange(ext.nx), indexing="ij")
    field = np.sin(yy / 7.0) + np.cos(2 * np.pi * xx / ext.nx)
    tiles = np.stack([field[y0:y0 + 9][:, (x0 + np.arange(12)) % ext.nx] for _, y0, x0 in til.boxes])
    np.testing.assert_allclose(stitch(tiles, til), field, atol=1e-12)


def test_taper_leaves_no_jump_at_tile_edges():
    ext = GridExtent(nt=1, ny=45, nx=90, periodic_x=True)
    til = tile_grid(ext, (1, 3, 5), (1, 9, 6), overlap=(1, 2))
    yy, xx = np.meshgrid(np.arange(ext.ny), np.arange(ext.nx), indexing="ij")
    field = np.sin(yy / 9.0) * np.cos(2 * np.pi * xx / ext.nx)
    rng = np.random.default_rng(0)
    bias = rng.uniform(-0.5, 0.5, til.boxes.shape[0])  # tiles disagree: each has its own offset
    tiles = np.stack([field[y0:y0 + 27][:, (x0 + np.arange(30)) % ext.nx] + b
                      for (_, y0, x0), b in zip(til.boxes, bias)])
    out = stitch(tiles, til)
    grad = max(np.abs(np.diff(field, axis=0)).max(), np.abs(np.diff(field, axis=1)).max())
    jump = max(np.abs(np.diff(out, axis=0)).max(), np.abs(np.diff(np.concatenate([out, out[:, :1]], 1), axis=1)).max())
    assert jump < grad + 0.2  # bias steps of up to 1.0 spread over 9-point ramps
    # without overlap the same tiles meet with a visible step
    hard = tile_grid(ext, (1, 3, 5), (1, 9, 6), overlap=(0, 0))
    tiles0 = np.stack([field[y0:y0 + 27][:, (x0 + np.arange(30)) % ext.nx] + b
                       for (_, y0, x0), b in zip(hard.boxes, bias)])
    out0 = stitch(tiles0, hard)
    jump0 = max(np.abs(np.diff(out0, axis=0)).max(), np.abs(np.diff(out0, axis=1)).max())
    assert jump0 > grad + 0.2


def test_tokens_box_round_trip_numpy_and_torch():
    x = np.arange(2 * 3 * 2 * 4 * 3 * 2 * 5, dtype=np.float32).reshape(2, 3 * 2, 4 * 3, 2 * 5)  # (L, T, H, W)
    tok = box_to_tokens(x, (2, 3, 5))
    assert tok.shape == (2, 3, 4, 2, 2, 3, 5)
    assert tok[1, 2, 3, 1, 1, 0, 2] == x[1, 2 * 2 + 1, 3 * 3 + 0, 1 * 5 + 2]
    assert np.array_equal(tokens_to_box(tok), x)
    xt = torch.from_numpy(x)
    assert torch.equal(tokens_to_box(box_to_tokens(xt, (2, 3, 5))), xt)
