"""Point samplers on 0 samples (a user's last empty shard of a plan): ``PointSampler.meta`` gives every array with a
sample axis a leading 0 and the shapes and dtypes of the same metadata for one sample, for every sampler kind: a
curvilinear grid with repeated places (ORCA fold and halo), one without, the mesh, a lat-lon stream on the
reference's grid and one whose rows run the other way (``ReferenceRowSampler``). It raised "cannot reshape array of
size 0" for the box samplers."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest

from fastload.config import FieldConfig, SamplingConfig, StreamConfig
from fastload.streams import MultiStream

from .stores_multi import make_atmosphere, make_latlon_xr, make_mesh, make_ocean
from .test_stream_fold import config as fold_config
from .test_stream_fold import make_orca

BOXES = np.array([[0, 0, 15], [10, 1, 17], [20, 10, 5]])


def _box(name: str, stream: str, levels=None) -> FieldConfig:
    kw = {} if levels is None else {"levels": levels}
    return FieldConfig(name=name, num_tokens=(2, 2, 2), token_size=(3, 3, 4), normalization="none", stream=stream,
                       **kw)


@pytest.fixture(scope="module")
def worlds(tmp_path_factory):
    d = tmp_path_factory.mktemp("empty")
    make_atmosphere(d / "a.zarr")
    make_atmosphere(d / "twin.zarr", seed=99)
    make_orca(d / "orca.zarr")
    make_ocean(d / "o.zarr")
    make_mesh(d / "m.zarr")
    make_latlon_xr(d / "asc.zarr", ascending=True, lon_start=-180.0)
    era5 = StreamConfig(name="era5", path=str(d / "a.zarr"))
    fold = fold_config({"era5": d / "a.zarr", "orca": d / "orca.zarr"})
    others = SamplingConfig(
        streams=(era5, StreamConfig(name="ocean", path=str(d / "o.zarr"), time_rule="previous"),
                 StreamConfig(name="fesom", path=str(d / "m.zarr"), time_rule="nearest"),
                 StreamConfig(name="twin", path=str(d / "twin.zarr")),
                 StreamConfig(name="asc", path=str(d / "asc.zarr"), time_rule="previous")),
        fields=(_box("sp", "era5"), _box("zos", "ocean"), _box("ssh", "fesom"), _box("t", "twin", (96, 137)),
                _box("sst", "asc")),
        time_step=2)
    return MultiStream(fold), MultiStream(others)


def test_point_meta_of_0_samples_has_the_shapes_of_1_cut_to_0(worlds):
    kinds = set()
    for ms in worlds:
        pl = ms.place(BOXES, check=False)
        for st in ms.streams[1:]:
            kinds.add((type(st.sampler).__name__, st.sampler.same is not None if hasattr(st.sampler, "same") else None))
            w, t = pl.where[st.name], pl.t_steps[st.name]
            one = st.sampler.meta(w[:1], t[:1], time_rule=st.rule)
            none = st.sampler.meta(w[:0], t[:0], time_rule=st.rule)
            assert none.keys() == one.keys()
            for name, m in one.items():
                for f in dataclasses.fields(m):
                    a, z = getattr(m, f.name), getattr(none[name], f.name)
                    if f.name == "level" or not isinstance(a, np.ndarray):
                        assert np.array_equal(z, a, equal_nan=True) if isinstance(a, np.ndarray) else z == a, f.name
                    else:
                        assert z.shape == (0, *a.shape[1:]) and z.dtype == a.dtype, (st.name, name, f.name)
    # every box sampler kind was asked: repeated places and none, rows flipped, and the mesh
    assert kinds == {("BoxPointSampler", True), ("BoxPointSampler", False), ("MeshPointSampler", None),
                     ("ReferenceRowSampler", False)}, kinds


def test_box_points_of_0_samples(worlds):
    """``BoxPointSampler.points`` itself takes 0 starts (it is public; subclasses call it)."""
    ms = worlds[0]
    st = ms.by_name["orca"]
    f = st.config.fields[0]
    pts, count, lat, lon = st.sampler.points(np.zeros((0, 2), np.int64), f)
    one = st.sampler.points(ms.place(BOXES, check=False).where["orca"][:1], f)
    for z, a in zip((pts, count, lat, lon), one, strict=True):
        assert z.shape == (0, *a.shape[1:]) and z.dtype == a.dtype
    # a whole multi-stream meta of 0 boxes
    for name, m in ms.meta(BOXES[:0]).items():
        assert m.lat.shape[0] == 0 and m.t_index.shape[0] == 0, name
