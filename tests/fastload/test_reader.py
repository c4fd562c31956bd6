"""fastload.reader: decode slots served earliest step first; a failing step with a look-ahead step in flight;
cache sizing from the field layouts; remote stores' raw-bytes read-ahead (fastload._raw_ahead)."""

from __future__ import annotations

import threading
import time

import numpy as np
import pytest

from fastload._raw_ahead import RawAhead
from fastload.errors import ChunkReadError, ChunkTimeoutError, ConfigError
from fastload.loader import Loader
from fastload.reader import _PrioritySlots, sample_chunk_bound
from fastload.sampling.chunks import FieldLayout, plan_batch
from fastload.store import open_store
from tests.fastload.loader_ref import build, reference
from tests.fastload.test_faults import FlakySource

pytestmark = pytest.mark.usefixtures("nothing_left")


def test_decode_slots_go_to_the_earliest_step_first():
    slots = _PrioritySlots(1)
    order: list[int] = []
    gate = threading.Event()

    def task(step):
        with slots.hold(step):
            order.append(step)

    with slots.hold(0):  # the one slot is taken: everyone queues, then is served by step
        threads = [threading.Thread(target=task, args=(s,)) for s in (7, 3, 5, 1)]
        for t in threads:
            t.start()
            time.sleep(0.02)
        gate.set()
    for t in threads:
        t.join(5)
    assert order == [1, 3, 5, 7]


def test_loader_matches_reference_when_batches_need_many_steps(tmp_path):
    truth, cfg = build("per_variable", tmp_path / "s.zarr")
    store = open_store(tmp_path / "s.zarr")
    with Loader(store, cfg, samples_per_epoch=24, workers=2, prefetch=2, cache_bytes=20_000, seed=5) as loader:
        for batch in loader:
            want = reference(truth, cfg, batch.boxes.numpy(), periodic=True)
            for f in cfg.field_names:
                np.testing.assert_array_equal(batch[f].numpy(), want[f])
        assert loader.stats.hits > 0 and loader.stats.misses > 0


def test_a_failing_step_with_the_next_step_in_flight_raises_and_leaves_nothing(tmp_path):
    _, cfg = build("per_variable", tmp_path / "s.zarr", zarr_format=2)
    store = open_store(tmp_path / "s.zarr")
    store.source = FlakySource(store.source, fail=None, times=-1)  # every chunk read fails
    with Loader(store, cfg, samples_per_epoch=16, workers=2, cache_bytes=20_000, retries=0, seed=2) as loader:
        with pytest.raises(ChunkReadError, match="injected failure"):
            next(iter(loader))


def test_sample_chunk_bound_covers_every_alignment():
    lay = FieldLayout(name="t", array="t", shape=(20, 3, 16, 24), chunks=(3, 2, 5, 7), axes=(0, None, 1, 2, 3),
                      lev_idx=np.array([0, 2]), periodic_x=True)
    box = (4, 6, 8)
    bound = sample_chunk_bound({"t": lay}, box, 1)["t"]
    starts = np.stack(np.meshgrid(np.arange(17), np.arange(11), np.arange(24), indexing="ij"), -1).reshape(-1, 3)
    worst = max(plan_batch(b[None], [lay], box).chunks["t"].shape[0] for b in starts)
    assert worst == 24  # 2 time x 2 row x 3 column chunks (the wrap crosses the short last chunk) x 2 levels
    assert worst <= bound <= 2 * 3 * 3 * 3  # a bound: at most one extra chunk per axis


def _read_all(store, cfg, **settings):
    with Loader(store, cfg, samples_per_epoch=48, workers=2, fetch_concurrency=4, seed=3, **settings) as loader:
        got = [(b.boxes.numpy().copy(), {f: b[f].numpy().copy() for f in cfg.field_names}) for b in loader]
        return got, loader._backend.reader._ahead, loader.stats  # noqa: SLF001 - the read-ahead's counters


@pytest.mark.parametrize("cache_bytes", [20_000, 200_000])
def test_remote_read_ahead_gives_the_local_results_and_is_used(tmp_path, cache_bytes):
    truth, cfg = build("per_variable", tmp_path / "s.zarr", nt=24)
    local, no_ahead, _ = _read_all(open_store(tmp_path / "s.zarr"), cfg, cache_bytes=cache_bytes)
    assert no_ahead is None  # local files: no read-ahead
    remote, ahead, stats = _read_all(open_store(tmp_path / "s.zarr", latency_ms=1.0), cfg, cache_bytes=cache_bytes)
    assert len(remote) == len(local) == 12
    for (boxes, want), (rboxes, got) in zip(local, remote):
        np.testing.assert_array_equal(rboxes, boxes)
        ref = reference(truth, cfg, boxes, periodic=True)
        for f in cfg.field_names:
            np.testing.assert_array_equal(got[f], want[f])
            np.testing.assert_array_equal(got[f], ref[f])
    assert ahead is not None and ahead.requested > 0 and ahead.used > 0  # fetched ahead, and taken by steps
    assert len(ahead) == 0  # closed: nothing held
    assert stats.misses > 0


