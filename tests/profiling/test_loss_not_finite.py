"""A run whose loss is not finite (diverged: ``optim.lr = 1000`` on the loop tests' tiny store) stops at the first
log line or checkpoint that reads it, naming the steps, the value and the likely settings, and exits 2 with one
error line; the checkpoint written before is left byte for byte (before: the loss was nan from step 4, ``last.pt``
was overwritten with the diverged model at step 12 and the run exited 0)."""

from __future__ import annotations

import math
import re

from tests.profiling.loopdata import run_toml, tiny_store


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
