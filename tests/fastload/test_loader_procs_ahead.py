"""``bytes_stored`` in process mode: each epoch's batches count exactly the chunk bytes the workers' stores handed out
during it. Each worker has its own reader and read-ahead; its last batch of the epoch settles them
(:meth:`fastload.reader.ChunkReader.settle_ahead`, as the thread backends' last batch does), so a read-ahead request
still in flight then counts in that batch. Before, it counted in the worker's next batch (the next epoch's), or
nowhere after close.

The workers read the store through a counting source (a stand-in for the worker's entry point,
:func:`_counting_child`, wraps ``make_source``; not a LocalSource, so the readers read ahead): it appends each chunk
request's bytes to a file per process, and the test adds them up after each epoch. The request that is in flight at
the end is injected after a worker's last read, as in test_reader_ahead_bytes (deterministic)."""

from __future__ import annotations

import logging
import os
import threading
import time

import numpy as np
import pytest

from fastload.loader import Loader
from fastload.store import BaseByteSource
from tests.fastload.loader_ref import build, checked_epoch

pytestmark = pytest.mark.usefixtures("nothing_left")

def _append(path: str, text: str) -> None:
    fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    try:
        os.write(fd, text.encode())
    finally:
        os.close(fd)


class _Counting(BaseByteSource):
    """A worker's source: appends the bytes of each object it hands out to ``<out>/served-<pid>`` once ``counting``
    is set (when the worker's reader is made: not the metadata and coordinates read while opening the store)."""

    def __init__(self, inner: BaseByteSource, out: str, latency: float):
        self.inner, self.out, self.latency = inner, out, latency
        self.root = getattr(inner, "root", "")
        self.counting = False
        self._random = np.random.default_rng(os.getpid())
        self._lock = threading.Lock()

    def _count(self, key: str, raw: bytes | None) -> bytes | None:
        if raw is not None and self.counting:
            _append(os.path.join(self.out, f"served-{os.getpid()}"), f"{len(raw)}\n")
        return raw

    def _wait(self) -> None:
        if self.latency:
            with self._lock:
                s = float(self._random.uniform(0, self.latency))
            time.sleep(s)  # (a slow store; nothing is timed)

    def get(self, key):
        self._wait()
        return self._count(key, self.inner.get(key))

    def get_range(self, key, start, length):
        self._wait()
        return self._count(key, self.inner.get_range(key, start, length))

    def list_dir(self, prefix):
        return self.inner.list_dir(prefix)

    def exists(self, key):
        return self.inner.exists(key)

    def describe(self, key=""):
        return self.inner.describe(key)


def _counting_child(conn) -> None:
    """The worker's entry point in these tests (spawned: settings come in environment variables): the real one
    (``fastload._proc_worker._child_main``) with the store read through :class:`_Counting`; after its last batch of an
    epoch the reader's read-ahead count goes to ``<out>/ahead-<pid>`` and, when ``FASTLOAD_TEST_INJECT`` is "slow"
    (answers after 0.2 s) or "hung" (answers once ``<out>/release`` exists), a read-ahead request of one chunk no
    step takes is started on the reader's I/O pool (as its own read-ahead does), named in ``<out>/claimed-<pid>``,
    and ``<out>/answered-<pid>`` is written once the store has served it."""
    import fastload.store as store_mod
    from fastload._proc_worker import _child_main
    from fastload.reader import ChunkReader

    out, inject = os.environ["FASTLOAD_TEST_OUT"], os.environ.get("FASTLOAD_TEST_INJECT", "")
    latency = float(os.environ.get("FASTLOAD_TEST_LATENCY", "0"))
    make = store_mod.make_source
    store_mod.make_source = lambda *a, **k: _Counting(make(*a, **k), out, latency)
    real, init = ChunkReader.read_batch, ChunkReader.__init__

    def reader_init(self, store, *args, **kwargs):
        init(self, store, *args, **kwargs)
        store.source.counting = True  # (the store is open: from here on it serves the reader's chunks)

    def read_batch(self, plan, batch, outs, should_stop=None):
        got = real(self, plan, batch, outs, should_stop)
        if batch + plan.batch_stride < len(plan):  # (not this worker's last batch of the epoch)
            return got
        ahead, pid = self._ahead, os.getpid()
        _append(os.path.join(out, f"ahead-{pid}"), f"{ahead.requested}\n")
        if not inject:
            return got
        arr = next(iter(self.store.arrays.values()))
        for c in np.ndindex(*arr.grid_shape):  # a chunk the buffer does not hold
            g = ahead.claim(arr.name, [c], est=1)
            if g is not None:
                break
        real_fetch, started = ahead._fetch_many, threading.Event()

        def fetch(array, chunks, g=g):
            if (array, chunks) != (g.array, g.chunks):
                return real_fetch(array, chunks)
            started.set()
            if inject == "slow":
                time.sleep(0.2)  # (no timed assert: the request is in flight when the batch is settled)
            else:
                for _ in range(1200):
                    if os.path.exists(os.path.join(out, "release")):
                        break
                    time.sleep(0.05)
            raws = real_fetch(array, chunks)
            _append(os.path.join(out, f"answered-{pid}"), "1\n")
            return raws

        ahead._fetch_many = fetch
        _append(os.path.join(out, f"claimed-{pid}"), f"{g.array} chunks {g.chunks}\n")
        self._pool.submit(ahead.run, g)
        assert started.wait(30)  # running, not queued, when the batch is settled (a queued one is not made)
        return got

    ChunkReader.read_batch, ChunkReader.__init__ = read_batch, reader_init
    _child_main(conn)


