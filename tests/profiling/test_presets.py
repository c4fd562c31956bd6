"""Run configs: presets build and round-trip, dotted overrides, TOML files (preset base, relative paths), validation
messages naming the setting."""

from __future__ import annotations

import dataclasses

import pytest

from fastload.config import SamplingConfig
from fastload.errors import ConfigError
from profiling.presets import (
    PRESETS,
    DataConfig,
    ModelConfig,
    OptimConfig,
    RunConfig,
    cpu_tiny,
    get_preset,
    load_run_config,
)


@pytest.mark.parametrize("name", list(PRESETS))
def test_presets_build_and_round_trip(name):
    cfg = get_preset(name)
    assert cfg.name == name
    back = RunConfig.from_dict(cfg.to_dict())
    assert back == cfg
    assert back.to_dict() == cfg.to_dict()


def test_cpu_tiny_is_the_small_default():
    cfg = cpu_tiny()
    assert cfg.data.store is None and cfg.data.synth_preset == "tiny"  # the built-in dataset
    assert cfg.device is None and not cfg.bf16 and not cfg.compile
    assert cfg.warmup < cfg.steps
    assert cfg.data.sampling.field_names == ("temperature", "velocity_u", "t2m")


def test_gpu_presets_ask_for_cuda_bf16_compile():
    for cfg in (get_preset("small_h100"), get_preset("atmorep_h100")):
        assert cfg.device == "cuda" and cfg.bf16 and cfg.compile
    a = get_preset("atmorep_h100")
    f = a.data.sampling.fields[0]
    assert f.num_tokens == (12, 6, 12) and f.token_size == (3, 9, 9) and f.box == (36, 54, 108)
    assert a.model.embed_dim == 1024 and a.model.num_heads == 16 and a.model.ensemble_size == 16


def test_overrides_reach_every_section():
    cfg = cpu_tiny().override(["loader.batch_size=8", "data.sampling.batch_size=2", "steps=5", "model.loss=crps",
                               "masking.strategy=identity", "optim.lr=0.01", "bf16=true", "data.latency_ms=2.5",
                               "device=cpu", "threads=3"])
    assert cfg.loader.batch_size == 8 and cfg.data.sampling.batch_size == 2 and cfg.steps == 5
    assert cfg.model.loss == "crps" and cfg.masking.strategy == "identity" and cfg.optim.lr == 0.01
    assert cfg.bf16 is True and cfg.data.latency_ms == 2.5 and cfg.device == "cpu" and cfg.threads == 3


@pytest.mark.parametrize("item, words", [
    ("loader.nope=1", ["loader.nope", "unknown"]),
    ("steps=abc", ["steps", "integer"]),
    ("steps=0", ["steps", ">= 1"]),
    ("model.embed_dim=33", ["model.embed_dim", "num_heads"]),
    ("model.decoder_layers=5", ["decoder_layers", "encoder_layers"]),
    ("model.loss=huber", ["model.loss"]),
    ("data.mode=warm", ["data.mode"]),
    ("optim.min_lr=1", ["optim.min_lr"]),
    ("device=tpu", ["device"]),
    ("threads=0", ["threads"]),
    ("data=1", ["data", "section"]),
    ("steps", ["KEY=VALUE"]),
])
def test_bad_overrides_name_the_setting(item, words):
    with pytest.raises(ConfigError) as e:
        cpu_tiny().override([item])
    for w in words:
        assert w in str(e.value)


def test_crps_needs_an_ensemble():
    with pytest.raises(ConfigError, match="ensemble_size"):
        ModelConfig(loss="crps", ensemble_size=1)


def test_cold_mode_refuses_urls():
    s = cpu_tiny().data.sampling
    with pytest.raises(ConfigError, match="cold"):
        DataConfig(sampling=s, store="s3://bucket/era5.zarr", mode="cold")
    assert DataConfig(sampling=s, store="s3://bucket/era5.zarr", mode="cached").store.startswith("s3://")


