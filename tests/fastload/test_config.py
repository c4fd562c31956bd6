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


F16_RAW = """
out_dtype = "float16"
[fields.msl]
num_tokens = [1, 2, 2]
token_size = [1, 4, 4]
normalization = "none"
"""


def _where_warned(got) -> list[tuple[str, int]]:
    return [(w.filename, w.lineno) for w in got if "float16 holds" in str(w.message)]


def test_float16_warning_is_given_once_at_the_callers_line(tmp_path):
    """from_file, from_dict, the constructor, dataclasses.replace and apply_overrides each warn once about float16
    raw fields, at the line that called them (from_file warned twice, from config.py and dataclasses.py: it
    rebuilt the config with resolved paths)."""
    import inspect

    p = tmp_path / "f16.toml"
    p.write_text(F16_RAW)
    d = {"out_dtype": "float16", "fields": {"msl": {"num_tokens": [1, 2, 2], "token_size": [1, 4, 4],
                                                    "normalization": "none"}}}
    plain = SamplingConfig.from_dict({**d, "out_dtype": "float32"})
    here = inspect.currentframe()
    with warnings.catch_warnings(record=True) as got:
        warnings.simplefilter("always")
        line = here.f_lineno + 1
        SamplingConfig.from_file(p)
        assert _where_warned(got) == [(__file__, line)]
        line = here.f_lineno + 1
        SamplingConfig.from_dict(d)
        assert _where_warned(got[1:]) == [(__file__, line)]
        line = here.f_lineno + 1
        SamplingConfig(fields=plain.fields, out_dtype="float16")
        assert _where_warned(got[2:]) == [(__file__, line)]
        line = here.f_lineno + 1
        dataclasses.replace(plain, out_dtype="float16")
        assert _where_warned(got[3:]) == [(__file__, line)]
        line = here.f_lineno + 1
        apply_overrides(plain, ["out_dtype=float16", "batch_size=3", "fields.msl.transform=log1p"])
        assert _where_warned(got[4:]) == [(__file__, line)]
    assert len(got) == 5


def _two_fields() -> SamplingConfig:
    return SamplingConfig.from_dict({"norm_path": "n.zarr", "fields": {
        "temperature": {"levels": [96, 137], "num_tokens": [2, 3, 4], "token_size": [3, 6, 6]},
        "t2m": {"num_tokens": [2, 3, 4], "token_size": [3, 6, 6], "normalization": "global"}}})


def _from_table(cfg: SamplingConfig, **fields) -> SamplingConfig:
    """The reference: the config's own table with some field settings changed, read back by from_dict."""
    d = cfg.to_dict()
    for name, settings in fields.items():
        d["fields"][name] = {**d["fields"][name], **settings}
    return SamplingConfig.from_dict(d)


def test_overrides_reach_a_fields_settings_by_its_name():
    """fields.<name>.<setting> overrides that field's setting (the audit's case said 'not a setting (its parent is
    not a config section)'), as the same setting in the file would; its siblings and other fields stay."""
    cfg = _two_fields()
    got = apply_overrides(cfg, ["fields.temperature.normalization=global"])
    assert got == _from_table(cfg, temperature={"normalization": "global"})
    assert got.field("temperature").normalization == "global" and got.field("t2m") == cfg.field("t2m")
    got = apply_overrides(cfg, ["fields.t2m.transform=log1p", "fields.temperature.levels=96,114,137"])
    assert got == _from_table(cfg, t2m={"transform": "log1p"}, temperature={"levels": [96, 114, 137]})
    assert got.field("temperature").levels == (96.0, 114.0, 137.0)
    assert apply_overrides(cfg, ["fields.temperature.levels=none"]).field("temperature").levels is None
    # settings that must agree change together: every field's box (each config is rebuilt once)
    both = ["fields.temperature.num_tokens=1,3,4", "fields.t2m.num_tokens=1,3,4", "fields.t2m.token_size=6,6,6",
            "fields.temperature.token_size=6,6,6"]
    got = apply_overrides(cfg, both)
    assert got == _from_table(cfg, temperature={"num_tokens": [1, 3, 4], "token_size": [6, 6, 6]},
                              t2m={"num_tokens": [1, 3, 4], "token_size": [6, 6, 6]})
    assert got.box == (6, 18, 24)