def test_remote_read_ahead_loses_no_error(tmp_path):
    truth, cfg = build("per_variable", tmp_path / "s.zarr", zarr_format=2, nt=24)
    store = open_store(tmp_path / "s.zarr", latency_ms=1.0)
    store.source = FlakySource(store.source, times=1)  # every chunk's first read fails (read-ahead or not)
    got, ahead, _ = _read_all(store, cfg, retries=2)
    assert ahead is not None and ahead.requested > 0
    for boxes, out in got:
        ref = reference(truth, cfg, boxes, periodic=True)
        for f in cfg.field_names:
            np.testing.assert_array_equal(out[f], ref[f])
    store = open_store(tmp_path / "s.zarr", latency_ms=1.0)
    store.source = FlakySource(store.source, times=-1)  # permanent: the step's own fetch reports it
    with pytest.raises(ChunkReadError, match="injected failure"):
        _read_all(store, cfg, retries=0)


class _Counting:
    def __init__(self, fail=False):
        self.calls: list[list[tuple[int, ...]]] = []
        self.fail = fail

    def __call__(self, array, chunks):
        self.calls.append(list(chunks))
        if self.fail:
            raise ConnectionError("injected")
        return [bytes(10 * (c[0] + 1)) for c in chunks]


def test_raw_ahead_takes_requests_once_within_the_budget():
    fetch = _Counting()
    ahead = RawAhead(100, fetch)
    g = ahead.claim("a", [(0,), (1,), (2,)], est=40)  # 100 bytes at 40 each: room for two
    assert g is not None and g.chunks == [(0,), (1,)]
    assert ahead.claim("a", [(0,), (1,)], est=40) is None  # already claimed: never requested twice
    got = ahead.take("a", [(1,), (5,)])  # still queued: the consumer runs the request itself
    assert got == {0: bytes(20)} and fetch.calls == [[(0,), (1,)]]
    ahead.run(g)  # the pool's turn comes: nothing left to do
    assert fetch.calls == [[(0,), (1,)]]
    assert ahead.take("a", [(0,)]) == {0: bytes(10)} and ahead.take("a", [(0,)]) == {}  # consumed once
    assert (ahead.requested, ahead.used, len(ahead)) == (2, 2, 0)
    g = ahead.claim("a", [(3,), (4,), (5,), (6,)], est=40)  # real sizes now known (mean 15): all fit
    assert g is not None and len(g.chunks) == 4
    ahead.run(g)  # 40 + 50 + 60 + 70 = 220 bytes: the latest claimed are evicted down to 100, counted as wasted
    # every request counted once as it returned (30 + 220), the evicted ones too (not again as wasted)
    assert ahead.wasted_bytes == 130 and ahead.drain_stored() == {"a": 250} and ahead.drain_stored() == {}
    assert ahead.take("a", [(3,), (4,), (5,), (6,)]) == {0: bytes(40), 1: bytes(50)}
    ahead.clear()
    assert len(ahead) == 0


def test_raw_ahead_failure_leaves_the_chunks_to_the_caller():
    ahead = RawAhead(1000, _Counting(fail=True))
    g = ahead.claim("a", [(0,), (1,)], est=10)
    assert g is not None
    ahead.run(g)
    assert ahead.take("a", [(0,), (1,)]) == {} and len(ahead) == 0


def test_raw_ahead_take_gives_up_on_a_request_that_never_answers():
    """A step taking a chunk whose read-ahead request hangs waits at most the timeout (counted from the request's
    start), then gets a ChunkReadError naming the array, the chunk and the wait; it used to wait for ever. Chunks
    the buffer does not hold are still left to the caller, and the late answer is dropped."""
    release, entered = threading.Event(), threading.Event()

    def hung(array, chunks):
        entered.set()
        release.wait(30)
        return [bytes(4)] * len(chunks)

    ahead = RawAhead(1000, hung)
    g = ahead.claim("t", [(0, 1), (0, 2)], est=10)
    runner = threading.Thread(target=ahead.run, args=(g,), daemon=True)
    runner.start()
    try:
        assert entered.wait(10)
        got: dict = {}
        taker = threading.Thread(target=lambda: got.update(ahead.take("t", [(0, 2), (9, 9)], timeout=0.2)),
                                 daemon=True)
        taker.start()
        taker.join(10)
        assert not taker.is_alive(), "take still waits for a request that never answers"
        assert list(got) == [0]  # (9, 9) was never requested ahead: the caller fetches it
        e = got[0]
        assert isinstance(e, ChunkTimeoutError) and e.array == "t" and e.chunk == (0, 2)
        assert "no answer" in str(e) and "0.2" in str(e)
        assert ahead.used == 0
    finally:
        release.set()
        runner.join(10)
    assert ahead.take("t", [(0, 1)]) == {0: bytes(4)}  # the other chunk of the late request is still served
    assert ahead.take("t", [(0, 2)]) == {}  # the given-up one is not (taken already)