def test_cold_mode_refuses_worker_processes():
    """Review h7, item 4: process workers reopen the store with plain reads, which would not be cold."""
    from fastload.config import LoaderConfig

    base = cpu_tiny()
    proc = dataclasses.replace(base, loader=LoaderConfig(workers=1, mode="process"))
    with pytest.raises(ConfigError, match=r"data.mode \(--data\) = 'cold' with loader.mode = 'process'"):
        dataclasses.replace(proc, data=dataclasses.replace(base.data, mode="cold"))
    assert proc.data.mode == "cached"  # process workers read warm or cached data as it is
    fc = dataclasses.replace(proc, model=dataclasses.replace(base.model, kind="forecaster"))
    assert dataclasses.replace(fc, data=dataclasses.replace(base.data, mode="cold")).data.mode == "cold"  # threads


def test_storage_options_and_backend():
    s = cpu_tiny().data.sampling
    d = DataConfig(sampling=s, store="s3://bucket/era5.zarr", backend="obstore",
                   storage_options={"region": "eu-central-1", "aws_secret_access_key": "x", "token": "t"})
    assert d.backend == "obstore" and d.storage_options["aws_secret_access_key"] == "x"
    # reports and checkpoints keep to_dict(): secrets do not go there; the rest round-trips
    out = d.to_dict()
    assert out["storage_options"] == {"region": "eu-central-1", "aws_secret_access_key": "<redacted>",
                                      "token": "<redacted>"}
    assert DataConfig.from_dict(out).storage_options["region"] == "eu-central-1"
    # at any depth, and in URLs (user info, query): s3fs client_kwargs, Azure connection strings, headers, SAS URLs
    nested = DataConfig(sampling=s, store="https://acct.blob.core.windows.net/c/era5.zarr?sv=2024&sig=abc",
                        storage_options={"client_kwargs": {"aws_secret_access_key": "x", "region_name": "r"},
                                         "connection_string": "AccountKey=y", "headers": {"Authorization": "Bearer z"},
                                         "client_options": {"default_headers": {"Cookie": "c"}},
                                         "endpoint_url": "https://user:pass@minio.local:9000/?X-Amz-Signature=q"})
    out = nested.to_dict()
    text = repr(out)
    for secret in ("'x'", "AccountKey", "Bearer", "'c'", "user:pass", "sig=abc", "X-Amz-Signature", "sv=2024"):
        assert secret not in text, secret
    assert out["storage_options"]["client_kwargs"]["region_name"] == "r"
    assert out["store"] == "https://acct.blob.core.windows.net/c/era5.zarr?<redacted>"
    assert out["storage_options"]["endpoint_url"] == "https://<redacted>@minio.local:9000/?<redacted>"
    assert DataConfig(sampling=s, store="/data/era5.zarr").to_dict()["store"] == "/data/era5.zarr"
    with pytest.raises(ConfigError, match="data.backend: expected one of \\['auto', 'fsspec', 'obstore'\\], got 'boto'"):
        DataConfig(sampling=s, store="s3://b/x.zarr", backend="boto")
    with pytest.raises(ConfigError, match="data.storage_options: expected a table"):
        DataConfig(sampling=s, store="s3://b/x.zarr", storage_options=["region"])
    with pytest.raises(ConfigError, match="the built-in dataset is local"):
        DataConfig(sampling=s, storage_options={"anon": True})
    assert cpu_tiny().override(["data.backend=obstore"]).data.backend == "obstore"


def test_unknown_synth_preset():
    with pytest.raises(ConfigError, match="synth_preset"):
        DataConfig(sampling=cpu_tiny().data.sampling, synth_preset="huge")


def test_get_preset_unknown():
    with pytest.raises(ConfigError, match="cpu_tiny"):
        get_preset("gpu_huge")


