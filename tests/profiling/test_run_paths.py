"""Paths a run reads and writes are checked before it starts, and a bad one is a ConfigError naming the flag or
setting and the file (review s13 r2 items 1, 3, 5, 7, 9): a file that is no checkpoint (a TOML file, a truncated
``.pt``, a folder) as ``--checkpoint``, ``--resume`` or ``forecast.multiformer_checkpoint`` gave torch's
``IndexError: pop from empty list``; a file as ``--checkpoint-dir`` failed with ``FileExistsError`` after every step
(the trained model lost); ``--stop-at`` without ``--checkpoint-dir`` stopped with no checkpoint; ``--time garbage``
gave NumPy's parse error; ``python -m profiling.presets --help`` a traceback."""

from __future__ import annotations

import dataclasses
import re
import types

import numpy as np
import pytest
import torch

from fastload.errors import ConfigError
from model import Multiformer, MultiformerConfig, save_checkpoint
from profiling import presets, rollout
from profiling.forecast import multiformer_for
from profiling.loop import main, prepare_data, run
from tests.profiling.loopdata import run_config, run_toml, tiny_store


def _bad_checkpoints(tmp_path):
    """``{kind: path}`` of things given as a checkpoint by mistake."""
    torch.manual_seed(0)
    good = save_checkpoint(tmp_path / "good.pt", Multiformer(MultiformerConfig.tiny())).read_bytes()
    (tmp_path / "sample.toml").write_text('preset = "cpu_tiny"\nsteps = 4\n')
    (tmp_path / "trunc.pt").write_bytes(good[: len(good) // 2])
    (tmp_path / "folder").mkdir()
    return {"toml": tmp_path / "sample.toml", "truncated": tmp_path / "trunc.pt", "folder": tmp_path / "folder"}


def _says(flag: str, path) -> str:
    """The head of the message: the flag, then the file (a folder: 'is a folder')."""
    return rf"^{re.escape(flag)}:? '{re.escape(str(path))}'(: not a checkpoint file| is a folder)"


@pytest.mark.parametrize("kind", ["toml", "truncated", "folder"])
def test_rollout_checkpoint_that_is_no_checkpoint(tmp_path, kind):
    path = _bad_checkpoints(tmp_path)[kind]
    with pytest.raises(ConfigError, match=_says("--checkpoint", path)):
        rollout.load_forecaster(path)


@pytest.mark.parametrize("kind", ["toml", "truncated", "folder"])
def test_multiformer_checkpoint_that_is_no_checkpoint(tmp_path, kind):
    path = _bad_checkpoints(tmp_path)[kind]
    cfg = types.SimpleNamespace(forecast=types.SimpleNamespace(multiformer_checkpoint=str(path),
                                                               freeze_encoder=True))
    with pytest.raises(ConfigError, match=_says("forecast.multiformer_checkpoint", path)):
        multiformer_for(cfg, None, lambda c, s: None, lambda msg: None)


@pytest.mark.parametrize("kind", ["toml", "truncated", "folder"])
def test_resume_from_no_checkpoint_fails_before_the_run_starts(tmp_path_factory, tmp_path, kind):
    path = _bad_checkpoints(tmp_path)[kind]
    cfg = run_config(tmp_path_factory, steps=2, warmup=0, checkpoint_dir=str(tmp_path / "ck"))
    logs: list[str] = []
    with pytest.raises(ConfigError, match=_says("--resume", path)):
        run(cfg, mode="train", out=tmp_path / "r", resume=path, log=logs.append)
    assert logs == []  # no model built, no loader started
    fc = dataclasses.replace(cfg, model=dataclasses.replace(cfg.model, kind="forecaster"),
                             forecast=dataclasses.replace(cfg.forecast, multiformer_checkpoint=str(path)))
    with pytest.raises(ConfigError, match=_says("forecast.multiformer_checkpoint", path)):
        run(fc, mode="train", out=tmp_path / "r", log=logs.append)
    assert logs == [] and not (tmp_path / "r").exists() and not (tmp_path / "ck").exists()


def test_output_path_that_is_a_file_fails_before_the_first_step(tmp_path_factory, tmp_path):
    taken = tmp_path / "sample.toml"
    taken.write_text("steps = 4\n")
    cfg = run_config(tmp_path_factory, steps=3, warmup=0)
    cases = [
        (dict(cfg=dataclasses.replace(cfg, checkpoint_dir=str(taken)), mode="train", out=tmp_path / "r"),
         rf"checkpoint_dir \(--checkpoint-dir\): '{re.escape(str(taken))}' is a file"),
        (dict(cfg=dataclasses.replace(cfg, checkpoint_dir=str(taken / "ck")), mode="train", out=tmp_path / "r"),
         rf"checkpoint_dir \(--checkpoint-dir\): '{re.escape(str(taken / 'ck'))}' cannot be created: "
         rf"'{re.escape(str(taken))}' is a file"),
        (dict(cfg=cfg, mode="profile", out=taken), rf"--out: '{re.escape(str(taken))}' is a file"),
        (dict(cfg=dataclasses.replace(cfg, report_dir=str(taken / "r")), mode="profile"),
         rf"report_dir: '{re.escape(str(taken / 'r'))}' cannot be created"),
        (dict(cfg=cfg, mode="profile", out=tmp_path / "r", torch_profiler=str(taken)),
         rf"--torch-profiler: '{re.escape(str(taken))}' is a file"),
    ]
    for kw, message in cases:
        logs: list[str] = []
        with pytest.raises(ConfigError, match=f"^{message}"):
            run(kw.pop("cfg"), **kw, log=logs.append)
        assert not [m for m in logs if m.startswith(("step ", "model:"))], logs  # before the model, not after
    assert taken.read_text() == "steps = 4\n" and not (tmp_path / "r").exists()


def test_cache_folder_that_is_a_file(tmp_path, monkeypatch):
    taken = tmp_path / "afile"
    taken.write_text("x")
    cfg = presets.cpu_tiny()  # the built-in dataset: synthesised into the cache folder
    assert cfg.data.store is None
    monkeypatch.setenv("FASTLOAD_CACHE", str(taken))
    with pytest.raises(ConfigError, match=rf"^FASTLOAD_CACHE = '{re.escape(str(taken))}': cannot be the folder of "
                                          r"the built-in dataset \(a file is in its place\)"):
        prepare_data(cfg, lambda msg: None)
    under = dataclasses.replace(cfg, data=dataclasses.replace(cfg.data, cache_dir=str(taken / "sub")))
    with pytest.raises(ConfigError, match=rf"^data.cache_dir = '{re.escape(str(taken / 'sub'))}': cannot be"):
        prepare_data(under, lambda msg: None)
    assert taken.read_text() == "x"


def test_stop_at_needs_a_checkpoint_dir(tmp_path_factory, tmp_path, capsys):
    store, norm = tiny_store(tmp_path_factory)
    toml = run_toml(tmp_path, store, norm, warmup=0)
    with pytest.raises(ConfigError, match=r"^--stop-at 3 \(stop_at\) without --checkpoint-dir \(checkpoint_dir\)"):
        main(["train", "--config", str(toml), "--device", "cpu", "--steps", "5", "--stop-at", "3",
              "--out", str(tmp_path / "r")])
    assert "step " not in capsys.readouterr().out and not (tmp_path / "r").exists()


def test_loop_run_stop_at_needs_a_checkpoint_dir(tmp_path_factory, tmp_path):
    """``run(cfg, mode="train", stop_at=2)`` without ``checkpoint_dir`` stopped silently with no checkpoint, while
    the CLI refused it (review s13 rv2 item 4): run() refuses it before any work (the CLI's message comes from it)."""
    cfg = run_config(tmp_path_factory, steps=4, warmup=0)
    assert cfg.checkpoint_dir is None
    said = []
    with pytest.raises(ConfigError, match=r"^--stop-at 2 \(stop_at\) without --checkpoint-dir \(checkpoint_dir\): "
                                          r"the run would stop at step 2 with no checkpoint"):
        run(cfg, mode="train", out=tmp_path / "r", stop_at=2, log=said.append)
    assert said == [] and not (tmp_path / "r").exists()


@pytest.mark.parametrize("how", [["--store-latency-ms", "inf"], ["--set", "data.latency_ms=inf"],
                                 ["--store-latency-ms", "nan"], ["--set", "data.latency_ms=-1"]])
def test_run_config_store_latency_must_be_finite(tmp_path_factory, tmp_path, capsys, how):
    """``--store-latency-ms inf`` passed the config check and failed in the store's LatencySource after the model
    was built, naming ``latency_ms`` rather than the flag (review s13 rv2 item 2): refused before the run starts,
    naming the setting and its flag."""
    store, norm = tiny_store(tmp_path_factory)
    toml = run_toml(tmp_path, store, norm, warmup=0)
    with pytest.raises(ConfigError, match=r"^data\.latency_ms \(--store-latency-ms\): expected a finite number of "
                                          r"milliseconds >= 0, got (inf|nan|-1\.0)$"):
        main(["profile", "--config", str(toml), "--device", "cpu", "--steps", "2", *how, "--out", str(tmp_path / "r")])
    assert "model:" not in capsys.readouterr().out and not (tmp_path / "r").exists()
    assert presets.load_run_config(toml, overrides=["data.latency_ms=2.5"]).data.latency_ms == 2.5  # finite: fine


@pytest.mark.parametrize("given", ["report_dir", "--out"])
def test_loop_stall_runs_name_the_report_folder_given(tmp_path_factory, tmp_path, capsys, given):
    """With ``--data synthetic,cached`` a bad ``report_dir`` was blamed on ``--out`` (review s13 rv2 item 3): each
    mode's run was given ``out=<folder>/<mode>``. The setting actually given is named, before the first run."""
    store, norm = tiny_store(tmp_path_factory)
    toml = run_toml(tmp_path, store, norm, warmup=0)
    taken = tmp_path / "taken"
    taken.write_text("x")
    where = ["--set", f"report_dir={taken}"] if given == "report_dir" else ["--out", str(taken)]
    with pytest.raises(ConfigError, match=rf"^{re.escape(given)}: '{re.escape(str(taken / 'synthetic'))}' cannot be "
                                          rf"created: '{re.escape(str(taken))}' is a file"):
        main(["profile", "--config", str(toml), "--device", "cpu", "--steps", "2", "--warmup", "1",
              "--data", "synthetic,cached", *where])
    assert "model:" not in capsys.readouterr().out and taken.read_text() == "x"


def test_rollout_time_that_is_no_time(tmp_path):
    store = types.SimpleNamespace(time=np.array(["2021-01-01T00", "2021-01-01T06"], dtype="datetime64[ns]"),
                                  path="s.zarr")
    assert rollout._time_index(store, None, "2021-01-01T06") == 1  # (an ISO time is found)
    with pytest.raises(ConfigError, match=r"^--time 'garbage': not a time; expected an ISO 8601 date and time"):
        rollout._time_index(store, None, "garbage")
    # checked before the checkpoint is read: the missing checkpoint is not what is reported
    with pytest.raises(ConfigError, match=r"^--time '2021-13-01': not a time"):
        rollout.forecast(store, tmp_path / "missing.pt", tmp_path / "out.zarr", steps=1, when="2021-13-01")


def test_presets_help_lists_the_presets(capsys):
    with pytest.raises(SystemExit) as e:
        presets.main(["--help"])
    out = capsys.readouterr().out
    assert e.value.code == 0 and out.startswith("usage: python -m profiling.presets")
    listed = [line.split()[0] for line in out.split("presets:\n", 1)[1].splitlines() if line.strip()]
    assert listed == list(presets.PRESETS)
    with pytest.raises(SystemExit) as e:
        presets.main(["nope"])
    assert e.value.code == 2 and "'nope': expected presets from" in capsys.readouterr().err
    assert presets.main(["cpu_tiny"]) == 0
    assert '"name": "cpu_tiny"' in capsys.readouterr().out


@pytest.mark.parametrize("stop_at, steps, advice", [
    (0, 8, "expected a step in [1, 8] (steps = 8; after a resume, above its checkpoint's step), and "
           "--checkpoint-dir DIR"),
    (9, 8, "expected a step in [1, 8] (steps = 8;"),
    (8, 8, "the run ends at step 8 (steps = 8) anyway; leave out --stop-at, or give --checkpoint-dir DIR"),
    (3, 8, "give --checkpoint-dir DIR, or --steps 3 for a shorter run"),
])
def test_stop_at_without_a_checkpoint_dir_gives_advice_that_fits(tmp_path_factory, tmp_path, stop_at, steps, advice):
    """``--stop-at`` without ``--checkpoint-dir``: the advice fits the step (before: ``--stop-at 0`` suggested
    ``--steps 0``, which is refused; ``--stop-at 9`` of 8 steps suggested "--steps 9 for a shorter run")."""
    from fastload.errors import ConfigError
    from profiling.loop import run

    cfg = run_config(tmp_path_factory, steps=steps, warmup=1)
    with pytest.raises(ConfigError) as e:
        run(cfg, mode="train", out=tmp_path / "out", stop_at=stop_at, log=lambda msg: None)
    msg = str(e.value)
    assert msg.startswith(f"--stop-at {stop_at} (stop_at) without --checkpoint-dir (checkpoint_dir): "), msg
    assert advice in msg, msg
    bad = [f"--steps {stop_at} for a shorter run"] if stop_at >= steps or stop_at < 1 else []
    assert not any(b in msg for b in bad), msg