def test_a_broken_off_iteration_leaves_no_stale_read_ahead(tmp_path):
    """Bytes read ahead for batches nobody read are dropped when the next plan starts, so the budget is free
    again (they used to stay, and later epochs could hardly read ahead at all)."""
    truth, cfg = build("per_variable", tmp_path / "s.zarr", nt=40)
    rng = np.random.default_rng(0)

    def boxes(epoch):  # epoch 0 in times 0..15, later epochs in 20..35: no chunk in common
        t0 = rng.integers(0, 12, 48) + (0 if epoch == 0 else 20)
        return np.stack([t0, rng.integers(0, 9, 48), rng.integers(0, 20, 48)], 1).astype(np.int64)

    store = open_store(tmp_path / "s.zarr", latency_ms=1.0)
    with Loader(store, cfg, boxes=boxes, workers=1, fetch_concurrency=4, seed=3, cache_bytes=30_000,
                prefetch=2) as loader:  # fmt: skip
        it = iter(loader)
        next(it)
        time.sleep(0.3)  # let the read-ahead for the next batches land
        it.close()
        ahead = loader._backend.reader._ahead  # noqa: SLF001 - the read-ahead's counters
        assert len(ahead) > 0  # entries for batches that will never be read
        loader.set_epoch(1)
        before = ahead.requested
        got = [b for b in loader]
        assert len(got) == 12
        assert ahead.requested - before > 200 and len(ahead) == 0  # reads ahead fully again; nothing stale


def test_an_error_while_reading_ahead_pins_nothing(tmp_path, monkeypatch):
    """Planning a later batch can fail during the read-ahead; the batch being read must not leave slots pinned."""
    import fastload.reader as reader_mod

    truth, cfg = build("per_variable", tmp_path / "s.zarr", nt=24)
    store = open_store(tmp_path / "s.zarr", latency_ms=1.0)

    def broken(self, plan, steps, i, stop):
        raise ConfigError("planning a later batch failed")

    monkeypatch.setattr(reader_mod.ChunkReader, "_read_ahead", broken)
    with Loader(store, cfg, samples_per_epoch=48, workers=1, fetch_concurrency=4, seed=3,
                cache_bytes=2_000_000) as loader:  # fmt: skip
        got = [b for b in loader]  # the read-ahead is best effort: the batches themselves are read
        assert len(got) == 12
        cache = loader._backend.cache  # noqa: SLF001
        assert all(int(ar.pins.sum()) == 0 for ar in cache._arenas.values())  # noqa: SLF001
    for b in got:
        ref = reference(truth, cfg, b.boxes.numpy(), periodic=True)
        for f in cfg.field_names:
            np.testing.assert_array_equal(b[f].numpy(), ref[f])


def test_a_chunk_grid_too_large_to_index_is_a_config_error():
    from fastload.plan import EpochPlan

    with pytest.raises(ConfigError, match="'t'.*2\\*\\*31 chunks per array"):
        EpochPlan(np.zeros((1, 3), np.int64), lambda b: None, batch_size=1, grids={"t": (70001, 70001)})


def test_a_dead_store_is_not_retried_chunk_after_chunk(tmp_path):
    """Every read fails: once a chunk has failed after all its retries (and nothing has been read since), the
    reader tries each further chunk once, so a dead store reaches the consumer in about one backoff sequence, not
    one per chunk (it took 23 s with the default retries before)."""
    truth, cfg = build("per_variable", tmp_path / "s.zarr", zarr_format=2, nt=24)
    store = open_store(tmp_path / "s.zarr")
    store.source = FlakySource(store.source, times=-1)
    with Loader(store, cfg, samples_per_epoch=48, workers=1, fetch_concurrency=1, seed=3, retries=3) as loader:
        with pytest.raises(ChunkReadError, match="after 3 retries"):
            next(iter(loader))
    reads = sum(store.source.count.values())
    chunks = len(store.source.count)
    assert chunks > 50
    assert reads < 2 * chunks  # with 3 retries per chunk it would be 4 reads per chunk, plus the batched tries


