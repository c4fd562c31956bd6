"""What a writer does when the file system refuses a write (a full disk: ENOSPC), what counts as a finished store
left by a killed writer, and the dtype of the grid coordinates it writes.

A full disk is simulated by making zarr's file write raise ENOSPC for chosen keys (zarr-python's ``LocalStore``
writes every key through ``zarr.storage._local._put``), and, where this process may mount one, by a real tmpfs of a
few hundred KiB."""

from __future__ import annotations

import errno
import logging
import os
import shutil
import subprocess
import threading
from pathlib import Path

import numpy as np
import pytest
import xarray as xr
import zarr
import zarr.storage._local as zarr_local

from fastload._write_temps import (
    UNFINISHED_ATTR,
    _host,
    drop_temporary,
    remove_stale_temporaries,
)
from fastload.cli import main as cli
from fastload.errors import StoreError
from fastload.stats import StatsConfig, compute_stats
from fastload.write import StoreWriter

from .stores import make_per_variable
from .subprocs import dead_process

NT, NY, NX = 8, 6, 10
TIMES = np.datetime64("2020-01-01T00", "ns") + np.arange(NT) * np.timedelta64(6, "h")
ENOSPC = "No space left on device [ENOSPC]"


def _full_disk(monkeypatch, when):
    """Make zarr's write of every key for which ``when(key)`` holds fail as on a full disk."""
    put = zarr_local._put

    def fake(path, value, exclusive=False):
        if when(Path(path).as_posix()):
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        return put(path, value, exclusive=exclusive)

    monkeypatch.setattr(zarr_local, "_put", fake)


def _write(out):
    with StoreWriter(out) as w:
        w.set_time(TIMES)
        w.set_grid(np.linspace(50, 40, NY), np.linspace(0, 9, NX))
        w.add_variable("t2m", ("time", "latitude", "longitude"), chunks=(4, NY, NX))
        w.write("t2m", np.ones((4, NY, NX), np.float32), 0)
        w.write("t2m", np.full((4, NY, NX), 2, np.float32), 4)


@pytest.mark.parametrize("key, what", [
    ("/t2m/1.0.0", "variable 't2m' (time 4:8, latitude 0:6, longitude 0:10)"),  # write
    ("/latitude/0", "coordinate 'latitude'"),  # set_grid's _coord
    ("/.zmetadata", "the consolidated metadata"),  # commit
    ("/t2m/.zarray", "variable 't2m'"),  # add_variable
])  # fmt: skip
def test_a_full_disk_is_a_store_error_naming_the_temporary_what_and_the_errno(tmp_path, monkeypatch, key, what):
    out = tmp_path / "s.zarr"
    _full_disk(monkeypatch, lambda p: p.endswith(key) and ".tmp-" in p)
    with pytest.raises(StoreError) as e:
        _write(out)
    msg = str(e.value)
    assert f"cannot write {what} into the temporary store {tmp_path}/s.zarr.tmp-" in msg, msg
    assert ENOSPC in msg and isinstance(e.value.__cause__, OSError) and e.value.__cause__.errno == errno.ENOSPC
    assert list(tmp_path.iterdir()) == []  # the temporary is removed, nothing is at out
    monkeypatch.undo()
    _write(out)  # space again: the same output is written
    np.testing.assert_array_equal(xr.open_zarr(out).t2m.values, np.repeat([1.0, 2.0], 4)[:, None, None]
                                  * np.ones((NT, NY, NX), np.float32))  # fmt: skip


