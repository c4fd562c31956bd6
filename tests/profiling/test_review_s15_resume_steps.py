"""``--resume`` of a run already at its ``steps``, and a ``--stop-at`` outside the steps left (review s15, finding 7):
the error said "it cannot stop at step 8 of steps = 8" with no --stop-at given, and only after the data, model and
loader set-up. Now it names --steps and the checkpoint, and comes before the set-up (the checkpoint's step read
alone)."""

from __future__ import annotations

import dataclasses
import re

import pytest
import torch

import profiling.loop as loop
from fastload.cli import main as cli
from fastload.errors import ConfigError
from profiling._loop_checks import checkpoint_step
from profiling.loop import run
from tests.profiling.loopdata import run_config, run_toml, tiny_store

SET_UP = ("data:", "model:", "loader:", "resumed from", "step ")


@pytest.fixture(scope="module")
def finished(tmp_path_factory):
    """A run of steps = 2 trained to its end: ``(cfg, its last.pt)``."""
    ck = tmp_path_factory.mktemp("ck")
    cfg = run_config(tmp_path_factory, steps=2, warmup=0, checkpoint_dir=str(ck))
    run(cfg, mode="train", out=tmp_path_factory.mktemp("r"), log=lambda m: None)
    return cfg, ck / "last.pt"


def _already(ckpt, steps: int, step: int) -> str:
    return (rf"^steps = {steps} \(--steps\): the run is already at its steps \(its checkpoint --resume "
            rf"'{re.escape(str(ckpt))}' is at step {step}\): nothing left to train; raise --steps above {step} to "
            r"train on$")


def test_checkpoint_step_reads_the_saved_step(finished, tmp_path):
    _, ckpt = finished
    assert checkpoint_step(ckpt) == torch.load(ckpt, weights_only=True)["step"] == 2
    (tmp_path / "run.toml").write_text("steps = 4\n")
    (tmp_path / "trunc.pt").write_bytes(ckpt.read_bytes()[:100])
    assert checkpoint_step(tmp_path / "run.toml") is None and checkpoint_step(tmp_path / "trunc.pt") is None


def test_resuming_a_finished_run_names_steps_before_the_set_up(finished, tmp_path):
    cfg, ckpt = finished
    logs: list[str] = []
    with pytest.raises(ConfigError, match=_already(ckpt, 2, 2)):
        run(cfg, mode="train", out=tmp_path / "r", resume=ckpt, log=logs.append)
    assert not [m for m in logs if m.startswith(SET_UP)], logs  # no data, model or loader set up
    assert not (tmp_path / "r").exists()


def test_the_cli_exits_2_with_that_line(finished, tmp_path_factory, tmp_path, capsys):
    cfg, ckpt = finished
    store, norm = tiny_store(tmp_path_factory)
    toml = run_toml(tmp_path, store, norm, warmup=0)
    assert cli(["train", "--config", str(toml), "--device", "cpu", "--steps", "2", "--checkpoint-dir",
                str(ckpt.parent), "--resume", "--out", str(tmp_path / "r")]) == 2
    cap = capsys.readouterr()
    assert re.search(_already(ckpt, 2, 2).replace("^", "^fastload train: error: "), cap.err.strip())
    assert "--stop-at" not in cap.err and "model:" not in cap.out


@pytest.mark.parametrize("stop_at", [1, 2, 5])
def test_a_stop_at_outside_the_steps_left_names_the_range(finished, tmp_path, stop_at):
    cfg, ckpt = finished
    logs: list[str] = []
    with pytest.raises(ConfigError, match=rf"^--stop-at {stop_at} \(stop_at\): the run cannot stop at step {stop_at}: "
                                          rf"expected a step in \[3, 4\] \(its checkpoint --resume "
                                          rf"'{re.escape(str(ckpt))}' is at step 2; steps = 4\)$"):
        run(dataclasses.replace(cfg, steps=4), mode="train", out=tmp_path / "r", resume=ckpt, stop_at=stop_at,
            log=logs.append)
    assert not [m for m in logs if m.startswith(SET_UP)], logs


def test_a_stop_at_beyond_steps_without_resume_fails_before_the_set_up(finished, tmp_path):
    cfg, _ = finished
    logs: list[str] = []
    with pytest.raises(ConfigError, match=r"^--stop-at 5 \(stop_at\): the run cannot stop at step 5: expected a step "
                                          r"in \[1, 2\] \(it starts at step 0; steps = 2\)$"):
        run(cfg, mode="train", out=tmp_path / "r", stop_at=5, log=logs.append)
    assert not [m for m in logs if m.startswith(SET_UP)], logs


def test_the_step_the_resume_restores_is_checked_too(finished, tmp_path, monkeypatch):
    """A checkpoint whose step cannot be read alone (here: the cheap read patched out) is still refused with the
    same message, after the resume restored its step."""
    cfg, ckpt = finished
    monkeypatch.setattr(loop, "checkpoint_step", lambda path: None)
    logs: list[str] = []
    with pytest.raises(ConfigError, match=_already(ckpt, 2, 2)):
        run(cfg, mode="train", out=tmp_path / "r", resume=ckpt, log=logs.append)
    assert any(m.startswith("resumed from") for m in logs)
