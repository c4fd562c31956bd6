"""A writer killed outright (SIGKILL: the OOM killer, a preempted job) runs no cleanup. Its temporary store is
marked unfinished, and the next writer of the same output removes it, but only when it was written on this host by
a process that is provably gone: never a live writer's, another host's, or one whose pid now belongs to another
process that started later."""

from __future__ import annotations

import json
import logging
import os
import signal
import subprocess
import textwrap
import time
from pathlib import Path

import numpy as np
import pytest
import xarray as xr
import zarr

from fastload._write_temps import (
    UNFINISHED_ATTR,
    _host,
    _proc_start,
    remove_stale_temporaries,
    unfinished_message,
    writer_gone,
)
from fastload.errors import SchemaError, StoreError
from fastload.store import open_store
from fastload.write import StoreWriter

from .subprocs import dead_process, start_when_ready

pytestmark = pytest.mark.skipif(not os.path.exists("/proc/self/stat"), reason="needs Linux /proc")

NT, NY, NX = 8, 6, 10

# The writer: writes half the store, says where its temporary is, and finishes only when the file GO appears.
WRITER = textwrap.dedent("""
    import os, sys, time
    from pathlib import Path
    import numpy as np
    from fastload.write import StoreWriter
    out, ready, go, fill = sys.argv[1], Path(sys.argv[2]), Path(sys.argv[3]), float(sys.argv[4])
    w = StoreWriter(out, overwrite=True)
    w.set_time(np.datetime64("2020-01-01T00", "ns") + np.arange(8) * np.timedelta64(6, "h"))
    w.set_grid(np.linspace(50, 40, 6), np.linspace(0, 9, 10))
    w.add_variable("t2m", ("time", "latitude", "longitude"), chunks=(4, 1, 6, 10))
    w.write("t2m", np.full((4, 6, 10), fill, np.float32), 0)
    ready.with_suffix(".part").write_text(str(w.tmp))
    os.replace(ready.with_suffix(".part"), ready)
    while not go.exists():
        time.sleep(0.02)
    w.write("t2m", np.full((4, 6, 10), fill, np.float32), 4)
    w.commit()
""")


def _start_writer(tmp_path, out, fill):
    script = tmp_path / "writer.py"
    script.write_text(WRITER)
    ready, go = tmp_path / f"ready-{fill:g}", tmp_path / f"go-{fill:g}"
    p = start_when_ready(script, [str(out), str(ready), str(go), str(fill)], ready, "the writer", 120)
    return p, Path(ready.read_text()), go


def _write(out, fill):
    with StoreWriter(out, overwrite=True) as w:
        w.set_time(np.datetime64("2020-01-01T00", "ns") + np.arange(NT) * np.timedelta64(6, "h"))
        w.set_grid(np.linspace(50, 40, NY), np.linspace(0, 9, NX))
        w.add_variable("t2m", ("time", "latitude", "longitude"), chunks=(4, 1, NY, NX))
        w.write("t2m", np.full((NT, NY, NX), fill, np.float32), 0)


def test_a_killed_writers_temporary_is_marked_and_the_next_writer_removes_it(tmp_path):
    out = tmp_path / "s.zarr"
    p, tmp, _ = _start_writer(tmp_path, out, 1.0)
    assert tmp.name.startswith(f"s.zarr.tmp-{_host()}-{p.pid}-")
    os.kill(p.pid, signal.SIGKILL)
    p.communicate()
    assert p.returncode == -signal.SIGKILL and tmp.is_dir() and not out.exists()
    # what the audit saw: xarray opens it (half NaN); now it says it is unfinished, and why
    # no consolidated metadata (written only at commit); zarr lists the writer's marker file (removed at commit)
    with pytest.warns(RuntimeWarning, match="consolidated"), pytest.warns(UserWarning, match=r"\.fastload-writer"):
        ds = xr.open_zarr(tmp)
    assert np.isnan(ds.t2m.values[4:]).all() and (ds.t2m.values[:4] == 1).all()
    assert f"process {p.pid} on {_host()}" in ds.attrs[UNFINISHED_ATTR]
    msg = unfinished_message(tmp, ds.attrs)
    assert str(tmp) in msg and "unfinished" in msg and "killed" in msg
    with pytest.raises(StoreError, match=r"an unfinished store .*killed"):  # fastload itself refuses to read it
        open_store(str(tmp))
    # the next writer of the same output cleans up and succeeds
    _write(out, 2.0)
    assert not tmp.exists()
    assert sorted(x.name for x in tmp_path.iterdir()) == sorted(["s.zarr", "writer.py", "ready-1"])
    ds = xr.open_zarr(out)
    assert (ds.t2m.values == 2).all() and UNFINISHED_ATTR not in ds.attrs
    assert UNFINISHED_ATTR not in json.loads((out / ".zattrs").read_text())
    assert unfinished_message(out, ds.attrs) is None