def test_toml_on_a_preset_base_with_relative_paths(tmp_path):
    (tmp_path / "sampling.toml").write_text(
        'batch_size = 3\nnorm_path = "n.zarr"\n[fields.temperature]\nlevels = [96]\nnum_tokens = [1, 2, 2]\n'
        'token_size = [2, 3, 3]\n')
    (tmp_path / "run.toml").write_text(
        'preset = "cpu_tiny"\nsteps = 7\ncheckpoint_dir = "ck"\n[data]\nstore = "era5.zarr"\n'
        'sampling = "sampling.toml"\n[loader]\nworkers = 1\n[model]\nembed_dim = 64\n[masking]\nrate = 0.3\n')
    cfg = load_run_config(tmp_path / "run.toml", overrides=["optim.lr=0.002"])
    base = cpu_tiny()
    assert cfg.steps == 7 and cfg.optim.lr == 0.002
    assert cfg.loader.workers == 1 and cfg.loader.prefetch == base.loader.prefetch  # merged into the preset
    assert cfg.model.embed_dim == 64 and cfg.model.num_heads == base.model.num_heads
    assert cfg.masking.rate == 0.3 and cfg.masking.strategy == base.masking.strategy
    assert cfg.data.store == str(tmp_path / "era5.zarr")
    assert cfg.checkpoint_dir == str(tmp_path / "ck")
    assert cfg.data.sampling.field_names == ("temperature",) and cfg.data.sampling.batch_size == 3
    assert cfg.data.sampling.norm_path == str(tmp_path / "n.zarr")


def test_toml_inline_sampling_replaces_the_preset_fields(tmp_path):
    (tmp_path / "run.toml").write_text(
        'preset = "cpu_tiny"\n[data.sampling]\nbatch_size = 2\n[data.sampling.fields.t2m]\nnum_tokens = [1, 2, 2]\n'
        'token_size = [1, 3, 3]\n')
    cfg = load_run_config(tmp_path / "run.toml")
    assert cfg.data.sampling.field_names == ("t2m",)  # not merged with the preset's three fields
    assert cfg.data.store is None


def test_toml_inline_sampling_paths_are_relative_to_the_run_file(tmp_path, monkeypatch):
    """Review h7, item 2: an inline [data.sampling] table's norm_path, and its streams' path and norm_path, were
    taken from the working directory (data.store and a sampling file were taken from the run file)."""
    (tmp_path / "runs").mkdir()
    (tmp_path / "runs" / "run.toml").write_text(
        '[data]\nstore = "era.zarr"\n[data.sampling]\nbatch_size = 2\nnorm_path = "norm.zarr"\n'
        '[data.sampling.fields.t2m]\nnum_tokens = [1, 2, 2]\ntoken_size = [1, 3, 3]\n')
    (tmp_path / "runs" / "streams.toml").write_text(
        '[data.sampling]\nbatch_size = 2\n[data.sampling.fields.t2m]\nnum_tokens = [1, 2, 2]\n'
        'token_size = [1, 3, 3]\nstream = "era"\n[data.sampling.fields.sst]\nnum_tokens = [1, 2, 2]\n'
        'token_size = [1, 3, 3]\nstream = "obs"\n[data.sampling.streams.era]\npath = "../data/era.zarr"\n'
        'norm_path = "era-norm.zarr"\n[data.sampling.streams.obs]\npath = "s3://bucket/obs.zarr"\n'
        'norm_path = "/abs/obs-norm.zarr"\n')
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)
    cfg = load_run_config("../runs/run.toml")
    assert cfg.data.store == str(tmp_path / "runs" / "era.zarr")
    assert cfg.data.sampling.norm_path == str(tmp_path / "runs" / "norm.zarr")
    era, obs = load_run_config(tmp_path / "runs" / "streams.toml").data.sampling.streams
    assert (era.path, era.norm_path) == (str(tmp_path / "data" / "era.zarr"), str(tmp_path / "runs" / "era-norm.zarr"))
    assert (obs.path, obs.norm_path) == ("s3://bucket/obs.zarr", "/abs/obs-norm.zarr")  # URLs, absolute paths: as given
    over = load_run_config(tmp_path / "runs" / "run.toml", overrides=["data.sampling.norm_path=mine.zarr"])
    assert over.data.sampling.norm_path == "mine.zarr"  # the command line's paths are the caller's