def _files(out, prefix: str) -> list[str]:
    return sorted(os.path.join(out, n) for n in os.listdir(out) if n.startswith(prefix))


def _read(path: str) -> str:
    with open(path) as fh:
        return fh.read()


def _served(out) -> int:
    return sum(int(x) for p in _files(out, "served-") for x in _read(p).split())


def _wait_for(out, prefix: str, n: int) -> None:
    for _ in range(600):
        if len(_files(out, prefix)) >= n:
            return
        time.sleep(0.05)
    raise AssertionError(f"{prefix}: {len(_files(out, prefix))} of {n} workers")


@pytest.fixture
def counting(tmp_path, monkeypatch):
    """Workers that read through :class:`_Counting` (their files in ``tmp_path / "out"``); returns that folder."""
    import fastload._procs as procs

    out = tmp_path / "out"
    out.mkdir()
    monkeypatch.setenv("FASTLOAD_TEST_OUT", str(out))
    monkeypatch.setattr(procs, "_child_main", _counting_child)
    return out


@pytest.mark.parametrize(("workers", "cache_bytes", "latency"), [(2, 1, 0.0), (3, 60000, 0.0), (2, 1, 0.01),
                                                                 (2, 30000, 0.01)])
def test_each_epochs_bytes_stored_equals_the_bytes_the_workers_stores_handed_out(tmp_path, counting, monkeypatch,
                                                                                 workers, cache_bytes, latency):
    monkeypatch.setenv("FASTLOAD_TEST_LATENCY", str(latency))
    truth, cfg = build("per_variable", tmp_path / "s.zarr", zarr_format=2, codec="zstd")
    with Loader(tmp_path / "s.zarr", cfg, samples_per_epoch=24, workers=workers, cache_bytes=cache_bytes, seed=3,
                mode="process", device="cpu") as loader:
        total = 0
        for epoch in range(2):
            served = _served(counting)
            counted = checked_epoch(loader, truth, cfg)
            total += counted
            assert counted == _served(counting) - served, (epoch, counted, _served(counting) - served)
            assert loader.stats.bytes_stored == total
        ahead = [int(_read(p).split()[-1]) for p in _files(counting, "ahead-")]
        assert len(ahead) == workers and min(ahead) > 0  # (every worker's reader did read ahead)


@pytest.mark.parametrize("workers", [1, 2])
def test_a_request_in_flight_at_a_workers_last_batch_counts_in_that_epoch(tmp_path, counting, monkeypatch,
                                                                          workers):
    """Deterministic: each worker starts a request after its last read of the epoch, answered 0.2 s later; before
    its last batch settled its reader, its bytes counted in the worker's next epoch (or nowhere: the loader closes
    here), so the epoch's sum fell short of what the stores served by those requests."""
    monkeypatch.setenv("FASTLOAD_TEST_INJECT", "slow")
    _, cfg = build("per_variable", tmp_path / "s.zarr", zarr_format=2, codec="zstd")
    with Loader(tmp_path / "s.zarr", cfg, samples_per_epoch=12, workers=workers, cache_bytes=60000, seed=3,
                mode="process", device="cpu") as loader:
        counted = [b.stats.bytes_stored for b in loader]
        assert len(counted) == len(loader) == 3
        _wait_for(counting, "answered-", workers)  # (the stores served them; before the fix the sum missed them)
        assert len(_files(counting, "claimed-")) == workers
        served = _served(counting)
        assert sum(counted) == served and loader.stats.bytes_stored == served, (sum(counted), served)


