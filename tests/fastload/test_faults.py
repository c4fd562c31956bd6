"""Loader faults: transient read errors retried and counted; permanent and corrupt chunks raise ChunkReadError
naming array and chunk (or are skipped and counted); worker and consumer exceptions; nothing left running."""

from __future__ import annotations

import logging
import os
import re
import threading
import time

import numpy as np
import pytest

from fastload.errors import ChunkReadError, ChunkTimeoutError
from fastload.loader import Loader
from fastload.store import BaseByteSource, open_store
from tests.fastload.loader_ref import build, reference

pytestmark = pytest.mark.usefixtures("nothing_left")


class _WrappedSource(BaseByteSource):
    """Wraps a source and calls ``_chunk_read(key)`` before each chunk read (metadata reads pass straight)."""

    inner: BaseByteSource

    def _chunk_read(self, key: str) -> None:
        raise NotImplementedError

    def _before(self, key: str) -> None:
        if "/c" not in key and "/" in key and not key.split("/")[-1].replace(".", "").isdigit():
            return  # metadata
        self._chunk_read(key)

    def get(self, key):
        self._before(key)
        return self.inner.get(key)

    def get_range(self, key, start, length):
        self._before(key)
        return self.inner.get_range(key, start, length)

    def list_dir(self, prefix):
        return self.inner.list_dir(prefix)

    def describe(self, key=""):
        return self.inner.describe(key)


def _hang(store, hanging, remote):
    """Make ``store``'s chunk reads go through ``hanging`` (returned): as its byte source (any source but a
    LocalSource is read as a remote store: a request per group of chunks), or, still a local store (a read per
    chunk), around its chunk reads."""
    if remote:
        store.source = hanging
        return hanging
    read = store.chunk_bytes

    def chunk_bytes(array, chunk):
        hanging._before(store.arrays[array].key(chunk))
        return read(array, chunk)

    store.chunk_bytes = chunk_bytes
    return hanging


def _first_batch(loader, wait):
    """The loader's first batch taken on a daemon thread: ``(iterator, {"batch": ...} or {"error": ...})``. A hang
    fails here after ``wait`` seconds (it would wait for ever), not in the suite's timeout."""
    got: dict = {}
    it = iter(loader)

    def first_batch():
        try:
            got["batch"] = next(it)
        except BaseException as e:  # noqa: BLE001 - looked at by the caller
            got["error"] = e

    reader = threading.Thread(target=first_batch, daemon=True)
    reader.start()
    reader.join(wait)
    assert not reader.is_alive(), "the batch still waits for a store request that never answers"
    return it, got


class FlakySource(_WrappedSource):
    """Wraps a source; a key in ``fail`` raises ``ConnectionError`` its first ``times`` reads (-1: always)."""

    def __init__(self, inner: BaseByteSource, fail: set[str] | None = None, times: int = 2):
        self.inner, self.fail, self.times = inner, fail, times
        self.count: dict[str, int] = {}
        self.lock = threading.Lock()

    def _chunk_read(self, key: str) -> None:
        if self.fail is not None and key not in self.fail:
            return
        with self.lock:
            n = self.count[key] = self.count.get(key, 0) + 1
        if self.times < 0 or n <= self.times:
            raise ConnectionError(f"injected failure {n} of {key}")


class HangingSource(_WrappedSource):
    """Wraps a source; chunk reads after the first ``after`` block until ``release`` is set (a store request that
    never answers); ``entered`` is set when one blocks, ``hung`` and ``returned`` count them. Metadata reads pass.
    ``hang_first``: only the first that many reads (after ``after``) block; ``late_error``: what a blocked read
    raises once released (None: it answers). Release it at the test's end."""

    def __init__(self, inner: BaseByteSource, after: int = 0, hang_first: int | None = None):
        self.inner, self.after, self.hang_first = inner, after, hang_first
        self.late_error: BaseException | None = None  # what a released read raises (None: it answers)
        self.release, self.entered = threading.Event(), threading.Event()
        self.reads = self.hung = self.returned = 0
        self.lock = threading.Lock()

    def _chunk_read(self, key: str) -> None:
        with self.lock:
            self.reads += 1
            hang = self.reads > self.after and (self.hang_first is None or self.hung < self.hang_first)
            self.hung += hang
        if hang:
            self.entered.set()
            self.release.wait(60)
            with self.lock:
                self.returned += 1
            if self.late_error is not None:
                raise self.late_error


def _let_go(source: HangingSource, *loaders: Loader) -> None:
    """Test teardown: the hung reads return, the loaders close, and every fastload thread ends."""
    source.release.set()
    for loader in loaders:
        loader.close()
    for t in threading.enumerate():
        if t.name.startswith("fastload"):
            t.join(30)


