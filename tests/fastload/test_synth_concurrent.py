"""Two processes asking for the built-in dataset at once: the second waits for the first one's store and uses it
(the store writer refuses a second live writer of one output), writes it itself when the first one dies, and names
the other writer when the wait runs out."""

from __future__ import annotations

import os
import signal
import textwrap
import time
from pathlib import Path

import pytest
import xarray as xr

import fastload.synth as synth
from fastload.errors import ConfigError, StoreError

from .subprocs import start_when_ready

pytestmark = pytest.mark.skipif(not os.path.exists("/proc/self/stat"), reason="needs Linux /proc")

# The first process: builds the dataset, says so when it is about to commit, and commits only once GO exists.
FIRST = textwrap.dedent("""
    import os, sys, time
    from pathlib import Path
    import fastload.write as write
    from fastload.synth import default_dataset
    cache, ready, go = sys.argv[1], Path(sys.argv[2]), Path(sys.argv[3])
    commit = write.StoreWriter.commit

    def held(self, **kw):
        ready.with_suffix(".part").write_text(str(self.tmp))
        os.replace(ready.with_suffix(".part"), ready)  # whole, when it appears
        while not go.exists():
            time.sleep(0.02)
        return commit(self, **kw)

    write.StoreWriter.commit = held
    print(default_dataset(cache, preset="tiny"), flush=True)
""")


def _first(tmp_path):
    script, ready, go = tmp_path / "first.py", tmp_path / "ready", tmp_path / "go"
    script.write_text(FIRST)
    p = start_when_ready(script, [str(tmp_path / "cache"), str(ready), str(go)], ready, "the first process", 300)
    return p, Path(ready.read_text()), go


def _reference(tmp_path):
    return xr.open_zarr(synth.synthesize(tmp_path / "ref.zarr", "tiny", seed=0, progress=False)).load()


def test_the_second_process_waits_for_the_first_ones_store_and_uses_it(tmp_path, monkeypatch):
    p, tmp, go = _first(tmp_path)
    waits = []

    def pause():  # the second one is waiting: let the first commit
        waits.append(1)
        go.touch()
        time.sleep(0.05)

    monkeypatch.setattr(synth, "_pause", pause)
    try:
        path = synth.default_dataset(tmp_path / "cache", preset="tiny")
        out, err = p.communicate(timeout=300)
    finally:
        if p.poll() is None:
            p.kill()
            p.communicate()
    assert p.returncode == 0, err
    assert waits and Path(out.strip()) == path and not tmp.exists()
    assert sorted(x.name for x in (tmp_path / "cache").iterdir()) == [path.name]
    xr.testing.assert_identical(xr.open_zarr(path).load(), _reference(tmp_path))


def test_the_second_process_writes_it_when_the_first_one_is_killed(tmp_path, monkeypatch):
    p, tmp, _ = _first(tmp_path)

    def pause():  # the first one dies while the second waits: its temporary is removed, the second writes
        p.send_signal(signal.SIGKILL)
        p.wait()

    monkeypatch.setattr(synth, "_pause", pause)
    try:
        path = synth.default_dataset(tmp_path / "cache", preset="tiny")
    finally:
        if p.poll() is None:
            p.kill()
        p.communicate()
    assert p.returncode == -signal.SIGKILL and not tmp.exists()
    assert sorted(x.name for x in (tmp_path / "cache").iterdir()) == [path.name]
    xr.testing.assert_identical(xr.open_zarr(path).load(), _reference(tmp_path))


def test_a_wait_that_runs_out_names_the_dataset_and_the_other_writer(tmp_path, monkeypatch):
    p, tmp, go = _first(tmp_path)
    monkeypatch.setattr(synth, "_pause", lambda: time.sleep(0.01))
    try:
        with pytest.raises(StoreError) as e:
            synth.default_dataset(tmp_path / "cache", preset="tiny", wait_s=0.2)
        go.touch()
        p.communicate(timeout=300)
    finally:
        if p.poll() is None:
            p.kill()
            p.communicate()
    want = tmp_path / "cache" / f"synth-tiny-seed0-zarr2-v{synth.SYNTH_VERSION}.zarr"
    assert str(e.value).startswith(f"{want}: waited 0.2 s for another writer of the built-in dataset (its "
                                   f"unfinished store is {tmp}) to finish")  # fmt: skip
    assert p.returncode == 0 and want.is_dir()


@pytest.mark.parametrize("bad", [-1, float("nan"), "10", True])
def test_a_bad_wait_is_a_config_error_naming_it(tmp_path, bad):
    with pytest.raises(ConfigError, match=rf"default_dataset: wait_s must be a number of seconds >= 0, got {bad!r}"):
        synth.default_dataset(tmp_path / "cache", preset="tiny", wait_s=bad)
    assert not (tmp_path / "cache").exists()