def test_read_ahead_budget_is_a_loader_setting(tmp_path):
    from fastload.config import LoaderConfig

    truth, cfg = build("per_variable", tmp_path / "s.zarr", nt=24)
    for setting, want in ((None, "half"), (0, None), (5_000, 5_000)):  # default: min(96 MB, cache arenas / 2)
        store = open_store(tmp_path / "s.zarr", latency_ms=1.0)
        with Loader(store, cfg, samples_per_epoch=8, workers=1, cache_bytes=200_000, read_ahead_bytes=setting) as L:
            got = [b for b in L]
            ahead = L._backend.reader._ahead  # noqa: SLF001
            if want == "half":
                want = L._backend.cache.nbytes // 2  # noqa: SLF001
            assert (None if ahead is None else ahead.budget) == want
            assert len(got) == 2
    with pytest.raises(ConfigError, match="read_ahead_bytes"):
        LoaderConfig(read_ahead_bytes=-1)


def test_a_submit_that_raises_mid_step_releases_the_slots_only_after_the_steps_tasks(tmp_path):
    """``_submit`` raising something other than the closed pool's RuntimeError (here MemoryError on the second task)
    must not release the step's slots while its first task still writes into them: the release waits for every
    task submitted so far (queued ones are cancelled), and the reader still reads correct batches afterwards."""
    truth, cfg = build("per_variable", tmp_path / "s.zarr", nt=24)
    store = open_store(tmp_path / "s.zarr")
    with Loader(store, cfg, samples_per_epoch=8, workers=1, fetch_concurrency=4, cache_bytes=200_000, seed=1) as L:
        L._ensure_backend()  # noqa: SLF001 - the reader whose pool and cache are instrumented
        reader = L._backend.reader  # noqa: SLF001
        running, started, go = [0], threading.Event(), threading.Event()
        lock = threading.Lock()
        at_release: list[int] = []
        fetch_decode, submit, release = reader._fetch_decode, reader._pool.submit, reader.cache.release
        calls = [0]

        def slow_fetch_decode(*a, **k):
            with lock:
                running[0] += 1
            started.set()
            try:
                go.wait(10)
                return fetch_decode(*a, **k)
            finally:
                with lock:
                    running[0] -= 1

        def failing_submit(fn, *a, **k):
            if fn == slow_fetch_decode:
                calls[0] += 1
                if calls[0] == 2:  # the first task is running (blocked) when the second cannot be submitted
                    assert started.wait(10)
                    threading.Timer(0.3, go.set).start()  # it finishes a little later
                    raise MemoryError("injected")
            return submit(fn, *a, **k)

        def recording_release(res, step_done=True):
            with lock:
                at_release.append(running[0])
            return release(res, step_done)

        reader._fetch_decode, reader._pool.submit, reader.cache.release = (
            slow_fetch_decode, failing_submit, recording_release)
        with pytest.raises(MemoryError, match="injected"):
            next(iter(L))
        go.set()
        assert calls[0] >= 2 and at_release[0] == 0, at_release  # no task of the step ran at its release
        reader._fetch_decode, reader._pool.submit, reader.cache.release = fetch_decode, submit, release
        for batch in L:  # the cache is consistent: a new iteration reads the right values
            want = reference(truth, cfg, batch.boxes.numpy(), periodic=True)
            for f in cfg.field_names:
                np.testing.assert_array_equal(batch[f].numpy(), want[f])


def test_raw_ahead_over_budget_drops_the_entries_needed_latest():
    """Chunks larger than estimated put the buffer over its budget: it drops the entries of the farthest step (the
    latest claimed, or the largest ``due``), not the nearest step's, which are needed first; held bytes never
    exceed the budget after a request lands."""
    fetch = _Counting()  # chunk (c,) is 10 * (c + 1) bytes
    ahead = RawAhead(100, fetch)
    near = ahead.claim("a", [(4,), (5,)], est=25)  # 50 + 60 bytes, estimated 25 each
    far = ahead.claim("a", [(6,), (7,)], est=25)  # 70 + 80
    assert near is not None and far is not None
    ahead.run(far)  # 150 > 100: drop (7,), the latest claimed
    assert ahead._held <= 100 and ahead.wasted_bytes == 80  # noqa: SLF001 - the bound itself
    ahead.run(near)  # 70 + 110 = 180 > 100: drop (6,) (far), then (5,)
    assert ahead._held <= 100 and ahead.wasted_bytes == 80 + 70 + 60  # noqa: SLF001
    assert ahead.take("a", [(4,), (5,), (6,), (7,)]) == {0: bytes(50)}  # the nearest step's chunk is kept
    # several workers claim out of plan order: ``due`` (the step's plan position) decides, not the claim order
    ahead = RawAhead(100, _Counting())
    far = ahead.claim("a", [(6,), (7,)], est=25, due=9)
    near = ahead.claim("a", [(4,), (5,)], est=25, due=3)
    assert near is not None and far is not None
    ahead.run(near)  # 110 > 100: the nearer step's own latest chunk goes (the far one is still in flight)
    ahead.run(far)  # 50 + 150: drop (7,), (6,)
    assert ahead._held <= 100 and ahead.wasted_bytes == 60 + 80 + 70  # noqa: SLF001
    assert ahead.take("a", [(4,), (5,), (6,), (7,)]) == {0: bytes(50)}


