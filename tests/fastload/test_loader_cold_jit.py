"""A Loader closed while its first batch compiles the gather kernels (a cold Numba cache, review s13 r4 items 1-2).

Only the reader's kernel warm-up thread, which is no daemon, may compile: the loader's worker threads are daemons,
and a compile still running on one of them at the process's exit aborted it ("terminate called without an active
exception", 3 runs in 7), while ``close(timeout)`` waited for the whole compile (10-14 s for ``timeout=0.5``). The
first gathers now wait for the warm-up (honouring a stop), and ``close`` waits for it only within its timeout (the
interpreter still waits for it at exit). Run in a subprocess with a fresh ``NUMBA_CACHE_DIR``, so the kernels really
compile; the warm-up starts a second late there, as on a loaded machine, so that before the fix the worker thread
reached its gather first and compiled on its own thread every time. The close comes while the warm-up is known to be
inside a compile, which holds it there until the close returned (a Numba compile event, no timings: a faster core
could finish the compile before a close timed by seconds).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
import threading
import time

import numpy as np
import pytest

from fastload.errors import LoaderClosedError
from fastload.loader import _doing
from fastload.reader import ChunkReader

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

_SCRIPT = """
import json, sys, threading, time
from numba.core import event

compiles = []
compiling = threading.Event()  # the warm-up is inside a compile (held there until the close returned)
closed = threading.Event()
depth = [0]


class Record(event.Listener):  # which thread compiles each Numba function
    def on_start(self, ev):
        t = threading.current_thread()
        compiles.append([t.name, t.daemon, ev.data["dispatcher"].py_func.__name__])
        if t.name.endswith("_warm"):
            depth[0] += 1
            if not compiling.is_set():
                compiling.set()
                closed.wait(60)  # (bounded: a close that waits for the warm-up gets it back after 60 s)

    def on_end(self, ev):
        if threading.current_thread().name.endswith("_warm"):
            depth[0] -= 1


event.register("numba:compile", Record())
from fastload.loader import Loader
from fastload.reader import ChunkReader
from tests.fastload.loader_ref import build

warm = ChunkReader._warm_kernels


def late_warm(self, dtype):  # the warm-up thread starts late (a loaded machine): the workers gather first
    time.sleep(1.0)
    warm(self, dtype)


ChunkReader._warm_kernels = late_warm
truth, cfg = build("per_variable", sys.argv[1], zarr_format=2, nt=20, codec="zstd")
loader = Loader(sys.argv[1], cfg, samples_per_epoch=12, seed=1, device="cpu")
it = iter(loader)
warm_thread = loader._backend.reader._warm
started = compiling.wait(120)  # the warm-up compiles (and waits there until the close returned)
loader.close(timeout=0.5)
alive, in_compile = warm_thread.is_alive(), depth[0] > 0
closed.set()
warm_thread.join()
print(json.dumps({"compile_started": started, "warm_alive_after_close": alive, "compiling_after_close": in_compile,
                  "compiles": compiles}), flush=True)
