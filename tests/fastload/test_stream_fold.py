"""A NEMO/ORCA-like tripolar ocean stream sampled at the north fold and across the halo seam: every physical point
is in a sample once; its copies (the fold rows and the east-west halo columns repeat points) are padding slots.

The store is built the way NEMO writes it (T-point, T-pivot fold, 0-based here): columns ``0`` and ``NX - 1`` are
halo copies of ``NX - 2`` and ``1``; the last row repeats row ``NY - 3`` mirrored (``(NY-1, i) = (NY-3, NX-i)``) and
the pivot row ``NY - 2`` repeats its own west half in its east half (``(NY-2, i) = (NY-2, NX-i)``, ``i > NX / 2``).
Coordinates and values of a copy are those of its original. The reference (which point each index is a copy of) is
taken from that construction, not from coordinates, and each sample's slots are checked by a Python loop. The
forecaster's global tiles (``RolloutLoader``, ``extract(..., mask_copies=False)``) keep the store's values at the
copies: they are checked against a plain zarr read.
"""

from __future__ import annotations

import dataclasses
import os

import numpy as np
import pytest
import torch
import zarr

import fastload.sampling._copies as copies
from fastload.config import FieldConfig, LoaderConfig, SamplingConfig, StreamConfig
from fastload.extract import extract
from fastload.loader import Loader
from fastload.rollout_data import RolloutConfig, RolloutLoader, extract_windows
from fastload.sampling._copies import first_occurrences, kept_slots, same_points
from fastload.sampling.tiles import global_tiles
from fastload.sampling.tokenizer import TokenMeta
from fastload.store import open_store
from fastload.streams import MultiStream, extract_streams

from .stores import _array, cf_hours
from .stores_multi import OCEAN_T0, make_atmosphere

NY, NX = 18, 38  # 16 rows south of the pivot row, 36 columns plus 2 halo columns


