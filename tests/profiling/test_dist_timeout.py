"""The collective timeout of ``fastload train`` under torchrun (``dist_timeout_s``): a setting of the run config,
given to ``init_process_group``, so a rank that never joins a collective fails the others with a clear error after
it instead of hanging them for torch's default (30 min with gloo); and the nccl environment that would keep the
timeout from acting is named."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from fastload.errors import ConfigError
from profiling.distributed import nccl_timeout_problem
from profiling.presets import get_preset, load_run_config

ROOT = Path(__file__).resolve().parents[2]


def test_the_timeout_is_a_run_setting_with_a_ten_minute_default(tmp_path):
    assert get_preset("cpu_tiny").dist_timeout_s == 600.0
    assert load_run_config(preset="cpu_tiny", overrides=["dist_timeout_s=45"]).dist_timeout_s == 45.0
    run = tmp_path / "run.toml"
    run.write_text('preset = "cpu_tiny"\ndist_timeout_s = 90\n')
    cfg = load_run_config(run)
    assert cfg.dist_timeout_s == 90 and cfg.to_dict()["dist_timeout_s"] == 90  # reports and checkpoints keep it
    for bad in ("0", "-5", "0.5", "inf", "soon"):
        with pytest.raises(ConfigError, match="dist_timeout_s"):
            load_run_config(preset="cpu_tiny", overrides=[f"dist_timeout_s={bad}"])


@pytest.mark.parametrize("env, acts", [
    ({}, True),                                                   # torch's default: 3, the watchdog ends the process
    ({"TORCH_NCCL_ASYNC_ERROR_HANDLING": "3"}, True),
    ({"TORCH_NCCL_ASYNC_ERROR_HANDLING": "1"}, True),
    ({"TORCH_NCCL_ASYNC_ERROR_HANDLING": "0"}, False),
    ({"NCCL_ASYNC_ERROR_HANDLING": "0"}, False),                  # the older name torch still reads
    ({"TORCH_NCCL_ASYNC_ERROR_HANDLING": "0", "TORCH_NCCL_BLOCKING_WAIT": "1"}, True),
    ({"NCCL_ASYNC_ERROR_HANDLING": "0", "NCCL_BLOCKING_WAIT": "1"}, True),
    ({"TORCH_NCCL_ASYNC_ERROR_HANDLING": "3", "NCCL_ASYNC_ERROR_HANDLING": "0"}, True),  # the new name wins
])
def test_the_nccl_environment_that_keeps_the_timeout_from_acting_is_named(env, acts):
    problem = nccl_timeout_problem(env)
    if acts:
        assert problem is None
    else:
        assert "TORCH_NCCL_ASYNC_ERROR_HANDLING=0" in problem and "TORCH_NCCL_BLOCKING_WAIT=1" in problem


# Rank 0 gathers (as save_run does for a checkpoint); rank 1 never joins: it waits for its stdin to close.
_RANK = textwrap.dedent("""
    import dataclasses, os, sys, time
    from profiling.distributed import gather, init_distributed
    from profiling.presets import get_preset

    cfg = dataclasses.replace(get_preset("cpu_tiny"), device="cpu", dist_timeout_s=float(sys.argv[1]))
    rank, world, device = init_distributed(cfg)
    print(f"started rank {rank} of {world} on {device}", flush=True)
    if rank == 1:
        sys.stdin.read()
        os._exit(0)
    t0 = time.monotonic()
    try:
        gather({"batch": 3}, world, "the loader positions")
    except Exception as e:
        print(f"{type(e).__name__} after {time.monotonic() - t0:.1f} s: {e}", flush=True)
        os._exit(3)
    os._exit(0)
