"""A writer's commit on a file system whose inode numbers are not stable (review s12 item 2): FUSE file systems
without ``use_ino`` (sshfs, gcsfuse, ...) number a directory afresh when the kernel forgets it, so the temporary's
inode at commit differs from the one recorded at creation although it is the same directory. The writer's token
(:data:`~fastload.write.UNFINISHED_ATTR`, unique per writer) decides; the inode is an extra guard only on a file
system known to keep inode numbers (ext4, xfs, tmpfs, ...): there it still refuses a temporary removed and remade.

The inode change is simulated by wrapping ``os.lstat`` (what :func:`fastload._write_temps._inode` calls); the file
system's type by a synthetic ``/proc/self/mountinfo``."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import xarray as xr
import zarr

import fastload._write_temps as wt
from fastload.errors import StoreError


def _writer(out):
    from fastload.write import StoreWriter

    w = StoreWriter(out)
    w.set_time(pd.date_range("2020-01-01", periods=4, freq="h").values)
    w.set_grid(np.linspace(-10, 10, 4), np.arange(8) * 45.0)
    w.add_variable("v", ("time", "latitude", "longitude"), chunks=(2, 1, 4, 8))
    data = np.arange(128, dtype="f4").reshape(4, 4, 8)
    w.write("v", data[:2], 0)
    w.write("v", data[2:], 2)
    return w, data


def _renumber(monkeypatch, path):
    """``os.lstat`` of ``path`` reports another inode number from now on (as a FUSE file system may)."""
    real = os.lstat

    def lstat(p, *a, **kw):
        st = real(p, *a, **kw)
        if os.fspath(p) == os.fspath(path):
            fields = list(st[:10])
            fields[1] = st.st_ino + 1000
            return os.stat_result(fields)
        return st

    monkeypatch.setattr(os, "lstat", lstat)


def _mountinfo(fstype, point="/"):
    return (f"22 27 0:21 / /proc rw,relatime - proc proc rw\n"
            f"30 1 0:40 / {point} rw,relatime - {fstype} src rw\n")


@pytest.fixture
def fs_type(monkeypatch):
    """Make the file system of every path read as the given type (a one-mount mountinfo)."""
    def set_type(fstype):
        monkeypatch.setattr(wt, "_read_mountinfo", lambda: _mountinfo(fstype))
    return set_type


@pytest.mark.parametrize("fstype", ["fuse.sshfs", "fuse", "9p"])
def test_a_commit_on_a_file_system_that_renumbers_inodes_is_taken_on_its_token(tmp_path, monkeypatch, fs_type,
                                                                               fstype):
    fs_type(fstype)
    out = tmp_path / "o.zarr"
    w, data = _writer(out)
    _renumber(monkeypatch, w.tmp)
    assert w.commit() == out
    np.testing.assert_array_equal(xr.open_zarr(out).v.values, data)
    assert "fastload_unfinished" not in zarr.open_group(out, mode="r").attrs


@pytest.mark.parametrize("fstype", ["fuse.sshfs", "ext4"])
def test_a_foreign_token_is_refused_whatever_the_inode(tmp_path, monkeypatch, fs_type, fstype):
    fs_type(fstype)
    out = tmp_path / "o.zarr"
    w, _ = _writer(out)
    zarr.open_group(w.tmp, mode="r+").attrs["fastload_unfinished"] = "written by another writer"
    _renumber(monkeypatch, w.tmp)
    with pytest.raises(StoreError, match=r"removed or replaced .*'written by another writer', not this writer's"):
        w.commit()
    assert not out.exists()


@pytest.mark.parametrize("fstype", ["ext4", "xfs", "tmpfs", "btrfs"])
def test_on_a_file_system_with_stable_inodes_a_renumbered_temporary_is_still_refused(tmp_path, monkeypatch,
                                                                                     fs_type, fstype):
    """There a new inode means a new directory: removed and remade (say, by this writer's own later metadata
    writes, which put its token back): the inode guard stays."""
    fs_type(fstype)
    out = tmp_path / "o.zarr"
    w, _ = _writer(out)
    _renumber(monkeypatch, w.tmp)
    with pytest.raises(StoreError, match=r"removed or replaced .*inode"):
        w.commit()
    assert not out.exists()


def test_the_file_system_type_is_that_of_the_longest_mount_point_holding_the_path(monkeypatch):
    text = ("1 0 8:1 / / rw - ext4 /dev/sda1 rw\n"
            "2 1 0:50 / /mnt/remote\\040dir rw shared:1 - fuse.sshfs u@h: rw\n"
            "3 1 0:51 / /mnt/remote rw - xfs /dev/sdb rw\n")
    monkeypatch.setattr(wt, "_read_mountinfo", lambda: text)
    assert wt._fs_type("/mnt/remote dir/x.zarr.tmp-1") == "fuse.sshfs"
    assert wt._fs_type("/mnt/remote/x") == "xfs"
    assert wt._fs_type("/mnt/remotely/x") == "ext4"
    assert wt._stable_inodes("/mnt/remote/x") and not wt._stable_inodes("/mnt/remote dir/x")
    monkeypatch.setattr(wt, "_read_mountinfo", lambda: None)  # no /proc (macOS): not known to be stable
    assert wt._fs_type("/x") is None and not wt._stable_inodes("/x")


def _no_mountinfo(monkeypatch):
    monkeypatch.setattr(wt, "_read_mountinfo", lambda: None)


@pytest.mark.parametrize("fstype", ["ext4", "fuse.sshfs", None])  # None: no /proc/self/mountinfo (macOS, chroot)
def test_a_temporary_removed_and_remade_by_the_writers_own_metadata_writes_is_refused(tmp_path, monkeypatch,
                                                                                     fs_type, fstype):
    """Review s12 r2 item 1: set_grid and add_variable rewrite the root attributes (the token included) into a
    removed temporary; the time coordinate written before is gone. The marker file, which zarr never writes, is
    missing, whatever the file system (the inode guard ran only on ones known to keep inode numbers)."""
    from fastload.write import StoreWriter

    if fstype is None:
        _no_mountinfo(monkeypatch)
    else:
        fs_type(fstype)
    out = tmp_path / "o.zarr"
    w = StoreWriter(out)
    w.set_time(pd.date_range("2020-01-01", periods=4, freq="h").values)
    shutil.rmtree(w.tmp)  # a clean-up removes it: the time coordinate goes
    w.set_grid(np.linspace(-10, 10, 4), np.arange(8) * 45.0)
    w.add_variable("v", ("time", "latitude", "longitude"), chunks=(2, 1, 4, 8))
    w.write("v", np.ones((4, 4, 8), "f4"), 0)
    assert (w.tmp / "zarr.json").is_file() or (w.tmp / ".zgroup").is_file()  # remade, token and all
    with pytest.raises(StoreError, match=r"removed or replaced .*no \.fastload-writer"):
        w.commit()
    assert not out.exists()


@pytest.mark.parametrize("fstype", ["ext4", "fuse.sshfs"])
def test_a_marker_with_another_writers_token_is_refused(tmp_path, monkeypatch, fs_type, fstype):
    fs_type(fstype)
    out = tmp_path / "o.zarr"
    w, _ = _writer(out)
    (w.tmp / wt.WRITER_MARKER).write_text("another writer's token")
    with pytest.raises(StoreError, match=r"\.fastload-writer holds \"another writer's token\", not this writer"):
        w.commit()
    assert not out.exists()


@pytest.mark.parametrize("zarr_format", [2, 3])
def test_a_writer_marks_its_temporary_and_publishes_no_marker(tmp_path, monkeypatch, zarr_format):
    from fastload.write import StoreWriter

    _no_mountinfo(monkeypatch)
    out = tmp_path / "o.zarr"
    w = StoreWriter(out, zarr_format=zarr_format)
    assert (w.tmp / wt.WRITER_MARKER).read_text() == w._token
    w.set_time(pd.date_range("2020-01-01", periods=4, freq="h").values)
    w.set_grid(np.linspace(-10, 10, 4), np.arange(8) * 45.0)
    w.add_variable("v", ("time", "latitude", "longitude"), chunks=(2, 1, 4, 8))
    data = np.arange(128, dtype="f4").reshape(4, 4, 8)
    w.write("v", data, 0)
    assert w.commit() == out
    published = sorted(p.name for p in out.iterdir())
    assert wt.WRITER_MARKER not in published and not any(".fastload-writer" in str(p) for p in out.rglob("*"))
    ds = xr.open_zarr(out)
    assert sorted(ds.variables) == ["latitude", "longitude", "time", "v"]
    np.testing.assert_array_equal(ds.v.values, data)
    assert sorted(zarr.open_group(out, mode="r").array_keys()) == ["latitude", "longitude", "time", "v"]


def test_a_mount_laid_later_over_a_parent_hides_the_deeper_one(monkeypatch):
    """Review s12 r2 item 2: /mnt mounted after /mnt/remote hides it; the longest mount point named the hidden
    fuse.sshfs. mountinfo lists mounts in mount order: the last one covering the path holds it."""
    text = ("1 0 8:1 / / rw - ext4 /dev/sda1 rw\n"
            "2 1 0:50 / /mnt/remote rw - fuse.sshfs u@h: rw\n"
            "3 1 8:17 / /mnt rw - xfs /dev/sdb1 rw\n")
    monkeypatch.setattr(wt, "_read_mountinfo", lambda: text)
    assert wt._fs_type("/mnt/remote/x.zarr.tmp-1") == "xfs"
    assert wt._fs_type("/mnt/other") == "xfs" and wt._fs_type("/srv") == "ext4"


def test_the_mount_whose_device_is_the_paths_is_preferred(tmp_path, monkeypatch):
    st = os.stat(tmp_path)
    dev = f"{os.major(st.st_dev)}:{os.minor(st.st_dev)}"
    text = (f"1 0 {dev} / / rw - ext4 /dev/sda1 rw\n"
            f"2 1 999:999 / {tmp_path.parent} rw - fuse.sshfs u@h: rw\n")  # listed later, another device
    monkeypatch.setattr(wt, "_read_mountinfo", lambda: text)
    assert wt._fs_type(tmp_path) == "ext4"
    assert wt._fs_type(tmp_path / "not-yet") == "fuse.sshfs"  # no such path: no device to match, the last one


@pytest.mark.skipif(not sys.platform.startswith("linux") or shutil.which("findmnt") is None,
                    reason="needs Linux's /proc/self/mountinfo and findmnt")
def test_the_file_system_type_is_what_findmnt_says(tmp_path):
    """The real /proc/self/mountinfo through the real parser, against util-linux's findmnt."""
    for path in (tmp_path, Path.cwd(), Path("/proc/self")):
        want = subprocess.run(["findmnt", "-no", "FSTYPE", "-T", str(path)], capture_output=True, text=True,
                              check=True).stdout.strip()
        assert wt._fs_type(path) == want, path


