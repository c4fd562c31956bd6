"""Writer safety found by review s11 r5: a source named by a local fsspec URL is protected like a path; each
writer has a temporary of its own, and a writer whose temporary was removed or replaced refuses to commit."""

from __future__ import annotations

import re
import shutil
import subprocess
import sys

import numpy as np
import pandas as pd
import pytest
import xarray as xr
import zarr

from fastload.errors import ConfigError, StoreError
from fastload.rechunk import rechunk
from fastload.write import check_output


def _source(path):
    rng = np.random.default_rng(0)
    t = pd.date_range("2020-01-01", periods=8, freq="h")
    ds = xr.Dataset(
        {v: (("time", "latitude", "longitude"), rng.normal(size=(8, 6, 8)).astype("f4")) for v in ("t", "q")},
        coords={"time": t, "latitude": np.linspace(10, -10, 6), "longitude": np.arange(8) * 45.0},
    )
    ds.to_zarr(path, zarr_format=2, consolidated=True)
    return ds


def test_a_source_given_as_a_file_url_is_not_overwritten_nor_written_into(tmp_path):
    src = tmp_path / "s.zarr"
    ds = _source(src)
    names = sorted(p.name for p in src.iterdir())
    with pytest.raises(ConfigError, match="source"):  # rechunked over itself: its other arrays were deleted
        rechunk(f"file://{src}", src, fields=["t"], overwrite=True, progress=False)
    with pytest.raises(ConfigError, match="source"):
        rechunk(f"file://{src}", src / "inner", progress=False)
    assert sorted(p.name for p in src.iterdir()) == names
    xr.testing.assert_identical(xr.open_zarr(src).load(), ds)  # intact, as xarray reads it


@pytest.mark.parametrize("url", ["file://{}", "local://{}", "simplecache::file://{}", "file:{}"])
def test_every_local_fsspec_url_of_a_source_is_checked_as_its_path(tmp_path, url):
    src = tmp_path / "s.zarr"
    src.mkdir()
    for out in (src, src / "sub", tmp_path):
        with pytest.raises(ConfigError, match="source"):
            check_output(out, overwrite=True, sources=[url.format(src)])
    assert check_output(tmp_path / "o.zarr", overwrite=False, sources=[url.format(src)]) == tmp_path / "o.zarr"


def test_a_remote_source_does_not_block_a_local_output(tmp_path):
    pytest.importorskip("fsspec")
    out = tmp_path / "o.zarr"
    assert check_output(out, overwrite=False, sources=["memory://bucket/o.zarr", "s3://bucket/x.zarr"]) == out


def _writer(out, value, **kw):
    from fastload.write import StoreWriter

    w = StoreWriter(out, **kw)
    w.set_time(pd.date_range("2020-01-01", periods=4, freq="h").values)
    w.set_grid(np.linspace(-10, 10, 4), np.arange(8) * 45.0)
    w.add_variable("v", ("time", "latitude", "longitude"), chunks=(2, 1, 4, 8))
    return w


def test_two_writers_of_one_output_in_one_process_each_publish_their_own_store(tmp_path):
    """Review s11 r5 H2: both used <out>.tmp-<host>-<pid>-<start>; the second deleted the first's temporary, and
    the first's commit then swapped in an empty store."""
    out = tmp_path / "o.zarr"
    w1 = _writer(out, 1.0, overwrite=True)
    w1.write("v", np.full((2, 4, 8), 1.0, "f4"), 0)
    w2 = _writer(out, 2.0, overwrite=True)
    assert w2.tmp != w1.tmp and w1.tmp.is_dir()
    w2.write("v", np.full((2, 4, 8), 2.0, "f4"), 0)
    w2.write("v", np.full((2, 4, 8), 2.0, "f4"), 2)
    w1.write("v", np.full((2, 4, 8), 1.0, "f4"), 2)
    w2.commit()
    np.testing.assert_array_equal(xr.open_zarr(out).v.values, np.full((4, 4, 8), 2.0, "f4"))
    w1.commit()
    np.testing.assert_array_equal(xr.open_zarr(out).v.values, np.full((4, 4, 8), 1.0, "f4"))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["o.zarr"]


