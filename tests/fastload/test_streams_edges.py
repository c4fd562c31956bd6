"""Multi-stream edge cases found in review (s11 r3): random boxes that depend only on (seed, epoch), time rules on
jittered and gappy axes, a global lat-lon stream stored with its seam column repeated, poles on mesh token edges,
errors naming the stream. Small xarray-written stores; references are plain NumPy / xarray selections."""

from __future__ import annotations

import os

import numpy as np
import pytest

from fastload.config import FieldConfig, SamplingConfig, StreamConfig
from fastload.streams import MultiStream

pytestmark = pytest.mark.filterwarnings("ignore::fastload.streams.ChunkingWarning")  # tiny stores, one chunk

H1 = np.timedelta64(1, "h")
T0 = np.datetime64("2000-01-01T00", "ns")


def make_ll(path, lat, lon, time, name, seed=0):
    import xarray as xr

    rng = np.random.default_rng(seed)
    a = rng.standard_normal((len(time), len(lat), len(lon))).astype(np.float32)
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