def test_a_live_writers_temporary_is_not_touched(tmp_path):
    out = tmp_path / "s.zarr"
    p, tmp, go = _start_writer(tmp_path, out, 1.0)
    try:
        assert remove_stale_temporaries(out) == []
        _write(out, 2.0)  # another writer of the same output, while the first one runs
        assert tmp.is_dir() and (xr.open_zarr(out).t2m.values == 2).all()
        go.write_text("")
        _, err = p.communicate(timeout=120)
        assert p.returncode == 0, err  # it finished its store in the temporary it had: nothing was removed under it
    finally:
        if p.poll() is None:
            p.kill()
            p.communicate()
    assert not tmp.exists() and (xr.open_zarr(out).t2m.values == 1).all()


def test_only_this_hosts_temporaries_of_dead_writers_are_removed(tmp_path, caplog):
    out = tmp_path / "s.zarr"
    host = _host()
    parent, parent_start = os.getppid(), _proc_start(os.getppid())[0]
    dead, dead_start = dead_process()
    names = {
        "dead": f"s.zarr.tmp-{host}-{dead}-{dead_start}",
        "reused": f"s.zarr.tmp-{host}-{parent}-{parent_start + 1}",  # the pid now runs a process started later
        "live": f"s.zarr.tmp-{host}-{parent}-{parent_start}",
        "other_host": f"s.zarr.tmp-x{host}-{dead}-{dead_start}",  # another node of a shared file system
        "other_ns": f"s.zarr.tmp-{host.split('~')[0]}~1-{dead}-{dead_start}",  # another container, same host name
        "legacy": "s.zarr.tmp-12345",  # an earlier fastload's name: the host is unknown
        "old_dead": f"s.zarr.old-{host}-{dead}-{dead_start}",  # killed between its two renames: OUT moved aside
        "del_dead": f"s.zarr.del-{host}-{dead}-{dead_start}",  # killed while deleting the store it replaced
        "del_live": f"s.zarr.del-{host}-{parent}-{parent_start}",  # being deleted
        "other_out": f"s.zarr2.tmp-{host}-{dead}-{dead_start}",
    }
    for n in names.values():
        zarr.open_group(tmp_path / n, mode="w", attributes={UNFINISHED_ATTR: "x"})
    assert writer_gone(dead, dead_start) and writer_gone(parent, parent_start + 1)
    assert not writer_gone(parent, parent_start) and not writer_gone(os.getpid(), 0)
    # OUT missing: the .old- store is the one the killed writer moved aside, kept for the user to rename back; the
    # .del- one is a replaced store being deleted, removed whatever OUT holds (review r2 #4)
    with caplog.at_level(logging.WARNING, logger="fastload"):
        removed = remove_stale_temporaries(out)
    assert sorted(p.name for p in removed) == sorted([names["dead"], names["reused"], names["del_dead"]])
    assert "rename it back" in caplog.text and "earlier fastload" in caplog.text
    left = {p.name for p in tmp_path.iterdir()}
    assert left == {names[k] for k in ("live", "other_host", "other_ns", "legacy", "old_dead", "del_live",
                                       "other_out")}  # fmt: skip
    _write(out, 2.0)  # still no OUT when it started: the .old- store stays
    assert names["old_dead"] in {p.name for p in tmp_path.iterdir()}
    _write(out, 3.0)  # with OUT in place, the killed writer's .old- is debris: removed by the next writer
    assert {p.name for p in tmp_path.iterdir()} == {"s.zarr"} | {names[k] for k in ("live", "other_host", "other_ns",
                                                                                    "legacy", "del_live",
                                                                                    "other_out")}  # fmt: skip