@pytest.mark.parametrize("sharded", [False, True])
def test_transient_errors_are_retried_and_counted(tmp_path, sharded):
    truth, cfg = build("per_variable", tmp_path / "s.zarr", zarr_format=3, sharded=sharded)
    store = open_store(tmp_path / "s.zarr")
    store.source = FlakySource(store.source, times=2)
    with Loader(store, cfg, samples_per_epoch=12, retries=3, workers=2) as loader:
        for batch in loader:
            ref = reference(truth, cfg, batch.boxes.numpy(), periodic=True)
            for f in cfg.field_names:
                np.testing.assert_array_equal(batch[f].numpy(), ref[f])
        assert loader.stats.retries >= 2
    assert max(store.source.count.values()) >= 3


def test_permanent_error_names_array_and_chunk(tmp_path):
    _, cfg = build("per_variable", tmp_path / "s.zarr", zarr_format=2)
    store = open_store(tmp_path / "s.zarr")
    with Loader(store, cfg, samples_per_epoch=12, seed=4) as probe:
        first = next(iter(probe)).boxes.numpy()
    chunk = (int(first[0, 0]) // 2, 0, int(first[0, 1]) // 4, int(first[0, 2]) // 6)  # a chunk sample 0 needs
    key = store.arrays["t"].key(chunk)
    store.source = FlakySource(store.source, fail={key}, times=-1)
    with Loader(store, cfg, samples_per_epoch=12, seed=4, retries=2) as loader:
        with pytest.raises(ChunkReadError) as e:
            next(iter(loader))
    assert e.value.array == "t" and e.value.chunk == chunk
    assert "injected failure" in str(e.value) and "after 2 retries" in str(e.value)
    assert store.source.count[key] >= 3


def _truncate_a_needed_chunk(tmp_path, store, boxes) -> tuple[int, ...]:
    chunk = (int(boxes[0, 0]) // 2, 2, int(boxes[0, 1]) // 4, int(boxes[0, 2]) // 6)  # level 1000 of sample 0
    path = os.path.join(tmp_path / "s.zarr", *store.arrays["t"].key(chunk).split("/"))
    with open(path, "rb") as fh:
        raw = fh.read()
    with open(path, "wb") as fh:
        fh.write(raw[: len(raw) // 2])
    return chunk


def test_truncated_chunk_raises_by_default_and_skips_on_request(tmp_path):
    truth, cfg = build("per_variable", tmp_path / "s.zarr", zarr_format=2)
    store = open_store(tmp_path / "s.zarr")
    kw = dict(samples_per_epoch=16, seed=7)
    with Loader(store, cfg, **kw) as probe:
        boxes = probe.epoch_boxes(0)
    chunk = _truncate_a_needed_chunk(tmp_path, store, boxes)
    with Loader(store, cfg, **kw) as loader:
        with pytest.raises(ChunkReadError) as e:
            list(loader)
    assert e.value.array == "t" and e.value.chunk == chunk

    def needs(box) -> bool:
        t0, y0, x0 = box
        ts = {t // 2 for t in range(t0, t0 + 4)}
        ys = {y // 4 for y in range(y0, y0 + 6)}
        xs = {(x % 20) // 6 for x in range(x0, x0 + 8)}
        return chunk[0] in ts and chunk[2] in ys and chunk[3] in xs

    bad = [needs(b) for b in boxes.tolist()]
    with Loader(store, cfg, on_bad_chunk="skip", **kw) as loader:
        got = list(loader)
        assert loader.stats.skipped == sum(bad) >= 1
    kept = np.concatenate([b.boxes.numpy() for b in got])
    np.testing.assert_array_equal(kept, boxes[~np.array(bad)])
    for batch in got:
        ref = reference(truth, cfg, batch.boxes.numpy(), periodic=True)
        for f in cfg.field_names:
            np.testing.assert_array_equal(batch[f].numpy(), ref[f])


def test_a_timeout_is_told_from_a_bad_chunk_by_its_type_not_its_message(tmp_path, caplog):
    """Chunks of a timed-out request fail with ChunkTimeoutError (a ChunkReadError), and the skip warning about
    timeouts picks errors by that type: a truncated chunk of a store whose path says "read_timeout_s" is no timeout
    (it was warned about as one: the errors were told apart by their message text), and a timeout whose message
    does not say "read_timeout_s" still is one."""
    from types import SimpleNamespace

    from fastload.reader import ChunkReader

    root = tmp_path / "read_timeout_s"
    _, cfg = build("per_variable", root / "s.zarr", zarr_format=2)
    store = open_store(root / "s.zarr")
    kw = dict(samples_per_epoch=16, seed=7)
    with Loader(store, cfg, **kw) as probe:
        boxes = probe.epoch_boxes(0)
    _truncate_a_needed_chunk(root, store, boxes)
    with Loader(store, cfg, **kw) as loader:
        with pytest.raises(ChunkReadError) as e:
            list(loader)
    assert "read_timeout_s" in str(e.value) and not isinstance(e.value, ChunkTimeoutError)
    caplog.set_level(logging.WARNING, logger="fastload")
    with Loader(store, cfg, on_bad_chunk="skip", **kw) as loader:
        assert sum(b.stats.skipped for b in loader) >= 1
    assert not [r for r in caplog.records if "timed out" in r.getMessage()]
    late = ChunkTimeoutError("t", (0, 1), "no answer after 0.2 s")
    ChunkReader._warn_timeouts(SimpleNamespace(read_timeout=0.2), SimpleNamespace(batch=3), {"t": {5: late}})
    said = [r.getMessage() for r in caplog.records if "timed out" in r.getMessage()]
    assert len(said) == 1 and "batch 3" in said[0] and "chunk (0, 1)" in said[0]


def test_worker_exception_reaches_consumer(tmp_path):
    _, cfg = build("atmorep", tmp_path / "s.zarr")
    loader = Loader(tmp_path / "s.zarr", cfg, samples_per_epoch=24, workers=2)
    real = loader.tokenizer.meta
    third = loader.epoch_boxes(0)[8:12]

    def broken(boxes):
        if np.array_equal(boxes, third):
            raise RuntimeError("bug in a worker")
        return real(boxes)

    loader.tokenizer.meta = broken
    got = []
    with pytest.raises(RuntimeError, match="bug in a worker"):
        for b in loader:
            got.append(b.index)
    assert got == [0, 1]
    loader.close()


@pytest.mark.parametrize("exc", [ValueError, KeyboardInterrupt])
def test_exception_in_training_loop_leaves_nothing_running(tmp_path, exc):
    _, cfg = build("per_variable", tmp_path / "s.zarr")

    def train():
        loader = Loader(tmp_path / "s.zarr", cfg, samples_per_epoch=40, prefetch=3, workers=2)
        for i, _ in enumerate(loader):
            if i == 2:
                raise exc("stop here")

    with pytest.raises(exc):
        train()
    # the fixture checks after gc that no loader, pump or I/O thread is left


@pytest.mark.parametrize("remote", [False, True])
def test_a_store_request_that_never_answers_is_a_chunk_read_error_after_the_read_timeout(tmp_path, remote):
    """Every chunk read hangs: the batch fails with ChunkReadError naming the array, the chunk and how long it waited
    (loader.read_timeout_s), instead of the training loop waiting for ever (remote: grouped requests and the raw
    read-ahead; local: a read per chunk). The hung requests' slots are failed, not filled later."""
    _, cfg = build("per_variable", tmp_path / "s.zarr")
    store = open_store(tmp_path / "s.zarr")
    hanging = _hang(store, HangingSource(store.source), remote)
    loader = Loader(store, cfg, samples_per_epoch=4, workers=1, fetch_concurrency=4, retries=0, seed=1,
                    read_timeout_s=0.3)  # one batch: nothing is read after it
    try:
        it, got = _first_batch(loader, 20)
        assert hanging.entered.is_set()
        e = got.get("error")
        assert isinstance(e, ChunkReadError), got
        assert e.array in store.arrays and len(e.chunk) == store.arrays[e.array].ndim
        assert "no answer" in str(e) and "0.3" in str(e) and "read_timeout_s" in str(e)
        assert isinstance(e, ChunkTimeoutError)
        cache = loader._backend.cache  # noqa: SLF001 - nothing filled by the given-up requests
        assert cache.resident() == set()
        it.close()
        hanging.release.set()  # the hung requests answer now, long after their steps gave them up ...
        loader.close()  # (waits for the I/O threads: nothing hangs any more)
        assert hanging.returned == hanging.hung > 0
        assert cache.resident() == set()  # ... and write into no slot (another step may own it by then)
    finally:
        _let_go(hanging, loader)


def test_read_timeout_is_a_checked_loader_setting(tmp_path):
    from fastload.config import LoaderConfig
    from fastload.errors import ConfigError

    assert LoaderConfig().read_timeout_s == 300.0 and LoaderConfig(read_timeout_s=None).read_timeout_s is None
    for bad in (0, -1.0, float("nan"), True, "5"):
        with pytest.raises(ConfigError, match="read_timeout_s"):
            LoaderConfig(read_timeout_s=bad)
    _, cfg = build("per_variable", tmp_path / "s.zarr")
    with Loader(tmp_path / "s.zarr", cfg, mode="process", read_timeout_s=10.0, workers=1) as loader:
        # process mode takes it (it was refused while the workers did not; test_loader_procs checks they do)
        assert loader._spec.read_timeout_s == 10.0  # noqa: SLF001


def test_close_returns_while_a_store_request_hangs_and_names_what_it_leaves_running(tmp_path, caplog):
    """The store stops answering: the batch fails after the read timeout, and close(timeout) then returns (it waited
    for ever for the I/O thread still in the request), warns naming that thread and the chunks it reads, and
    leaves only daemon threads (the pool's threads blocked the interpreter's exit for ever, daemon or not)."""
    _, cfg = build("per_variable", tmp_path / "s.zarr")
    store = open_store(tmp_path / "s.zarr")
    hanging = store.source = HangingSource(store.source)  # (read as a remote store)
    loader = Loader(store, cfg, samples_per_epoch=4, workers=1, fetch_concurrency=4, retries=0, seed=1,
                    read_timeout_s=0.2)  # one batch: nothing is read after it
    try:
        with pytest.raises(ChunkReadError, match="no answer"):
            next(iter(loader))
        assert hanging.entered.is_set()
        caplog.set_level(logging.WARNING, logger="fastload")
        closer = threading.Thread(target=loader.close, kwargs={"timeout": 0.5}, daemon=True)
        closer.start()
        closer.join(20)
        assert not closer.is_alive(), "close waits for a store request that never answers"
        left = [t for t in threading.enumerate() if t.name.startswith("fastload")]
        assert left and all(t.daemon for t in left), [(t.name, t.daemon) for t in left]
        said = " ".join(r.getMessage() for r in caplog.records if r.levelno == logging.WARNING)
        assert "daemon" in said and "array '" in said and all(t.name in said for t in left), said
    finally:
        _let_go(hanging, loader)


def test_given_up_requests_do_not_use_up_the_io_threads(tmp_path):
    """The first fetch_concurrency chunk requests never answer, every later one at once: after the batch that
    gives them up, the next epochs read (the given-up requests kept their I/O threads and nothing replaced them, so
    every later task failed 'not started' for ever)."""
    _, cfg = build("per_variable", tmp_path / "s.zarr")
    store = open_store(tmp_path / "s.zarr")
    hanging = HangingSource(store.source, hang_first=4)  # (read as a remote store)
    store.source = hanging
    loader = Loader(store, cfg, samples_per_epoch=4, workers=1, fetch_concurrency=4, retries=0, seed=1,
                    read_timeout_s=1.0, read_ahead_bytes=0)  # (healthy reads follow: room on a loaded machine)
    try:
        with pytest.raises(ChunkReadError, match="no answer"):
            next(iter(loader))
        for epoch in (1, 2):
            loader.set_epoch(epoch)
            assert sum(b.stats.samples for b in loader) == 4
        assert hanging.hung == 4 and hanging.returned == 0
    finally:
        _let_go(hanging, loader)


@pytest.mark.parametrize("on_bad_chunk", ["raise", "skip"])
def test_a_store_that_stops_answering_abandons_a_bounded_number_of_threads(tmp_path, on_bad_chunk):
    """Every chunk request hangs: given-up requests' threads are replaced up to 4 x fetch_concurrency, then the
    loader raises an error naming that bound, even with on_bad_chunk='skip'."""
    _, cfg = build("per_variable", tmp_path / "s.zarr")
    store = open_store(tmp_path / "s.zarr")
    hanging = store.source = HangingSource(store.source)
    loader = Loader(store, cfg, samples_per_epoch=4, workers=1, fetch_concurrency=1, retries=0, seed=1,
                    read_timeout_s=0.05, read_ahead_bytes=0, on_bad_chunk=on_bad_chunk)
    try:
        said = []
        for epoch in range(12):
            loader.set_epoch(epoch)
            try:
                list(loader)
            except ChunkReadError as e:
                said.append(str(e))
                if "fetch_concurrency" in str(e):
                    break
        assert "4 x loader.fetch_concurrency" in said[-1], said
        assert "stopped answering" in said[-1] and "read_timeout_s" in said[-1]
        left = [t for t in threading.enumerate() if t.name.startswith("fastload-io")]
        assert hanging.hung <= len(left) <= 5 + 1, [t.name for t in left]  # 4 abandoned + the pool's one (+ warm)
    finally:
        _let_go(hanging, loader)


class SlowSource(_WrappedSource):
    """Wraps a source; every chunk request answers after ``s`` seconds (a healthy but slow store)."""

    def __init__(self, inner: BaseByteSource, s: float):
        self.inner, self.s = inner, s

    def _chunk_read(self, key: str) -> None:
        time.sleep(self.s)

    def get_many(self, keys):  # one request for a group
        time.sleep(self.s)
        return [self.inner.get(k) for k in keys]


class SlowFailingSource(_WrappedSource):
    """Wraps a source; a read of a key in ``fail`` fails with ``ConnectionError`` (transient) after ``s`` seconds,
    every time; ``count`` counts the reads per key."""

    def __init__(self, inner: BaseByteSource, fail: set[str], s: float):
        self.inner, self.fail, self.s = inner, fail, s
        self.count: dict[str, int] = {}
        self.lock = threading.Lock()

    def _chunk_read(self, key: str) -> None:
        if key in self.fail:
            with self.lock:
                self.count[key] = self.count.get(key, 0) + 1
            time.sleep(self.s)
            raise ConnectionError(f"injected slow failure of {key}")


@pytest.mark.parametrize("remote", [False, True])
def test_the_read_timeout_bounds_a_request_with_its_retries(tmp_path, remote):
    """A chunk whose every read fails after 0.25 s, retries=8, read_timeout_s=0.4: the request with its retries is
    given up about 0.4 s after its first attempt, and the error says read_timeout_s bounded it: a ChunkTimeoutError
    naming the attempts and the last failure, or (a retry that would start past the bound is not made) the store's
    error saying so. An attempt takes 0.25 s and the first retry starts 0.05 s after it, so a request makes at most
    2 attempts however slow the machine (at most 2 requests: remote, the group's then the chunk's own). Timed per
    attempt, it made all 9 reads (remote: 18)."""
    _, cfg = build("per_variable", tmp_path / "s.zarr", zarr_format=2)
    store = open_store(tmp_path / "s.zarr")
    with Loader(store, cfg, samples_per_epoch=4, seed=4, workers=1) as probe:
        first = probe.epoch_boxes(0)
    chunk = (int(first[0, 0]) // 2, 0, int(first[0, 1]) // 4, int(first[0, 2]) // 6)  # a chunk sample 0 needs
    key = store.arrays["t"].key(chunk)
    slow = SlowFailingSource(store.source, fail={key}, s=0.25)
    if remote:
        store.source = slow
    else:  # still a local store (a read per chunk), whose chunk reads fail slowly
        read = store.chunk_bytes

        def chunk_bytes(array, c):
            slow._before(store.arrays[array].key(c))
            return read(array, c)

        store.chunk_bytes = chunk_bytes
    most = 4 if remote else 2
    with Loader(store, cfg, samples_per_epoch=4, seed=4, workers=1, fetch_concurrency=4, retries=8,
                read_timeout_s=0.4, read_ahead_bytes=0) as loader:
        with pytest.raises(ChunkReadError) as info:
            next(iter(loader))
        e = info.value
        assert 1 <= slow.count[key] <= most, slow.count
        assert "read_timeout_s" in str(e) and "injected slow failure" in str(e), str(e)
        if isinstance(e, ChunkTimeoutError):
            assert "attempts" in str(e) and "bounds a request with its retries" in str(e), str(e)
        else:
            assert e.chunk == chunk and "no more retries" in str(e), str(e)
    for t in threading.enumerate():  # the given-up request ends: its next attempt is not made
        if t.name.startswith("fastload"):
            t.join(10)
    assert slow.count[key] <= most, slow.count


def test_the_read_timeout_does_not_count_a_task_s_wait_behind_answering_requests(tmp_path, monkeypatch):
    """Every request answers in 0.05 s, one I/O thread, read_timeout_s = 0.3 s: tasks queue longer than that behind
    answering requests, and every batch still reads (they failed 'not started' before, or were dropped with
    'skip', blaming requests that do not answer)."""
    # (the Numba kernels' warm-up, a job of up to a second on the only I/O thread, is longer than this test's
    # read timeout: queued tasks count from the last job started or finished)
    monkeypatch.setenv("FASTLOAD_NO_JIT", "1")
    _, cfg = build("per_variable", tmp_path / "s.zarr", batch_size=8)
    store = open_store(tmp_path / "s.zarr")
    store.source = SlowSource(store.source, 0.05)  # (read as a remote store)
    with Loader(store, cfg, samples_per_epoch=32, workers=1, fetch_concurrency=1, retries=0, seed=1,
                read_timeout_s=0.3) as loader:
        assert sum(b.stats.samples for b in loader) == 32


def test_skipping_chunks_whose_requests_timed_out_is_a_warning(tmp_path, caplog):
    """on_bad_chunk='skip' drops the samples of a chunk whose request timed out, and says so (it did silently)."""
    _, cfg = build("per_variable", tmp_path / "s.zarr")
    store = open_store(tmp_path / "s.zarr")
    hanging = store.source = HangingSource(store.source, hang_first=1)
    loader = Loader(store, cfg, samples_per_epoch=4, workers=1, fetch_concurrency=4, retries=0, seed=1,
                    read_timeout_s=0.2, read_ahead_bytes=0, on_bad_chunk="skip")
    try:
        caplog.set_level(logging.WARNING, logger="fastload")
        assert sum(b.stats.skipped for b in loader) > 0
        said = " ".join(r.getMessage() for r in caplog.records if r.levelno == logging.WARNING)
        assert "on_bad_chunk='skip'" in said and "read_timeout_s" in said and "array 't'" in said, said
    finally:
        _let_go(hanging, loader)


def test_the_late_error_of_a_given_up_request_leaves_retries_on(tmp_path):
    """A given-up request fails late with a transient error: that is no evidence about the store, so later reads
    keep their retries (it switched the reader to one try per read, and 2 glitches of a chunk then failed a batch
    that retries=3 absorbs)."""
    _, cfg = build("per_variable", tmp_path / "s.zarr")
    store = open_store(tmp_path / "s.zarr")
    inner = store.source
    hanging = store.source = HangingSource(inner)
    hanging.late_error = ConnectionError("late transient error of a request its step gave up")
    loader = Loader(store, cfg, samples_per_epoch=4, workers=1, fetch_concurrency=4, retries=3, seed=1,
                    read_timeout_s=0.2, read_ahead_bytes=0)
    try:
        with pytest.raises(ChunkReadError, match="no answer") as info:
            next(iter(loader))
        reader = loader._backend.reader  # noqa: SLF001
        store.source = FlakySource(inner, fail={store.arrays[info.value.array].key(info.value.chunk)}, times=2)
        hanging.release.set()  # the given-up requests fail now; their threads end once they have
        for t in [t for t in threading.enumerate() if t.name.startswith("fastload-io")]:
            if reader._pool._state.running.get(t) is not None:  # noqa: SLF001
                t.join(10)
        assert hanging.returned == hanging.hung > 0
        assert not reader._failing  # noqa: SLF001
        # room for both retries and their backoff (read_timeout_s bounds a request with its retries; 0.2 s leaves
        # little on a loaded machine)
        loader._backend.spec.read_timeout_s = 5.0  # noqa: SLF001 - the next epoch's start sets it on the reader
        loader.set_epoch(0)  # the same batch again: its chunk glitches twice
        assert next(iter(loader)).stats.retries == 2
    finally:
        _let_go(hanging, loader)


def test_threads_stuck_in_read_ahead_nobody_waits_for_are_let_go(tmp_path):
    """Read-ahead requests hang while the iteration is broken off, then the store answers at once: the new epoch's
    plan clears their entries, so nobody waits for (and gives up) them. Their threads leave the pool and their
    budget comes back: the epoch reads (every task failed 'not started' for ever before)."""
    _, cfg = build("per_variable", tmp_path / "s.zarr")
    rng = np.random.default_rng(0)

    def boxes(epoch):
        return np.stack([rng.integers(0, 4, 48), rng.integers(0, 9, 48), rng.integers(0, 20, 48)], 1)

    store = open_store(tmp_path / "s.zarr", latency_ms=1.0)  # remote: read-ahead on
    hanging = store.source = HangingSource(store.source, after=10**9)  # answers until `after` is lowered
    loader = Loader(store, cfg, boxes=boxes, workers=1, fetch_concurrency=2, seed=3, cache_bytes=30_000,
                    prefetch=1, retries=0, read_timeout_s=1.0, jit=False)  # (healthy reads: room on a loaded box)
    try:
        it = iter(loader)
        next(it)
        hanging.after = 0  # chunk requests made from now on never answer (the read-ahead's)
        assert hanging.entered.wait(5)
        time.sleep(0.2)
        it.close()
        with hanging.lock:
            hanging.hang_first = hanging.hung  # ... and from now on every request answers at once
        loader.set_epoch(1)
        assert sum(b.stats.samples for b in loader) == 48
        ahead = loader._backend.reader._ahead
        assert ahead._flight == 0 and not ahead._running
    finally:
        _let_go(hanging, loader)


def test_a_queued_task_behind_an_orphaned_read_ahead_request_starts():
    """The one I/O thread hangs in a read-ahead request nobody waits for: before the queued fetch task is given up
    'not started', that thread leaves the pool, a new one runs the task, and the request's budget comes back."""
    from fastload._io_pool import _IOPool, _Task
    from fastload._raw_ahead import RawAhead
    from fastload.reader import ChunkReader

    release = threading.Event()
    reader = object.__new__(ChunkReader)
    reader.read_timeout = 0.1
    reader._pool = pool = _IOPool(1, "fastload-test")
    reader._ahead = ahead = RawAhead(1000, lambda a, cs: release.wait(30) and [b"x"] * len(cs),
                                     abandon=pool.abandon)  # (no timeout: nothing sweeps it but the pool)
    try:
        g = ahead.claim("a", [(0,), (1,)], est=100)
        pool.submit(ahead.run, g)
        task = _Task()
        fut = pool.submit(lambda t: t.begin() and "ran", task)
        assert reader._wait_task(fut, task) == "ran"
        assert g.abandoned and ahead._flight == 0
    finally:
        release.set()
        pool.close(5)


def test_the_kernel_warm_up_does_not_hold_up_the_fetches(tmp_path, monkeypatch):
    """A healthy store, one I/O thread and a read timeout shorter than the kernels' warm-up: the batches read (the
    warm-up held the only I/O thread, so the first fetches failed 'not started' before)."""
    import fastload.sampling.neighborhood as neighborhood
    from fastload.reader import ChunkReader

    monkeypatch.setattr(neighborhood, "use_jit", lambda *a, **k: True)
    monkeypatch.setattr(ChunkReader, "_warm_kernels", lambda self, dtype: time.sleep(2.0))
    _, cfg = build("per_variable", tmp_path / "s.zarr")
    store = open_store(tmp_path / "s.zarr", latency_ms=5.0)
    with Loader(store, cfg, samples_per_epoch=8, workers=1, fetch_concurrency=1, seed=3, retries=0,
                read_timeout_s=0.6, read_ahead_bytes=0) as loader:  # (5 ms reads: room on a loaded machine)
        assert sum(b.stats.samples for b in loader) == 8


def test_while_the_store_is_failing_a_task_stops_requesting_once_it_has_run_the_read_timeout(tmp_path, monkeypatch):
    """Every read of array t fails (transient) after 0.25 s, retries=0, read_timeout_s=0.4: no request is given up
    (each answers within the bound), but a task made one request per chunk, one after another (72 reads, 18 s for
    the first batch). Once the store is failing, a task stops when it has run past read_timeout_s: a read takes at
    least 0.25 s, so at most 2 reads per task however slow the machine, and its other chunks fail saying why."""
    from fastload.reader import ChunkReader

    _, cfg = build("per_variable", tmp_path / "s.zarr", zarr_format=2)
    store = open_store(tmp_path / "s.zarr")
    read, reads, lock = store.chunk_bytes, [0], threading.Lock()

    def chunk_bytes(array, c):
        if array == "t":
            with lock:
                reads[0] += 1
            time.sleep(0.25)
            raise ConnectionError("injected slow transient failure")
        return read(array, c)

    store.chunk_bytes = chunk_bytes
    tasks, chunks, errors = [0], [0], []
    plain = ChunkReader._fetch_decode

    def fetch_decode(self, array, cs, *args, **kwargs):
        d = plain(self, array, cs, *args, **kwargs)
        if array == "t":
            with lock:
                tasks[0] += 1
                chunks[0] += len(cs)
                errors.extend(d.errors.values())
        return d

    monkeypatch.setattr(ChunkReader, "_fetch_decode", fetch_decode)
    with Loader(store, cfg, samples_per_epoch=8, seed=4, workers=1, fetch_concurrency=1, retries=0,
                read_timeout_s=0.4, read_ahead_bytes=0) as loader:
        with pytest.raises(ChunkReadError):
            next(iter(loader))
    for t in threading.enumerate():
        if t.name.startswith("fastload"):
            t.join(10)
    assert tasks[0] and reads[0] <= 2 * tasks[0] < chunks[0], (reads, tasks, chunks)
    said = [str(e) for e in errors if "not read: the store is failing" in str(e)]
    assert said and "loader.read_timeout_s = 0.4" in said[0], [str(e) for e in errors[:3]]


class _NamingHangingSource(HangingSource):
    """A HangingSource that also keeps the keys of the requests that hung, in order."""

    def __init__(self, inner: BaseByteSource, **kw):
        super().__init__(inner, **kw)
        self.keys: list[str] = []

    def _chunk_read(self, key: str) -> None:
        with self.lock:
            hang = self.reads + 1 > self.after and (self.hang_first is None or self.hung < self.hang_first)
            if hang:
                self.keys.append(key)
        super()._chunk_read(key)


@pytest.mark.parametrize("remote", [False, True])
def test_the_second_timeout_of_a_step_fails_its_other_requests_at_once(tmp_path, monkeypatch, remote):
    """The store stops answering; one I/O thread, and a step with several fetch tasks (one or more per array, 4
    arrays): the step's second request that times out fails the step, and its other tasks are given up with it,
    unrequested (counted here: requests that hung, each of which kept the step waiting a whole read timeout; not
    wall time; one slow request alone costs only its own chunks: the test below). Before, each queued task was taken in turn by the thread that replaced the stuck one, hung and was
    waited out: a read timeout per task. Which happened was a race (a queued task the step reached before the new
    thread took it was given up "not started"); the schedule is fixed here: the new thread takes its job first.
    The error names the request that hung first."""
    from fastload._io_pool import _IOPool

    abandon = _IOPool.abandon

    def abandon_then_let_the_new_thread_start(self, arg):
        """The pool's abandon, then wait until the thread that replaces the abandoned one has taken a queued job (or
        none is left): the schedule under which each task used to get a timeout of its own."""
        left = abandon(self, arg)
        st, deadline = self._state, time.monotonic() + 5.0
        while time.monotonic() < deadline:
            with st.cond:
                if not st.queue or any(t in st.threads for t in st.running):
                    break
            time.sleep(0.002)
        return left

    monkeypatch.setattr(_IOPool, "abandon", abandon_then_let_the_new_thread_start)
    _, cfg = build("per_variable", tmp_path / "s.zarr")
    store = open_store(tmp_path / "s.zarr")
    hanging = _hang(store, _NamingHangingSource(store.source), remote)
    loader = Loader(store, cfg, samples_per_epoch=4, workers=1, fetch_concurrency=1, retries=0, seed=1,
                    read_timeout_s=0.3, read_ahead_bytes=0)  # one batch
    try:
        it, got = _first_batch(loader, 60)
        e = got.get("error")
        assert isinstance(e, ChunkTimeoutError), got
        assert hanging.hung == 2, f"{hanging.hung} requests were waited out one after another: {hanging.keys}"
        assert e.array in store.arrays and store.arrays[e.array].key(e.chunk) == hanging.keys[0]
        assert "read_timeout_s = 0.3" in str(e)
        if remote:  # a request per group of chunks: the store cannot say which of its files hung
            assert re.search(r"no answer to a batched request for \d+ chunks, .* among them", str(e)), str(e)
        else:
            assert "no answer to the request for" in str(e)
        it.close()
    finally:
        _let_go(hanging, loader)


class _SlowOnce(_WrappedSource):
    """Chunk requests answer at once, except the ``nth``, which answers ``delay`` seconds late (a transient stall)."""

    def __init__(self, inner, nth, delay):
        self.inner, self.nth, self.delay, self.n, self.lock, self.slow = inner, nth, delay, 0, threading.Lock(), []

    def _chunk_read(self, key):
        with self.lock:
            self.n += 1
            hit = self.n == self.nth
        if hit:
            self.slow.append(key)
            time.sleep(self.delay)


@pytest.mark.parametrize("nth", [1, 100])
def test_one_slow_request_with_skip_drops_only_its_own_samples(tmp_path, nth):
    """A request that answers once past read_timeout_s (then the store is fine), one I/O thread, on_bad_chunk='skip':
    only the samples that need the stalled request's chunks are dropped; the step's other requests are still read
    (review r3: stopping the whole step at its first timeout delivered 0 of 16 here)."""
    from fastload.config import FieldConfig, SamplingConfig
    from tests.fastload.loader_ref import BOX_TOKENS
    from tests.fastload.stores import make_per_variable

    # small chunks: a batch's step has many fetch tasks, most still queued when the stalled one times out
    truth = make_per_variable(tmp_path / "s.zarr", zarr_format=2, nt=8, levels=(500.0, 850.0, 1000.0), ny=120,
                              nx=240, chunks=(2, 1, 4, 6))  # fmt: skip
    cfg = SamplingConfig(fields=(FieldConfig(name="t", levels=(1000.0, 500.0), normalization="none", **BOX_TOKENS),
                                 FieldConfig(name="q", levels=(850.0,), normalization="none", **BOX_TOKENS)),
                         batch_size=16)  # fmt: skip
    store = open_store(tmp_path / "s.zarr")
    store.source = _SlowOnce(store.source, nth=nth, delay=1.2)
    got = 0
    with Loader(store, cfg, samples_per_epoch=16, workers=1, fetch_concurrency=1, retries=0, seed=1,
                read_timeout_s=0.4, read_ahead_bytes=0, on_bad_chunk="skip") as loader:
        for b in loader:
            boxes = b.boxes.numpy()
            ref = reference(truth, cfg, boxes, periodic=True)
            for f in cfg.field_names:
                np.testing.assert_array_equal(b[f].numpy(), ref[f])
            got += len(boxes)
    assert len(store.source.slow) == 1
    assert got >= 8, f"{got} of 16 samples delivered: more than the stalled request's samples were dropped"
