"""``--overwrite`` replaces a store without a moment where the output path is missing: ``move_into_place``
exchanges the new store for the old one in one step (Linux ``renameat2`` with ``RENAME_EXCHANGE``), falls back to
the two renames where the system or file system cannot (or a seccomp filter refuses), and a writer killed at any
point leaves a complete store at the output: the new one from the switch on, with debris that the next writer
removes; the old one before it, with the finished new store beside it, which the next writer keeps and names. Ctrl-C
waits for the switch, and after it only stops the deletion of the old store: the write has succeeded."""

from __future__ import annotations

import ctypes
import errno
import logging
import os
import re
import signal
import subprocess
import sys
import textwrap
import threading
from pathlib import Path

import numpy as np
import pytest
import xarray as xr
import zarr

import fastload._write_atomic as wa
import fastload._write_temps as wt
from fastload._write_atomic import move_into_place
from fastload._write_temps import (
    UNFINISHED_ATTR,
    _host,
    remove_stale_temporaries,
    temp_path,
)
from fastload.errors import ConfigError, StoreError
from fastload.write import StoreWriter

linux_only = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="renameat2 is Linux's")
NT, NY, NX = 8, 6, 10


def _store(path: Path, version: int) -> Path:
    """A minimal zarr v2 group (``.zgroup``: what makes it replaceable) whose ``payload`` says its version."""
    path.mkdir()
    (path / ".zgroup").write_text('{"zarr_format": 2}')
    (path / "payload").write_text(_payload(version))
    return path


def _payload(version: int) -> str:
    return f"{version}:" + "x" * 4096 + ":end"


def _version(text: str) -> int:
    """The version of a complete payload; fails on anything else (empty, cut short, mixed)."""
    v, _, rest = text.partition(":")
    assert rest == "x" * 4096 + ":end", f"not a complete payload: {text[:40]!r}..."
    return int(v)


def _read_out(out: Path) -> int:
    """The version of the store at ``out`` as a reader finds it; raises FileNotFoundError when ``out`` is missing."""
    return _version((out / "payload").read_text())


def _exchange_works(tmp_path: Path, call=None) -> bool:
    """Whether this system and the file system of ``tmp_path`` swap two directories with RENAME_EXCHANGE (2): by
    glibc's renameat2, called here, or by ``call(old, new, flags)``."""
    a, b = _store(tmp_path / "probe-a", 1), _store(tmp_path / "probe-b", 2)
    if call is None:
        fn = getattr(ctypes.CDLL(None, use_errno=True), "renameat2", None) if sys.platform == "linux" else None
        if fn is not None:
            fn.argtypes = [ctypes.c_int, ctypes.c_char_p, ctypes.c_int, ctypes.c_char_p, ctypes.c_uint]
            call = lambda old, new, flags: fn(-100, old, -100, new, flags)  # noqa: E731 (AT_FDCWD: -100)
    ok = call is not None and call(os.fsencode(a), os.fsencode(b), 2) == 0
    if ok:
        assert _read_out(a) == 2 and _read_out(b) == 1  # the two entries swapped, contents whole
    for p in (a, b):
        wa.shutil.rmtree(p)
    return ok


@pytest.fixture
def exchange(tmp_path):
    if not _exchange_works(tmp_path):
        pytest.skip("no renameat2 RENAME_EXCHANGE here (not Linux, old glibc and kernel, or the file system)")


@linux_only
def test_out_holds_a_complete_store_after_every_step_of_an_overwrite(tmp_path, exchange, monkeypatch, caplog):
    """Each file system call move_into_place makes is atomic; between any two of them OUT holds a complete store:
    the old one until the exchange, the new one from it on (the two renames left it missing between them)."""
    out = _store(tmp_path / "s.zarr", 1)
    tmp = _store(temp_path(out), 2)
    steps = []

    def check(name):
        steps.append((name, _read_out(out)))  # FileNotFoundError: OUT missing at this step

    def watched(name, fn):
        def call(*a, **k):
            check(f"before {name}")
            r = fn(*a, **k)
            check(f"after {name}")
            return r
        return call

    monkeypatch.setattr(wa, "_exchange", watched("exchange", getattr(wa, "_exchange", None)), raising=False)
    monkeypatch.setattr(os, "rename", watched("rename", os.rename))
    monkeypatch.setattr(wa.shutil, "rmtree", watched("rmtree", wa.shutil.rmtree))
    with caplog.at_level(logging.DEBUG, logger="fastload"):
        assert move_into_place(tmp, out, overwrite=True) == out
    switch = steps.index(("after exchange", 2))
    assert all(v == 1 for _, v in steps[:switch]) and all(v == 2 for _, v in steps[switch:])
    assert any(n == "after rmtree" for n, _ in steps[switch:])
    assert "in one step" in caplog.text and "two renames" not in caplog.text
    assert sorted(p.name for p in tmp_path.iterdir()) == ["s.zarr"]  # the old store deleted, nothing left over