def orca_original() -> np.ndarray:
    """``(NY, NX, 2)``: the ``(y, x)`` of the point each grid index holds a copy of (itself for originals)."""
    src = np.stack(np.meshgrid(np.arange(NY), np.arange(NX), indexing="ij"), axis=-1)
    for i in range(NX // 2 + 1, NX - 1):  # pivot row: the east half repeats the west half
        src[NY - 2, i] = (NY - 2, NX - i)
    src[:, 0] = src[:, NX - 2]  # east-west halo
    src[:, NX - 1] = src[:, 1]
    for i in range(1, NX - 1):  # last row: row NY - 3, mirrored (its halo again after)
        src[NY - 1, i] = src[NY - 3, NX - i]
    src[NY - 1, 0], src[NY - 1, NX - 1] = src[NY - 1, NX - 2], src[NY - 1, 1]
    return src


def make_orca(path: str | os.PathLike[str], *, nt: int = 4, seed: int = 3) -> dict:
    """Daily ``thetao (time, depth, y, x)`` and ``zos (time, y, x)`` on the ORCA-like grid (NaN over a little land)."""
    rng = np.random.default_rng(seed)
    src = orca_original()
    jj, ii = np.meshgrid(np.arange(NY), np.arange(NX), indexing="ij")
    lat = np.where(jj < NY - 2, -75.0 + 10.0 * jj + 0.5 * np.sin(ii), 85.0)
    lon = ((ii - 1) * 10.0 + 5.0 + np.cos(jj)) % 360.0
    lat, lon = lat[src[..., 0], src[..., 1]], lon[src[..., 0], src[..., 1]]
    dep = np.array([5.0, 50.0])
    time = OCEAN_T0 + np.arange(nt) * np.timedelta64(1, "D")
    thetao = rng.standard_normal((nt, dep.size, NY, NX)).astype(np.float32)
    zos = rng.standard_normal((nt, NY, NX)).astype(np.float32)
    thetao[:, :, 5:7, 10:12] = np.nan  # land
    zos[:, 5:7, 10:12] = np.nan
    thetao, zos = thetao[..., src[..., 0], src[..., 1]], zos[..., src[..., 0], src[..., 1]]  # copies hold copies
    root = zarr.open_group(os.fspath(path), mode="w", zarr_format=2)
    kw = dict(zarr_format=2, codec="zstd")
    _array(root, "thetao", thetao, ("time", "depth", "y", "x"), chunks=(2, 1, 9, 19), **kw)
    _array(root, "zos", zos, ("time", "y", "x"), chunks=(2, 9, 19), **kw)
    hours, tattrs = cf_hours(time)
    _array(root, "time", hours, ("time",), chunks=(nt,), attrs=tattrs, fill_value=0, **kw)
    _array(root, "depth", dep, ("depth",), chunks=(dep.size,), attrs={"units": "m", "positive": "down"}, **kw)
    _array(root, "latitude", lat, ("y", "x"), chunks=(NY, NX), **kw)
    _array(root, "longitude", lon, ("y", "x"), chunks=(NY, NX), attrs={"periodic_x": True}, **kw)
    return {"thetao": thetao, "zos": zos, "time": time, "latitude": lat, "longitude": lon}


def config(paths) -> SamplingConfig:
    return SamplingConfig(
        streams=(StreamConfig(name="era5", path=str(paths["era5"])),
                 StreamConfig(name="orca", path=str(paths["orca"]), time_rule="previous")),
        fields=(FieldConfig(name="sp", num_tokens=(1, 2, 2), token_size=(6, 3, 4), normalization="none",
                            stream="era5"),
                FieldConfig(name="thetao", levels=(5.0, 50.0), num_tokens=(2, 2, 2), token_size=(3, 3, 4),
                            normalization="none", stream="orca"),
                FieldConfig(name="zos", num_tokens=(2, 1, 1), token_size=(3, 6, 8), normalization="none",
                            stream="orca")),
        time_step=2)


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    d = tmp_path_factory.mktemp("orca")
    paths = {"era5": d / "a.zarr", "orca": d / "o.zarr"}
    make_atmosphere(paths["era5"])
    return paths, make_orca(paths["orca"]), MultiStream(config(paths))


# Reference boxes (t0, y0, x0) on the 10-degree atmosphere: centres near 62 N put the ocean box on rows 12 .. 17
# (the fold rows included); x0 = 15 centres it on the pivot column, x0 = 31 and 0 put it across the halo seam;
# (20, 10, 5) is well south of the fold, where no point repeats.
BOXES = np.array([[0, 0, 15], [10, 0, 31], [20, 1, 0], [30, 1, 17], [20, 10, 5]])


def reference_slots(y0: int, x0: int, f) -> tuple[np.ndarray, np.ndarray]:
    """``(valid, points)`` ``(nlat, nlon, K)`` of one box at ``(y0, x0)``: each place once, in its first slot."""
    src = orca_original()
    flat_src = src[..., 0] * NX + src[..., 1]  # (NY, NX): flat index of each index's original
    _, nlat, nlon = f.num_tokens
    _, tlat, tlon = f.token_size
    seen: set[int] = set()
    valid = np.zeros((nlat, nlon, tlat * tlon), bool)
    points = np.full((nlat, nlon, tlat * tlon), -1, np.int64)
    for b in range(nlat):  # slot order: token (b, c), then row j, column k inside it
        for c in range(nlon):
            for j in range(tlat):
                for k in range(tlon):
                    y, x = y0 + b * tlat + j, (x0 + c * tlon + k) % NX
                    orig = int(flat_src[y, x])
                    if orig not in seen:
                        seen.add(orig)
                        valid[b, c, j * tlon + k] = True
                        points[b, c, j * tlon + k] = y * NX + x
    return valid, points


def reference_values(a: np.ndarray, t: np.ndarray, f, valid: np.ndarray, points: np.ndarray) -> np.ndarray:
    """``(L, nt, nlat, nlon, tt, K)``: the store's values at the kept points and time steps ``t``, 0 in padding."""
    nt, nlat, nlon = f.num_tokens
    tt = f.token_size[0]
    v = a[t] if a.ndim == 3 else a[t].transpose(1, 0, 2, 3)  # ([L,] T, NY, NX)
    v = v.reshape(-1, len(t), NY * NX)[:, :, np.maximum(points, 0)]  # (L, T, nlat, nlon, K)
    v = v.reshape(v.shape[0], nt, tt, nlat, nlon, -1).transpose(0, 1, 3, 4, 2, 5)
    return np.where(valid[:, :, None], v, 0)


def test_fold_and_halo_copies_are_padding_and_every_point_is_there_once(world):
    paths, truth, ms = world
    out = extract_streams(ms, BOXES)
    for name in ("thetao", "zos"):
        f, m, data = ms.config.field(name), out[name].meta, out[name].data
        nt, nlat, nlon = f.num_tokens
        with_copies = 0
        for s in range(BOXES.shape[0]):
            y0, x0 = ms.place(BOXES[s:s + 1]).where["orca"][0]
            valid, points = reference_slots(int(y0), int(x0), f)
            assert np.array_equal(m.valid[s], valid), (name, s)
            assert np.array_equal(m.points[s], points), (name, s)
            assert np.array_equal(m.count[s], valid.sum(axis=-1)), (name, s)
            got = np.asarray(data[s]).reshape(-1, nt, nlat, nlon, f.token_size[0], valid.shape[-1])
            np.testing.assert_array_equal(got, reference_values(truth[name], m.t_steps[s], f, valid, points),
                                          err_msg=f"{name} sample {s}")
            with_copies += int((~valid).any())
            if s == BOXES.shape[0] - 1:
                assert valid.all(), "south of the fold no point repeats"
        assert with_copies >= 3, "the fold and seam boxes must hold copies (else this test tests nothing)"


# Single-store boxes (t0, y0, x0) on the ORCA grid itself: on the fold at the pivot, across the seam at the fold,
# across the seam further south, and one box with no copies.
STORE_BOXES = np.array([[0, 12, 15], [1, 12, 34], [0, 3, 35], [1, 4, 10]])


@pytest.mark.parametrize("jit", [True, False])
def test_one_curvilinear_store_keeps_each_place_once_too(world, jit):
    paths, truth, _ = world
    store = open_store(str(paths["orca"]))
    cfg = SamplingConfig(fields=(FieldConfig(name="thetao", levels=(5.0, 50.0), num_tokens=(2, 2, 2),
                                             token_size=(1, 3, 4), normalization="none"),
                                 FieldConfig(name="zos", num_tokens=(1, 1, 1), token_size=(2, 6, 8),
                                             normalization="none")))
    out = extract(store, cfg, STORE_BOXES, jit=jit)
    for name in ("thetao", "zos"):
        f, m = cfg.field(name), out[name].meta
        nt, nlat, nlon = f.num_tokens
        for s, (t0, y0, x0) in enumerate(STORE_BOXES.tolist()):
            valid, points = reference_slots(y0, x0, f)
            assert np.array_equal(m.valid[s], valid), (name, s)
            got = np.asarray(out[name].data[s]).reshape(-1, nt, nlat, nlon, f.token_size[0], valid.shape[-1])
            t = t0 + np.arange(nt * f.token_size[0])
            np.testing.assert_array_equal(got, reference_values(truth[name], t, f, valid, points),
                                          err_msg=f"{name} sample {s}")
        assert not m.valid[:3].all() and m.valid[3].all()
    torch_meta = out["zos"].meta.to_torch()
    assert torch_meta["valid"].dtype == torch.bool and torch_meta["valid"].shape == (4, 1, 1, 48)


def test_the_loader_hands_the_mask_to_the_model(world):
    from model.multiformer import padding_masks

    paths, truth, _ = world
    cfg = SamplingConfig(fields=(FieldConfig(name="zos", num_tokens=(1, 2, 2), token_size=(2, 3, 4),
                                             normalization="none"),), batch_size=4, out_dtype="bfloat16")
    with Loader(str(paths["orca"]), cfg, LoaderConfig(workers=1), boxes=STORE_BOXES) as loader:
        batch = next(iter(loader))
    f = cfg.field("zos")
    for s, (t0, y0, x0) in enumerate(batch.boxes.tolist()):
        valid, points = reference_slots(y0, x0, f)
        assert np.array_equal(batch.meta["zos"]["valid"][s].numpy(), valid)
        got = batch["zos"][s].float().numpy().reshape(1, 1, 2, 2, 2, -1)
        want = reference_values(truth["zos"], t0 + np.arange(2), f, valid, points)
        np.testing.assert_allclose(got, want.astype(np.float32), rtol=1e-2, atol=1e-2)  # bfloat16
        assert np.all(got[np.broadcast_to(~valid[:, :, None], got.shape)] == 0)  # padding: exactly 0
    masks = padding_masks(batch["zos"].float(), batch.meta["zos"]["valid"])
    assert not masks["valid_values"].all() and masks["valid"].any()


def test_a_grid_without_copies_is_left_alone(tmp_path):
    from .stores_multi import make_ocean

    truth = make_ocean(tmp_path / "o.zarr")
    assert same_points(truth["latitude"], truth["longitude"]) is None
    store = open_store(str(tmp_path / "o.zarr"))
    cfg = SamplingConfig(fields=(FieldConfig(name="zos", num_tokens=(1, 1, 1), token_size=(1, 3, 4),
                                             normalization="none"),))
    boxes = np.array([[0, 0, 0], [1, 2, 3]])
    out = extract(store, cfg, boxes)["zos"]
    assert type(out.meta) is TokenMeta and "valid" not in out.meta.to_torch()  # no valid key, as DESIGN says
    for s, (t0, y0, x0) in enumerate(boxes.tolist()):  # every slot is the store's value
        np.testing.assert_array_equal(out.data[s].reshape(3, 4), truth["zos"][t0, y0:y0 + 3, x0:x0 + 4])


def test_same_points_and_first_occurrences_match_a_brute_force_scan(world):
    _, truth, _ = world
    canon = same_points(truth["latitude"], truth["longitude"])
    src = orca_original()
    orig = (src[..., 0] * NX + src[..., 1]).ravel()
    classes = np.unique(np.stack([canon, orig], axis=1), axis=0).shape[0]
    assert classes == np.unique(canon).size == np.unique(orig).size < NY * NX, "the copies, and only they, found"
    assert np.all(canon <= np.arange(NY * NX)) and np.all(canon[canon] == canon), "the first in store order"
    g = open_store(str(world[0]["orca"])).grid
    assert np.array_equal(same_points(g.lat, g.lon), canon)
    rng = np.random.default_rng(0)
    ids = rng.integers(0, 6, size=(50, 9))
    want = np.array([[v not in row[:k] for k, v in enumerate(row)] for row in ids.tolist()])
    assert np.array_equal(first_occurrences(ids), want)
    assert first_occurrences(np.zeros((3, 0), np.int64)).shape == (3, 0)
    assert first_occurrences(np.zeros((0, 4), np.int64)).shape == (0, 4)
    for shape in ((0, 2, 2, 12), (0, 5), (2, 0)):  # no samples, or samples without slots
        assert kept_slots(canon, np.zeros(shape, np.int64)).shape == shape
    flat = rng.integers(0, NY * NX, size=(7, 2, 3, 4))
    want = first_occurrences(canon[flat].reshape(7, -1)).reshape(flat.shape)
    assert np.array_equal(kept_slots(canon, flat), want)


def test_no_boxes_give_empty_samples(world):
    store = open_store(str(world[0]["orca"]))
    cfg = SamplingConfig(fields=(FieldConfig(name="zos", num_tokens=(1, 2, 2), token_size=(2, 3, 4),
                                             normalization="none"),))
    out = extract(store, cfg, np.zeros((0, 3), np.int64))["zos"]
    assert out.data.shape == (0, 1, 1, 2, 2, 2, 3, 4)
    assert out.meta.valid.shape == (0, 2, 2, 12) and out.meta.lat.shape == (0, 2, 2)


def _store_values(path, name: str, t0: int, n: int) -> np.ndarray:
    """``(L, n, NY, NX)`` of a field at store times ``t0 .. t0 + n - 1``, read by zarr-python (L = 1 at the surface)."""
    x = np.asarray(zarr.open_array(os.fspath(path) + "/" + name, mode="r")[t0:t0 + n])
    return x.transpose(1, 0, 2, 3) if x.ndim == 4 else x[None]


def _rollout_sampling() -> SamplingConfig:
    return SamplingConfig(fields=(FieldConfig(name="thetao", levels=(5.0, 50.0), num_tokens=(1, 2, 2),
                                              token_size=(1, 3, 4), normalization="none"),
                                  FieldConfig(name="zos", num_tokens=(1, 2, 2), token_size=(1, 3, 4),
                                              normalization="none")))


def test_forecaster_tiles_hold_the_store_values_at_the_copies(world):
    """Global tiles cover the fold rows and halo columns; the Forecaster has no slot mask, so every tile value,
    copies included, must be the store's own value (no zeros injected), inputs and targets alike."""
    paths, _, _ = world
    path, cfg = paths["orca"], _rollout_sampling()
    store = open_store(str(path))
    tiles = global_tiles(store, cfg, overlap=(1, 1), neighbors=2)
    src = orca_original()
    copy_points = np.flatnonzero((src[..., 0] * NX + src[..., 1]).ravel() != np.arange(NY * NX))
    assert np.isin(tiles.fields["zos"].index % (NY * NX), copy_points).sum() > 20, "tiles must reach the copies"

    fields, meta, boxes = extract_windows(store, cfg, tiles, np.array([0, 2]), input_window=2, lead=1)
    for name in ("thetao", "zos"):
        assert "valid" not in meta[name]
        for b, t0 in enumerate((0, 2)):
            for w in range(2):
                want = _store_values(path, name, t0 + w, 1).reshape(-1)[tiles.fields[name].index]
                np.testing.assert_array_equal(fields[name][b, w].numpy(), want, err_msg=f"{name} {t0} {w}")
    masked = extract(store, cfg, boxes.reshape(-1, 3))["zos"].data  # the Multiformer's view: copies are 0
    assert (masked == 0).sum() > 0 and not (fields["zos"].numpy() == 0).any()

    roll = RolloutConfig(steps=2, lead=1, input_window=1, batch_size=2, overlap=(1, 1), neighbors=2)
    with RolloutLoader(str(path), cfg, roll, LoaderConfig(workers=1, seed=1)) as data:
        batch = next(iter(data))
    for b, t0 in enumerate(batch.t0.tolist()):
        for name in ("thetao", "zos"):
            index = data.tiles.fields[name].index
            want = _store_values(path, name, t0, 1).reshape(-1)[index]
            np.testing.assert_array_equal(batch.fields[name][b, 0].numpy(), want, err_msg=f"{name} input {t0}")
            for k in range(2):
                want = _store_values(path, name, t0 + 1 + k, 1).reshape(-1)[index]
                np.testing.assert_array_equal(batch.targets[k][name][b].numpy(), want, err_msg=f"{name} step {k}")


def test_the_copies_are_found_once_per_grid(world, monkeypatch):
    paths, truth, _ = world
    calls = []

    def counting(*args, **kwargs):
        calls.append(1)
        return same_points(*args, **kwargs)

    monkeypatch.setattr(copies, "same_points", counting)
    store = open_store(str(paths["orca"]))
    cfg = _rollout_sampling()
    for boxes in (STORE_BOXES[:1], STORE_BOXES, STORE_BOXES[2:]):  # extract builds a new tokenizer every call
        assert not extract(store, cfg, boxes)["zos"].meta.valid.all()
    assert len(calls) == 1
    with Loader(store, dataclasses.replace(cfg, batch_size=2), LoaderConfig(workers=1), boxes=STORE_BOXES) as loader:
        assert not next(iter(loader)).meta["zos"]["valid"].all()
    assert len(calls) == 1, "the same grid: no second scan"
    assert np.array_equal(copies.grid_copies(store.grid), same_points(truth["latitude"], truth["longitude"]))
    other = open_store(str(paths["orca"]))  # another opened store: its own grid, found once more
    extract(other, cfg, STORE_BOXES)
    extract(other, cfg, STORE_BOXES, mask_copies=False)
    assert len(calls) == 2
    plain = extract(open_store(str(paths["orca"])), cfg, STORE_BOXES, mask_copies=False)
    assert len(calls) == 2, "mask_copies=False does not look for copies"
    assert type(plain["zos"].meta) is TokenMeta
