"""``[validation]`` in ``fastload train``: the loss on a held-out period, every ``every`` steps and at the end,
recomputed here from the checkpoint of the same step over the samples the docs promise (epoch 0 of a loader on
``validation.time_range`` with ``validation.samples`` and ``validation.seed``); the notes on overlapping periods; the
errors that name ``validation.*``; and two ranks agreeing on one value."""

from __future__ import annotations

import dataclasses
import json

import pytest
import torch

from fastload import Loader
from fastload.config import LoaderConfig
from fastload.errors import ConfigError
from profiling._loop_data import model_inputs
from profiling._loop_model import build_model
from profiling.run_config import ValidationConfig
from profiling.steps import MultiformerStep
from tests.profiling.loopdata import run_config, run_toml, tiny_store
from tests.profiling.ranks import start_ranks

TRAIN, HELD_OUT = (0, 12), (12, 24)  # the tiny store's 24 hours: a window spans 6


def _cfg(tmp_path_factory, tmp_path, **validation):
    return run_config(tmp_path_factory, loader=LoaderConfig(workers=1, prefetch=2, samples_per_epoch=16,
                                                            time_range=TRAIN),
                      validation=ValidationConfig(time_range=HELD_OUT, **validation), steps=6,
                      checkpoint_dir=str(tmp_path / "ck"))


def test_the_validation_loss_is_the_checkpoints_loss_on_the_held_out_samples(tmp_path_factory, tmp_path):
    from model import load_checkpoint
    from profiling.loop import run

    cfg = _cfg(tmp_path_factory, tmp_path, every=4, samples=5, seed=4)  # batches of 2, 2, 1
    lines: list[str] = []
    summary = run(cfg, mode="train", out=tmp_path / "out", log=lines.append)
    records = summary["validation"]
    assert [r["step"] for r in records] == [4, 6] and [r["samples"] for r in records] == [5, 5]
    assert json.loads((tmp_path / "out" / "summary.json").read_text())["validation"] == records
    said = [x for x in lines if x.startswith("validation at step")]
    assert said == [f"validation at step {r['step']}: loss {r['loss']:.4f} over 5 samples ({r['seconds']:.1f} s)"
                    for r in records]
    assert not any(x.startswith("note: the validation period") for x in lines)  # apart from training's

    # the end's value, recomputed: the checkpoint of step 6, eval mode, no gradients, the held-out samples as the
    # docs describe them, every sample weighted alike
    sampling = cfg.data.sampling
    net = build_model(cfg, sampling)
    load_checkpoint(tmp_path / "ck" / "last.pt", net)
    step = MultiformerStep(net, {cfg.model.loss: 1.0}).eval()
    levelled = [f.name for f in sampling.fields if f.levels is not None]
    held_out = LoaderConfig(workers=1, prefetch=2, samples_per_epoch=5, seed=4, time_range=HELD_OUT,
                            drop_last=False, device="cpu")
    total, n = 0.0, 0
    with Loader(cfg.data.store, sampling, held_out, masking=cfg.masking) as loader, torch.no_grad():
        assert (loader.epoch_boxes(0)[:, 0] >= HELD_OUT[0]).all()
        for batch in loader:
            total += float(step(model_inputs(batch, levelled, torch.device("cpu")))) * len(batch)
            n += len(batch)
    assert n == 5
    assert records[-1]["loss"] == pytest.approx(total / n, rel=1e-6)
    assert net.training is False and step.training is False  # (ours; the run's model went back to training)


def test_notes_when_the_periods_overlap(tmp_path_factory, tmp_path):
    from profiling.loop import run

    for loader_range, note in ((None, "note: validation samples lie inside the training period"),
                               ((6, 18), "note: the validation period [12, 24) overlaps the training period [6, 18)")):
        cfg = dataclasses.replace(_cfg(tmp_path_factory, tmp_path, samples=2), steps=2, checkpoint_dir=None,
                                  loader=LoaderConfig(workers=1, prefetch=2, samples_per_epoch=16,
                                                      time_range=loader_range))
        lines: list[str] = []
        run(cfg, mode="train", out=tmp_path / f"out{loader_range}", log=lines.append)
        assert any(x.startswith(note) for x in lines), lines


@pytest.mark.parametrize("change, said", [
    (dict(mode="profile"), "validation runs in fastload train, not profile"),
    (dict(time_range=(12, 25)), "validation.time_range = [12, 25]: past the end of the time axis"),
    (dict(time_range=("2000-01-01", "2000-01-02")), "validation.time_range = ['2000-01-01', '2000-01-02'] reaches "
                                                    "beyond the time axis"),
    (dict(time_range=(20, 24)), "validation.time_range = [20, 24] holds 4 time steps"),
])
def test_errors_name_the_validation_setting(tmp_path_factory, tmp_path, change, said):
    from profiling.loop import run

    cfg = _cfg(tmp_path_factory, tmp_path, samples=2)
    if "time_range" in change:
        cfg = dataclasses.replace(cfg, validation=ValidationConfig(time_range=change["time_range"], samples=2))
    with pytest.raises(ConfigError) as e:
        run(cfg, mode=change.get("mode", "train"), out=tmp_path / "out", log=lambda s: None)
    assert said in str(e.value)
    assert not (tmp_path / "out").exists() or change.get("mode") != "profile"  # before any work


@pytest.mark.parametrize("value, said", [
    (dict(time_range=("2016-01-02", "2016-01-01")), "validation.time_range: ['2016-01-02', '2016-01-01']: the start"),
    (dict(time_range=(3,)), "validation.time_range: (3,): expected two store time indices"),
    (dict(every=-1), "validation.every: expected an integer >= 0"),
    (dict(samples=0), "validation.samples: expected an integer >= 1"),
])
def test_the_section_checks_its_settings(value, said):
    with pytest.raises(ConfigError) as e:
        ValidationConfig(**value)
    assert said in str(e.value)
    assert ValidationConfig.from_dict({"time_range": ["2016-01-01", "2018-01-01"], "every": 5}).time_range == \
        ("2016-01-01", "2018-01-01")