def test_the_blocks_other_writes_end_before_the_temporary_is_removed(tmp_path, monkeypatch):
    """One chunk write of a block fails at once while another is still being written (zarr runs them on
    threads): the writer waits for that one before it removes its temporary, so nothing is recreated there."""
    import fastload.write as write

    removed, done, put = threading.Event(), threading.Event(), zarr_local._put

    def fake(path, value, exclusive=False):
        p = Path(path).as_posix()
        if ".tmp-" in p and p.endswith("/t2m/0.0.0"):
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        if ".tmp-" in p and p.endswith("/t2m/1.0.0"):
            removed.wait(1.0)  # without the wait for it: written once the temporary was removed
            try:
                return put(path, value, exclusive=exclusive)
            finally:
                done.set()
        return put(path, value, exclusive=exclusive)

    def drop(tmp):
        drop_temporary(tmp)
        removed.set()

    monkeypatch.setattr(zarr_local, "_put", fake)
    monkeypatch.setattr(write, "drop_temporary", drop)
    out = tmp_path / "s.zarr"
    with pytest.raises(StoreError, match="No space left on device"):
        with StoreWriter(out) as w:
            w.set_time(TIMES)
            w.set_grid(np.linspace(50, 40, NY), np.linspace(0, 9, NX))
            w.add_variable("t2m", ("time", "latitude", "longitude"), chunks=(4, NY, NX))
            w.write("t2m", np.ones((NT, NY, NX), np.float32), 0)  # two chunks, written concurrently
    assert done.wait(30) and removed.is_set()
    assert list(tmp_path.iterdir()) == []


def test_a_full_disk_in_fastload_synth_prints_one_line_and_exits_2(tmp_path, monkeypatch, capsys):
    _full_disk(monkeypatch, lambda p: "/temperature/" in p and not p.rsplit("/", 1)[1].startswith("."))
    assert cli(["synth", str(tmp_path / "s.zarr"), "--preset", "tiny", "--hours", "12", "-q"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and err.startswith("fastload synth: error: ") and ENOSPC in err
    assert "variable 'temperature'" in err and f"{tmp_path}/s.zarr.tmp-" in err
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("key, what", [
    ("/t/local_std/", "the local coefficients of field 't'"),
    ("/t/global_mean/", "the global coefficients"),
    ("/norm.zarr.tmp-", "the coefficient store's metadata"),
])  # fmt: skip
def test_a_full_disk_in_fastload_stats_is_a_store_error_naming_the_temporary(tmp_path, monkeypatch, key, what):
    src = tmp_path / "src.zarr"
    make_per_variable(src, nt=4, ny=9, nx=16)
    out = tmp_path / "norm.zarr"
    _full_disk(monkeypatch, lambda p: "/norm.zarr.tmp-" in p and key in p and not p.rsplit("/", 1)[1].startswith("."))
    with pytest.raises(StoreError) as e:
        compute_stats(str(src), str(out), StatsConfig(progress=False, zarr_format=2))
    msg = str(e.value)
    assert f"cannot write {what} into the temporary store {tmp_path}/norm.zarr.tmp-" in msg and ENOSPC in msg, msg
    assert sorted(p.name for p in tmp_path.iterdir()) == ["src.zarr"]


def _mount_tmpfs(where: Path, size: str) -> bool:
    if shutil.which("mount") is None or os.geteuid() != 0:
        return False
    where.mkdir()
    r = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(where)], capture_output=True)
    return r.returncode == 0


def test_a_real_full_tmpfs_fails_synth_rechunk_and_stats_with_one_line_and_no_leftovers(tmp_path, capsys):
    small = tmp_path / "small"
    if not _mount_tmpfs(small, "256k"):
        pytest.skip("needs to mount a tmpfs (root)")
    try:
        src = tmp_path / "src.zarr"
        make_per_variable(src, nt=8, ny=33, nx=64)
        runs = {"synth": [str(small / "s.zarr"), "--preset", "tiny", "-q"],
                "rechunk": [str(src), str(small / "r.zarr")]}  # fmt: skip
        for name, args in runs.items():
            assert cli([name, *args]) == 2, name
            err = capsys.readouterr().err.strip()
            assert err.count("\n") == 0 and f"fastload {name}: error: " in err and ENOSPC in err, err
            assert "into the temporary store " in err and list(small.iterdir()) == [], err
        with open(small / "filler", "wb") as fh:  # fill the file system: the coefficient store does not fit
            with pytest.raises(OSError):
                fh.write(b"\0" * (1 << 20))
        assert cli(["stats", str(src), "--out", str(small / "n.zarr"), "-q"]) == 2
        err = capsys.readouterr().err.strip()
        assert err.count("\n") == 0 and ENOSPC in err and "into the temporary store " in err, err
        assert [p.name for p in small.iterdir()] == ["filler"]  # the coefficient store did not fit: no leftovers
    finally:
        subprocess.run(["umount", str(small)], check=False)