@linux_only
def test_a_reader_polling_out_during_many_overwrites_never_finds_it_missing(tmp_path, exchange):
    """Another job reading OUT while it is overwritten 200 times: opening OUT never fails, and what it reads is a
    complete store, never older than one it read before."""
    out = _store(tmp_path / "s.zarr", 0)
    n = 200
    done = threading.Event()
    seen: list[int] = []
    errors: list[str] = []

    def reader():
        while True:
            last = done.is_set()  # the writer finished: this read is the last, of its last store
            try:
                dfd = os.open(out, os.O_RDONLY | os.O_DIRECTORY)  # one lookup of OUT in its parent
            except FileNotFoundError:
                errors.append(f"{out} missing after version {seen[-1] if seen else None}")
                return
            try:
                try:
                    fd = os.open("payload", os.O_RDONLY, dir_fd=dfd)
                except FileNotFoundError:  # only if the store we opened was replaced and is being deleted
                    if os.fstat(dfd).st_ino == os.lstat(out).st_ino:
                        errors.append(f"{out} holds a store without its payload")
                        return
                    continue
                with os.fdopen(fd) as fh:
                    v = _version(fh.read())
            except AssertionError as e:
                errors.append(str(e))
                return
            finally:
                os.close(dfd)
            if seen and v < seen[-1]:
                errors.append(f"read version {v} after {seen[-1]}")
                return
            seen.append(v)
            if last:
                return

    t = threading.Thread(target=reader, daemon=True)
    t.start()
    try:
        for i in range(1, n + 1):
            move_into_place(_store(temp_path(out), i), out, overwrite=True)
            if errors:
                break
    finally:
        done.set()
        t.join(timeout=120)  # a guard against a hang, not a timing check
    assert not t.is_alive() and errors == []
    assert seen[-1] == n and _read_out(out) == n
    assert sorted(p.name for p in tmp_path.iterdir()) == ["s.zarr"]


def _fake_renameat2(err, calls):
    def fn(old, new, flags):
        calls.append((os.fsdecode(old), os.fsdecode(new), flags))
        ctypes.set_errno(err)
        return -1
    return fn, "fake renameat2"


@pytest.mark.parametrize("err", [errno.EINVAL, errno.ENOSYS, errno.EOPNOTSUPP, errno.EPERM])
def test_the_two_renames_where_the_file_system_cannot_exchange(tmp_path, monkeypatch, caplog, err):
    """A kernel or file system without RENAME_EXCHANGE (EINVAL, ENOSYS, EOPNOTSUPP: some network file systems), or
    a seccomp filter that refuses renameat2 (EPERM, its usual answer; review r2 #5: was an error): the old store is
    renamed aside, the new one in, the old one deleted; the debug log says so."""
    out = _store(tmp_path / "s.zarr", 1)
    tmp = _store(temp_path(out), 2)
    ino = tmp.stat().st_ino
    calls = []
    monkeypatch.setattr(wa, "_renameat2", lambda: _fake_renameat2(err, calls))
    with caplog.at_level(logging.DEBUG, logger="fastload"):
        move_into_place(tmp, out, overwrite=True)
    assert calls == [(f"{tmp}.new-{ino}", str(out), wa.RENAME_EXCHANGE)]  # the new store, renamed just before
    assert _read_out(out) == 2 and sorted(p.name for p in tmp_path.iterdir()) == ["s.zarr"]
    assert f"fake renameat2 RENAME_EXCHANGE: {os.strerror(err)}: the two renames" in caplog.text


def test_the_two_renames_without_renameat2(tmp_path, monkeypatch, caplog):
    """Not Linux, or a 32-bit process whose system call number is not known here: the two renames."""
    monkeypatch.setattr(wa, "_renameat2", lambda: None)
    out = _store(tmp_path / "s.zarr", 1)
    with caplog.at_level(logging.DEBUG, logger="fastload"):
        move_into_place(_store(temp_path(out), 2), out, overwrite=True)
    assert _read_out(out) == 2 and sorted(p.name for p in tmp_path.iterdir()) == ["s.zarr"]
    assert "no renameat2 here" in caplog.text


