"""A killed save's temporary is removed by the next save of the same checkpoint, once its writer is provably gone
on this host; a live writer's, another host's, an earlier version's and a dead writer's whole checkpoint are kept
and named once in a warning with their size (review s14 r3: a killed save left a full-size ``.last.pt.<hex>.tmp``
that nothing removed)."""

from __future__ import annotations

import os
import re
import shutil
import signal
import subprocess
import sys
import textwrap
import warnings
from pathlib import Path

import pytest
import torch

from model import save_checkpoint
from model.checkpoint import _host, _proc_start, _temp_prefix, read_checkpoint

ROOT = Path(__file__).resolve().parents[2]

# A save that stops after writing part of the checkpoint and waits to be killed, as a save the OOM killer stops.
CHILD = textwrap.dedent("""
    import sys, time, torch
    from model.checkpoint import save_checkpoint
    def partial(obj, fh):
        fh.write(b"PK" + bytes(300_000))
        fh.flush()
        print("writing", flush=True)
        time.sleep(300)
    torch.save = partial
    save_checkpoint(sys.argv[1], torch.nn.Linear(2, 2))
""")


def _net(seed: int = 0) -> torch.nn.Module:
    torch.manual_seed(seed)
    return torch.nn.Linear(3, 2)


def _saves_the_checkpoint(path: Path, net: torch.nn.Module) -> None:
    """``path`` holds ``net``'s weights exactly (the save was not disturbed by the clean-up)."""
    state = read_checkpoint(path)["state"]
    assert sorted(state) == sorted(net.state_dict())
    assert all(torch.equal(state[k], v) for k, v in net.state_dict().items())


def _quiet_save(path: Path, net: torch.nn.Module) -> None:
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        save_checkpoint(path, net)


def test_a_live_writers_temporary_is_kept_and_removed_once_it_is_killed(tmp_path):
    path = tmp_path / "last.pt"
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    child = subprocess.Popen([sys.executable, "-c", CHILD, str(path)], stdout=subprocess.PIPE, text=True, env=env,
                             cwd=ROOT)
    try:
        assert child.stdout.readline() == "writing\n"
        (tmp,) = [p for p in tmp_path.iterdir()]
        start = _proc_start(child.pid)[0]
        assert tmp.name == f".last.pt.tmp-{_host()}-{child.pid}-{start}-w1"  # names its writer
        assert tmp.stat().st_size == 300_002
        # the writer runs: its temporary is kept, named with its size, once
        with pytest.warns(UserWarning, match=rf"{re.escape(tmp.name)} \(0\.3 MB\): being written by process "
                                             rf"{child.pid}, running on this host"):
            save_checkpoint(path, _net(1))
        assert tmp.stat().st_size == 300_002
        _quiet_save(path, _net(2))  # named once: no second warning
        assert sorted(p.name for p in tmp_path.iterdir()) == sorted([tmp.name, "last.pt"])
    finally:
        child.send_signal(signal.SIGKILL)
        child.wait()
        child.stdout.close()
    assert child.returncode == -signal.SIGKILL
    _quiet_save(path, _net(3))  # its writer is gone: removed, without a warning
    assert [p.name for p in tmp_path.iterdir()] == ["last.pt"]
    _saves_the_checkpoint(path, _net(3))


def _dead_pid() -> int:
    """The pid of a process that has ended (and been reaped)."""
    done = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True,
                          check=True)
    return int(done.stdout)


def test_other_hosts_namespaces_and_earlier_names_are_kept_and_named_once(tmp_path):
    path = tmp_path / "m.pt"
    name = _host().split("~")[0]
    foreign = tmp_path / f".m.pt.tmp-{name}x~4026531836~0123456789abcdef0123456789abcdef-{_dead_pid()}-5-w1"
    same_name = tmp_path / f".m.pt.tmp-{name}~1~fedcba9876543210fedcba9876543210-{_dead_pid()}-5-w1"
    earlier = tmp_path / ".m.pt.0123456789ab.tmp"
    other_ckpt = tmp_path / f".n.pt.tmp-{_host()}-{_dead_pid()}-5-w1"  # another checkpoint's: not this save's
    for i, p in enumerate([foreign, same_name, earlier, other_ckpt]):
        p.write_bytes(bytes(1_000_000 * (i + 1)))
    with pytest.warns(UserWarning) as record:
        save_checkpoint(path, _net())
    (msg,) = [str(w.message) for w in record]
    assert "kept 3 temporary file(s) beside it (6.0 MB)" in msg
    assert f"{foreign.name} (1.0 MB): written by process" in msg and f"on another host ({name}x~" in msg
    assert f"{same_name.name} (2.0 MB): written by process" in msg and "another pid namespace or boot" in msg
    assert f"{earlier.name} (3.0 MB): named by an earlier version" in msg
    assert other_ckpt.name not in msg
    for i, p in enumerate([foreign, same_name, earlier, other_ckpt]):
        assert p.stat().st_size == 1_000_000 * (i + 1)
    _quiet_save(path, _net(1))  # named once per process
    _saves_the_checkpoint(path, _net(1))