# -- a killed writer's temporary: finished only with positive evidence -----------------------------------------
@pytest.mark.skipif(not os.path.exists("/proc/self/stat"), reason="needs Linux /proc")
def test_a_dead_writers_temporary_with_only_a_zgroup_is_removed_not_called_finished(tmp_path, caplog):
    out = tmp_path / "s.zarr"
    dead, start = dead_process()
    names = {k: f"s.zarr.tmp-{_host()}-{dead}-{start}-w{i}" for i, k in enumerate(
        ("zgroup_only", "empty_attrs", "finished", "finished_norm", "finished_v3", "unfinished"))}  # fmt: skip
    (tmp_path / names["zgroup_only"]).mkdir()  # killed between zarr's .zgroup and .zattrs
    (tmp_path / names["zgroup_only"] / ".zgroup").write_text('{"zarr_format": 2}')
    zarr.open_group(tmp_path / names["empty_attrs"], mode="w", zarr_format=3)
    zarr.open_group(tmp_path / names["finished"], mode="w", attributes={"fastload_layout": "per_variable"})
    zarr.open_group(tmp_path / names["finished_norm"], mode="w", attributes={"fastload_norm": 1})
    zarr.open_group(tmp_path / names["finished_v3"], mode="w", zarr_format=3,
                    attributes={"fastload_layout": "atmorep"})  # fmt: skip
    zarr.open_group(tmp_path / names["unfinished"], mode="w",
                    attributes={"fastload_layout": "per_variable", UNFINISHED_ATTR: "x"})  # fmt: skip
    with caplog.at_level(logging.WARNING, logger="fastload"):
        removed = remove_stale_temporaries(out)
    assert sorted(p.name for p in removed) == sorted(names[k] for k in ("zgroup_only", "empty_attrs", "unfinished"))
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(
        names[k] for k in ("finished", "finished_norm", "finished_v3"))  # fmt: skip
    kept = [r.getMessage() for r in caplog.records if "a finished store" in r.getMessage()]
    assert len(kept) == 3 and not any(names["zgroup_only"] in m or names["empty_attrs"] in m for m in kept)


# -- set_grid keeps the coordinates' floating-point dtype ------------------------------------------------------
@pytest.mark.parametrize("fmt", [2, 3])
@pytest.mark.parametrize("dtype, stored", [("float32", "float32"), ("float64", "float64"), ("int64", "float64"),
                                           ("float16", "float64")])  # fmt: skip
def test_set_grid_keeps_a_floating_dtype_of_the_coordinates(tmp_path, fmt, dtype, stored):
    lat = np.array([50.25, 45.5, 40.125, 35.0], dtype)
    lon = np.array([350.5, 355.25, 0.0, 4.75, 9.5], dtype)
    out = tmp_path / "s.zarr"
    with StoreWriter(out, zarr_format=fmt) as w:
        w.set_time(TIMES[:2])
        w.set_grid(lat, lon)
        w.add_variable("t2m", ("time", "latitude", "longitude"))
        w.write("t2m", np.zeros((2, 4, 5), np.float32))
    ds = xr.open_zarr(out)
    assert ds.latitude.dtype == np.dtype(stored) and ds.longitude.dtype == np.dtype(stored)
    np.testing.assert_array_equal(ds.latitude.values, lat.astype(stored))
    np.testing.assert_array_equal(ds.longitude.values, lon.astype(stored))
    assert ds.attrs["latitude_order"] == "descending"