def test_a_hung_request_at_a_workers_last_batch_is_given_up_after_the_read_timeout(tmp_path, counting, monkeypatch,
                                                                                   caplog):
    """A read-ahead request that does not answer keeps the worker's last batch at most the read timeout from the
    request's start (no hang): it is given up, and the loader names it, the worker and the setting in a warning; no
    batch needed it, so no batch fails."""
    monkeypatch.setenv("FASTLOAD_TEST_INJECT", "hung")
    _, cfg = build("per_variable", tmp_path / "s.zarr", zarr_format=2, codec="zstd")
    try:
        with Loader(tmp_path / "s.zarr", cfg, samples_per_epoch=8, workers=1, cache_bytes=60000, seed=3,
                    read_timeout_s=0.5, mode="process", device="cpu") as loader:
            with caplog.at_level(logging.WARNING, logger="fastload"):
                counted = [b.stats.bytes_stored for b in loader]
            assert len(counted) == len(loader) == 2
            assert sum(counted) == _served(counting) and not _files(counting, "answered-")  # (it served nothing)
            (claimed,) = [_read(p).strip() for p in _files(counting, "claimed-")]
            said = [r.getMessage() for r in caplog.records if "read-ahead request" in r.getMessage()]
            assert len(said) == 1 and claimed in said[0] and "read_timeout_s" in said[0], said
            assert "batch 1, the last of loader worker process 0" in said[0], said
            (counting / "release").touch()  # (before the close: its I/O thread ends)
    finally:
        (counting / "release").touch()


def test_a_worker_that_dies_while_settling_is_a_worker_error(tmp_path, counting, monkeypatch):
    """With no read timeout the worker's last batch waits for its hung read-ahead request; the worker dies meanwhile
    (killed): the consumer gets the WorkerError of a dead worker, as for any read, and does not hang."""
    import signal

    from fastload.errors import WorkerError

    monkeypatch.setenv("FASTLOAD_TEST_INJECT", "hung")
    _, cfg = build("per_variable", tmp_path / "s.zarr", zarr_format=2, codec="zstd")
    try:
        with Loader(tmp_path / "s.zarr", cfg, samples_per_epoch=8, workers=1, cache_bytes=60000, seed=3,
                    read_timeout_s=None, mode="process", device="cpu") as loader:
            loader._ensure_backend()
            it = iter(loader)
            first = next(it)
            assert first.index == 0
            pid = loader._backend._workers[0].process.pid
            killer = threading.Thread(target=lambda: (_wait_for(counting, "claimed-", 1),
                                                      os.kill(pid, signal.SIGKILL)))
            killer.start()
            with pytest.raises(WorkerError, match=r"loader worker process 0 .* exited unexpectedly"):
                next(it)
            killer.join(30)
    finally:
        (counting / "release").touch()


def test_a_worker_settling_a_hung_request_answers_the_next_epoch_at_once(tmp_path, counting, monkeypatch):
    """Review s14 rv2 item 2: the worker's last batch waits for a hung read-ahead request (read timeout 300 s, the
    default); the loader stops that iteration (set_epoch) and starts the next: the worker stops settling when the
    new epoch's message comes and answers it, so the next iteration's first batch (epoch 1, batch 0: its planned
    samples) does not wait for the hung request (before: start() waited for the whole settle, until the request
    answered). The hang guard is a join with a limit, not a duration."""
    from fastload.errors import LoaderClosedError

    monkeypatch.setenv("FASTLOAD_TEST_INJECT", "hung")
    _, cfg = build("per_variable", tmp_path / "s.zarr", zarr_format=2, codec="zstd")
    loader = Loader(tmp_path / "s.zarr", cfg, samples_per_epoch=8, workers=1, cache_bytes=60000, seed=3,
                    mode="process", device="cpu")
    try:
        it = iter(loader)
        assert next(it).index == 0
        _wait_for(counting, "claimed-", 1)  # the worker has read batch 1, its last, and settles the hung request
        loader.set_epoch(1)
        got: list = []
        t = threading.Thread(target=lambda: got.append(next(iter(loader))), name="test-next-iteration",
                             daemon=True)
        t.start()
        t.join(30)
        still = t.is_alive()
        (counting / "release").touch()  # (the hung request answers now: after the check)
        t.join(60)
        assert not still, "the next iteration waited for the worker's settle of a read-ahead request no step needs"
        with pytest.raises(LoaderClosedError):
            next(it)
        (b,) = got
        assert (b.epoch, b.index) == (1, 0)
        assert np.array_equal(b.boxes.numpy(), loader.epoch_boxes(1)[:loader.batch_size])
    finally:
        (counting / "release").touch()
        loader.close()
