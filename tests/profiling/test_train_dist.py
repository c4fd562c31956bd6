"""``fastload train`` under torchrun: two processes, gloo on CPU, DistributedDataParallel; each rank reads its own
share, trains, and writes its own report; the checkpoint holds every rank's loader position."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from tests.profiling.loopdata import BATCH, run_toml, tiny_store

ROOT = Path(__file__).resolve().parents[2]


@pytest.mark.dist
@pytest.mark.slow
def test_two_process_gloo_run_trains_and_reports_per_rank(tmp_path_factory, tmp_path):
    store, norm = tiny_store(tmp_path_factory)
    cfg = run_toml(tmp_path, store, norm, warmup=1)
    out, ck = tmp_path / "out", tmp_path / "ck"
    env = {**os.environ, "PYTHONPATH": str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", ""),
           "OMP_NUM_THREADS": "1"}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
           "-m", "profiling.loop", "train", "--config", str(cfg), "--device", "cpu", "--steps", "4",
           "--out", str(out), "--checkpoint-dir", str(ck)]
    p = subprocess.run(cmd, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=540)
    assert p.returncode == 0, p.stdout[-3000:] + p.stderr[-3000:]
    assert "per rank:" in p.stdout and "rank 0:" in p.stdout and "rank 1:" in p.stdout
    for rank in (0, 1):
        s = json.loads((out / f"rank{rank}" / "summary.json").read_text())
        assert s["rank"] == rank and s["world_size"] == 2 and s["mode"] == "train"
        assert s["steps"] == 3 and s["samples"] == 3 * BATCH  # warm-up step left out; each rank's own batches
        assert (out / f"rank{rank}" / "steps.png").is_file()
    payload = torch.load(ck / "last.pt", weights_only=True)
    assert payload["step"] == 4 and payload["extra"]["world_size"] == 2
    states = payload["extra"]["loader"]
    assert [s["rank"] for s in states] == [0, 1] and all(s["world_size"] == 2 for s in states)
    assert all(s["batch"] == 4 and s["epoch"] == 0 for s in states)  # 16 samples / 2 ranks / batch 2 = 4 batches