@pytest.mark.dist
@pytest.mark.slow
def test_two_ranks_report_one_value_over_every_ranks_samples(tmp_path_factory, tmp_path):
    store, norm = tiny_store(tmp_path_factory)
    config = run_toml(tmp_path, store, norm, warmup=1, dist_timeout_s=300)
    procs = start_ranks(["-m", "profiling.loop", "train", "--config", str(config), "--device", "cpu", "--steps", "2",
                         "--out", str(tmp_path / "out"), "--set", "loader.time_range=2021-01-01T00,2021-01-01T12",
                         "--set", "validation.time_range=2021-01-01T12,2021-01-02", "--set",
                         "validation.samples=5"], tmp_path)
    try:
        outs = [p.communicate(input="", timeout=300)[0] for p in procs]
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
                p.wait()
    assert [p.returncode for p in procs] == [0, 0], outs
    got = [json.loads((tmp_path / "out" / f"rank{r}" / "summary.json").read_text())["validation"] for r in (0, 1)]
    assert got[0] == [{**got[1][0], "seconds": got[0][0]["seconds"]}]  # the same loss and count on both ranks
    # 5 samples dealt 3 and 2, in batches of 2: every rank makes the same number of batches (the Loader's rule), 1,
    # so rank 0 leaves its third out (the loader's warning says so) and the loss is over the 4 read
    assert got[0][0]["samples"] == 4 and got[0][0]["step"] == 2


def test_the_run_file_section(tmp_path_factory, tmp_path):
    from profiling.presets import load_run_config

    store, norm = tiny_store(tmp_path_factory)
    path = run_toml(tmp_path, store, norm)
    path.write_text(path.read_text() + '[validation]\ntime_range = [12, 24]\nevery = 5\n')
    cfg = load_run_config(path, overrides=["validation.samples=7"])
    assert cfg.validation == ValidationConfig(time_range=(12, 24), every=5, samples=7)
    assert cfg.to_dict()["validation"] == {"time_range": [12, 24], "every": 5, "samples": 7, "seed": 1}


def test_a_forecaster_validates_on_held_out_initial_times(tmp_path_factory, tmp_path):
    """The rollout loss over ``samples`` initial times of the held-out period, from the checkpoint of the same step,
    recomputed through the Forecaster's own rollout loader and step."""
    from model import load_checkpoint
    from profiling import forecast as fc
    from profiling._loop_model import build_model
    from profiling.loop import run
    from tests.profiling.forecastdata import fc_config

    cfg = fc_config(tmp_path_factory, steps=3, warmup=0, checkpoint_dir=str(tmp_path / "ck"),
                    loader=LoaderConfig(workers=1, prefetch=2, samples_per_epoch=4, time_range=(0, 17)),
                    validation=ValidationConfig(time_range=(7, 24), samples=2, seed=3))  # spans 15 steps: 2 of 3
    lines: list[str] = []
    summary = run(cfg, mode="train", out=tmp_path / "out", log=lines.append)
    (rec,) = summary["validation"]
    assert rec["step"] == 3 and rec["samples"] == 2
    assert any(x.startswith("note: the validation period [7, 24) overlaps the training period [0, 17)")
               for x in lines)
    sampling = cfg.data.sampling
    net = fc.run_forecaster(cfg, sampling, build_model, torch.device("cpu"), lambda s: None)
    load_checkpoint(tmp_path / "ck" / "last.pt", net)
    held_out = LoaderConfig(workers=1, prefetch=2, samples_per_epoch=2, seed=3, time_range=(7, 24),
                            drop_last=False, device="cpu")
    total, n = 0.0, 0
    with fc._loader_class()(cfg.data.store, sampling, fc.rollout_config(cfg), held_out) as loader, torch.no_grad():
        step = fc.RolloutStep(net, fc.geometry(loader.tiles, torch.device("cpu")), {cfg.model.loss: 1.0},
                              cfg.forecast.tiles_per_chunk).eval()
        assert sorted(loader.epoch_times(0).tolist()) == sorted(set(loader.epoch_times(0).tolist()))
        assert sorted(loader.epoch_times(0).tolist()) == [8, 9]  # seed 3 draws these 2 of 7, 8, 9 (seed 0: 7, 9)
        for batch in loader:
            total += float(step(*fc.rollout_inputs(batch, torch.device("cpu")))) * len(batch)
            n += len(batch)
    assert n == 2
    assert rec["loss"] == pytest.approx(total / n, rel=1e-6)


def test_the_validation_loader_reads_on_threads(tmp_path_factory, tmp_path):
    """With training's loader in process mode, the validation loader's worker processes stayed alive, idle, for the
    whole run (reviewer R4): it reads on threads."""
    import contextlib

    from profiling.validation import make_validator

    cfg = _cfg(tmp_path_factory, tmp_path, samples=2)
    loader_cfg = dataclasses.replace(cfg.loader, mode="process", device="cpu")
    lines: list[str] = []
    v = make_validator(cfg, "train", cfg.data.store, cfg.data.sampling, loader_cfg, TRAIN, torch.nn.Identity(),
                       lambda b: b, lambda x: torch.zeros(()), contextlib.nullcontext(), torch.device("cpu"), 1,
                       lines.append)
    try:
        assert v.loader.loader_config.mode == "thread"
        assert v.run(0) == 0.0 and v.records[0]["samples"] == 2
    finally:
        v.close()