def test_a_failed_second_rename_puts_the_old_store_back(tmp_path, monkeypatch):
    """Fallback path: the new store cannot be renamed in; the old one is renamed back and the error says why."""
    monkeypatch.setattr(wa, "_renameat2", lambda: None)
    out = _store(tmp_path / "s.zarr", 1)
    tmp = _store(temp_path(out), 2)
    real = os.rename

    def refuse_tmp(src, dst):
        if Path(src).name.startswith(f"{tmp.name}.new-") and Path(dst) == out:  # the new store's rename to OUT
            raise PermissionError(errno.EACCES, "Permission denied", str(src))
        return real(src, dst)

    monkeypatch.setattr(os, "rename", refuse_tmp)
    with pytest.raises(StoreError, match=r"s\.zarr: cannot move the finished store into place: .*Permission"):
        move_into_place(tmp, out, overwrite=True)
    assert _read_out(out) == 1 and _read_out(tmp) == 2
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(["s.zarr", tmp.name])


def test_an_exchange_that_fails_otherwise_is_an_error_and_changes_nothing(tmp_path, monkeypatch):
    """EACCES (say) is no reason to take the two renames: it is raised, naming both stores; nothing moved."""
    out = _store(tmp_path / "s.zarr", 1)
    tmp = _store(temp_path(out), 2)
    monkeypatch.setattr(wa, "_renameat2", lambda: _fake_renameat2(errno.EACCES, []))
    with pytest.raises(StoreError, match=rf"s\.zarr: cannot exchange the finished store {tmp.name} for the one there"):
        move_into_place(tmp, out, overwrite=True)
    assert _read_out(out) == 1 and _read_out(tmp) == 2


@linux_only
def test_the_system_call_where_libc_has_no_renameat2(tmp_path, monkeypatch):
    """glibc before 2.28 (or another libc) has no renameat2 wrapper: on x86_64 and aarch64 (64-bit) the system call
    is made by number and exchanges; a process of another ABI gets the two renames (a wrong number would be another
    system call)."""
    if (wa.platform.machine(), ctypes.sizeof(ctypes.c_void_p)) not in wa._SYS_RENAMEAT2:
        pytest.skip("no known renameat2 system call number for this machine")
    real = ctypes.CDLL

    class NoWrapper:
        def __init__(self, *a, **k):
            self._lib = real(*a, **k)

        def __getattr__(self, name):
            if name == "renameat2":
                raise AttributeError(name)
            return getattr(self._lib, name)

    monkeypatch.setattr(wa.ctypes, "CDLL", NoWrapper)
    wa._renameat2.cache_clear()
    try:
        call = wa._renameat2()
        assert call is not None and call[1] == f"syscall {wa._SYS_RENAMEAT2[(wa.platform.machine(), 8)]}"
        if not _exchange_works(tmp_path, call[0]):  # through the system call
            pytest.skip("the file system of tmp_path cannot exchange")
        out = _store(tmp_path / "s.zarr", 1)
        tmp = temp_path(out)
        assert call[0](os.fsencode(_store(tmp, 2)), os.fsencode(out), wa.RENAME_EXCHANGE) == 0
        assert _read_out(out) == 2 and _read_out(tmp) == 1
        monkeypatch.setattr(wa.platform, "machine", lambda: "i686")  # a 32-bit x86 process: no number known
        wa._renameat2.cache_clear()
        assert wa._renameat2() is None
    finally:
        wa._renameat2.cache_clear()