"""


def run_cold(tmp_path, script: str) -> tuple[subprocess.CompletedProcess, dict]:
    """Run ``script`` (argument: a store path under ``tmp_path``) in a fresh interpreter with an empty Numba cache;
    it must exit 0 without an abort; returns the process and the JSON of its last output line."""
    path = tmp_path / "cold.py"
    path.write_text(textwrap.dedent(script))
    cache = tmp_path / "numba-cache"
    cache.mkdir()
    env = dict(os.environ, NUMBA_CACHE_DIR=str(cache), PYTHONPATH=os.pathsep.join([REPO, os.environ.get(
        "PYTHONPATH", "")]))
    env.pop("FASTLOAD_NO_JIT", None)
    try:
        proc = subprocess.run([sys.executable, str(path), str(tmp_path / "s.zarr")], capture_output=True,
                              text=True, timeout=240, env=env, cwd=REPO)
    except subprocess.TimeoutExpired as e:
        pytest.fail(f"the script still ran after {e.timeout} s")
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "terminate called" not in proc.stderr and "Aborted" not in proc.stderr, proc.stderr[-3000:]
    return proc, json.loads(proc.stdout.strip().splitlines()[-1])


@pytest.mark.slow
def test_close_during_a_cold_compile_returns_in_time_and_the_process_exits_cleanly(tmp_path):
    proc, out = run_cold(tmp_path, _SCRIPT)
    compiled = {tuple(c) for c in out["compiles"]}
    assert {f for _, _, f in compiled} >= {"_gather_rows"}, compiled  # the kernels did compile in this run
    daemons = sorted({(name, f) for name, daemon, f in compiled if daemon})
    assert daemons == [], f"compiled on daemon threads: {daemons}"  # (before: the loader's worker thread)
    assert {name for name, _, _ in compiled} == {"fastload-io_warm"}, compiled
    # close(timeout=0.5) returned while the warm-up was inside a compile, which it held until then (before: close
    # waited for the whole compile, so the warm-up got out only after its bounded wait, and had ended)
    assert out["compile_started"], out
    assert out["warm_alive_after_close"] and out["compiling_after_close"], out
    assert "hung store request" not in proc.stderr  # the workers stopped; nothing was left running to misname


def test_a_stopped_read_is_named_by_what_it_waits_for():
    """The warning for reads still running after an iteration's stop names what each waits for, from its stack
    (it said 'a hung store request?' of threads waiting for a Numba compile)."""
    release = threading.Event()
    warm = threading.Thread(target=release.wait, name="fake-warm")
    warm.start()

    class Reader:
        _warm = warm

    stopped = threading.Event()
    raised = []

    def read():
        try:
            ChunkReader._await_warm(Reader(), stopped.is_set)
        except InterruptedError as e:
            raised.append(e)

    t = threading.Thread(target=read, name="reader-0", daemon=True)
    t.start()
    try:
        deadline = 200
        while "waiting for" not in _doing(t) and deadline:  # (until the thread is inside _await_warm)
            threading.Event().wait(0.01)
            deadline -= 1
        said = _doing(t)
        assert said.startswith("reader-0 (waiting for the gather kernels' compile, fastload.reader:"), said
    finally:
        stopped.set()
        t.join(5)
        release.set()
        warm.join(5)
    assert not t.is_alive() and len(raised) == 1  # it honoured the stop
    assert _doing(t) == "reader-0 (ended)"


def test_await_warm_raises_on_stop_and_returns_once_the_warm_up_ended():
    """The first gather's wait for the warm-up: an InterruptedError when the read is stopped, nothing when the
    warm-up has ended or never started."""
    release = threading.Event()
    warm = threading.Thread(target=release.wait)
    warm.start()

    class Reader:
        _warm = warm

    with pytest.raises(InterruptedError, match="kernel warm-up"):
        ChunkReader._await_warm(Reader(), lambda: True)
    release.set()
    ChunkReader._await_warm(Reader(), lambda: False)
    assert not warm.is_alive()
    Reader._warm = None
    ChunkReader._await_warm(Reader(), lambda: False)


def test_close_waits_for_the_kernel_warm_up_only_within_its_timeout(tmp_path, monkeypatch):
    """A warm-up that does not end (a compile on a cold JIT cache takes 10+ s on 2 cores) does not hold up
    ``close(timeout)``: it waited for it without a bound (close(timeout=0.5) took 10-14 s). The first gather waits
    for it meanwhile, and stops with the iteration."""
    from fastload.loader import Loader
    from tests.fastload.loader_ref import build

    release = threading.Event()
    entered = threading.Event()

    def slow_warm(self, dtype):
        entered.set()
        release.wait()

    monkeypatch.setattr(ChunkReader, "_warm_kernels", slow_warm)
    _, cfg = build("per_variable", tmp_path / "s.zarr", zarr_format=2, nt=20, codec="zstd")
    guard = threading.Timer(30.0, release.set)  # (before the fix close() waited for it: end the test, failed)
    guard.start()
    try:
        loader = Loader(tmp_path / "s.zarr", cfg, samples_per_epoch=12, seed=1, device="cpu")
        it = iter(loader)
        reader = loader._backend.reader
        assert entered.wait(10)
        t0 = time.monotonic()
        loader.close(timeout=0.5)
        took = time.monotonic() - t0
        assert reader._warm.is_alive()  # close returned while the warm-up went on
        assert not release.is_set(), f"close waited for the warm-up ({took:.1f} s)"
        with pytest.raises(LoaderClosedError):
            next(it)
    finally:
        release.set()
        guard.cancel()
    reader._warm.join(5)
    assert not reader._warm.is_alive()


def test_a_multi_stream_loader_warms_its_kernels_up_on_the_warm_up_thread(tmp_path, caplog):
    """A multi-stream config's gathers (lat-lon kernels and the mesh's point kernels) had no warm-up: the loader's
    daemon worker threads compiled them. The warm-up runs the MultiStream's own plan and gather on zero boxes, and
    the batches still equal those of ``extract_streams``."""
    import logging

    from fastload.streams import MultiStream, extract_streams
    from tests.fastload.stores_multi import make_atmosphere, make_mesh, make_ocean
    from tests.fastload.test_streams import config

    paths = {"era5": tmp_path / "a.zarr", "ocean": tmp_path / "o.zarr", "fesom": tmp_path / "m.zarr"}
    make_atmosphere(paths["era5"])
    make_ocean(paths["ocean"])
    make_mesh(paths["fesom"])
    cfg = config(paths)
    caplog.set_level(logging.DEBUG, logger="fastload")
    from fastload.loader import Loader

    with Loader(None, cfg, batch_size=3, samples_per_epoch=6, workers=2, device="cpu", seed=7) as loader:
        it = iter(loader)
        warm = loader._backend.reader._warm
        assert warm is not None and not warm.daemon  # (was None: no warm-up for multi-stream configs)
        batches = list(it)
        warm.join(60)
        assert not warm.is_alive()
    assert not [r for r in caplog.records if "warm-up skipped" in r.getMessage()], caplog.text
    boxes = np.concatenate([b.boxes.numpy() for b in batches])
    want = extract_streams(MultiStream(cfg), boxes)
    for name in cfg.field_names:
        got = np.concatenate([b[name].numpy() for b in batches])
        assert np.array_equal(got, np.asarray(want[name].data), equal_nan=True), name
