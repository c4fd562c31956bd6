"""fastload.pump: order, bounded depth, error propagation, clean shutdown (no threads left)."""

from __future__ import annotations

import gc
import threading
import time
import weakref
from concurrent.futures import CancelledError, Future
from concurrent.futures import TimeoutError as FutureTimeout

import pytest

from fastload.pump import Pump, PumpClosedError


def _pump_threads() -> list[threading.Thread]:
    return [t for t in threading.enumerate() if t.name.startswith("test-pump")]


@pytest.fixture(autouse=True)
def no_threads_left():
    yield
    deadline = time.monotonic() + 5
    while _pump_threads() and time.monotonic() < deadline:
        time.sleep(0.01)
    assert not _pump_threads()


def test_results_in_order_with_uneven_work():
    def work(i):
        time.sleep(0.002 * ((7 * i) % 5))
        return i * i

    with Pump(range(40), work, depth=6, workers=4, name="test-pump") as p:
        assert list(p) == [i * i for i in range(40)]
        with pytest.raises(StopIteration):
            next(p)


def test_depth_bounds_work_in_flight():
    started: list[int] = []
    lock = threading.Lock()

    def work(i):
        with lock:
            started.append(i)
        return i

    with Pump(range(100), work, depth=3, workers=2, name="test-pump") as p:
        time.sleep(0.2)  # let the dispatcher run as far as it may
        assert len(started) <= 3
        assert next(p) == 0
        time.sleep(0.2)
        assert len(started) <= 4  # one more item admitted per item consumed
        got = [0, *p]
    assert got == list(range(100))


def test_worker_exception_reaches_consumer_in_order():
    def work(i):
        if i == 5:
            raise KeyError("bad item 5")
        return i

    with Pump(range(10), work, depth=4, workers=3, name="test-pump") as p:
        got = [next(p) for _ in range(5)]
        with pytest.raises(KeyError, match="bad item 5"):
            next(p)
        assert got == list(range(5))
        assert next(p) == 6  # later items still arrive


@pytest.mark.parametrize("exc", [CancelledError, TimeoutError])
def test_a_workers_cancelled_or_timeout_error_is_its_own_and_keeps_nothing_alive(exc):
    """A CancelledError or TimeoutError raised by work(item) reaches the consumer as itself (not as a closed pump,
    not as a wait to retry), and the future that carries it (whose traceback holds the consumer's frames) is kept
    by no pump thread: an abandoned pump is still collected and stops its threads."""

    def work(i):
        if i == 1:
            raise exc(f"work {i} failed")
        return i

    class Consumer:
        def __init__(self):
            self.pump = Pump(iter(range(10**9)), work, depth=2, workers=2, name="test-pump", timeout=5)

        def run(self):
            assert next(self.pump) == 0
            with pytest.raises(exc, match="work 1 failed"):
                next(self.pump)

    c = Consumer()
    c.run()
    ref = weakref.ref(c)
    del c
    gc.collect()
    assert ref() is None  # the fixture then sees the pump's threads stop


@pytest.mark.parametrize("interrupt", [False, True])
def test_a_result_that_lands_as_the_wait_ends_is_not_lost(monkeypatch, interrupt):
    """The consumer's wait times out (or is interrupted, e.g. Ctrl-C) just as work finishes: the result is
    returned (after an interrupt: by the next call, the interrupt itself reaching the caller), never lost."""
    real = Future.result
    hit = []

    def result(self, timeout=None):
        if not hit and self.done() and timeout is not None:  # finished, but the wait "ended" first
            hit.append(1)
            raise KeyboardInterrupt if interrupt else FutureTimeout()
        return real(self, timeout)

    monkeypatch.setattr(Future, "result", result)
    with Pump(range(3), lambda v: v * 10, workers=1, depth=2) as p:
        time.sleep(0.05)  # let the first item finish before the consumer waits
        got = []
        if interrupt:
            with pytest.raises(KeyboardInterrupt):
                next(p)
        got += list(p)
    assert hit and got == [0, 10, 20]


def test_item_iterator_exception_reaches_consumer():
    def items():
        yield 1
        yield 2
        raise ValueError("plan broke")

    with Pump(items(), lambda i: i, depth=2, workers=1, name="test-pump") as p:
        assert next(p) == 1
        assert next(p) == 2
        with pytest.raises(ValueError, match="plan broke"):
            next(p)
        with pytest.raises(StopIteration):
            next(p)


def test_timeout_instead_of_hang():
    gate = threading.Event()

    def work(i):
        gate.wait(5)
        return i

    p = Pump(range(3), work, depth=2, workers=1, name="test-pump", timeout=0.2)
    t0 = time.monotonic()
    with pytest.raises(TimeoutError):
        next(p)
    assert time.monotonic() - t0 < 2
    gate.set()
    assert next(p) == 0  # the interrupted wait resumes on the same item
    p.close()


def test_close_discards_unconsumed_results_and_joins():
    discarded = []
    p = Pump(range(50), lambda i: i, depth=4, workers=2, name="test-pump", on_discard=discarded.append)
    assert next(p) == 0
    time.sleep(0.2)
    p.close()
    p.close()  # idempotent
    assert p.closed
    assert sorted(discarded) == [1, 2, 3, 4]
    with pytest.raises(PumpClosedError):
        next(p)


def test_close_while_consumer_waits():
    gate = threading.Event()
    p = Pump(range(3), lambda i: gate.wait(10), depth=2, workers=1, name="test-pump")
    errors = []

    def consume():
        try:
            next(p)
        except PumpClosedError as e:
            errors.append(e)

    t = threading.Thread(target=consume)
    t.start()
    time.sleep(0.1)
    closer = threading.Thread(target=p.close)
    closer.start()
    time.sleep(0.1)
    gate.set()
    closer.join(5)
    t.join(5)
    assert errors and not t.is_alive()


def test_garbage_collection_stops_threads():
    p = Pump(iter(range(10**9)), lambda i: i, depth=2, workers=2, name="test-pump")
    assert next(p) == 0
    del p
    gc.collect()


def test_bad_arguments():
    with pytest.raises(ValueError, match="depth"):
        Pump([], lambda i: i, depth=0, workers=1)