def test_a_task_that_finishes_as_its_wait_times_out_gives_its_result():
    """The task completes just after the step's timed wait for it ran out: _wait_task returns its result (it
    re-raised the wait's own TimeoutError, failing a batch whose chunks were read, even with 'skip')."""
    from concurrent.futures import Future

    from fastload.reader import ChunkReader, _Done, _Task

    class LateFuture(Future):
        def result(self, timeout=None):
            try:
                return super().result(timeout)
            except TimeoutError:
                if not self.done():
                    self.set_result(done)  # the task returns now, successfully
                raise

    class Reader:  # what _wait_task reads
        read_timeout = 0.01

    done = _Done()
    task = _Task()
    task.begin()  # running, between requests: waited for in read-timeout slices, never given up
    assert ChunkReader._wait_task(Reader(), LateFuture(), task) is done


def test_a_given_up_read_ahead_request_gives_its_budget_back_once():
    """A read-ahead request that never answers is given up by take(): its estimated bytes leave the budget then (it
    kept them for as long as it hung, clear() too, silently switching read-ahead off), its thread is let go, and
    its late answer does not take them out a second time."""
    release, calls, let_go = threading.Event(), [], []

    def fetch(array, chunks):
        calls.append(chunks)
        if len(calls) == 1:
            release.wait(30)  # the first request never answers (until the test's end)
        return [bytes(100)] * len(chunks)

    ahead = RawAhead(1000, fetch, abandon=let_go.append)
    g = ahead.claim("a", [(i,) for i in range(8)], est=100)  # 800 of 1000 bytes in flight
    runner = threading.Thread(target=ahead.run, args=(g,), daemon=True)
    runner.start()
    try:
        _wait_until(lambda: calls)  # the request runs (else take would run it itself, on this thread)
        assert isinstance(ahead.take("a", [(0,)], timeout=0.1)[0], ChunkReadError)
        assert let_go == [g]
        ahead.clear()  # a new plan starts
        g2 = ahead.claim("a", [(i,) for i in range(100, 108)], est=100)
        assert g2 is not None and len(g2.chunks) == 8  # (2 before: the hung request held 800 bytes)
    finally:
        release.set()
        runner.join(10)
    assert ahead._flight == 800  # noqa: SLF001 - g2's estimate only: the late answer took nothing out again
    ahead.run(g2)
    assert ahead._flight == 0  # noqa: SLF001


def test_an_io_thread_that_cannot_start_loses_no_job_and_breaks_no_close(monkeypatch):
    """Thread.start fails (thread exhaustion): with a thread running, the job stays queued and runs there (submit
    raised while the job still ran later: the reader had released its slots by then); with none, submit raises and
    the job is not queued. close() returns either way (it raised joining the never-started thread)."""
    from fastload.reader import _IOPool

    pool = _IOPool(2, "fastload-test")
    gate, ran = threading.Event(), []
    pool.submit(gate.wait, 5)  # thread 0 starts and is busy

    def cannot_start(self):
        raise RuntimeError("can't start new thread")

    real_start = threading.Thread.start
    monkeypatch.setattr(threading.Thread, "start", cannot_start)
    fut = pool.submit(ran.append, "queued")
    empty = _IOPool(1, "fastload-test-empty")
    with pytest.raises(RuntimeError, match="can't start"):
        empty.submit(ran.append, "refused")
    monkeypatch.setattr(threading.Thread, "start", real_start)
    gate.set()
    fut.result(timeout=10)
    assert ran == ["queued"]
    assert pool.close(5.0) == [] and empty.close(5.0) == []
    assert ran == ["queued"]


def test_a_hung_request_its_consumer_runs_itself_gives_its_budget_back():
    """A consumer runs a still-queued read-ahead request itself (take's own-request path) and it never answers:
    once it is older than the read timeout, a new plan's clear() gives its estimate back (it held the budget for as
    long as it hung before: read-ahead mostly off)."""
    release, entered = threading.Event(), threading.Event()

    def fetch(array, chunks):
        if chunks[0] == (0,):
            entered.set()
            release.wait(30)
        return [bytes(100)] * len(chunks)

    ahead = RawAhead(1000, fetch)
    ahead.claim("a", [(i,) for i in range(8)], est=100)  # 800 of 1000 bytes; its run() job never gets a thread
    consumer = threading.Thread(target=ahead.take, args=("a", [(i,) for i in range(8)]),
                                kwargs={"timeout": 0.05, "timed": lambda fn: fn()}, daemon=True)
    consumer.start()
    try:
        assert entered.wait(30)  # the consumer's own request runs (the thread may start late on a loaded box)
        time.sleep(0.15)  # (older than the read timeout now, however slow the machine)
        ahead.clear()
        g = ahead.claim("a", [(i,) for i in range(100, 108)], est=100)
        assert g is not None and len(g.chunks) == 8 and ahead._flight == 800
    finally:
        release.set()
        consumer.join(5)
    assert ahead._flight == 800  # the late answer takes nothing out a second time


