"""Every rank of a run trains with the same settings: they are gathered once in the run's checks and, where they
differ, every rank fails at once naming each differing key and each rank's value
(``profiling.distributed.run_settings``, ``check_same_settings``). Before: rank 1 with another ``model.embed_dim``
died in DDP's constructor with its raw traceback, one with other ``--steps`` left both ranks waiting
``dist_timeout_s`` in a collective, and one with another ``optim.lr`` exited 0 with a diverged replica."""

from __future__ import annotations

import dataclasses

import pytest

from fastload.errors import ConfigError
from tests.profiling.loopdata import run_toml, tiny_store
from tests.profiling.ranks import start_ranks

_HANG_GUARD_S = 120

# the command line with rank r's own extra arguments (EXTRA), as two nodes' launchers given other flags would run it
_CLI = "import os, sys; from fastload.cli import main; sys.exit(main(sys.argv[1:] + os.environ['EXTRA'].split()))"


def test_settings_that_may_differ_per_rank_are_not_compared(tmp_path):
    from profiling.distributed import check_same_settings, run_settings
    from profiling.presets import load_run_config

    a = load_run_config(None, preset="cpu_tiny")
    b = load_run_config(None, preset="cpu_tiny", overrides=[
        "device=cpu", "threads=3", "dist_timeout_s=30", f"checkpoint_dir={tmp_path}/c", f"report_dir={tmp_path}/r",
        f"data.cache_dir={tmp_path}/cache", "data.latency_ms=5", "loader.workers=7", "loader.prefetch=5",
        "loader.cache_bytes=0", "loader.fetch_concurrency=2", "loader.read_ahead_bytes=1000",
        "loader.pin_memory=false", "loader.read_timeout_s=9", "loader.worker_start_timeout_s=9"])
    check_same_settings([run_settings(a, "train", None, False), run_settings(b, "train", None, False)])
    s = run_settings(a, "train", 4, True)
    assert s["model.embed_dim"] == a.model.embed_dim and s["optim.lr"] == a.optim.lr and s["steps"] == a.steps
    assert s["stop_at (--stop-at)"] == 4 and s["resume (--resume)"] is True and s["mode"] == "train"
    assert not any(k.startswith("loader.workers") or k == "device" or k == "data.store" for k in s)
    # a stream's store and coefficients are paths too; its time rule is compared
    sa = {"streams": {"era": {"path": "/a/era.zarr", "norm_path": "/a/norm.zarr", "time_rule": "nearest"}}}
    sb = {"streams": {"era": {"path": "/b/era.zarr", "norm_path": "/b/norm.zarr", "time_rule": "previous"}}}
    fake = [type("C", (), {"to_dict": lambda self, d=d: {"data": {"sampling": d}}})() for d in (sa, sb)]
    with pytest.raises(ConfigError) as e:
        check_same_settings([run_settings(c, "train", None, False) for c in fake])
    assert str(e.value).startswith("the ranks' settings differ (1): data.sampling.streams.era.time_rule: rank 0 = "
                                   "'nearest', rank 1 = 'previous' (")


def test_differing_settings_are_named_with_each_ranks_value():
    from profiling.distributed import check_same_settings, run_settings
    from profiling.presets import load_run_config

    a = load_run_config(None, preset="cpu_tiny")
    b = dataclasses.replace(a, model=dataclasses.replace(a.model, embed_dim=64), log_every=7)
    with pytest.raises(ConfigError) as e:
        check_same_settings([run_settings(a, "train", None, False), run_settings(b, "train", 3, False),
                             run_settings(a, "train", None, False)])
    msg = str(e.value)
    assert "the ranks' settings differ (3): " in msg
    assert f"log_every: rank 0 = {a.log_every}, rank 1 = 7, rank 2 = {a.log_every}" in msg
    assert f"model.embed_dim: rank 0 = {a.model.embed_dim}, rank 1 = 64, rank 2 = {a.model.embed_dim}" in msg
    assert "stop_at (--stop-at): rank 0 = None, rank 1 = 3, rank 2 = None" in msg
    assert "optim.lr" not in msg


@pytest.mark.dist
@pytest.mark.slow
def test_ranks_with_other_settings_exit_2_on_every_rank_naming_them(tmp_path_factory, tmp_path):
    """Rank 1 with another embed_dim, lr and --steps (and other loader workers, which may differ): each rank prints
    one error line naming the three settings and each rank's value, and exits 2; no step runs, so no DDP traceback,
    no wait in a collective, no diverged replica."""
    store, norm = tiny_store(tmp_path_factory)
    config = run_toml(tmp_path, store, norm, warmup=1, dist_timeout_s=300)
    out = tmp_path / "out"
    args = ["-c", _CLI, "train", "--config", str(config), "--device", "cpu", "--out", str(out)]
    env_of = {0: {"EXTRA": "--steps 3"},
              1: {"EXTRA": "--steps 4 --set model.embed_dim=64 --set optim.lr=0.5 --set loader.workers=2"}}
    procs = start_ranks(args, tmp_path, env_of=env_of)
    try:
        outs = [p.communicate(input="", timeout=_HANG_GUARD_S)[0] for p in procs]
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
                p.wait()
    assert [p.returncode for p in procs] == [2, 2], outs
    for said in outs:
        line = [x for x in said.splitlines() if x.startswith("fastload train: error: ")]
        assert len(line) == 1, said[-3000:]
        assert "the ranks' settings differ (3): model.embed_dim: rank 0 = 16, rank 1 = 64; optim.lr: rank 0 = " \
               in line[0], said[-3000:]
        assert "rank 1 = 0.5; steps: rank 0 = 3, rank 1 = 4" in line[0], said[-3000:]
        assert "Traceback" not in said, said[-3000:]
        assert "loader.workers" not in line[0]
    assert not list(out.glob("rank*/summary.json"))
