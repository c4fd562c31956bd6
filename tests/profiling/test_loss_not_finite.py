"""A run whose loss is not finite (diverged: ``optim.lr = 1000`` on the loop tests' tiny store) stops at the first
log line or checkpoint that reads it, naming the steps, the value and the likely settings, and exits 2 with one
error line; the checkpoint written before is left byte for byte (before: the loss was nan from step 4, ``last.pt``
was overwritten with the diverged model at step 12 and the run exited 0).

Also here (this task's own test files are this one and test_rank_agreement.py; they belong beside their kind in
test_loop_profiler.py and test_train_checkpoints.py): what the run reports it did, checked against what it did:
the steps ``--torch-profiler`` says it traced against the trace files."""

from __future__ import annotations

import json
import math
import re

import pytest

from tests.profiling.loopdata import run_config, run_toml, tiny_store


def test_a_diverged_run_stops_before_its_next_checkpoint(tmp_path_factory, tmp_path, monkeypatch, capsys):
    from fastload.cli import main
    from profiling import loop

    store, norm = tiny_store(tmp_path_factory)
    config = run_toml(tmp_path, store, norm, warmup=1)
    ck = tmp_path / "ck"
    saved: list[tuple[int, bytes]] = []  # (step, the bytes of last.pt written then)
    real = loop.save_run

    def spy(path, net, opt, step, *a):
        real(path, net, opt, step, *a)
        saved.append((step, path.read_bytes()))

    monkeypatch.setattr(loop, "save_run", spy)
    code = main(["train", "--config", str(config), "--device", "cpu", "--steps", "12", "--out", str(tmp_path / "out"),
                 "--checkpoint-dir", str(ck), "--set", "optim.lr=1000", "--set", "checkpoint_every=1",
                 "--set", "log_every=4"])
    err = capsys.readouterr().err
    assert code == 2, err
    lines = [x for x in err.splitlines() if x.startswith("fastload train: error: ")]
    assert len(lines) == 1, err
    m = re.search(r"the training loss is (\S+) \(the mean over (?:step (\d+)|steps (\d+)-(\d+))[;)]", lines[0])
    assert m, lines[0]
    assert not math.isfinite(float(m.group(1)))
    bad_step = int(m.group(2) or m.group(4))
    # the checks at the checkpoints between log lines (every step) passed through the step before
    assert f"; finite through step {bad_step - 1})" in lines[0] or not m.group(3), lines[0]
    assert "optim.lr = 1000" in lines[0] and "optim.grad_clip" in lines[0] and "bf16" in lines[0]
    # a checkpoint at every step whose loss was finite, none at or after the step that stopped the run
    assert saved and [s for s, _ in saved] == list(range(1, bad_step)), (saved, lines[0])
    assert (ck / "last.pt").read_bytes() == saved[-1][1]
    assert bad_step < 12
    assert not (tmp_path / "out" / "summary.json").exists()


def _traced_steps(folder):
    """The loop steps (from 0 in the run) whose ``ProfilerStep#N`` annotations the trace files in ``folder`` hold."""
    import gzip
    import re

    found = set()
    for path in folder.glob("*.pt.trace.json*"):
        with gzip.open(path, "rt") if path.suffix == ".gz" else open(path) as f:
            text = f.read()
        found |= {int(n) for n in re.findall(r'"name": ?"ProfilerStep#(\d+)"', text)}
    return found


@pytest.mark.parametrize("steps,warmup", [(10, 2), (12, 2)])
def test_the_traced_steps_said_are_the_trace_files(tmp_path_factory, tmp_path, steps, warmup):
    """``summary.json`` ``torch_profiler.traced_steps`` and the console line name the steps whose ProfilerStep#N
    the trace holds (console numbering: #N is step N + 1). Before: the profiler's warm-up step was counted in,
    which it does not record ("trace of steps 6-10" for a trace of ProfilerStep#6..#9, steps 7-10)."""
    cfg = run_config(tmp_path_factory, steps=steps, warmup=warmup)
    lines: list[str] = []
    from profiling.loop import run

    run(cfg, out=tmp_path / "r", torch_profiler=str(tmp_path / "tb"), log=lines.append)
    traced = sorted(n + 1 for n in _traced_steps(tmp_path / "tb"))
    assert traced and traced == list(range(traced[0], traced[-1] + 1)) and traced[-1] == steps
    summary = json.loads((tmp_path / "r" / "summary.json").read_text())
    assert summary["torch_profiler"]["traced_steps"] == [traced[0], traced[-1]]
    said = [ln for ln in lines if ln.startswith("torch.profiler trace")]
    assert said and said[0].startswith(f"torch.profiler trace of steps {traced[0]}-{traced[-1]}: "), said


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