# The writer: overwrites OUT (fill 1) with a store of fill 2. At the moment the test names it is killed (SIGKILL, as
# by the OOM killer) or gets a Ctrl-C (SIGINT to itself, as from a terminal); it prints how its commit ended.
WRITER = textwrap.dedent("""
    import os, shutil, signal, sys
    import numpy as np
    import fastload._write_atomic as wa
    from fastload.write import StoreWriter
    out, how, when, way, fmt = sys.argv[1], sys.argv[2], sys.argv[3], sys.argv[4], int(sys.argv[5])
    def act():
        if how == "kill":
            os.kill(os.getpid(), signal.SIGKILL)
        signal.raise_signal(signal.SIGINT)
    if way == "two renames":
        wa._renameat2 = lambda: None
    real_rename, real_rmtree, real_exchange = os.rename, shutil.rmtree, wa._exchange
    def rename(src, dst):
        if when == "ready" and ".new-" in os.fspath(dst):
            act()  # the store is finished (no unfinished mark, metadata consolidated), still at its .tmp- name
        r = real_rename(src, dst)
        if when == "aside" and ".old-" in os.fspath(dst):
            act()  # the two renames: OUT moved aside, the new store not yet in
        return r
    def exchange(new, out):
        if when == "switch":
            act()  # about to switch
        r = real_exchange(new, out)
        if when == "exchange":
            act()  # just switched
        return r
    def rmtree(path, *a, **k):
        if when in ("delete", "mid_delete") and (".del-" in os.fspath(path) or ".old-" in os.fspath(path)):
            if when == "mid_delete":  # part way: the array's chunks gone, the root metadata still there
                real_rmtree(os.path.join(path, "t2m"))
            act()
        return real_rmtree(path, *a, **k)
    os.rename, wa._exchange, shutil.rmtree = rename, exchange, rmtree
    try:
        with StoreWriter(out, overwrite=True, zarr_format=fmt) as w:
            w.set_time(np.datetime64("2020-01-01T00", "ns") + np.arange(8) * np.timedelta64(6, "h"))
            w.set_grid(np.linspace(50, 40, 6), np.linspace(0, 9, 10))
            w.add_variable("t2m", ("time", "latitude", "longitude"), chunks=(4, 1, 6, 10))
            w.write("t2m", np.full((8, 6, 10), 2.0, np.float32), 0)
    except KeyboardInterrupt:
        print("interrupted")
        sys.exit(130)
    print("committed")
""")


def _write(out, fill, fmt=2):
    with StoreWriter(out, overwrite=True, zarr_format=fmt) as w:
        w.set_time(np.datetime64("2020-01-01T00", "ns") + np.arange(NT) * np.timedelta64(6, "h"))
        w.set_grid(np.linspace(50, 40, NY), np.linspace(0, 9, NX))
        w.add_variable("t2m", ("time", "latitude", "longitude"), chunks=(4, 1, NY, NX))
        w.write("t2m", np.full((NT, NY, NX), fill, np.float32), 0)


def _fill(store):
    """The one value of t2m in ``store``, read with xarray; checks the store is a finished one."""
    ds = xr.open_zarr(store, consolidated=True)
    assert UNFINISHED_ATTR not in ds.attrs
    values = np.unique(ds.t2m.values)
    assert values.size == 1, values
    return float(values[0])


def _leftover_kind(out: Path, x: Path, pid: int) -> str | None:
    """tmp, new (the name a finished store takes just before the switch), old or del when ``x`` is what writer
    ``pid`` of this host left beside ``out`` (by the names the module's docstring gives), None otherwise."""
    m = re.fullmatch(re.escape(f"{out.name}.") + r"(tmp|old|del)-" + re.escape(f"{_host()}-{pid}-") +
                     r"[0-9]+(?:-w[0-9]+)?(\.new-[0-9]+)?", x.name)  # fmt: skip
    return None if m is None else "new" if m.group(2) else m.group(1)


def _overwrite(tmp_path, how, when, way="exchange", fmt=2):
    """OUT (fill 1) overwritten by a writer process (fill 2) that gets ``how`` (kill, int) at ``when``; returns
    (OUT, the writer's pid, its exit status, what it printed, {kind: path} of what it left beside OUT)."""
    out = tmp_path / "s.zarr"
    _write(out, 1.0, fmt)
    script = tmp_path / "writer.py"
    script.write_text(WRITER)
    p = subprocess.Popen([sys.executable, str(script), str(out), how, when, way, str(fmt)], stdout=subprocess.PIPE,
                         stderr=subprocess.STDOUT, text=True)  # fmt: skip
    printed, _ = p.communicate(timeout=300)  # a guard against a hang, not a timing check
    left = {}
    for x in tmp_path.iterdir():
        kind = _leftover_kind(out, x, p.pid)
        if kind is not None:
            assert kind not in left, x
            left[kind] = x
        else:
            assert x.name in ("s.zarr", "writer.py"), x
    return out, p.pid, p.returncode, printed, left


