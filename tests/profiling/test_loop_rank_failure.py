"""A run that fails on one rank only before its work (a report folder or cache that only its node cannot use, an
exception in its set-up) fails every rank at once: the failing rank with its own error, the others naming it and
its message (``profiling.distributed.all_or_none``), not after ``dist_timeout_s`` in their next collective.

The ranks are started one process each, as srun or each node's own torchrun starts them: a one-node torchrun ends
the other ranks itself when one fails, which would hide a hang here. In the tests with ``stay`` the failing rank
stays alive after its error until the test lets it go: gloo notices a peer process that has ended (its socket
closes), nccl does not, so without the agreement the others would wait the run's ``dist_timeout_s = 300`` s; the
120 s bound turns that hang into a failure (a hang guard, not a speed bound)."""

from __future__ import annotations

import subprocess

import pytest

from tests.profiling.loopdata import run_toml, tiny_store
from tests.profiling.ranks import start_ranks

_RANK = '''
import os, sys
from profiling import loop
from profiling.presets import load_run_config

rank = int(os.environ["RANK"])
case, config, out = sys.argv[1:4]


def boom(*args, **kwargs):
    raise RuntimeError(f"rank {rank}'s {'checkpoint write' if case == 'save' else 'set-up'} failed (test)")


try:
    if case in ("checks", "data", "store"):
        store = ["--store", os.environ["RUN_STORE"]] if "RUN_STORE" in os.environ else []
        loop.main(["train", "--config", config, "--device", "cpu", "--steps", "3", "--out", out, *store])
    elif case == "save":  # rank 0 cannot write the checkpoint at the last step (say, its disk is full)
        import model
        if rank == 0:
            model.save_checkpoint = boom
        cfg = load_run_config(config, overrides=["steps=3", "device=cpu", f"checkpoint_dir={out}/ckpt"])
        loop.run(cfg, mode="train", out=out)
    else:
        cfg = load_run_config(config, overrides=["steps=3", "device=cpu"])
        loop.run(cfg, mode="train", out=out, **({f"wrap_{case}": boom} if rank == 1 else {}))
    print(f"rank {rank} finished", flush=True)
    os._exit(0)
except Exception as e:
    print(f"rank {rank} raised {type(e).__name__}: {e}", flush=True)
    if type(e).__name__ != "RankFailedError":  # this rank failed on its own: it stays until the test lets it go
        sys.stdin.read()
    os._exit(3)
'''

_HANG_GUARD_S = 120


def _finish(procs, failing):
    """(output of each rank, exit status of each rank): the other rank's first (within the hang guard), then the
    failing rank's, let go by closing its stdin."""
    other = procs[1 - failing]
    try:
        out_other, _ = other.communicate(timeout=_HANG_GUARD_S)
    except subprocess.TimeoutExpired:
        for p in procs:
            p.kill()
        said = [p.communicate()[0] for p in procs]
        pytest.fail(f"rank {1 - failing} still waits {_HANG_GUARD_S} s after rank {failing} failed (dist_timeout_s "
                    f"= 300): {said[failing][-2000:]}\n---\n{said[1 - failing][-2000:]}")
    out_failing, _ = procs[failing].communicate(input="", timeout=60)
    outs = [out_failing, out_other] if failing == 0 else [out_other, out_failing]
    return outs, [p.returncode for p in procs]


@pytest.mark.dist
@pytest.mark.slow
@pytest.mark.parametrize("case, failing", [("store", 1), ("checks", 1), ("data", 0), ("model", 1), ("loader", 1),
                                           ("save", 0)])
def test_one_ranks_failure_before_the_work_fails_every_rank_at_once(case, failing, tmp_path_factory, tmp_path):
    """store: rank 1's ``--store`` is not there (the command line's check, before run() starts); checks: rank 1's
    report folder is a file; data: rank 0 cannot synthesise the built-in dataset (its FASTLOAD_CACHE is a file)
    while rank 1 waits for it; model, loader: rank 1's set-up raises (``wrap_model``, ``wrap_loader``); save: the
    one failure during the work, rank 0's checkpoint write at the last step raises (before: rank 1 went on to the
    barrier after the write and waited there ``dist_timeout_s``)."""
    script = tmp_path / "rank.py"
    script.write_text(_RANK)
    out = tmp_path / "out"
    env_of = {}
    if case == "data":  # no store: rank 0 synthesises the built-in dataset into FASTLOAD_CACHE
        config = tmp_path / "run.toml"
        config.write_text('preset = "cpu_tiny"\ndist_timeout_s = 300\n')
        (tmp_path / "afile").write_text("x")
        env_of = {0: {"FASTLOAD_CACHE": str(tmp_path / "afile")}, 1: {"FASTLOAD_CACHE": str(tmp_path / "cache")}}
        own = f"ConfigError: FASTLOAD_CACHE = '{tmp_path / 'afile'}': cannot be the folder of the built-in dataset"
        stretch = "the data preparation (rank 0 first)"
    else:
        store, norm = tiny_store(tmp_path_factory)
        config = run_toml(tmp_path, store, norm, warmup=1, dist_timeout_s=300)
        if case == "store":
            env_of = {0: {"RUN_STORE": store}, 1: {"RUN_STORE": str(tmp_path / "nowhere.zarr")}}
            own = f"StoreNotFoundError: --store: {tmp_path / 'nowhere.zarr'}: no such file or folder"
            stretch = "the store check (--store, data.store)"
        elif case == "checks":
            out.mkdir()
            (out / "rank1").write_text("x")
            own = f"ConfigError: --out: '{out / 'rank1'}' is a file; expected a folder"
            stretch = "the run's checks (report folder, checkpoints)"
        elif case == "save":
            own = "RuntimeError: rank 0's checkpoint write failed (test)"
            stretch = f"writing the checkpoint {out / 'ckpt' / 'last.pt'}"
        else:
            own = "RuntimeError: rank 1's set-up failed (test)"
            stretch = "the model and loader set-up" if case == "model" else "the resume and instruments set-up"
    procs = start_ranks([str(script), case, str(config), str(out)], tmp_path, env_of=env_of)
    outs, codes = _finish(procs, failing)
    other = 1 - failing
    assert codes == [3, 3], outs
    assert f"rank {failing} raised {own}" in outs[failing], outs[failing][-3000:]
    assert (f"rank {other} raised RankFailedError: rank {other} of 2: stopping because rank(s) {failing} failed "
            f"{stretch}: rank {failing}: {own}") in outs[other], outs[other][-3000:]
    if case == "data":  # rank 1 never synthesised a dataset of its own
        assert not (tmp_path / "cache").exists()