@pytest.mark.parametrize("override,in_file,message", [
    ("fields.temp.normalization=global", None, r"fields.temp.normalization: no field 'temp' in this config; "
                                               r"fields: \['temperature', 't2m'\]"),
    ("fields.temperature.normalization=globl", {"temperature": {"normalization": "globl"}},
     r"fields.temperature.normalization: expected one of \['local', 'global', 'none'\], got 'globl'"),
    ("fields.temperature.num_tokens=2,3", {"temperature": {"num_tokens": [2, 3]}},
     r"fields.temperature.num_tokens: expected three integers"),
    ("fields.temperature.num_tokens=2,3,0", {"temperature": {"num_tokens": [2, 3, 0]}},
     r"fields.temperature.num_tokens: every entry must be >= 1"),
    ("fields.temperature.levels=96,96", {"temperature": {"levels": [96, 96]}},
     r"fields.temperature.levels: duplicate level"),
    ("fields.t2m.token_size=3,6,3", {"t2m": {"token_size": [3, 6, 3]}},
     r"fields.t2m: num_tokens \[2, 3, 4\] x token_size \[3, 6, 3\] covers \[6, 18, 12\] grid points but "
     r"fields.temperature covers \[6, 18, 24\]"),
    ("fields.t2m.stream=era5", {"t2m": {"stream": "era5"}},
     r"fields.t2m.stream = 'era5' but the config defines no streams"),
    ("fields.t2m.colour=red", None, r"fields.t2m.colour: unknown setting 'colour'; known here: \["),
    ("fields.t2m.name=t", None, r"fields.t2m.name: a field's name is its table's key and is not overridden"),
    ("fields.t2m=global", None, r"fields.t2m: is a field, not a value; set one of its settings: "
                                r"fields.t2m.<setting>=VALUE"),
    ("fields=x", None, r"fields: is a table of fields, not a value; set one field's setting"),
    ("streams.era5.path=x.zarr", None, r"streams.era5.path: no stream 'era5' in this config; streams: \[\]"),
], ids=["unknown-field", "bad-choice", "two-numbers", "zero", "duplicate-level", "box", "no-streams",
        "unknown-setting", "name", "field-as-value", "fields-as-value", "unknown-stream"])
def test_field_overrides_are_validated_as_the_file_is(override, in_file, message):
    """A field override goes through the validation the file's setting does (with the file's message, checked by
    reading the same setting from a table), and an unknown field name is named with the fields there are."""
    with pytest.raises(ConfigError, match=message):
        apply_overrides(_two_fields(), [override])
    if in_file is not None:
        with pytest.raises(ConfigError, match=message):
            _from_table(_two_fields(), **in_file)


def test_stream_settings_are_overridden_by_name(tmp_path):
    cfg = SamplingConfig.from_dict({"streams": {"atmo": {"path": "a.zarr"}, "ocean": {"path": "o.zarr"}}, "fields": {
        "t": {"stream": "atmo", "num_tokens": [1, 1, 1], "token_size": [1, 2, 2]},
        "sst": {"stream": "ocean", "num_tokens": [1, 1, 1], "token_size": [1, 2, 2]}}})
    got = apply_overrides(cfg, ["streams.ocean.time_rule=nearest", "fields.sst.stream=atmo"])
    assert [s.time_rule for s in got.streams] == ["inside", "nearest"] and got.field("sst").stream == "atmo"
    with pytest.raises(ConfigError, match=r"streams.ice.path: no stream 'ice' in this config; streams: \['atmo', "
                                          r"'ocean'\]"):
        apply_overrides(cfg, ["streams.ice.path=i.zarr"])
    with pytest.raises(ConfigError, match=r"fields.sst.stream: expected one of \['atmo', 'ocean'\], got 'ice'"):
        apply_overrides(cfg, ["fields.sst.stream=ice"])


def test_conflicting_overrides_are_named():
    cfg = _two_fields()
    with pytest.raises(ConfigError, match=r"batch_size.x: conflicts with the override of batch_size \(a value\)"):
        apply_overrides(cfg, ["batch_size=3", "batch_size.x=2"])
    with pytest.raises(ConfigError, match=r"fields.t2m: conflicts with the override of fields.t2m.transform"):
        apply_overrides(cfg, ["fields.t2m.transform=log1p", "fields.t2m=x"])
    assert apply_overrides(cfg, ["batch_size=3", "batch_size=5"]).batch_size == 5  # the last one wins


def test_the_cli_set_reaches_field_settings(tmp_path):
    """``fastload profile/train --set data.sampling.fields.<name>.<setting>=...`` goes through load_run_config
    (RunConfig.override -> apply_overrides): the field's setting changes, an unknown field is named."""
    from profiling.presets import load_run_config

    cfg = load_run_config(None, preset="cpu_tiny", overrides=["data.sampling.fields.t2m.normalization=none",
                                                                "steps=3"])
    assert cfg.data.sampling.field("t2m").normalization == "none" and cfg.steps == 3
    base = load_run_config(None, preset="cpu_tiny")
    assert cfg.data.sampling == _from_table(base.data.sampling, t2m={"normalization": "none"})
    with pytest.raises(ConfigError, match=r"data.sampling.fields.t3m.normalization: no field 't3m' in this config; "
                                          r"fields: \['temperature', 'velocity_u', 't2m'\]"):
        load_run_config(None, preset="cpu_tiny", overrides=["data.sampling.fields.t3m.normalization=none"])


