"""SamplingConfig / LoaderConfig: parsing, validation messages, round trips, dotted overrides."""

from __future__ import annotations

import dataclasses
import warnings

import numpy as np
import pytest

from fastload import ConfigError, FieldConfig, LoaderConfig, SamplingConfig, apply_overrides

ISSUE_EXAMPLE = """
batch_size = 16
time_step = 1
[fields.temperature]
levels = [96, 105, 114, 123, 137]
num_tokens = [12, 6, 12]
token_size = [3, 9, 9]
normalization = "local"      # or "global", or "none" for raw values

[fields.t2m]
num_tokens = [12, 3, 6]
token_size = [3, 18, 18]
normalization = "global"
"""


def test_issue_example_parses(tmp_path):
    p = tmp_path / "cfg.toml"
    p.write_text(ISSUE_EXAMPLE)
    cfg = SamplingConfig.from_file(p)
    assert cfg.batch_size == 16 and cfg.time_step == 1
    t = cfg.field("temperature")
    assert t.levels == (96, 105, 114, 123, 137)
    assert t.sample_shape == (5, 12, 6, 12, 3, 9, 9)
    assert cfg.field("t2m").levels is None and cfg.field("t2m").num_levels == 1
    assert cfg.box == (36, 54, 108)
    assert cfg.time_span == 36


def test_time_span_with_step():
    f = FieldConfig(name="a", num_tokens=(2, 1, 1), token_size=(3, 4, 4))
    cfg = SamplingConfig(fields=(f,), time_step=6)
    assert cfg.time_span == (6 - 1) * 6 + 1


def test_toml_round_trip(tmp_path):
    p = tmp_path / "cfg.toml"
    p.write_text(ISSUE_EXAMPLE)
    cfg = SamplingConfig.from_file(p)
    q = tmp_path / "again.toml"
    q.write_text(cfg.to_toml())
    assert SamplingConfig.from_file(q) == cfg
    assert SamplingConfig.from_dict(cfg.to_dict()) == cfg


def test_fields_must_tile_the_same_box():
    a = FieldConfig(name="a", num_tokens=(12, 6, 12), token_size=(3, 9, 9))
    b = FieldConfig(name="b", num_tokens=(12, 3, 6), token_size=(3, 18, 17))
    with pytest.raises(ConfigError, match=r"fields\.b.*\[36, 54, 102\].*fields\.a.*\[36, 54, 108\]"):
        SamplingConfig(fields=(a, b))


@pytest.mark.parametrize(
    "field, message",
    [
        ({"num_tokens": [1, 2], "token_size": [1, 1, 1]}, r"fields\.x\.num_tokens: expected three integers"),
        ({"num_tokens": [1, 0, 1], "token_size": [1, 1, 1]}, r"fields\.x\.num_tokens: every entry must be >= 1"),
        ({"num_tokens": [1, 1, 1], "token_size": [1, 1, 1], "normalization": "zscore"}, r"normalization"),
        ({"num_tokens": [1, 1, 1], "token_size": [1, 1, 1], "levels": []}, r"levels: empty"),
        ({"num_tokens": [1, 1, 1], "token_size": [1, 1, 1], "levels": [1, 1]}, r"duplicate level"),
        ({"num_tokens": [1, 1, 1], "token_size": [1, 1, 1], "colour": "red"}, r"unknown setting.*colour"),
        ({"token_size": [1, 1, 1]}, r"missing required setting 'num_tokens'"),
    ],
)
def test_bad_field_settings_name_the_setting(field, message):
    with pytest.raises(ConfigError, match=message):
        SamplingConfig.from_dict({"fields": {"x": field}})


def test_bad_top_level(tmp_path):
    with pytest.raises(ConfigError, match="batch_size: expected an integer >= 1"):
        SamplingConfig.from_dict({"batch_size": 0, "fields": {"x": {"num_tokens": [1, 1, 1], "token_size": [1, 1, 1]}}})
    with pytest.raises(ConfigError, match="unknown setting"):
        SamplingConfig.from_dict({"batchsize": 2, "fields": {"x": {"num_tokens": [1, 1, 1], "token_size": [1, 1, 1]}}})
    p = tmp_path / "broken.toml"
    p.write_text("batch_size = [")
    with pytest.raises(ConfigError, match="broken.toml: not a valid config file"):
        SamplingConfig.from_file(p)
    with pytest.raises(ConfigError, match="does not exist"):
        SamplingConfig.from_file(tmp_path / "missing.toml")