@linux_only
@pytest.mark.parametrize(("when", "way"), [("ready", "exchange"), ("switch", "exchange"), ("switch", "two renames")])
def test_a_finished_store_whose_writer_was_killed_before_the_switch_is_kept(tmp_path, exchange, caplog, when, way):
    """Review r2 #1: SIGKILL once the new store is finished but before it is switched with OUT (a window of tens of
    ms on a real store). It was removed by the next writer as if it were the old store an exchange had taken from
    OUT, and OUT kept the older data. The name the new store takes just before the switch records its inode, so the
    next writer tells it from a replaced store: it keeps it, says where it is and that OUT holds another store,
    and still writes its own."""
    out, pid, rc, printed, left = _overwrite(tmp_path, "kill", when, way)
    assert rc == -signal.SIGKILL, printed
    (store,) = left.values()
    assert _fill(out) == 1.0 and _fill(store) == 2.0  # nothing switched yet
    with caplog.at_level(logging.WARNING, logger="fastload"):
        _write(out, 3.0)  # the next writer
    assert _fill(out) == 3.0 and _fill(store) == 2.0  # kept, whole
    assert (f"{store}: a finished store left by writer {pid} (gone), killed before it put it at s.zarr; "
            "s.zarr holds another store") in caplog.text  # fmt: skip
    assert "removed" not in caplog.text and "exchanged" not in caplog.text
    assert sorted(x.name for x in tmp_path.iterdir()) == sorted(["s.zarr", "writer.py", store.name])
    assert list(left) == ["tmp" if when == "ready" else "new"]  # the name says it is the new store, and its inode
    assert when == "ready" or store.stat().st_ino == int(store.name.rsplit(".new-", 1)[1])


@linux_only
@pytest.mark.parametrize(("when", "fmt"), [("exchange", 2), ("exchange", 3), ("delete", 2), ("mid_delete", 3)])
def test_a_writer_killed_after_the_switch_leaves_the_new_store_and_debris_the_next_writer_removes(
    tmp_path, exchange, caplog, when, fmt
):
    """SIGKILL right after the exchange (the old store at the name the new one had, with another inode), before
    deleting the old store (renamed to ``.del-``) or part way through deleting it: OUT holds the complete new
    store and the next writer removes what is left without touching OUT. Review r2 #4: the half-deleted store used
    to be at the ``.old-`` name of a store moved aside, and with OUT missing was kept and called restorable ('rename
    it back'); at ``.del-`` it is removed whatever OUT holds."""
    out, pid, rc, printed, left = _overwrite(tmp_path, "kill", when, fmt=fmt)
    assert rc == -signal.SIGKILL, printed
    (store,) = left.values()
    assert _fill(out) == 2.0  # the new store at OUT
    if when == "mid_delete":
        assert not (store / "t2m").exists()  # half deleted
        out.rename(tmp_path / "moved.zarr")  # and OUT missing (moved away): still nothing to rename back
    else:
        assert _fill(store) == 1.0  # the old one whole beside it: nothing lost at any moment
    with caplog.at_level(logging.WARNING, logger="fastload"):
        assert remove_stale_temporaries(out) == [store]
    assert f"removed {store}: " in caplog.text and "rename it back" not in caplog.text
    rest = ["moved.zarr"] if when == "mid_delete" else ["s.zarr"]
    assert sorted(x.name for x in tmp_path.iterdir()) == [*rest, "writer.py"]
    _write(out, 3.0, fmt)  # the next writer: clean, and OUT holds its store
    assert _fill(out) == 3.0 and sorted(x.name for x in tmp_path.iterdir()) == sorted({*rest, "s.zarr", "writer.py"})
    assert list(left) == ["new" if when == "exchange" else "del"]
    why = "exchanged for the writer's new one" if when == "exchange" else "replaced by the writer's new one"
    assert why in caplog.text


def test_a_writer_killed_between_the_two_renames_leaves_both_stores_named(tmp_path, caplog):
    """The two renames (no exchange here), SIGKILL between them: OUT is missing, the old store at ``.old-``, the new
    one at its ready name; the next writer keeps both, with true messages: rename the old one back, or the new one
    in."""
    out, pid, rc, printed, left = _overwrite(tmp_path, "kill", "aside", "two renames")
    assert rc == -signal.SIGKILL, printed
    assert sorted(left) == ["new", "old"] and not out.exists()
    assert _fill(left["old"]) == 1.0 and _fill(left["new"]) == 2.0
    with caplog.at_level(logging.WARNING, logger="fastload"):
        assert remove_stale_temporaries(out) == []
    assert f"{left['old']}: the store that was at {out}, moved aside by writer {pid} (gone)" in caplog.text
    assert "rename it back to s.zarr" in caplog.text
    assert f"{left['new']}: a finished store left by writer {pid} (gone), killed before it put it at s.zarr; " \
           "s.zarr is missing" in caplog.text  # fmt: skip


