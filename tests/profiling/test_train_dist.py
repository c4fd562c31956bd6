"""``fastload train`` under torchrun: two processes, gloo on CPU, DistributedDataParallel; each rank reads its own
share, trains, and writes its own report; the checkpoint holds every rank's loader position."""

from __future__ import annotations

import json
import math
import os
import re
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
    assert "rank 0 of 2 (every rank's line below):" in p.stdout  # the table is rank 0's, not the run's (audit L2)
    rates = [float(m) for m in re.findall(r"rank [01]: [\d.]+ ms/step  ([\d.]+) samples/s", p.stdout)]
    total = float(re.search(r"all 2 ranks: ([\d.]+) samples/s", p.stdout).group(1))
    assert len(rates) == 2 and total == pytest.approx(sum(rates), abs=0.11)  # (printed to 0.1)
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


# -- on_bad_chunk = "skip": a batch whose every sample was skipped is handed out empty, so ranks stay in step ------

_EPOCH_LOOP = '''
import dataclasses, datetime, json, logging, sys
import torch, torch.distributed as dist
from fastload.loader import Loader
from tests.profiling.loopdata import sampling

store, norm, out = sys.argv[1:4]
dist.init_process_group("gloo", timeout=datetime.timedelta(seconds=60))
logging.disable(logging.WARNING)
net = torch.nn.parallel.DistributedDataParallel(torch.nn.Linear(1, 1))
opt = torch.optim.SGD(net.parameters(), lr=0.1)
epochs = []
with Loader(store, dataclasses.replace(sampling(norm), batch_size=1), workers=1, samples_per_epoch=16,
            on_bad_chunk="skip", retries=0, device="cpu") as loader:
    for _ in range(2):
        sizes = []
        for b in loader:  # a user's loop: an empty batch still runs the step (zero input, all-reduce joined)
            x = b["t2m"].nan_to_num().mean().reshape(1, 1) if len(b) else torch.zeros(1, 1)
            net(x).sum().backward()
            opt.step()
            opt.zero_grad()
            sizes.append(len(b))
        states = [None, None]
        dist.all_gather_object(states, loader.state_dict())  # e.g. an end-of-epoch checkpoint
        epochs.append({"len": len(loader), "sizes": sizes, "states": [[s["epoch"], s["batch"]] for s in states]})
with open(f"{out}/rank{dist.get_rank()}.json", "w") as fh:
    json.dump(epochs, fh)
dist.destroy_process_group()
'''


def _torchrun(args, cwd, timeout):
    """Run ``torch.distributed.run --nproc_per_node 2 ARGS``; a run past ``timeout`` s (ranks out of step, waiting
    for each other) is killed with its ranks and fails the test instead of hanging it."""
    import signal

    env = {**os.environ, "PYTHONPATH": str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", ""),
           "OMP_NUM_THREADS": "1"}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2", *args]
    p = subprocess.Popen(cmd, cwd=cwd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                         start_new_session=True)
    try:
        out, _ = p.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        os.killpg(p.pid, signal.SIGKILL)
        out, _ = p.communicate()
        pytest.fail(f"the 2-rank run did not finish in {timeout} s (ranks out of step?):\n{out[-3000:]}")
    assert p.returncode == 0, out[-4000:]
    return out


@pytest.mark.dist
@pytest.mark.slow
def test_ranks_take_len_loader_steps_per_epoch_with_skipped_batches(tmp_path_factory, tmp_path):
    """The audit's hang: with every chunk of some hours corrupt and on_bad_chunk='skip', a rank whose batch lost
    all its samples took fewer steps (its batch vanished) and the ranks hung at the next collective. Now each rank
    takes len(loader) batches per epoch, the empty ones where its plan has a bad sample."""
    from fastload.config import LoaderConfig
    from tests.profiling.test_train_skip import bad_copy, empty_steps

    bad, norm = bad_copy(tmp_path_factory, tmp_path)
    script = tmp_path / "epochs.py"
    script.write_text(_EPOCH_LOOP)
    _torchrun([str(script), bad, norm, str(tmp_path)], tmp_path, timeout=240)
    loader = LoaderConfig(workers=1, samples_per_epoch=16, on_bad_chunk="skip")
    for rank in (0, 1):
        empty = empty_steps(bad, norm, loader, epochs=2, rank=rank, world=2)
        assert 0 < sum(empty) < 16
        got = json.loads((tmp_path / f"rank{rank}.json").read_text())
        assert [e["len"] for e in got] == [8, 8]
        assert [s for e in got for s in e["sizes"]] == [0 if bad else 1 for bad in empty]
        assert [e["states"] for e in got] == [[[1, 0], [1, 0]], [[2, 0], [2, 0]]]


@pytest.mark.dist
@pytest.mark.slow
def test_two_process_train_with_empty_batches_stays_in_step(tmp_path_factory, tmp_path):
    """``fastload train`` under DDP on that store: a rank with an empty batch joins the step with a zero loss; a
    step where every rank's batch is empty makes no update; no NaN loss; the report counts what was skipped."""
    from fastload.config import LoaderConfig
    from tests.profiling.test_train_skip import bad_copy, empty_steps

    bad, norm = bad_copy(tmp_path_factory, tmp_path)
    cfg = run_toml(tmp_path, bad, norm, warmup=1)
    out, ck = tmp_path / "out", tmp_path / "ck"
    _torchrun(["-m", "profiling.loop", "train", "--config", str(cfg), "--device", "cpu", "--steps", "16",
               "--set", "loader.batch_size=1", "--set", "loader.on_bad_chunk=skip", "--set", "loader.retries=0",
               "--out", str(out), "--checkpoint-dir", str(ck)], tmp_path, timeout=400)
    loader = LoaderConfig(workers=1, samples_per_epoch=16, on_bad_chunk="skip")
    empty = [empty_steps(bad, norm, loader, epochs=2, rank=r, world=2) for r in (0, 1)]  # 8 batches an epoch
    both = sum(a and b for a, b in zip(*empty))
    assert both and any(a != b for a, b in zip(*empty))  # both kinds of step happen (seed 0)
    for rank in (0, 1):
        s = json.loads((out / f"rank{rank}" / "summary.json").read_text())
        e = sum(empty[rank])
        assert s["skipped"] == {"samples": e, "empty_batches": e, "steps_without_update": both}
        assert math.isfinite(s["final_loss"])
    payload = torch.load(ck / "last.pt", weights_only=True)
    assert payload["step"] == 16
    assert {int(v["step"]) for v in payload["optimizer"]["state"].values()} == {16 - both}
    assert [(s["epoch"], s["batch"]) for s in payload["extra"]["loader"]] == [(1, 8), (1, 8)]  # in step