def test_a_zombie_writer_is_gone():
    """Killed but not yet reaped by its parent: it writes nothing more."""
    p = subprocess.Popen(["sleep", "60"])
    start = _proc_start(p.pid)[0]
    assert not writer_gone(p.pid, start)
    os.kill(p.pid, signal.SIGKILL)
    deadline = time.monotonic() + 60
    while _proc_start(p.pid)[1] != "Z" and time.monotonic() < deadline:
        time.sleep(0.01)
    assert writer_gone(p.pid, start)
    p.wait()
    assert writer_gone(p.pid, start)


def test_a_killed_stats_runs_temporary_is_removed_and_never_read_as_coefficients(tmp_path):
    """fastload stats writes its coefficient store the same way: a killed run's temporary (marked unfinished) is
    removed by the next run for the same output, and the Normalizer refuses a store marked unfinished."""
    from fastload.norm import Normalizer
    from fastload.stats import StatsConfig, compute_stats

    from .stores import make_per_variable

    make_per_variable(tmp_path / "s.zarr", nt=4, ny=9, nx=16)
    out = tmp_path / "norm.zarr"
    dead, start = dead_process()
    stale = tmp_path / f"norm.zarr.tmp-{_host()}-{dead}-{start}"
    zarr.open_group(stale, mode="w", attributes={UNFINISHED_ATTR: "written by a run that was killed"})
    compute_stats(str(tmp_path / "s.zarr"), str(out), StatsConfig(progress=False))
    assert not stale.exists() and sorted(p.name for p in tmp_path.iterdir()) == ["norm.zarr", "s.zarr"]
    assert UNFINISHED_ATTR not in zarr.open_group(out, mode="r").attrs
    Normalizer(str(out))  # a finished store reads
    zarr.open_group(out, mode="r+").attrs[UNFINISHED_ATTR] = "written by process 1 on x"
    with pytest.raises(SchemaError, match=r"an unfinished store"):
        Normalizer(str(out))


def _id_parts():
    """(host name, pid namespace inode, boot id without dashes) of this process, read here, not by fastload."""
    import socket

    with open("/proc/sys/kernel/random/boot_id") as fh:
        boot = fh.read().strip().replace("-", "")
    return socket.gethostname().replace("~", "_"), str(os.stat("/proc/self/ns/pid").st_ino), boot


def test_the_host_id_tells_machines_and_boots_apart():
    """Outside containers every process is in the initial pid namespace, whose inode is the same on every Linux
    machine: two machines of one host name on NFS would read each other's temporaries as their own. The boot id
    (per machine and boot) is in the name, and the name still parses."""
    from fastload._write_temps import _parse, temp_path

    name, _, boot = _id_parts()
    assert _host() == f"{name}~{os.stat('/proc/self/ns/pid').st_ino}~{boot}"
    tmp = temp_path("/x/s.zarr")
    assert _parse(tmp.name[len("s.zarr.tmp-"):]) == (_host(), os.getpid(), _proc_start(os.getpid())[0])