def test_a_task_given_up_while_queued_stays_not_started_when_its_thread_takes_it():
    """The step gives a queued task up just as an I/O thread takes the job: begin() says do nothing and the task
    stays 'not started' (it was marked started: the step let a returning thread go, counted against the cap, and
    named a store request left running)."""
    from fastload._io_pool import _IOPool, _Task
    from fastload.reader import ChunkReader

    reader = object.__new__(ChunkReader)
    reader.read_timeout = 0.1
    reader._pool = pool = _IOPool(1, "fastload-test")
    task = _Task()
    with task.lock:
        task.given_up, task.waited = True, 0.1  # (what _wait_task does to a task still queued)
    try:
        assert pool.submit(task.begin).result(5) is False
        assert not task.started
        step = type("S", (), {"plan": type("P", (), {"chunks": {"t": np.array([[1, 2, 3, 4]])}})})
        err = reader._given_up(step, "t", np.array([0]), task).errors[0]
        assert "not started" in str(err)
    finally:
        pool.close(5)


def test_a_short_read_timeout_s_wait_is_named_as_it_was():
    """A 0.02 s read timeout's give-up names the wait as about 0.02 s, not 'after 0.0 s' (read-ahead and tasks)."""
    from fastload._io_pool import _Task
    from fastload.reader import ChunkReader

    release = threading.Event()
    ahead = RawAhead(1000, lambda a, cs: release.wait(30) and [b"x"] * len(cs))
    g = ahead.claim("a", [(0,)], est=100)
    runner = threading.Thread(target=ahead.run, args=(g,), daemon=True)
    runner.start()
    try:
        while g.started == 0.0:
            time.sleep(0.001)
        err = ahead.take("a", [(0,)], timeout=0.02)[0]
    finally:
        release.set()
        runner.join(5)
    waited = float(str(err).split("after ")[1].split(" s")[0])
    assert 0.02 <= waited < 5 and "after 0.0 s" not in str(err), str(err)
    reader = object.__new__(ChunkReader)
    reader.read_timeout = 0.02
    task = _Task()
    task.started, task.waited = True, 0.0213
    step = type("S", (), {"plan": type("P", (), {"chunks": {"t": np.array([[1, 2, 3, 4]])}})})
    assert "after 0.0213 s" in str(reader._given_up(step, "t", np.array([0]), task).errors[0])


def test_raw_ahead_requests_nobody_waits_for_give_their_budget_back():
    """clear() gives back at once the estimate of a hung request whose entries it drops (held until it aged past the
    read timeout before), without letting its thread go (the pool does when queued tasks need one); a request
    that waited for a thread longer than the timeout is not made (it was, and hung on the stuck store too)."""
    release, calls, let_go = threading.Event(), [], []

    def fetch(array, chunks):
        calls.append(chunks)
        release.wait(30)
        return [b"x"] * len(chunks)

    ahead = RawAhead(1000, fetch, abandon=let_go.append, timeout=10.0)
    g = ahead.claim("a", [(0,), (1,)], est=100)
    runner = threading.Thread(target=ahead.run, args=(g,), daemon=True)
    runner.start()
    try:
        while not calls:
            time.sleep(0.001)
        ahead.clear()
        assert ahead._flight == 0 and g.abandoned and not let_go
        ahead.timeout = 0.02
        late = ahead.claim("a", [(5,)], est=100)
        time.sleep(0.03)
        ahead.run(late)  # queued longer than the timeout: dropped, its step fetches the chunk
        assert len(calls) == 1 and ahead._flight == 0 and len(ahead) == 0 and late.event.is_set()
    finally:
        release.set()
        runner.join(5)
    assert ahead._flight == 0