def test_a_writer_whose_temporary_was_removed_or_replaced_refuses_to_commit(tmp_path):
    """Review s11 r5 H2: zarr recreates a removed temporary on the next chunk write (no metadata), and commit
    published that as the store."""
    out = tmp_path / "o.zarr"
    w = _writer(out, 1.0)
    w.write("v", np.ones((2, 4, 8), "f4"), 0)
    shutil.rmtree(w.tmp)
    w.write("v", np.ones((2, 4, 8), "f4"), 2)
    with pytest.raises(StoreError, match=rf"temporary {re.escape(str(w.tmp))} was removed or replaced"):
        w.commit()
    assert not out.exists()

    out2 = tmp_path / "p.zarr"
    w = _writer(out2, 1.0)
    w.write("v", np.ones((2, 4, 8), "f4"), 0)
    w.write("v", np.ones((2, 4, 8), "f4"), 2)
    other = _writer(tmp_path / "q.zarr", 3.0)  # another store put at this writer's temporary
    shutil.rmtree(w.tmp)
    other.tmp.rename(w.tmp)
    with pytest.raises(StoreError, match="removed or replaced"):
        w.commit()
    assert not out2.exists()
    assert "fastload_unfinished" in zarr.open_group(w.tmp, mode="r").attrs  # the other writer's store was kept


def test_a_second_writer_of_an_output_being_written_is_refused_at_start_without_overwrite(tmp_path):
    """Review s11 r5 L3: two writers of one OUT without --overwrite both wrote to the end; the second failed only
    at commit. A live writer's temporary, in this process or another, now refuses the second at once."""
    out = tmp_path / "o.zarr"
    first = _writer(out, 1.0)
    with pytest.raises(StoreError, match=rf"another writer is writing it .*{re.escape(first.tmp.name)}"):
        _writer(out, 2.0)
    first.abort()
    _writer(out, 2.0).abort()  # once it is gone, a writer may start

    script = ("import sys; from fastload.write import StoreWriter; w = StoreWriter(sys.argv[1]); "
              "print(w.tmp, flush=True); sys.stdin.read(); w.abort()")  # fmt: skip
    p = subprocess.Popen([sys.executable, "-c", script, str(out)], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                         text=True)  # fmt: skip
    try:
        theirs = p.stdout.readline().strip()
        with pytest.raises(StoreError, match=re.escape(theirs)):
            _writer(out, 2.0)
        w = _writer(out, 2.0, overwrite=True)  # with overwrite: its own temporary, the last commit wins
        for t in (0, 2):
            w.write("v", np.full((2, 4, 8), 2.0, "f4"), t)
        w.commit()
    finally:
        p.communicate("", timeout=120)
    np.testing.assert_array_equal(xr.open_zarr(out).v.values, np.full((4, 4, 8), 2.0, "f4"))
    assert sorted(x.name for x in tmp_path.iterdir()) == ["o.zarr"]


def test_a_dropped_writer_whose_write_raised_neither_blocks_its_output_nor_leaves_its_temporary(tmp_path):
    """Review s11 r6 M1: in a notebook a writer whose write raised and that was dropped (never aborted) kept its
    temporary on disk, and its live pid (this process) refused every later writer of that output."""
    import gc

    out = tmp_path / "o.zarr"
    w = _writer(out, 1.0)
    tmp = w.tmp
    with pytest.raises(Exception):  # noqa: B017 (any refusal of the misaligned block)
        w.write("v", np.zeros((3, 4, 8), "f4"), 1)
    del w
    gc.collect()
    assert not tmp.exists()
    second = _writer(out, 2.0)  # not refused
    for t in (0, 2):
        second.write("v", np.full((2, 4, 8), 2.0, "f4"), t)
    second.commit()
    np.testing.assert_array_equal(xr.open_zarr(out).v.values, np.full((4, 4, 8), 2.0, "f4"))


def test_another_processs_temporary_that_cannot_be_checked_warns_instead_of_refusing(tmp_path, monkeypatch, caplog):
    """Review s11 r6 M2: without /proc (macOS, Windows) a writer's liveness rests on its pid alone, which another
    process may have taken since: such a temporary is named in a warning, and the writer goes on."""
    import os

    from fastload import _write_temps as wt

    out = tmp_path / "o.zarr"
    host, _, start = wt.writer_id()
    theirs = out.with_name(f"{out.name}.tmp-{host}-{os.getppid()}-{start}-w1")  # a live pid: the test's parent
    zarr.open_group(str(theirs), mode="w", zarr_format=2, attributes={wt.UNFINISHED_ATTR: "someone's"})

    def no_proc(pid):
        raise OSError("no /proc here")

    monkeypatch.setattr(wt, "_proc_start", no_proc)
    with caplog.at_level("WARNING", logger="fastload"):
        w = _writer(out, 1.0)
    assert "may be a live writer's unfinished store" in caplog.text and theirs.name in caplog.text
    w.abort()
    assert theirs.exists()  # not removed either: it may be live