""")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.dist
@pytest.mark.slow
def test_a_rank_that_never_joins_fails_the_other_after_the_timeout_with_a_clear_error(tmp_path):
    port = str(_free_port())
    procs = []
    for rank in (0, 1):
        env = {**os.environ, "PYTHONPATH": str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", ""),
               "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": port, "RANK": str(rank), "LOCAL_RANK": str(rank),
               "WORLD_SIZE": "2", "LOCAL_WORLD_SIZE": "2", "OMP_NUM_THREADS": "1"}
        procs.append(subprocess.Popen([sys.executable, "-c", _RANK, "3"], cwd=tmp_path, env=env,
                                      stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                      text=True))
    r0, r1 = procs
    try:  # torch's default would keep rank 0 waiting 30 min: this bound only turns that hang into a failure
        out0, _ = r0.communicate(timeout=150)
    finally:
        if r0.poll() is None:
            r0.kill()
        out1, _ = r1.communicate(input="", timeout=60)  # rank 1 ends when its stdin closes
    assert "started rank 0 of 2 on cpu" in out0 and "started rank 1 of 2 on cpu" in out1, out0 + out1
    assert r0.returncode == 3, out0
    line = next(ln for ln in out0.splitlines() if ln.startswith("CollectiveError after "))
    waited = float(line.split()[2])
    assert waited >= 2.9, line  # it waited the configured 3 s for rank 1 (a lower bound, not a speed one)
    assert "rank 0 of 2: gathering the loader positions from every rank did not complete" in line
    assert "dist_timeout_s = 3 s" in line and "--set dist_timeout_s=S" in line


@pytest.mark.dist
@pytest.mark.slow
def test_a_frozen_rank_ends_fastload_train_after_the_timeout_instead_of_hanging_it(tmp_path_factory, tmp_path):
    """The audit's case: SIGSTOP to rank 1 of a training run; rank 0 fails in its next collective after the run
    file's ``dist_timeout_s`` (5 s), where before it waited torch's 30 min."""
    import signal
    import time

    from tests.profiling.loopdata import run_toml, tiny_store

    store, norm = tiny_store(tmp_path_factory)
    cfg = run_toml(tmp_path, store, norm, warmup=0, log_every=1, dist_timeout_s=5)
    port, procs, logs = str(_free_port()), [], []
    for rank in (0, 1):
        env = {**os.environ, "PYTHONPATH": str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", ""),
               "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": port, "RANK": str(rank), "LOCAL_RANK": str(rank),
               "WORLD_SIZE": "2", "LOCAL_WORLD_SIZE": "2", "OMP_NUM_THREADS": "1"}
        logs.append(tmp_path / f"rank{rank}.log")
        with logs[-1].open("w") as f:
            procs.append(subprocess.Popen(
                [sys.executable, "-m", "profiling.loop", "train", "--config", str(cfg), "--device", "cpu",
                 "--steps", "100000", "--out", str(tmp_path / "out")], cwd=tmp_path, env=env, stdout=f,
                stderr=subprocess.STDOUT))
    r0, r1 = procs
    try:
        for _ in range(600):  # (hang guards, not speed bounds) rank 0 has finished a step: both are training
            if "step 1/" in logs[0].read_text() or r0.poll() is not None or r1.poll() is not None:
                break
            time.sleep(0.5)
        assert "step 1/" in logs[0].read_text(), logs[0].read_text()[-3000:] + logs[1].read_text()[-3000:]
        r1.send_signal(signal.SIGSTOP)
        rc = r0.wait(timeout=240)  # torch's default would keep it waiting 30 min
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
            p.wait(timeout=60)
    out = logs[0].read_text()
    assert rc != 0, out[-3000:]
    # rank 0 waits in DDP's gradient all-reduce (or a later collective): either way it names the setting
    assert "dist_timeout_s = 5 s" in out, out[-3000:]


def test_a_guarded_backward_turns_only_collective_errors_into_collective_errors(tmp_path):
    """``collective(..., among_other_work=True)`` (DDP's backward): an error of the collective layer becomes a
    CollectiveError naming the setting; any other RuntimeError of the block (autograd, out of memory) passes as
    it is, not blamed on another rank."""
    import torch.distributed as dist

    from profiling.distributed import CollectiveError, collective

    dist.init_process_group("gloo", init_method=f"file://{tmp_path / 'rdv'}", rank=0, world_size=1)
    try:
        with pytest.raises(RuntimeError, match="^CUDA out of memory") as e:
            with collective("the gradient all-reduce (backward)", among_other_work=True):
                raise RuntimeError("CUDA out of memory. Tried to allocate 2.00 GiB")
        assert not isinstance(e.value, CollectiveError)
        with pytest.raises(CollectiveError, match=r"rank 0 of 1: the gradient all-reduce \(backward\) did not "
                                                  r"complete .*Timed out waiting 5000ms"):
            with collective("the gradient all-reduce (backward)", among_other_work=True):
                raise RuntimeError("[gloo/transport/tcp/unbound_buffer.cc:81] Timed out waiting 5000ms for recv")
        with pytest.raises(CollectiveError, match="did not complete"):
            with collective("gathering the run summaries from every rank"):
                raise RuntimeError("anything, inside a block that is only a collective")
    finally:
        dist.destroy_process_group()


def test_a_group_init_distributed_starts_is_destroyed_at_exit(monkeypatch):
    """A process that exits with its gloo group alive can abort in C++ teardown ("terminate called without an active
    exception", status -6: a rank failing its checks reported -6 instead of 2 in one CI run of session 14). The
    group init_distributed starts is destroyed by an atexit handler, a no-op once destroyed."""
    import atexit
    import dataclasses

    import torch.distributed as dist

    from profiling import distributed

    state = {"up": False, "destroyed": 0}
    handlers: list = []
    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setattr(dist, "is_initialized", lambda: state["up"])
    monkeypatch.setattr(dist, "init_process_group", lambda *a, **k: state.update(up=True))
    monkeypatch.setattr(dist, "destroy_process_group", lambda *a, **k: state.update(up=False,
                                                                                  destroyed=state["destroyed"] + 1))
    monkeypatch.setattr(dist, "get_rank", lambda *a: 0)
    monkeypatch.setattr(dist, "get_world_size", lambda *a: 2)
    monkeypatch.setattr(atexit, "register", lambda f, *a, **k: handlers.append(f))
    distributed.init_distributed(dataclasses.replace(get_preset("cpu_tiny"), device="cpu"))
    assert state["up"] and len(handlers) == 1
    handlers[0]()
    assert state == {"up": False, "destroyed": 1}
    handlers[0]()  # destroyed already: nothing more
    assert state["destroyed"] == 1