@pytest.mark.dist
@pytest.mark.slow
def test_the_command_line_exits_2_on_every_rank(tmp_path_factory, tmp_path):
    """``python -m profiling.loop train`` on two ranks, rank 1's report folder a file: each rank prints one error
    line and exits with status 2, rank 0's naming rank 1's error (before: rank 0's barrier failed as rank 1's
    process ended, with gloo's "Connection closed by peer" and "another rank stopped taking part")."""
    store, norm = tiny_store(tmp_path_factory)
    config = run_toml(tmp_path, store, norm, warmup=1, dist_timeout_s=300)
    out = tmp_path / "out"
    out.mkdir()
    (out / "rank1").write_text("x")
    procs = start_ranks(["-m", "profiling.loop", "train", "--config", str(config), "--device", "cpu", "--steps", "3",
                         "--out", str(out)], tmp_path)
    try:
        outs = [p.communicate(input="", timeout=_HANG_GUARD_S)[0] for p in procs]
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
                p.wait()
    own = f"--out: '{out / 'rank1'}' is a file; expected a folder"
    assert [p.returncode for p in procs] == [2, 2], outs
    assert f"fastload train: error: {own}" in outs[1], outs[1][-3000:]
    assert (f"fastload train: error: rank 0 of 2: stopping because rank(s) 1 failed the run's checks (report "
            f"folder, checkpoints): rank 1: ConfigError: {own}") in outs[0], outs[0][-3000:]


_NAN_RANK = '''
import os, sys
from profiling import loop
from profiling.presets import load_run_config

rank = int(os.environ["RANK"])
config, out = sys.argv[1:3]
real = loop.check_loss_finite


def nan_on_rank_1(mean, first, last, *args):  # rank 1's loss read at step 2 is nan, rank 0's finite
    return real(float("nan") if rank == 1 and last >= 2 else mean, first, last, *args)


loop.check_loss_finite = nan_on_rank_1
try:
    cfg = load_run_config(config, overrides=["steps=4", "device=cpu", "log_every=2", f"checkpoint_dir={out}/ck"])
    loop.run(cfg, mode="train", out=out)
    print(f"rank {rank} finished", flush=True)
    os._exit(0)
except Exception as e:
    print(f"rank {rank} raised {type(e).__name__}: {e}", flush=True)
    if type(e).__name__ != "RankFailedError":  # this rank failed on its own: it stays until the test lets it go
        sys.stdin.read()
    os._exit(3)
'''


@pytest.mark.dist
@pytest.mark.slow
def test_a_loss_not_finite_on_one_rank_stops_every_rank(tmp_path_factory, tmp_path):
    """Rank 1's loss read at step 2 is not finite, rank 0's is: rank 1 stops with the loss error, rank 0 with
    RankFailedError naming it, at once (the check is agreed, all_or_none), not after dist_timeout_s in the next
    collective; the run stops before its checkpoint (at the last step, 4)."""
    script = tmp_path / "rank.py"
    script.write_text(_NAN_RANK)
    store, norm = tiny_store(tmp_path_factory)
    config = run_toml(tmp_path, store, norm, warmup=1, dist_timeout_s=300)
    out = tmp_path / "out"
    procs = start_ranks([str(script), str(config), str(out)], tmp_path)
    outs, codes = _finish(procs, 1)
    assert codes == [3, 3], outs
    own = "LossNotFiniteError: the training loss is nan (the mean over step 2)"
    assert f"rank 1 raised {own}" in outs[1], outs[1][-3000:]
    assert (f"rank 0 raised RankFailedError: rank 0 of 2: stopping because rank(s) 1 failed the loss check at step "
            f"2: rank 1: {own}") in outs[0], outs[0][-3000:]
    assert not (out / "ck" / "last.pt").exists()