@linux_only
@pytest.mark.parametrize(("when", "way"), [("switch", "exchange"), ("exchange", "exchange"),
                                           ("aside", "two renames"), ("delete", "exchange")])  # fmt: skip
def test_ctrl_c_at_the_switch_or_after_it_leaves_the_new_store_in_place_and_reports_success(tmp_path, exchange, when,
                                                                                            way):  # fmt: skip
    """Review r2 #2 and #3: Ctrl-C during the first of the two renames left OUT missing (the interrupt landed
    outside the restoring ``try``, and abort deleted the new store); Ctrl-C during the exchange or the deletion of
    the old store reported 'interrupted' although OUT held the new store (and abort deleted the old store by the
    temporary's name). The switch now runs with Ctrl-C held back; once the new store is in, the write has
    succeeded: the interrupt only stops the deletion of the old store, which is left at ``.del-`` with a message
    that the new store is in place, and the next writer removes it."""
    out, pid, rc, printed, left = _overwrite(tmp_path, "int", when, way)
    assert (rc, printed.splitlines()[-1]) == (0, "committed"), printed
    assert _fill(out) == 2.0 and list(left) == ["del"] and _fill(left["del"]) == 1.0
    assert f"{out}: interrupted once the new store was in place: s.zarr holds the new, complete store" in printed
    assert f"what is left of the store it replaced, at {left['del']}, is removed by the first writer" in printed
    _write(out, 3.0)  # the next writer removes it
    assert _fill(out) == 3.0 and sorted(x.name for x in tmp_path.iterdir()) == ["s.zarr", "writer.py"]


def test_a_dead_writers_finished_temporary_is_kept_with_or_without_out(tmp_path, caplog):
    """A dead writer's ``.tmp-`` that holds a finished store (no unfinished mark) is a new store whose writer died
    before moving it in (the replaced store is never at that name): kept and named whether OUT is missing or holds
    another store (it used to be removed when OUT was there). An unfinished one goes either way."""
    out = tmp_path / "s.zarr"
    p = subprocess.Popen(["sleep", "60"])
    start = wt._proc_start(p.pid)[0]
    p.kill()
    p.wait()
    done = tmp_path / f"s.zarr.tmp-{_host()}-{p.pid}-{start}"
    zarr.open_group(done, mode="w", zarr_format=3, attributes={"fastload_layout": "per_variable", "title": "finished"})
    for n, there in enumerate(["is missing", "holds another store"]):
        unfinished = tmp_path / f"s.zarr.tmp-{_host()}-{p.pid}-{start + 1}"
        zarr.open_group(unfinished, mode="w", zarr_format=2, attributes={UNFINISHED_ATTR: "x"})
        caplog.clear()
        with caplog.at_level(logging.WARNING, logger="fastload"):
            assert remove_stale_temporaries(out) == [unfinished]
        assert done.is_dir() and f"{done}: a finished store left by writer {p.pid} (gone)" in caplog.text
        if there == "is missing":
            assert "s.zarr is missing. Rename it to s.zarr to use it; or delete it" in caplog.text
        else:
            assert "s.zarr holds another store" in caplog.text and "rename this one to s.zarr" in caplog.text
        if n == 0:
            _store(out, 1)
    assert sorted(x.name for x in tmp_path.iterdir()) == sorted(["s.zarr", done.name])