def test_streams_resolve_relative_to_file(tmp_path):
    p = tmp_path / "multi.toml"
    p.write_text(
        """
[streams.atmo]
path = "atmo.zarr"
[streams.ocean]
path = "s3://bucket/ocean.zarr"
time_rule = "nearest"
[fields.t]
stream = "atmo"
num_tokens = [2, 2, 2]
token_size = [3, 4, 4]
[fields.sst]
stream = "ocean"
num_tokens = [2, 2, 2]
token_size = [3, 4, 4]
"""
    )
    cfg = SamplingConfig.from_file(p)
    assert cfg.streams[0].path == str(tmp_path / "atmo.zarr")
    assert cfg.streams[1].path == "s3://bucket/ocean.zarr"
    with pytest.raises(ConfigError, match=r"fields\.t\.stream"):
        SamplingConfig.from_dict({**cfg.to_dict(), "fields": {"t": {"stream": "air", "num_tokens": [1, 1, 1], "token_size": [1, 1, 1]}}})


def test_loader_config_validation():
    assert LoaderConfig().workers == 2
    with pytest.raises(ConfigError, match="loader.workers"):
        LoaderConfig(workers=0)
    with pytest.raises(ConfigError, match="go together"):
        LoaderConfig(rank=1)
    with pytest.raises(ConfigError, match="0 <= rank < world_size=2"):
        LoaderConfig(rank=2, world_size=2)
    with pytest.raises(ConfigError, match="loader.mode"):
        LoaderConfig(mode="fibre")


@dataclasses.dataclass(frozen=True, kw_only=True)
class _Run:
    loader: LoaderConfig = dataclasses.field(default_factory=LoaderConfig)
    name: str = "x"


def test_overrides():
    run = apply_overrides(_Run(), ["loader.batch_size=8", "loader.pin_memory=false", "loader.device=none", "name=y"])
    assert run.loader.batch_size == 8 and run.loader.pin_memory is False and run.loader.device is None
    assert run.name == "y"
    assert apply_overrides(_Run(), ["loader.mode=process"]).loader.mode == "process"
    with pytest.raises(ConfigError, match="unknown setting 'batchsize'"):
        apply_overrides(_Run(), ["loader.batchsize=8"])
    with pytest.raises(ConfigError, match="loader.workers: expected an integer"):
        apply_overrides(_Run(), ["loader.workers=two"])
    with pytest.raises(ConfigError, match="loader.workers: expected an integer >= 1"):
        apply_overrides(_Run(), ["loader.workers=0"])
    with pytest.raises(ConfigError, match="expected KEY=VALUE"):
        apply_overrides(_Run(), ["loader.workers"])
    with pytest.raises(ConfigError, match="is a section"):
        apply_overrides(_Run(), ["loader=3"])


def test_float16_output_of_raw_fields_warns_of_its_range():
    """float16 holds |x| <= 65504: raw fields (a pressure in Pa) would come out inf, so a config asking for that
    says so, naming the fields; normalised fields and bfloat16 (float32's range) do not warn."""
    raw = FieldConfig(name="msl", num_tokens=(1, 2, 2), token_size=(1, 4, 4), normalization="none")
    norm = FieldConfig(name="t", num_tokens=(1, 2, 2), token_size=(1, 4, 4))
    with pytest.warns(UserWarning, match=r"float16.*\['msl'\].*65504"):
        SamplingConfig(fields=[raw, norm], out_dtype="float16")
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        SamplingConfig(fields=[norm], out_dtype="float16")
        SamplingConfig(fields=[raw, norm], out_dtype="bfloat16")
    with np.errstate(over="ignore"):
        assert np.isinf(np.float32(101325.0).astype(np.float16))  # what the warning is about
