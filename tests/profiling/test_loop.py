"""The training/profiling loop end to end on CPU: report files and keys, honest attribution of injected data and
compute costs, near-zero stall with a prefetching loader, exact resume (bitwise), data modes and the stall split,
the TensorBoard trace, batch -> model inputs, learning-rate schedule, command-line errors."""

from __future__ import annotations

import csv
import dataclasses
import json
import math
import re

import numpy as np
import pytest
import torch

from fastload.cli import main as cli
from fastload.errors import ConfigError
from profiling.loop import build_model, lr_at, main, model_inputs, run
from profiling.presets import OptimConfig
from profiling.stall import ReplayLoader
from profiling.tb import DATALOADER_EVENT
from profiling.timers import PHASES
from tests.profiling.loopdata import BATCH, LEVELS, DelayedLoader, SlowModel, run_config, run_toml, tiny_store

QUIET = {"log": lambda msg: None}


def read_csv(path):
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def _png_text(path):
    from PIL import Image

    with Image.open(path) as im:
        return dict(im.text)


def test_profile_writes_the_report(tmp_path_factory, tmp_path, capsys):
    store, norm = tiny_store(tmp_path_factory)
    cfg_file = run_toml(tmp_path, store, norm)
    out = tmp_path / "report"
    assert main(["profile", "--config", str(cfg_file), "--steps", "5", "--warmup", "2", "--out", str(out),
                 "--device", "cpu"]) == 0
    logged = re.findall(r"^step (\d+/\d+) ", capsys.readouterr().out, re.M)
    assert logged == ["1/5", "5/5"]  # the console counts steps from 1
    s = json.loads((out / "summary.json").read_text())
    for name in (*PHASES, "other", "idle"):
        assert set(s["phases"][name]) >= {"mean_ms", "p50_ms", "p95_ms", "share"}
    assert math.isclose(sum(p["share"] for p in s["phases"].values()), 1.0, rel_tol=1e-9)
    rows = read_csv(out / "steps.csv")
    assert [int(r["step"]) for r in rows] == [3, 4, 5]  # as the console counts: warm-up steps 1-2 left out
    text = _png_text(out / "steps.png")  # the plot's panel titles, with the steps it shows
    assert text["Title"] == "time per step by phase (steps 3-5)" and text["Description"] == "timeline of steps 3-5"
    # independent arithmetic from the per-step rows
    step_ms = np.array([float(r["step_ms"]) for r in rows])
    wait_ms = np.array([float(r["data_wait_ms"]) for r in rows])
    assert s["steps"] == 3 and s["samples"] == 3 * BATCH
    assert math.isclose(s["samples_per_s"], 3 * BATCH / (step_ms.sum() / 1e3), rel_tol=1e-9)
    assert math.isclose(s["stall_fraction"], wait_ms.sum() / step_ms.sum(), rel_tol=1e-9)
    assert math.isclose(s["phases"]["forward"]["mean_ms"], np.mean([float(r["forward_ms"]) for r in rows]))
    assert (out / "steps.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert s["mode"] == "profile" and s["data_mode"] == "cached" and s["world_size"] == 1
    assert s["config"]["data"]["store"] == store and s["config"]["steps"] == 5
    assert s["loader"]["batches"] == 3 and s["loader"]["samples"] == 3 * BATCH
    assert math.isfinite(s["final_loss"])


def test_injected_costs_land_in_their_phases(tmp_path_factory, tmp_path):
    """A loader that takes 60 ms per batch and a forward that takes 40 ms more: the data wait must be the
    loader's time (per step, on the same clock) and not leak into forward, and vice versa."""
    cfg = run_config(tmp_path_factory, steps=7, warmup=2)
    loaders, models = [], []

    def wrap_loader(data):
        loaders.append(DelayedLoader(ReplayLoader.from_loader(data), 60.0))
        return loaders[0]

    def wrap_model(net):
        models.append(SlowModel(net, 40.0))
        return models[0]

    run(cfg, out=tmp_path, wrap_loader=wrap_loader, wrap_model=wrap_model, **QUIET)
    rows = read_csv(tmp_path / "steps.csv")
    took_data, fwd_total = loaders[0].took[2:], models[0].took_total[2:]  # the timed steps
    assert len(rows) == len(took_data) == len(fwd_total) == 5
    wait = [float(r["data_wait_ms"]) for r in rows]
    fwd = [float(r["forward_ms"]) for r in rows]
    # per step, each phase holds at least what was injected into it (same clock) ...
    assert all(w >= d >= 59.0 for w, d in zip(wait, took_data)), (wait, took_data)
    assert all(f >= m >= 39.0 for f, m in zip(fwd, fwd_total)), (fwd, fwd_total)
    # ... and not much more: the least disturbed step (a loaded machine only adds time) adds only the loop's own
    # few statements (data wait) and the loss (forward)
    assert min(w - d for w, d in zip(wait, took_data)) < 3.0
    assert min(f - m for f, m in zip(fwd, fwd_total)) < 8.0
    assert min(float(r["backward_ms"]) for r in rows) < 39.0  # neither cost leaked into backward
    s = json.loads((tmp_path / "summary.json").read_text())
    expect = sum(wait) / sum(float(r["step_ms"]) for r in rows)
    assert s["stall_fraction"] == pytest.approx(expect)
    assert 0.2 < s["stall_fraction"] < 0.8


def test_fast_loader_means_near_zero_stall(tmp_path_factory, tmp_path):
    """The real loader prefetching (two threads, four batches ahead) while the model step takes over 100 ms: the
    loop hardly waits for data. Per-step stall is judged by the median step (a shared machine can starve the
    loader's threads now and then); the overall share with a generous bound."""
    from fastload.sampling.masking import MaskingConfig

    loader = dataclasses.replace(run_config(tmp_path_factory).loader, workers=2, prefetch=4)
    cfg = run_config(tmp_path_factory, steps=10, warmup=3, loader=loader,
                     masking=MaskingConfig(strategy="identity"))
    run(cfg, out=tmp_path, wrap_model=lambda net: SlowModel(net, 100.0), **QUIET)
    rows = read_csv(tmp_path / "steps.csv")
    per_step = sorted(float(r["data_wait_ms"]) / float(r["step_ms"]) for r in rows)
    assert per_step[len(per_step) // 2] < 0.05
    s = json.loads((tmp_path / "summary.json").read_text())
    assert s["phases"]["data_wait"]["share"] < 0.2
    assert s["phases"]["forward"]["share"] > 0.4
    assert s["stall_fraction"] == pytest.approx(s["phases"]["data_wait"]["share"])


def _params(path):
    payload = torch.load(path, map_location="cpu", weights_only=True)

    def flat(d, pre=""):
        out = {}
        for k, v in d.items():
            if isinstance(v, dict):
                out.update(flat(v, f"{pre}{k}."))
            elif isinstance(v, torch.Tensor):
                out[pre + k] = v
        return out

    return payload, flat(payload["components"]), flat(payload["optimizer"]["state"])


def test_resume_is_exact(tmp_path_factory, tmp_path):
    """6 steps straight == 3 steps, stop (checkpoint), resume, 3 more: bitwise, across an epoch boundary."""
    cfg = run_config(tmp_path_factory, steps=6, warmup=0,
                     loader=dataclasses.replace(run_config(tmp_path_factory).loader, samples_per_epoch=8))
    a_dir, b_dir = tmp_path / "a", tmp_path / "b"
    run(dataclasses.replace(cfg, checkpoint_dir=str(a_dir)), mode="train", out=tmp_path / "ra", **QUIET)
    run(dataclasses.replace(cfg, checkpoint_dir=str(b_dir)), mode="train", out=tmp_path / "rb", stop_at=3, **QUIET)
    half, _, _ = _params(b_dir / "last.pt")
    assert half["step"] == 3 and half["extra"]["loader"][0]["batch"] == 3
    run(dataclasses.replace(cfg, checkpoint_dir=str(b_dir)), mode="train", out=tmp_path / "rc",
        resume=b_dir / "last.pt", **QUIET)
    a, pa, oa = _params(a_dir / "last.pt")
    b, pb, ob = _params(b_dir / "last.pt")
    assert a["step"] == b["step"] == 6
    assert a["extra"]["loader"] == b["extra"]["loader"]
    assert a["extra"]["loader"][0]["epoch"] == 1  # 4 batches per epoch: the run crossed into the next epoch
    assert pa.keys() == pb.keys() and len(pa) > 50
    for k in pa:
        assert torch.equal(pa[k], pb[k]), k
    for k in oa:
        assert torch.equal(oa[k], ob[k]), k


def test_training_changes_the_weights_and_lowers_the_loss(tmp_path_factory, tmp_path):
    cfg = run_config(tmp_path_factory, steps=12, warmup=0, log_every=1,
                     optim=OptimConfig(lr=3e-3, min_lr=1e-3, warmup_steps=0))
    losses = []

    def log(msg):
        if msg.startswith("step "):
            losses.append(float(msg.split("loss ")[1].split()[0]))

    run(dataclasses.replace(cfg, checkpoint_dir=str(tmp_path / "ck")), mode="train", out=tmp_path / "r", log=log)
    assert len(losses) == 12 and all(math.isfinite(v) for v in losses)
    assert np.mean(losses[-4:]) < np.mean(losses[:4])
    _, trained, _ = _params(tmp_path / "ck" / "last.pt")
    init = build_model(cfg, cfg.data.sampling)
    from model.checkpoint import split_components

    flat = {f"{f}.{c}.{k}": v for f, comps in split_components(init).items() for c, sd in comps.items()
            for k, v in sd.items()}
    assert any(not torch.equal(flat[k], trained[k]) for k in flat)


def test_resume_errors(tmp_path_factory, tmp_path):
    cfg = run_config(tmp_path_factory, steps=2, warmup=0, checkpoint_dir=str(tmp_path / "ck"))
    with pytest.raises(ConfigError, match="no checkpoint"):
        run(cfg, mode="train", out=tmp_path / "r0", resume=tmp_path / "missing.pt", **QUIET)
    run(cfg, mode="train", out=tmp_path / "r1", **QUIET)
    with pytest.raises(ConfigError, match="step 2"):  # already done: nothing left to run
        run(cfg, mode="train", out=tmp_path / "r2", resume=tmp_path / "ck" / "last.pt", **QUIET)
    bigger = dataclasses.replace(cfg, steps=3, model=dataclasses.replace(cfg.model, embed_dim=32))
    with pytest.raises(ConfigError, match="config differs"):
        run(bigger, mode="train", out=tmp_path / "r3", resume=tmp_path / "ck" / "last.pt", **QUIET)
    with pytest.raises(ConfigError, match="stop at step 5"):
        run(cfg, mode="train", out=tmp_path / "r4", stop_at=5, **QUIET)
    with pytest.raises(ConfigError, match="synthetic"):
        run(dataclasses.replace(cfg, data=dataclasses.replace(cfg.data, mode="synthetic")), mode="train",
            out=tmp_path / "r5", **QUIET)


def test_train_cli_resume_needs_a_checkpoint_dir(tmp_path_factory, tmp_path, capsys):
    store, norm = tiny_store(tmp_path_factory)
    cfg_file = run_toml(tmp_path, store, norm)
    assert cli(["train", "--config", str(cfg_file), "--resume", "--device", "cpu"]) == 2
    assert "checkpoint_dir" in capsys.readouterr().err


def test_train_cli_checkpoints_and_resumes(tmp_path_factory, tmp_path, capsys):
    store, norm = tiny_store(tmp_path_factory)
    cfg_file = run_toml(tmp_path, store, norm, warmup=0)
    ck = tmp_path / "ck"
    common = ["--config", str(cfg_file), "--device", "cpu", "--steps", "4", "--checkpoint-dir", str(ck)]
    assert cli(["train", *common, "--stop-at", "2", "--out", str(tmp_path / "a")]) == 0
    assert torch.load(ck / "last.pt", weights_only=True)["step"] == 2
    assert cli(["train", *common, "--resume", "--out", str(tmp_path / "b")]) == 0
    out = capsys.readouterr().out
    assert "resumed from" in out and "step 4/4" in out
    assert torch.load(ck / "last.pt", weights_only=True)["step"] == 4
    # the resumed run's report numbers its steps 3-4 as the console did, not 1-2 (the timer counts from 0)
    assert [int(r["step"]) for r in read_csv(tmp_path / "b" / "steps.csv")] == [3, 4]
    assert _png_text(tmp_path / "b" / "steps.png")["Description"] == "timeline of steps 3-4"
    assert json.loads((tmp_path / "b" / "summary.json").read_text())["mode"] == "train"


def test_data_modes_and_stall_split(tmp_path_factory, tmp_path):
    from profiling.slowstore import can_drop_pages

    store, norm = tiny_store(tmp_path_factory)
    cfg_file = run_toml(tmp_path, store, norm)
    modes = "synthetic,cached,cold" if can_drop_pages() else "synthetic,cached"
    assert main(["profile", "--config", str(cfg_file), "--steps", "4", "--warmup", "1", "--device", "cpu",
                 "--data", modes, "--out", str(tmp_path / "r"), "--set", "loader.cache_bytes=0"]) == 0
    split = json.loads((tmp_path / "r" / "stall.json").read_text())
    runs = {m: json.loads((tmp_path / "r" / m / "summary.json").read_text()) for m in modes.split(",")}
    for m, s in runs.items():
        assert s["data_mode"] == m
        assert split["modes"][m]["data_wait_ms"] == pytest.approx(s["phases"]["data_wait"]["mean_ms"])
    assert runs["synthetic"]["bytes_read_per_s"] == 0 and "loader" not in runs["synthetic"]  # nothing read
    assert runs["cached"]["bytes_read_per_s"] > 0  # a cache too small to keep chunks: every batch reads
    w = {m: split["modes"][m]["data_wait_ms"] for m in split["modes"]}
    assert split["prep_stall_ms"] == pytest.approx(w["cached"] - w["synthetic"])
    if "cold" in w:
        assert split["fetch_stall_ms"] == pytest.approx(w["cold"] - w["cached"])
        assert runs["cold"]["bytes_read_per_s"] > 0


def test_store_latency_is_passed_to_the_store(tmp_path_factory, tmp_path):
    cfg = run_config(tmp_path_factory, steps=2, warmup=1)
    cfg = dataclasses.replace(cfg, data=dataclasses.replace(cfg.data, latency_ms=3.0))
    seen = []

    def wrap_loader(loader):
        seen.append(loader.store.source)
        return loader

    s = run(cfg, out=tmp_path, wrap_loader=wrap_loader, **QUIET)
    from fastload.store._source import LatencySource

    assert isinstance(seen[0], LatencySource) and seen[0].ms == 3.0
    assert s["store_latency_ms"] == 3.0


def test_torch_profiler_trace_counts_the_fetch_as_dataloader_time(tmp_path_factory, tmp_path):
    cfg = run_config(tmp_path_factory, steps=5, warmup=1)
    run(cfg, out=tmp_path / "r", torch_profiler=str(tmp_path / "tb"), **QUIET)
    traces = list((tmp_path / "tb").glob("*.pt.trace.json*"))
    assert len(traces) == 1 and traces[0].name.startswith("rank0")
    events = json.loads(traces[0].read_text())["traceEvents"]
    fetches = [e for e in events if e.get("name") == DATALOADER_EVENT]
    steps = [e for e in events if str(e.get("name", "")).startswith("ProfilerStep#")]
    assert fetches and len(fetches) == len(steps)  # one fetch per traced step
    assert all(e.get("cat") == "cpu_op" for e in fetches)


def test_model_inputs_broadcast_the_token_metadata(tmp_path_factory):
    from fastload.loader import Loader
    from fastload.sampling.masking import MaskingConfig

    cfg = run_config(tmp_path_factory)
    with Loader(cfg.data.store, cfg.data.sampling, cfg.loader, masking=MaskingConfig(), device="cpu") as ld:
        batch = next(iter(ld))
        x = model_inputs(batch, ["temperature"], torch.device("cpu"))
    t, s = x["temperature"], x["t2m"]
    m = batch.meta["temperature"]
    B, L, nt, ny, nx = batch.fields["temperature"].shape[:5]
    assert (B, L) == (BATCH, len(LEVELS))
    hour, lat, lon = m["hour"].numpy(), m["lat"].numpy(), m["lon"].numpy()
    for b, lv, it, iy, ix in np.ndindex(B, L, nt, ny, nx):
        assert t["meta"]["time_of_day"][b, lv, it, iy, ix] == hour[b, it]
        assert t["meta"]["lat"][b, lv, it, iy, ix] == lat[b, iy, ix]
        assert t["meta"]["lon"][b, lv, it, iy, ix] == lon[b, iy, ix]
        assert t["meta"]["level"][b, lv, it, iy, ix] == LEVELS[lv]
    assert "level" not in s["meta"]  # a surface field: the model uses its single level embedding
    assert t["tokens"] is batch.sources["temperature"] and t["target"] is batch.fields["temperature"]
    assert torch.equal(t["mask"], batch.masks["temperature"])
    net = build_model(cfg, cfg.data.sampling)
    out = net(x)
    assert out["temperature"].shape == (B, cfg.model.ensemble_size, *batch.fields["temperature"].shape[1:])


def test_build_model_follows_the_sampling_config(tmp_path_factory):
    cfg = run_config(tmp_path_factory)
    net = build_model(cfg, cfg.data.sampling)
    t, s = net.config.field("temperature"), net.config.field("t2m")
    assert t.levels == tuple(float(v) for v in LEVELS) and s.levels == (0.0,)
    assert t.num_tokens == (2, 2, 3) and t.token_size == (3, 3, 3) and t.embed_dim == 16
    assert t.coupled == ("t2m",) and s.coupled == ("temperature",)
    lone = build_model(dataclasses.replace(cfg, model=dataclasses.replace(cfg.model, coupled=False)), cfg.data.sampling)
    assert lone.config.field("temperature").coupled == ()
    again = build_model(cfg, cfg.data.sampling)  # seeded: the same weights
    assert all(torch.equal(p, q) for p, q in zip(net.parameters(), again.parameters()))


def test_lr_schedule(tmp_path_factory):
    base = run_config(tmp_path_factory, steps=10)
    cfg = dataclasses.replace(base, optim=OptimConfig(lr=1.0, min_lr=0.1, warmup_steps=2))
    assert [lr_at(s, cfg) for s in (0, 1)] == [0.5, 1.0]
    assert lr_at(2, cfg) == pytest.approx(1.0)
    mid = 2 + 4  # half way through the 8 decay steps: the cosine's midpoint
    assert lr_at(mid, cfg) == pytest.approx(0.1 + 0.5 * 0.9)
    assert lr_at(10, cfg) == pytest.approx(0.1)
    const = dataclasses.replace(cfg, optim=OptimConfig(lr=1.0, min_lr=0.1, schedule="constant"))
    assert {lr_at(s, const) for s in range(10)} == {1.0}


@pytest.mark.parametrize("args, words", [
    (["profile", "--data", "warm"], ["--data", "warm"]),
    (["profile", "--data", "cached,cached"], ["--data"]),
    (["profile", "--set", "loader.bogus=1"], ["loader.bogus"]),
    (["profile", "--store", "/nonexistent.zarr"], ["--store", "/nonexistent.zarr", "no such file or folder"]),
    (["train", "--preset", "nope"], ["preset", "nope"]),
])
def test_cli_errors_name_the_problem(args, words, capsys):
    assert cli(args) == 2
    err = capsys.readouterr().err
    for w in words:
        assert w in err


@pytest.mark.parametrize("args", [["--steps", "2"], ["--steps", "4", "--warmup", "4"]])
def test_a_profile_without_timed_steps_is_refused_up_front(args, tmp_path, monkeypatch, capsys):
    """Review h7, item 3: ``--steps 2`` (warm-up 3) ran every step and exited 0 with "no timed steps: no report
    written"; it is refused (status 2) before anything runs, naming both settings."""
    monkeypatch.setenv("FASTLOAD_CACHE", str(tmp_path / "cache"))
    assert cli(["profile", *args, "--out", str(tmp_path / "report")]) == 2
    captured = capsys.readouterr()
    steps, warmup = (int(args[1]), int(args[3]) if len(args) > 2 else 3)
    assert f"steps = {steps} with warmup = {warmup} (--steps, --warmup)" in captured.err
    assert captured.out == "" and not (tmp_path / "cache").exists() and not (tmp_path / "report").exists()


@pytest.mark.parametrize("data", ["cold", "cached,cold"])
def test_cold_data_with_worker_processes_is_refused_before_any_run(data, tmp_path_factory, tmp_path, capsys):
    """Review h7, item 4 (``fastload profile``): refused before the model is built, a page dropped, or the cached
    run of a stall split has run."""
    store, norm = tiny_store(tmp_path_factory)
    cfg_file = run_toml(tmp_path, store, norm)
    assert cli(["profile", "--config", str(cfg_file), "--data", data, "--set", "loader.mode=process", "--steps",
                "2", "--warmup", "0", "--device", "cpu", "--out", str(tmp_path / "r")]) == 2
    captured = capsys.readouterr()
    assert "data.mode (--data) = 'cold' with loader.mode = 'process'" in captured.err
    assert captured.out == "" and not (tmp_path / "r").exists()


def test_a_missing_store_is_named_before_the_config(capsys):
    """``--store nope.zarr`` blamed the config (norm_path) and sent the user to run stats on a store that does not
    exist; the missing store is named first, with or without norm_path."""
    for extra in ([], ["--set", "data.sampling.norm_path=/nonexistent-norm.zarr"]):
        assert cli(["profile", "--store", "/nonexistent.zarr", *extra]) == 2
        captured = capsys.readouterr()
        assert "/nonexistent.zarr: no such file or folder" in captured.err and "norm_path" not in captured.err
        assert "model:" not in captured.out  # nothing built first


def test_a_store_without_the_presets_fields_is_refused_before_anything_runs(tmp_path_factory, capsys):
    """The default preset on your own store: its fields are checked against the store before the model is built
    or the page cache warmed, and the message points to the run file that names your own sampling config."""
    store, norm = tiny_store(tmp_path_factory)  # temperature and t2m; cpu_tiny also samples velocity_u
    assert cli(["train", "--store", store, "--set", f"data.sampling.norm_path={norm}"]) == 2
    captured = capsys.readouterr()
    assert f"fields.velocity_u: not in store {store}" in captured.err
    assert "[data] store and sampling" in captured.err and "--config run.toml" in captured.err
    assert captured.out == ""  # no model, no page-cache warming, no step


def test_module_main_needs_a_subcommand(capsys):
    assert main([]) == 2 and main(["fit"]) == 2
    assert "train,profile" in capsys.readouterr().err


@pytest.mark.slow
def test_profile_with_no_arguments_uses_the_builtin_dataset(tmp_path, monkeypatch, capsys):
    """``fastload profile`` as the README shows it (steps cut to keep the test short)."""
    monkeypatch.setenv("FASTLOAD_CACHE", str(tmp_path / "cache"))
    monkeypatch.chdir(tmp_path)
    assert cli(["profile", "--steps", "4", "--warmup", "1"]) == 0
    out = capsys.readouterr().out
    assert "built-in synthetic dataset" in out and "stall fraction" in out
    reports = list((tmp_path / "runs").glob("profile-*/summary.json"))
    assert len(reports) == 1
    s = json.loads(reports[0].read_text())
    assert s["config"]["name"] == "cpu_tiny" and s["steps"] == 3
    assert list((tmp_path / "cache").glob("synth-tiny-*-norm.zarr"))  # coefficients computed once, cached


def _arrays(path):
    import zarr

    g = zarr.open_group(str(path), mode="r")
    return {f"{f}/{a}": np.asarray(v[...]) for f, sub in g.groups() for a, v in sub.arrays()}


@pytest.mark.parametrize("window", ["before_its_check", "before_its_rename"])
def test_runs_started_together_share_the_builtin_coefficients(tmp_path_factory, tmp_path, monkeypatch, window):
    """Two runs on a fresh cache (review h7, item 1: the second failed with "...-norm.zarr already exists"). The
    other run's coefficient store lands after this one saw none: before compute_stats checks its output, or
    before this run renames its own into place. This run takes that complete store (no error, nothing left)."""
    import shutil

    import fastload.stats as stats
    import fastload.synth as synth
    from fastload.stats import StatsConfig
    from profiling.loop import prepare_data

    store, _ = tiny_store(tmp_path_factory)
    cached = tmp_path / "cache" / "synth.zarr"  # the built-in dataset, already synthesised
    shutil.copytree(store, cached)
    ref = stats.compute_stats(str(cached), str(tmp_path / "ref.zarr"), StatsConfig(progress=False))
    monkeypatch.setattr(synth, "default_dataset", lambda *a, **k: cached)
    real_stats, real_move = stats.compute_stats, stats.move_into_place
    if window == "before_its_check":
        def other_first(src, out, config):
            real_stats(src, out, config)  # the other run, finished
            return real_stats(src, out, config)
        monkeypatch.setattr(stats, "compute_stats", other_first)
    else:
        def other_first(tmp, out, *, overwrite):
            shutil.copytree(tmp, out)  # the other run's rename lands first
            return real_move(tmp, out, overwrite=overwrite)
        monkeypatch.setattr(stats, "move_into_place", other_first)
    cfg = run_config(tmp_path_factory)
    sampling = dataclasses.replace(cfg.data.sampling, norm_path=None)
    cfg = dataclasses.replace(cfg, data=dataclasses.replace(cfg.data, store=None, sampling=sampling))
    path, sampling = prepare_data(cfg, log=lambda m: None)
    norm = tmp_path / "cache" / "synth-norm.zarr"
    assert path == str(cached) and sampling.norm_path == str(norm)
    assert sorted(p.name for p in norm.parent.iterdir()) == ["synth-norm.zarr", "synth.zarr"]  # no partial store
    got, want = _arrays(norm), _arrays(ref)
    assert set(got) == set(want) and "temperature/local_mean" in got
    for k in want:
        np.testing.assert_array_equal(got[k], want[k], err_msg=k)


def test_nsys_mode_emits_nvtx_ranges(tmp_path_factory, tmp_path, nvtx_domain):
    """With NVTX on (as under nsys_profile.sh), the loop's phases, the model's submodules and the loader's stages
    show as ranges; without CUDA the capture window stays off and the run completes."""
    cfg = run_config(tmp_path_factory, steps=3, warmup=1)
    run(cfg, out=tmp_path, nsys=True, **QUIET)
    names = {c[1] for c in nvtx_domain.calls if c[0] in ("push", "start")}
    assert {"step", *PHASES} <= names
    assert any(n.startswith("fwd/encoder") for n in names) and any(n.startswith("bwd/") for n in names)
    payloads = {c[3] for c in nvtx_domain.calls if c[0] == "start" and c[1] == "step"}
    assert payloads == {0, 1, 2}  # the step number rides in the payload


def test_bf16_autocast_on_cpu(tmp_path_factory, tmp_path):
    cfg = run_config(tmp_path_factory, steps=2, warmup=1, bf16=True)
    s = run(cfg, out=tmp_path, **QUIET)
    assert math.isfinite(s["final_loss"]) and s["config"]["bf16"] is True


@pytest.mark.gpu
def test_profile_on_the_gpu(tmp_path_factory, tmp_path):
    """On a GPU: CUDA-event phases, the loader's device batches, FLOPs counted for MFU where the GPU is known."""
    cfg = run_config(tmp_path_factory, steps=6, warmup=2, device="cuda")
    s = run(cfg, out=tmp_path, nsys=True, **QUIET)
    assert s["device"].startswith("cuda") and s["steps"] == 4
    assert s["phases"]["forward"]["mean_ms"] > 0 and 0 <= s["stall_fraction"] < 1
    assert s["flops_per_step"] is None or s["flops_per_step"] > 0
    assert (s["mfu"] is None) == (s["peak_flops"] is None)


def test_model_inputs_point_masks_come_from_the_inputs_not_the_target():
    """A point-sampled field's valid / valid_values are those of the tokens the model is given (padding slots and
    values without data), never of the target: a masked token whose target has no value stays attended to, as at
    inference (it was dropped in training only, a leak of the answer)."""
    import types

    from model.multiformer import padding_masks

    B, L, nt, ny, nx, tt, K = 2, 1, 2, 2, 3, 1, 4
    g = torch.Generator().manual_seed(0)
    target = torch.randn(B, L, nt, ny, nx, tt, 1, K, generator=g)
    slot = torch.rand(B, ny, nx, K, generator=g) < 0.7
    slot[..., 0] = True
    target = target.masked_fill(~slot[:, None, None, :, :, None, None, :], float("nan"))
    mask = torch.zeros(B, L, nt, ny, nx, dtype=torch.bool)
    mask[0, 0, 1, 1, 2] = True
    sources = target.masked_fill(mask[..., None, None, None], 0.0)  # the loader's masked input
    meta = {"hour": torch.zeros(B, nt), "day_of_year": torch.ones(B, nt), "lat": torch.zeros(B, ny, nx),
            "lon": torch.zeros(B, ny, nx), "valid": slot}
    got = []
    for tgt in (target, target.clone().index_put_((torch.tensor(0), torch.tensor(0), torch.tensor(1),
                                                   torch.tensor(1), torch.tensor(2)), torch.tensor(float("nan")))):
        batch = types.SimpleNamespace(fields={"p": tgt}, sources={"p": sources}, masks={"p": mask}, meta={"p": meta})
        got.append(model_inputs(batch, [], torch.device("cpu"))["p"])
    want = padding_masks(sources, slot)
    for x in got:
        assert torch.equal(x["valid"], want["valid"]) and torch.equal(x["valid_values"], want["valid_values"])
    assert bool(got[1]["valid"][0, 0, 1, 1, 2])  # the masked token without a target value is a key


def test_final_loss_names_the_steps_it_is_the_mean_of(tmp_path_factory, tmp_path):
    """``summary.json`` ``final_loss`` is the mean over the steps since the previous log line, and
    ``final_loss_steps`` names them: a run of 7 steps logged every 5 steps ends with the mean of steps 6-7, which the
    same run logged every step says step by step (its lines: each step's own loss, to 4 decimals)."""
    from profiling.loop import run

    five = run(run_config(tmp_path_factory, steps=7, log_every=5), mode="train", out=tmp_path / "a",
               log=lambda msg: None)
    lines: list[str] = []
    every = run(run_config(tmp_path_factory, steps=7, log_every=1), mode="train", out=tmp_path / "b",
                log=lines.append)
    assert json.loads((tmp_path / "a" / "summary.json").read_text())["final_loss_steps"] == [6, 7]
    assert five["final_loss_steps"] == [6, 7] and every["final_loss_steps"] == [7, 7]
    said = {int(m.group(1)): float(m.group(2)) for m in (re.match(r"step (\d+)/7  loss (\S+)  ", x) for x in lines)
            if m}
    assert sorted(said) == list(range(1, 8))
    assert every["final_loss"] == pytest.approx(said[7], abs=1e-4)
    assert five["final_loss"] == pytest.approx((said[6] + said[7]) / 2, abs=1e-4)