def test_a_dead_writers_ready_name_is_judged_by_the_inodes_of_both_names(tmp_path, caplog):
    """``<tmp>.new-<inode>`` of a dead writer: still that folder, the new store (kept); another folder while OUT is
    that inode, the store an exchange replaced (removed); another folder while OUT is not that inode either (OUT
    replaced since, or a file system whose inodes change on rename): which store it is cannot be told, so it is
    kept with a warning, never deleted on a guess."""
    out = _store(tmp_path / "s.zarr", 2)
    p = subprocess.Popen(["sleep", "60"])
    start = wt._proc_start(p.pid)[0]
    p.kill()
    p.wait()
    tmp = f"s.zarr.tmp-{_host()}-{p.pid}-{start}"
    new = _store(tmp_path / "new", 3)
    new = new.rename(tmp_path / f"{tmp}.new-{new.stat().st_ino}")  # killed before the switch
    replaced = _store(tmp_path / "replaced", 1).rename(tmp_path / f"{tmp}9.new-{out.stat().st_ino}")  # after it
    unknown = _store(tmp_path / "unknown", 0)
    unknown = unknown.rename(tmp_path / f"{tmp}8.new-{unknown.stat().st_ino + 1}")  # neither
    with caplog.at_level(logging.WARNING, logger="fastload"):
        assert remove_stale_temporaries(out) == [replaced]
    assert _read_out(new) == 3 and _read_out(unknown) == 0 and _read_out(out) == 2
    assert f"{new}: a finished store left by writer {p.pid} (gone)" in caplog.text
    assert f"removed {replaced}: the store that was at s.zarr, exchanged for the writer's new one" in caplog.text
    assert f"{unknown}: a store left by writer {p.pid} (gone)" in caplog.text
    assert "cannot tell which store this is, so it is kept" in caplog.text


def test_without_overwrite_an_existing_out_is_refused_and_nothing_moves(tmp_path):
    out = _store(tmp_path / "s.zarr", 1)
    tmp = _store(temp_path(out), 2)
    with pytest.raises(StoreError, match="already exists; pass overwrite=True"):
        move_into_place(tmp, out, overwrite=False)
    assert _read_out(out) == 1 and _read_out(tmp) == 2


@linux_only
def test_a_link_at_out_is_replaced_and_the_store_it_points_to_kept(tmp_path, exchange):
    """OUT a symbolic link to a store: the link is exchanged for the new store and deleted; the store it pointed
    to is not the writer's to delete (as with the two renames)."""
    target = _store(tmp_path / "elsewhere.zarr", 1)
    out = tmp_path / "s.zarr"
    out.symlink_to(target)
    move_into_place(_store(temp_path(out), 2), out, overwrite=True)
    assert not out.is_symlink() and _read_out(out) == 2 and _read_out(target) == 1
    assert sorted(p.name for p in tmp_path.iterdir()) == ["elsewhere.zarr", "s.zarr"]


@linux_only
def test_an_old_store_that_cannot_be_deleted_is_left_named_and_the_move_succeeds(tmp_path, exchange, monkeypatch,
                                                                                 caplog):  # fmt: skip
    """The new store is in place once exchanged: a failure to delete the old one (a file of another user, say) is
    a warning naming where it is (``.del-``, which the next writer of OUT removes once this process is gone), not
    an error that would make the caller throw away a store already at OUT."""
    out = _store(tmp_path / "s.zarr", 1)

    def refuse(path, *a, **k):
        raise PermissionError(errno.EACCES, "Permission denied", str(path))

    monkeypatch.setattr(wa.shutil, "rmtree", refuse)
    with caplog.at_level(logging.WARNING, logger="fastload"):
        assert move_into_place(_store(temp_path(out), 2), out, overwrite=True) == out
    old = temp_path(out, "del")
    assert _read_out(out) == 2 and _read_out(old) == 1
    assert f"the one it replaced, now at {old}, could not be deleted" in caplog.text
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(["s.zarr", old.name])


def test_an_output_name_too_long_for_the_writers_names_is_refused_before_any_work(tmp_path):
    """Review r7 M1: the finished store is renamed to ``<out>.tmp-<writer>.new-<inode>`` just before the switch; an
    OUT name that fits but leaves no room for that failed there, at the end (ENAMETOOLONG), and the finished store
    was thrown away. Now check_output refuses it first, naming the longest name that fits; a name that fits
    passes."""
    from fastload._write_atomic import check_output, ready_path

    limit = os.pathconf(tmp_path, "PC_NAME_MAX")
    extra = len(ready_path(temp_path(tmp_path / "x", seq=10**9), 2**64 - 1).name) - 1  # what the writer adds
    fits = tmp_path / ("o" * (limit - extra - 5) + ".zarr")
    assert check_output(fits, overwrite=False) == fits
    long = tmp_path / ("o" * (limit - extra - 4) + ".zarr")
    with pytest.raises(ConfigError, match=rf"the name '{long.name}' \({len(long.name)} bytes\) is too long: .* use a "
                                          rf"name of at most {limit - extra} bytes"):
        check_output(long, overwrite=False)
    assert list(tmp_path.iterdir()) == []
