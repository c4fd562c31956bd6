"""``fastload profile`` under DDP (2 gloo ranks on the CPU): the run's data stall and samples/s from every rank's
steps, gathered once at the end; rank 1's loader is slow, so rank 0 waits for it inside DDP's collectives."""

from __future__ import annotations

import csv
import json
import re

import numpy as np
import pytest

from tests.profiling.ranks import torchrun_on_tiny_store

_SLOW_RANK = '''
import sys
from profiling.loop import run
from profiling.presets import load_run_config
from tests.profiling.ranks import Slow  # rank 1's batches come 30 ms late

cfg = load_run_config(sys.argv[1], overrides=["steps=6", "warmup=1", "device=cpu"])
run(cfg, mode="profile", out=sys.argv[2], wrap_loader=Slow)
'''


@pytest.mark.dist
@pytest.mark.slow
def test_ddp_profile_reports_the_runs_stall_and_rate_from_every_rank(tmp_path_factory, tmp_path):
    said, out = torchrun_on_tiny_store(_SLOW_RANK, tmp_path_factory, tmp_path)
    rows = []
    for r in (0, 1):
        with open(out / f"rank{r}" / "steps.csv", newline="") as f:
            rows.append(list(csv.DictReader(f)))
    assert [x["step"] for x in rows[0]] == [x["step"] for x in rows[1]] and len(rows[0]) == 5
    col = {k: np.array([[float(x[k]) for x in rr] for rr in rows]) for k in ("step_ms", "data_wait_ms", "samples")}
    stall = col["data_wait_ms"].max(axis=0).sum() / col["step_ms"].max(axis=0).sum()
    seconds = col["step_ms"].sum(axis=1).max() / 1e3
    rate = col["samples"].sum() / seconds
    for r in (0, 1):  # every rank's summary.json holds the run's numbers
        run = json.loads((out / f"rank{r}" / "summary.json").read_text())["run"]
        assert run["stall_fraction"] == pytest.approx(stall) and run["samples_per_s"] == pytest.approx(rate)
        assert run["seconds"] == pytest.approx(seconds) and run["steps"] == 5 and run["world_size"] == 2
    m = re.search(r"all 2 ranks: ([\d.]+) samples/s \((\d+) samples in the slowest rank's ([\d.]+) s\), data stall "
                  r"([\d.]+)%", said)
    assert m, said[-3000:]
    assert float(m.group(1)) == pytest.approx(rate, abs=0.051) and int(m.group(2)) == col["samples"].sum()
    assert float(m.group(4)) == pytest.approx(100 * stall, abs=0.051)
    assert "include its wait for the other ranks" in said
