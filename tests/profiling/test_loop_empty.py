"""``fastload profile`` with ``loader.on_bad_chunk = "skip"``: a timed step whose batch held no sample trained on
nothing; the report's statistics are over the steps that trained, and the empty ones are counted apart."""

from __future__ import annotations

import csv
import dataclasses
import logging

import numpy as np
import pytest

from fastload.config import LoaderConfig
from profiling.presets import DataConfig
from tests.profiling.loopdata import run_config, sampling
from tests.profiling.test_train_skip import bad_copy, empty_steps


def test_profile_leaves_empty_steps_out_of_the_statistics(tmp_path_factory, tmp_path, caplog):
    from profiling.loop import run

    bad, norm = bad_copy(tmp_path_factory, tmp_path)
    loader = LoaderConfig(workers=1, prefetch=2, samples_per_epoch=8, on_bad_chunk="skip", retries=0)
    empty = empty_steps(bad, norm, loader, epochs=2)
    cfg = run_config(tmp_path_factory, data=DataConfig(sampling=dataclasses.replace(sampling(norm), batch_size=1),
                                                       store=bad), loader=loader, steps=16, warmup=1)
    caplog.set_level(logging.ERROR, logger="fastload")  # (each skipped sample warns)
    lines: list[str] = []
    s = run(cfg, mode="profile", out=tmp_path / "out", log=lines.append)
    with open(tmp_path / "out" / "steps.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    assert [int(r["samples"]) == 0 for r in rows] == empty[1:]  # (the warm-up step is not a row)
    n_empty = sum(empty[1:])
    assert 0 < n_empty < len(rows) == 15
    full = [r for r in rows if int(r["samples"])]
    step = np.array([float(r["step_ms"]) for r in full])
    assert s["steps"] == 15 and s["trained_steps"] == 15 - n_empty and s["empty_steps"]["steps"] == n_empty
    assert s["step"]["mean_ms"] == pytest.approx(step.mean())
    fwd = np.array([float(r["forward_ms"]) for r in full])
    assert s["phases"]["forward"]["mean_ms"] == pytest.approx(fwd.mean())
    assert s["phases"]["forward"]["share"] == pytest.approx(fwd.sum() / step.sum())
    every = sum(float(r["step_ms"]) for r in rows)
    assert s["empty_steps"]["total_ms"] == pytest.approx(every - step.sum())
    assert s["samples_per_s"] == pytest.approx((15 - n_empty) / (every / 1e3))  # batch size 1
    assert any(ln.startswith(f"empty steps: {n_empty} of 15 timed steps") for ln in "\n".join(lines).splitlines())