def test_a_consumer_giving_up_lets_go_of_a_thread_clear_gave_up_without_it():
    """clear() (a new plan) gives a hung read-ahead request up without letting its thread go; a step that waits for
    another of its chunks and times out then lets the thread go (it stayed in the pool, one thread short, before)."""
    from fastload._io_pool import _IOPool

    hang = threading.Event()

    def fetch(array, chunks):
        hang.wait(10)
        return [b"x"] * len(chunks)

    pool = _IOPool(2, "t-letgo")
    ahead = RawAhead(10_000, fetch, abandon=pool.abandon, timeout=0.2)
    try:
        g = ahead.claim("a", [(0,), (1,)], 100)
        pool.submit(ahead.run, g)
        got: dict = {}
        consumer = threading.Thread(target=lambda: got.update(ahead.take("a", [(0,)], timeout=0.2)), daemon=True)
        deadline = time.monotonic() + 5
        while not any(args and args[0] is g for _, args in pool._state.running.values()):
            assert time.monotonic() < deadline
            time.sleep(0.005)
        consumer.start()
        time.sleep(0.05)
        ahead.clear()  # drops chunk 1's entry: g given up, its thread kept
        consumer.join(5)
        assert isinstance(got.get(0), ChunkReadError)
        st = pool._state
        assert not [t for t, (_, args) in st.running.items() if t in st.threads and args and args[0] is g]
        assert len(st.abandoned) == 1 and ahead._flight == 0
    finally:
        hang.set()
        pool.close(5)


def test_a_job_whose_start_time_is_not_set_yet_is_not_stuck():
    """abandon_stuck judges a running job by when it began; a thread that has taken a job but not yet noted when
    (the worker notes it first now) is never let go, whatever the pool's last progress (a healthy request that had
    just started was let go before)."""
    from fastload._io_pool import _IOPool

    pool = _IOPool(1, "t-began")
    try:
        st = pool._state
        fake = threading.Thread(target=lambda: None)
        with st.cond:
            st.threads.append(fake)
            st.running[fake] = (print, ())
        st.progress = time.monotonic() - 100
        jobs, full = pool.abandon_stuck(lambda fn, args, began: True)
        assert jobs == [] and not full and fake in st.threads
    finally:
        with st.cond:
            st.threads.remove(fake)
            st.running.pop(fake)
        pool.close(5)


def test_close_after_a_warm_up_thread_that_could_not_start(monkeypatch, tmp_path):
    """warm() when no thread can start: the first gather loads the kernels, and close() still closes everything
    (it raised 'cannot join thread before it is started' half-way before)."""
    import fastload.sampling.neighborhood as nb
    from fastload._backend import build_cache, make_tokenizer
    from fastload.reader import ChunkReader

    _, cfg = build("per_variable", tmp_path / "s.zarr")
    store = open_store(tmp_path / "s.zarr")

    tok = make_tokenizer(store, cfg)
    cache, _ = build_cache(store, tok, cfg, 64 << 20, 1)
    rd = ChunkReader(store, tok, cache, fetch_concurrency=1)
    real = threading.Thread.start

    def start(self):
        if self.name.endswith("_warm"):
            raise RuntimeError("can't start new thread")
        return real(self)

    monkeypatch.setattr(nb, "use_jit", lambda *a, **k: True)
    monkeypatch.setattr(threading.Thread, "start", start)
    rd.warm(np.float32)
    monkeypatch.undo()
    assert rd._warm is None
    assert rd.close(2.0) == []


def _wait_until(ready, seconds: float = 30.0) -> None:
    """Wait until ``ready()`` (a thread has got somewhere), failing after ``seconds``."""
    deadline = time.monotonic() + seconds
    while not ready():
        assert time.monotonic() < deadline, "the thread never got there"
        time.sleep(0.005)


def test_a_chunk_whose_read_ahead_request_was_given_up_is_fetched_again_by_later_steps():
    """A read-ahead request hangs; the step waiting for one of its chunks gives it up after the timeout (that step's
    chunk fails, as before). A later step needing the request's other chunk, or a chunk of a request the sweep gave
    up (nobody waited for it), takes nothing from the buffer and fetches the chunk itself; the chunks can be read
    ahead again. Before, each failed at once for the rest of the plan (until the next clear)."""
    release, calls = threading.Event(), []

    def fetch(array, chunks):
        calls.append(list(chunks))
        if len(calls) <= 2:  # the first two requests never answer (until the test's end)
            release.wait(30)
        return [bytes(8)] * len(chunks)

    ahead = RawAhead(1000, fetch, timeout=0.1)
    g = ahead.claim("a", [(0,), (1,)], est=10)
    hung = [threading.Thread(target=ahead.run, args=(g,), daemon=True)]
    hung[0].start()
    try:
        _wait_until(lambda: calls)  # the request runs (else take would run it itself, on this thread: a loaded box)
        assert isinstance(ahead.take("a", [(0,)], timeout=0.1)[0], ChunkTimeoutError)  # this step fails
        assert ahead.take("a", [(1,)], timeout=0.1) == {}  # a later step: its caller fetches the chunk
        swept = ahead.claim("a", [(5,)], est=10)
        hung.append(threading.Thread(target=ahead.run, args=(swept,), daemon=True))
        hung[1].start()
        while len(calls) < 2:
            time.sleep(0.005)
        time.sleep(0.15)
        assert ahead.claim("a", [(7,)], est=10) is not None  # (its sweep gives the hung request for (5,) up)
        assert swept.abandoned
        assert ahead.take("a", [(5,)], timeout=0.1) == {}  # nobody waited for it: not a failure either
        again = ahead.claim("a", [(0,), (1,)], est=10)  # read ahead again
        assert again is not None and again.chunks == [(0,), (1,)]
        ahead.run(again)
        assert ahead.take("a", [(0,), (1,)], timeout=0.1) == {0: bytes(8), 1: bytes(8)}
    finally:
        release.set()
        for t in hung:
            t.join(10)


