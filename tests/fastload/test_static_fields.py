"""A config of static fields only (no time axis) on a store that has one: boxes are placed on the store's
time axis, as for any config, so every t0 the store allows is valid, the values are the field's (the same at
every t0) and the token time metadata is the store's time at t0, as a static field's metadata already is in a
mixed config."""

from __future__ import annotations

import numpy as np
import pytest

from fastload.config import FieldConfig, SamplingConfig
from fastload.errors import ConfigError
from fastload.extract import extract
from fastload.loader import Loader
from fastload.sampling.chunks import field_layouts, plan_batch
from fastload.sampling.geometry import GridExtent, box_to_tokens
from fastload.store import open_store

from .stores import make_per_variable

NT, NY, NX = 9, 9, 16
OROG = FieldConfig(name="orog", num_tokens=(1, 2, 2), token_size=(1, 3, 4), normalization="none")
SP = FieldConfig(name="sp", num_tokens=(1, 1, 2), token_size=(1, 6, 4), normalization="none")


@pytest.fixture()
def store_path(tmp_path):
    path = tmp_path / "s.zarr"
    truth = make_per_variable(path, nt=NT, ny=NY, nx=NX, chunks=(2, 1, 4, 6), levels=(500.0, 850.0))
    return path, truth["time"]  # the time axis as written


def xr_box(path, name, boxes, box, dt=1):
    """(B, 1, T, H, W) of ``name`` at ``boxes`` read with xarray (x wraps: the test grid is global); a field
    without time is the same at every time point."""
    import xarray as xr

    T, H, W = box
    with xr.open_zarr(path, consolidated=False) as ds:
        da = ds[name]
        out = []
        for t0, y0, x0 in np.asarray(boxes):
            ti = t0 + np.arange(T) * dt
            sel = da.isel(latitude=np.arange(y0, y0 + H), longitude=(x0 + np.arange(W)) % NX)
            if "time" in da.dims:
                v = sel.isel(time=ti).transpose("time", "latitude", "longitude").values
            else:
                v = np.broadcast_to(sel.transpose("latitude", "longitude").values, (T, H, W))
            out.append(v[None])
    return np.stack(out)


def test_a_static_only_extract_at_t0_past_0_reads_the_field_with_the_store_time(store_path):
    store_path, time = store_path
    store = open_store(store_path)
    cfg = SamplingConfig(fields=(OROG,))
    boxes = np.array([[5, 2, 14], [0, 0, 0], [NT - 1, 3, 7]])  # t0 = 5, 0 and the last time step
    got = extract(store, cfg, boxes)["orog"]
    want = xr_box(store_path, "orog", boxes, OROG.box)
    assert np.array_equal(got.data, box_to_tokens(want, OROG.token_size))
    assert np.array_equal(got.meta.time[:, 0], time[boxes[:, 0]])
    assert np.array_equal(got.meta.t_index[:, 0], boxes[:, 0])
    hours = (time[boxes[:, 0]] - time[boxes[:, 0]].astype("datetime64[D]")) / np.timedelta64(1, "h")
    assert hours.tolist() == [6.0, 0.0, 0.0]
    assert np.array_equal(got.meta.hour[:, 0], hours.astype(np.float32))
    with pytest.raises(ConfigError, match=rf"boxes\[0\]: t0 = {NT} is outside \[0, {NT - 1}\].*nt={NT}"):
        extract(store, cfg, np.array([[NT, 0, 0]]))  # still bounded by the store's time axis


def test_a_static_field_has_the_same_metadata_alone_as_beside_a_field_with_time(store_path):
    store = open_store(store_path[0])
    boxes = np.array([[5, 1, 9], [2, 3, 15]])
    alone = extract(store, SamplingConfig(fields=(OROG,)), boxes)["orog"]
    mixed = extract(store, SamplingConfig(fields=(SP, OROG)), boxes)
    assert np.array_equal(alone.data, mixed["orog"].data)
    for k in ("t_index", "time", "hour", "day_of_year", "lat", "lon"):
        assert np.array_equal(getattr(alone.meta, k), getattr(mixed["orog"].meta, k)), k
    assert np.array_equal(mixed["orog"].meta.time, store_path[1][boxes[:, :1]])  # the store's time, as sp's
    assert np.array_equal(mixed["sp"].meta.time, mixed["orog"].meta.time)


def test_a_static_only_loader_serves_its_epoch_boxes(store_path):
    store_path, time = store_path
    store = open_store(store_path)
    cfg = SamplingConfig(fields=(OROG,), batch_size=2)
    with Loader(store, cfg, samples_per_epoch=6, seed=0, device="cpu") as loader:
        boxes = loader.epoch_boxes(0)
        assert boxes[:, 0].max() > 0  # placed on the store's time axis, as for any config
        seen = []
        for b in loader:
            bx = b.boxes.numpy()
            want = xr_box(store_path, "orog", bx, OROG.box)
            assert np.array_equal(b.fields["orog"].numpy(), box_to_tokens(want, OROG.token_size))
            assert np.array_equal(b.meta["orog"]["time"].numpy(), time[bx[:, :1]].astype(np.int64))
            seen.append(b.boxes.numpy())
    assert np.array_equal(np.concatenate(seen), boxes)


def test_plan_batch_checks_boxes_against_the_extent_it_is_given(store_path):
    store = open_store(store_path[0])
    lays = field_layouts(store, SamplingConfig(fields=(OROG,)))
    ext = GridExtent.from_store(store)
    plan = plan_batch([[5, 0, 0]], lays, OROG.box, extent=ext)
    assert plan.boxes.tolist() == [[5, 0, 0]]
    at0 = plan_batch([[0, 0, 0]], lays, OROG.box)
    assert np.array_equal(plan.chunks["orog"], at0.chunks["orog"])  # a static field: same chunks at every t0
    assert np.array_equal(plan.tables["orog"], at0.tables["orog"])
    with pytest.raises(ConfigError, match=r"t0 = 5 is outside \[0, 0\].*nt=None"):
        plan_batch([[5, 0, 0]], lays, OROG.box)  # without an extent: the layouts' own (no time axis)
    with pytest.raises(ConfigError, match=r"field 'orog' has grid .* but the store has"):
        plan_batch([[0, 0, 0]], lays, OROG.box, extent=GridExtent(nt=NT, ny=NY, nx=NX + 1, periodic_x=True))
    sp = field_layouts(store, SamplingConfig(fields=(SP,)))
    with pytest.raises(ConfigError, match=r"field 'sp' has grid .* but the store has"):
        plan_batch([[0, 0, 0]], sp, SP.box, extent=GridExtent(nt=NT + 1, ny=NY, nx=NX, periodic_x=True))
