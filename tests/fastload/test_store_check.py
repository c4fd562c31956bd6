"""Store.check(config) and Store.level_indices: a config that cannot be sampled from a store fails with a
ConfigError naming the field and the numbers."""

from __future__ import annotations

import numpy as np
import pytest

from fastload.config import FieldConfig, SamplingConfig, StreamConfig
from fastload.errors import ConfigError
from fastload.store import open_store
from tests.fastload.stores import make_atmorep, make_per_variable


@pytest.fixture(scope="module")
def pv(tmp_path_factory):
    path = tmp_path_factory.mktemp("check") / "pv.zarr"
    make_per_variable(path, nt=6, ny=9, nx=16, regional=True)
    return open_store(path)


@pytest.fixture(scope="module")
def ar(tmp_path_factory):
    path = tmp_path_factory.mktemp("check") / "ar.zarr"
    make_atmorep(path, nt=6)
    return open_store(path)


def _cfg(*fields, time_step=1, streams=()):
    return SamplingConfig(fields=tuple(fields), time_step=time_step, streams=streams)


def _f(name, levels=None, num_tokens=(2, 2, 2), token_size=(3, 4, 4), **kw):
    return FieldConfig(name=name, levels=levels, num_tokens=num_tokens, token_size=token_size, **kw)


def test_valid_config_passes(pv, ar):
    pv.check(_cfg(_f("t", [850, 500]), _f("sp"), _f("orog")))
    ar.check(_cfg(_f("temperature", [137, 96]), _f("t2m")))


def test_unknown_field(pv):
    with pytest.raises(ConfigError, match=r"fields\.wind: not in store .*\['(orog|q|sp|t)'"):
        pv.check(_cfg(_f("wind", [500])))


def test_missing_levels_named_with_available(pv, ar):
    with pytest.raises(ConfigError, match=r"fields\.t\.levels: \[700, 925\] not in the store's pressure levels \[500, 850\]"):
        pv.check(_cfg(_f("t", [500, 700, 925])))
    with pytest.raises(ConfigError, match=r"\[100\] not in the store's model levels \[96, 105, 114, 123, 137\]"):
        ar.check(_cfg(_f("temperature", [100])))


def test_levels_on_a_field_without_levels(pv, ar):
    with pytest.raises(ConfigError, match=r"fields\.sp\.levels: the field has no level axis.*omit 'levels'"):
        pv.check(_cfg(_f("sp", [500])))
    with pytest.raises(ConfigError, match=r"fields\.t2m\.levels: the field has no level axis"):
        ar.check(_cfg(_f("t2m", [96])))


def test_no_levels_for_a_field_with_levels(pv):
    with pytest.raises(ConfigError, match=r"fields\.t\.levels: the field has levels \[500, 850\].*say which"):
        pv.check(_cfg(_f("t")))


@pytest.mark.parametrize("fields,time_step,match", [
    ((_f("t", [500], num_tokens=(1, 5, 1), token_size=(1, 2, 4)),), 1, r"fields\.t: .*spans 10 grid points in latitude.*grid has 9"),
    ((_f("sp", num_tokens=(1, 1, 17), token_size=(1, 1, 1)),), 1, r"fields\.sp: .*spans 17 grid points in longitude.*grid has 16"),
    ((_f("sp", num_tokens=(7, 1, 1), token_size=(1, 1, 1)),), 1, r"fields\.sp: one sample spans 7 time steps.*store has 6"),
    ((_f("sp", num_tokens=(3, 1, 1), token_size=(1, 1, 1)),), 3, r"spans 7 time steps \(3 points x time_step 3\)"),
])  # fmt: skip
def test_box_must_fit(pv, fields, time_step, match):
    with pytest.raises(ConfigError, match=match):
        pv.check(_cfg(*fields, time_step=time_step))


def test_static_field_ignores_time_extent(pv):
    pv.check(_cfg(_f("orog", num_tokens=(9, 1, 1), token_size=(1, 1, 1))))  # 9 steps > 6, but orog has no time


def test_streams(pv):
    streams = (StreamConfig(name="era", path="a"), StreamConfig(name="ocean", path="b"))
    cfg = _cfg(_f("t", [500], stream="era"), _f("thetao", [5], stream="ocean"), streams=streams)
    pv.check(cfg, stream="era")  # only era's fields are checked here
    with pytest.raises(ConfigError, match="thetao"):
        pv.check(cfg, stream="ocean")
    with pytest.raises(ConfigError, match=r"has streams \['era', 'ocean'\]"):
        pv.check(cfg)
    with pytest.raises(ConfigError, match="stream 'nope'"):
        pv.check(cfg, stream="nope")


def test_level_indices(pv, ar):
    np.testing.assert_array_equal(pv.level_indices("t", [850, 500.0]), [1, 0])
    np.testing.assert_array_equal(ar.level_indices("velocity_u", [137, 105, 96]), [4, 1, 0])
    np.testing.assert_array_equal(pv.level_indices("sp", None), [0])
    with pytest.raises(ConfigError, match=r"\[1000\] not in"):
        pv.level_indices("t", [1000])
    with pytest.raises(ConfigError, match="not in store"):
        pv.level_indices("nope", [1])


def test_packed_field_refused(tmp_path):
    import json

    make_per_variable(tmp_path / "s.zarr")
    f = tmp_path / "s.zarr" / "sp" / ".zattrs"
    attrs = json.loads(f.read_text())
    f.write_text(json.dumps({**attrs, "scale_factor": 0.5, "add_offset": 1000.0}))
    s = open_store(tmp_path / "s.zarr")
    with pytest.raises(ConfigError, match=r"fields\.sp: stored packed \(attributes \['add_offset', 'scale_factor'\]\)"):
        s.check(_cfg(_f("sp")))