class _Interrupt(BaseException):
    """Not an Exception: what a KeyboardInterrupt or SystemExit in the reader's thread looks like."""


def test_an_interrupt_while_reading_ahead_leaves_no_step_s_slots_pinned(tmp_path, monkeypatch):
    """An interrupt (a BaseException) raised while a step reads ahead, after the next step was started: that next
    step gives its slots back too (they stayed pinned for good before, also after close)."""
    from fastload.reader import ChunkReader

    _, cfg = build("per_variable", tmp_path / "s.zarr")
    store = open_store(tmp_path / "s.zarr", latency_ms=1.0)  # remote: read-ahead on
    starts: list = []
    plain = ChunkReader._start

    def start(self, step, stats, stop, block):
        got = plain(self, step, stats, stop, block)
        starts.append((block, got is not None))
        return got

    def read_ahead(self, plan, steps, i, stop):
        if starts[-1] == (False, True):  # the next step is started (it holds slots)
            raise _Interrupt("interrupted while reading ahead")

    monkeypatch.setattr(ChunkReader, "_start", start)
    monkeypatch.setattr(ChunkReader, "_read_ahead", read_ahead)
    # a cache of room for two steps: the next step is started while one gathers
    loader = Loader(store, cfg, samples_per_epoch=48, workers=1, prefetch=1, seed=3, retries=0, jit=False,
                    cache_bytes=30_000)
    try:
        with pytest.raises(BaseException) as info:
            for _ in loader:
                pass
        assert "interrupted while reading ahead" in repr(info.value) + repr(info.value.__cause__), info.value
        assert (False, True) in starts
    finally:
        loader.close()
    cache = loader._backend.cache  # noqa: SLF001
    pinned = {a: int((ar.pins > 0).sum()) for a, ar in cache._arenas.items()}  # noqa: SLF001
    assert not any(pinned.values()), pinned


def test_an_interrupted_wait_for_a_task_leaves_it_no_slot_to_write_into(tmp_path, monkeypatch):
    """An interrupt (a BaseException) while the step waits for a task whose store request is still running: the step
    released its slots and the task decoded into them afterwards (slots other chunks may have been given). Now the
    task is given up first: every decode lands in a slot still pinned by its step."""
    from fastload.reader import ChunkReader

    _, cfg = build("per_variable", tmp_path / "s.zarr", codec="zstd")
    store = open_store(tmp_path / "s.zarr")  # (compressed: fetch, then decode into the slot)
    entered, release, interrupted, hung = threading.Event(), threading.Event(), [], []
    read, decode = store.chunk_bytes, store.decode
    unpinned: list = []
    loader = Loader(store, cfg, samples_per_epoch=8, workers=1, prefetch=1, seed=3, retries=0, jit=False)

    def chunk_bytes(array, c):
        if array == "t" and not hung:
            hung.append(tuple(c))
            entered.set()
            release.wait(30)  # the request answers only once the consumer has the interrupt
        return read(array, c)

    def decode_into(array, raw, c, out):
        cache = loader._backend.cache  # noqa: SLF001
        arena = cache.arena(array)
        slot = (out.ctypes.data - arena.ctypes.data) // arena.strides[0]
        if cache._arenas[array].pins[slot] == 0:  # noqa: SLF001 - its step has released it
            unpinned.append((array, c))
        return decode(array, raw, c, out=out)

    plain_wait = ChunkReader._wait_task

    def wait_task(self, fut, task):
        if not interrupted and entered.wait(30):
            with task.lock:
                mine = hung[0] in task.inflight
            if mine:  # the wait for the task whose request still runs
                interrupted.append(task)
                raise _Interrupt("interrupted while waiting for a task")
        return plain_wait(self, fut, task)

    store.chunk_bytes, store.decode = chunk_bytes, decode_into
    monkeypatch.setattr(ChunkReader, "_wait_task", wait_task)
    try:
        with pytest.raises(BaseException) as info:
            next(iter(loader))
        assert "interrupted while waiting" in repr(info.value) + repr(info.value.__cause__), info.value
        assert entered.is_set() and interrupted
    finally:
        release.set()
        loader.close(10)
    assert unpinned == []