_ONE_FIELD = {"t": {"num_tokens": [1, 1, 1], "token_size": [1, 1, 1], "stream": "a"}}


@pytest.mark.parametrize("streams, message", [
    ({"a": {}}, r"streams\.a: missing required setting 'path'"),
    ({"a": {"time_rule": "nearest"}}, r"streams\.a: missing required setting 'path'"),
    ({"a": 5}, r"streams\.a: expected a table of settings \(path = \.\.\.\), got 5"),
    ({"a": {"path": "x", "norm_path": 5}}, r"streams\.a\.norm_path: expected a path or URL, got 5"),
    ({"a": {"path": "x", "norm_path": ""}}, r"streams\.a\.norm_path: expected a path or URL, got ''"),
])
def test_a_stream_without_path_or_with_wrong_types_names_the_setting(streams, message):
    """A [streams.a] table without path was a TypeError (StreamConfig.__init__() missing ... 'path'), a stream that
    is not a table a TypeError ('int' object is not a mapping), a norm_path of 5 was accepted."""
    with pytest.raises(ConfigError, match=message):
        SamplingConfig.from_dict({"fields": _ONE_FIELD, "streams": streams})


def test_a_stream_without_path_in_a_file_names_the_file_and_the_stream(tmp_path):
    p = tmp_path / "multi.toml"
    p.write_text('[streams.a]\ntime_rule = "nearest"\n[fields.t]\nstream = "a"\nnum_tokens = [1, 1, 1]\n'
                 'token_size = [1, 1, 1]\n')
    with pytest.raises(ConfigError) as e:
        SamplingConfig.from_file(p)
    assert str(e.value) == f"{p}: streams.a: missing required setting 'path' (the store's path or URL)"


@pytest.mark.parametrize("d, message", [
    ({"norm_path": 5}, r"^norm_path: expected a path or URL, got 5"),
    ({"norm_path": ["a"]}, r"^norm_path: expected a path or URL, got \['a'\]"),
])
def test_sampling_norm_path_of_the_wrong_type_is_named(d, message):
    with pytest.raises(ConfigError, match=message):
        SamplingConfig.from_dict({"fields": {"t": {"num_tokens": [1, 1, 1], "token_size": [1, 1, 1]}}, **d})


def test_a_config_that_is_not_a_table_is_a_config_error():
    with pytest.raises(ConfigError, match=r"sampling config: expected a table of settings, got \[1\]"):
        SamplingConfig.from_dict([1])  # type: ignore[arg-type]
    with pytest.raises(ConfigError, match=r"loader: expected a table of settings, got None"):
        LoaderConfig.from_dict(None)  # type: ignore[arg-type]


@pytest.mark.parametrize("d, message", [
    ({"pin_memory": "no"}, r"loader\.pin_memory: expected true or false \(or None"),  # bool('no') is True
    ({"pin_memory": 0}, r"loader\.pin_memory: expected true or false"),
    ({"drop_last": "no"}, r"loader\.drop_last: expected true or false, got 'no'"),
    ({"drop_last": None}, r"loader\.drop_last: expected true or false, got None"),
    ({"rank": "0", "world_size": 2}, r"loader\.rank: expected an integer >= 0, got '0'"),  # was a TypeError
    ({"rank": 0.5, "world_size": 2}, r"loader\.rank: expected an integer >= 0, got 0\.5"),  # was accepted
    ({"rank": 0, "world_size": 2.0}, r"loader\.world_size: expected an integer >= 1, got 2\.0"),
    ({"rank": True, "world_size": 2}, r"loader\.rank: expected an integer >= 0, got True"),
])
def test_loader_settings_of_the_wrong_type_are_named(d, message):
    with pytest.raises(ConfigError, match=message):
        LoaderConfig.from_dict(d)


def test_loader_settings_of_the_right_type_are_kept():
    cfg = LoaderConfig.from_dict({"pin_memory": False, "drop_last": False, "rank": np.int64(1), "world_size": 3})
    assert (cfg.pin_memory, cfg.drop_last, cfg.rank, cfg.world_size) == (False, False, 1, 3)
    assert LoaderConfig(pin_memory=None).pin_memory is None


def test_a_config_path_that_is_a_directory_is_named_as_one(tmp_path):
    """A directory was reported as 'does not exist'."""
    (tmp_path / "cfg.toml").mkdir()
    with pytest.raises(ConfigError) as e:
        SamplingConfig.from_file(tmp_path / "cfg.toml")
    assert str(e.value) == (f"sampling config file {str(tmp_path / 'cfg.toml')!r} is a directory; expected a .toml "
                            f"or .yaml file")
    with pytest.raises(ConfigError, match="does not exist"):
        SamplingConfig.from_file(tmp_path / "missing.toml")