def test_reused_pid_and_dead_writers_whole_checkpoint(tmp_path):
    """A temporary whose pid now belongs to another process (another start time) is a dead writer's: removed. A
    dead writer's whole checkpoint (killed between the last byte and the rename) may be the newest: kept, named.
    This process's own temporary (another thread's save) is never touched nor named."""
    path = tmp_path / "m.pt"
    good = save_checkpoint(tmp_path / "good.pt", _net(5))
    host, me, start = _host(), os.getpid(), _proc_start(os.getpid())[0]
    reused = tmp_path / f".m.pt.tmp-{host}-{me}-{start + 1}-w1"
    reused.write_bytes(b"PK" + bytes(1000))
    whole = tmp_path / f".m.pt.tmp-{host}-{_dead_pid()}-7-w1"
    shutil.copyfile(good, whole)
    truncated = tmp_path / f".m.pt.tmp-{host}-{_dead_pid()}-7-w2"
    truncated.write_bytes(good.read_bytes()[:-100])
    mine = tmp_path / f".m.pt.tmp-{host}-{me}-{start}-w999999"
    mine.write_bytes(b"x")
    with pytest.warns(UserWarning, match=rf"kept 1 temporary .*{re.escape(whole.name)} \(.*\): a whole checkpoint "
                                         rf"written by process \d+ \(gone\)"):
        save_checkpoint(path, _net())
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(["good.pt", "m.pt", whole.name, mine.name])
    _saves_the_checkpoint(whole, _net(5))
    _saves_the_checkpoint(path, _net())


def test_long_names_keep_a_temporary_name_within_255_bytes(tmp_path):
    """The writer's name makes the temporary's longer than the checkpoint's: a long one is cut and hashed, and its
    killed saves' temporaries are still found."""
    path = tmp_path / ("é" * 100 + ".pt")  # 203 bytes: the old temporary, 223 bytes, fitted; with the writer not
    prefix = _temp_prefix(path)
    assert prefix != f".{path.name}.tmp-" and prefix.endswith(".tmp-") and prefix != _temp_prefix(
        path.with_name("é" * 100 + ".pu"))
    stale = tmp_path / f"{prefix}{_host()}-{_dead_pid()}-9-w1"
    assert len(stale.name.encode()) <= 255
    stale.write_bytes(b"x")
    _quiet_save(path, _net())
    assert [p.name for p in tmp_path.iterdir()] == [path.name]
    _saves_the_checkpoint(path, _net())


def test_the_writer_identity_agrees_with_the_store_writers_copy():
    """model/checkpoint.py repeats fastload/_write_temps.py's writer identity (``model`` may not import ``fastload``):
    the two must name a writer and judge it gone alike, or a checkpoint's temporary and a store's would be kept or
    removed by different rules (duplicates pair D1 of session 14)."""
    import subprocess

    from fastload import _write_temps as stores
    from model import checkpoint as ckpt

    assert ckpt._host() == stores._host()
    assert ckpt._writer_id() == stores.writer_id()
    live = subprocess.Popen(["sleep", "60"])
    try:
        gone = subprocess.Popen(["sleep", "60"])
        gone_start = stores._proc_start(gone.pid)[0]
        gone.kill()
        gone.wait()
        live_start = stores._proc_start(live.pid)[0]
        assert ckpt._proc_start(live.pid) == stores._proc_start(live.pid)
        for pid, start in ((live.pid, live_start), (live.pid, live_start + 1), (gone.pid, gone_start),
                           (2**22 + 12345, 1)):
            assert ckpt._writer_gone(pid, start) == stores.writer_gone(pid, start), (pid, start)
    finally:
        live.kill()
        live.wait()