def test_toml_without_preset_needs_data(tmp_path):
    (tmp_path / "run.toml").write_text("steps = 3\n")
    with pytest.raises(ConfigError, match=r"run.toml.*\[data\]"):
        load_run_config(tmp_path / "run.toml")


@pytest.mark.parametrize("text, words", [
    ('preset = "cpu_tiny"\n[loader]\nworkerz = 2\n', ["run.toml", "loader", "workerz"]),
    ('preset = "cpu_tiny"\nstepz = 2\n', ["run.toml", "stepz"]),
    ('preset = "cpu_tiny"\n[model]\nwidth = 2\n', ["run.toml", "model", "width"]),
    ('preset = "cpu_tiny"\n[masking]\nstrategy = "random"\n', ["masking.strategy"]),
    ('preset = "nope"\n', ["preset", "nope"]),
    ('steps = [\n', ["run.toml", "TOML"]),
])
def test_bad_toml_names_file_and_setting(tmp_path, text, words):
    (tmp_path / "run.toml").write_text(text)
    with pytest.raises(ConfigError) as e:
        load_run_config(tmp_path / "run.toml")
    for w in words:
        assert w in str(e.value)


def test_missing_file():
    with pytest.raises(ConfigError, match="does not exist"):
        load_run_config("/nonexistent/run.toml")


def test_configs_are_frozen():
    cfg = cpu_tiny()
    with pytest.raises(dataclasses.FrozenInstanceError):
        cfg.steps = 3  # type: ignore[misc]
    with pytest.raises(dataclasses.FrozenInstanceError):
        cfg.optim.lr = 3.0  # type: ignore[misc]


def test_section_types_checked():
    with pytest.raises(ConfigError, match="optim"):
        RunConfig(data=cpu_tiny().data, optim={"lr": 1.0})  # type: ignore[arg-type]
    with pytest.raises(ConfigError, match="data.sampling"):
        DataConfig(sampling={"fields": {}})  # type: ignore[arg-type]
    assert isinstance(OptimConfig().lr, float)
    assert isinstance(cpu_tiny().data.sampling, SamplingConfig)


def test_client_options_go_to_url_stores_only():
    """A multi-stream run may mix a local store with remote ones: data.storage_options go to URL stores only
    (open_store refuses options for a local path)."""
    from profiling.loop import _url_options

    cfg = cpu_tiny().override(["data.backend=fsspec"])
    cfg = dataclasses.replace(cfg, data=dataclasses.replace(cfg.data, store="s3://b/era5.zarr",
                                                            storage_options={"anon": True}))
    assert _url_options(cfg, "s3://b/ocean.zarr") == {"anon": True}
    assert _url_options(cfg, "/data/ocean.zarr") is None


def test_toml_inline_sampling_warns_once(tmp_path):
    """Audit F5's follow-up: an inline [data.sampling] table built its config twice (the second time to take paths
    from the run file's folder), so a float16 raw field's warning came twice; the config is built once now."""
    import warnings

    (tmp_path / "run.toml").write_text(
        '[data]\nstore = "era.zarr"\n[data.sampling]\nbatch_size = 2\nout_dtype = "float16"\nnorm_path = "n.zarr"\n'
        '[data.sampling.fields.t2m]\nnum_tokens = [1, 2, 2]\ntoken_size = [1, 3, 3]\nnormalization = "none"\n')
    with warnings.catch_warnings(record=True) as seen:
        warnings.simplefilter("always")
        cfg = load_run_config(tmp_path / "run.toml")
    assert [str(w.message)[:40] for w in seen] == ["out_dtype = 'float16' with normalization"]
    assert cfg.data.sampling.norm_path == str(tmp_path / "n.zarr")