def test_overlay_is_not_counted_as_keeping_inode_numbers(monkeypatch, fs_type):
    """Review s12 r2 item 3: overlayfs without xino does not keep directory inode numbers across layers."""
    fs_type("overlay")
    assert not wt._stable_inodes("/x")
    fs_type("ext4")
    assert wt._stable_inodes("/x")


def test_a_stats_temporary_removed_during_the_passes_is_refused(tmp_path, monkeypatch):
    """``fastload stats`` builds its store in a temporary of its own (no StoreWriter): one removed while the
    passes ran was remade by zarr's chunk writes and by finish's metadata, and published without the coordinates
    and attributes written at the start. Its marker file is missing then."""
    import fastload._stats_pass as sp
    from fastload.stats import StatsConfig, compute_stats
    from tests.fastload.stores import make_per_variable

    make_per_variable(tmp_path / "d.zarr", zarr_format=3)
    real = sp.CoefficientWriter.write_target
    removed, marked = [], []

    def write_target(self, tg):  # one field, one target: the last write of the passes
        real(self, tg)
        tmps = [p for p in tmp_path.iterdir() if p.name.startswith("n.zarr.tmp-")]
        assert len(tmps) == 1
        marked.append((tmps[0] / wt.WRITER_MARKER).is_file())
        shutil.rmtree(tmps[0])  # a clean-up removes it before the run finishes
        removed.append(tmps[0])

    monkeypatch.setattr(sp.CoefficientWriter, "write_target", write_target)
    with pytest.raises(StoreError, match=r"removed or replaced .*it is gone"):
        compute_stats(str(tmp_path / "d.zarr"), tmp_path / "n.zarr", StatsConfig(progress=False, fields=("orog",)))
    assert removed and not (tmp_path / "n.zarr").exists() and not removed[0].exists()
    assert marked == [True]


def test_a_stats_run_publishes_no_marker(tmp_path):
    from fastload.stats import StatsConfig, compute_stats
    from tests.fastload.stores import make_per_variable

    make_per_variable(tmp_path / "d.zarr", zarr_format=3)
    out = compute_stats(str(tmp_path / "d.zarr"), tmp_path / "n.zarr", StatsConfig(progress=False))
    assert not any(p.name == wt.WRITER_MARKER for p in Path(out).rglob("*"))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["d.zarr", "n.zarr"]