def test_a_temporary_of_this_host_name_in_another_namespace_or_boot_is_kept_with_a_warning(tmp_path, caplog):
    """A container restarted after the OOM killer (new pid namespace, same host name), this machine before a
    reboot, another machine of the same name: their writers' pids cannot be checked here, so the temporary stays,
    and the log names it, says what it holds and when it may be deleted (it used to stay for ever without a word).
    Another host's is kept too, said at INFO (review r2 #5: it was kept in silence)."""
    out = tmp_path / "s.zarr"
    name, ns, boot = _id_parts()
    dead, dead_start = dead_process()  # gone here: were these ours, they would be removed
    other = f"{name}~4026532999~{boot}-{dead}-{dead_start}"  # another container of this boot
    names = [f"s.zarr.tmp-{name}~{ns}~{'0' * 32}-{dead}-{dead_start}",  # another boot or machine, same name and ns
             f"s.zarr.tmp-{other}",
             f"s.zarr.tmp-{name}~{ns}-{dead}-{dead_start}",  # an earlier fastload's name (no boot id)
             f"s.zarr.old-{other}",  # moved aside by the two renames
             f"s.zarr.del-{other}",  # a replaced store being deleted
             f"s.zarr.tmp-{other}.new-1"]  # a finished store about to be switched, or the one it replaced  # fmt: skip
    other_host = f"s.zarr.tmp-x{name}~{ns}~{boot}-{dead}-{dead_start}"
    for n in [*names, other_host]:
        zarr.open_group(tmp_path / n, mode="w", attributes={UNFINISHED_ATTR: "x"})
    with caplog.at_level(logging.INFO, logger="fastload"):
        assert remove_stale_temporaries(out) == []
    assert {p.name for p in tmp_path.iterdir()} == {*names, other_host}
    msgs = {n: [r for r in caplog.records if r.getMessage().startswith(f"{tmp_path / n}:")] for n in names}
    for n in names:
        (rec,) = msgs[n]
        assert rec.levelno == logging.WARNING and "another pid namespace or boot" in rec.getMessage()
        assert f"safe to delete once no writer of {out} runs" in rec.getMessage()
    assert "rename it back" in msgs[names[3]][0].getMessage()
    assert "being deleted" in msgs[names[4]][0].getMessage() and "rename it back" not in msgs[names[4]][0].getMessage()
    assert "exchanged for its writer's new one" in msgs[names[5]][0].getMessage()  # inode 1 is not that folder's
    assert [r.levelno for r in caplog.records if other_host in r.getMessage()] == [logging.INFO]


def test_another_hosts_leftover_is_kept_and_said_at_info(tmp_path, caplog):
    """Review r2 #5: a temporary of another host next to OUT (a shared file system) is not this host's to judge; it
    is kept, as before, but no longer in silence: an INFO record names it, its host and when it may be deleted."""
    out = tmp_path / "s.zarr"
    name, ns, boot = _id_parts()
    dead, dead_start = dead_process()
    other_host = tmp_path / f"s.zarr.tmp-x{name}~{ns}~{boot}-{dead}-{dead_start}"
    zarr.open_group(other_host, mode="w", attributes={UNFINISHED_ATTR: "x"})
    with caplog.at_level(logging.INFO, logger="fastload"):
        assert remove_stale_temporaries(out) == []
    assert other_host.is_dir()
    (rec,) = [r for r in caplog.records if str(other_host) in r.getMessage()]
    assert rec.levelno == logging.INFO and f"on another host (x{name}~{ns}~{boot})" in rec.getMessage()
    assert "cannot be checked from here, so it is kept" in rec.getMessage()
    assert f"safe to delete once no writer of {out} runs" in rec.getMessage()


def test_a_live_writer_hidden_from_proc_is_not_gone(monkeypatch):
    """With /proc mounted hidepid=2, another user's live process has no /proc/<pid> (FileNotFoundError): the
    kernel's kill(pid, 0) decides, and EPERM means alive."""
    import builtins

    import fastload._write_temps as wt

    live, live_start = os.getppid(), _proc_start(os.getppid())[0]
    dead, dead_start = dead_process()
    hidden = {f"/proc/{live}/stat", f"/proc/{dead}/stat"}

    def hidepid_open(path, *a, **k):
        if str(path) in hidden:
            raise FileNotFoundError(2, "No such file or directory", str(path))
        return builtins.open(path, *a, **k)

    monkeypatch.setattr(wt, "open", hidepid_open, raising=False)
    assert not writer_gone(live, live_start) and not writer_gone(live, 0)  # ours: kill(pid, 0) succeeds
    assert writer_gone(dead, dead_start)  # ESRCH: gone
    real_kill = os.kill

    def other_users(pid, sig):
        if pid == dead:
            raise PermissionError(1, "Operation not permitted")
        return real_kill(pid, sig)

    monkeypatch.setattr(wt.os, "kill", other_users)
    assert not writer_gone(dead, dead_start)  # EPERM: another user's live process
