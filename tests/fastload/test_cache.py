"""fastload.cache: next-use (Belady) eviction against a plain reference, pins, sharing, failures, threads."""

from __future__ import annotations

import random
import threading
import time

import numpy as np
import pytest

from fastload.cache import NEVER, CacheClosedError, ChunkCache, NextUse, size_arenas


def _uses(steps):
    out: dict = {}
    for s, keys in enumerate(steps):
        for k in dict.fromkeys(keys):
            out.setdefault(k, []).append(s)
    return {k: np.asarray(v, dtype=np.int64) for k, v in out.items()}


def _value(key) -> float:
    return float(hash(key) % 100003)


def _run_serial(cache: ChunkCache, steps, start=0):
    for s in range(start, len(steps)):
        res = cache.reserve(s, steps[s])
        for k in res.to_fill:
            cache.arena(k[0])[res.slots[k]] = _value(k)
            cache.filled(k)
        for k in steps[s]:
            assert cache.arena(k[0])[res.slots[k], 0] == _value(k)
        cache.release(res)


def _belady_misses(steps, capacity) -> int:
    """Reference: plain furthest-next-use eviction over sets of requests, written independently."""
    resident: set = set()
    misses = 0
    for s, keys in enumerate(steps):
        keys = list(dict.fromkeys(keys))
        for k in keys:
            if k in resident:
                continue
            misses += 1
            if len(resident) >= capacity:
                def nxt(c, s=s):
                    for t in range(s + 1, len(steps)):
                        if c in steps[t]:
                            return t
                    return 10**18
                victim = max((c for c in resident if c not in keys), key=nxt)
                resident.remove(victim)
            resident.add(k)
    return misses


def _lru_misses(steps, capacity) -> int:
    order: list = []
    misses = 0
    for keys in steps:
        keys = list(dict.fromkeys(keys))
        for k in keys:
            if k in order:
                order.remove(k)
            else:
                misses += 1
                if len(order) >= capacity:
                    victim = next(c for c in order if c not in keys)
                    order.remove(victim)
            order.append(k)
    return misses


def test_next_use_in_and_out_of_order():
    nu = NextUse({"a": np.array([1, 3, 4, 9])})
    assert nu.next("a") == 1
    nu.finish("a", 3)  # out of order: 1 is still pending
    assert nu.next("a") == 1
    nu.finish("a", 1)
    assert nu.next("a") == 4  # 3 was already done
    nu.finish("a", 4)
    nu.finish("a", 9)
    assert nu.next("a") == NEVER
    assert nu.next("other") == NEVER
    assert NextUse({"a": np.array([1, 3, 4, 9])}, start=4).next("a") == 4


@pytest.mark.parametrize("seed", range(6))
def test_eviction_matches_belady_reference(seed):
    rng = random.Random(seed)
    universe = [("x", (i,)) for i in range(25)]
    steps = [rng.sample(universe[: rng.randint(8, 25)], rng.randint(1, 5)) for _ in range(120)]
    capacity = 7
    cache = ChunkCache({"x": (capacity, 4, np.float32)}, _uses(steps))
    _run_serial(cache, steps)
    assert cache.misses == _belady_misses(steps, capacity)
    assert cache.misses <= _lru_misses(steps, capacity)
    assert cache.hits + cache.misses == sum(len(set(s)) for s in steps)


def test_plan_beats_lru_on_a_cyclic_scan():
    keys = [("x", (i,)) for i in range(6)]
    steps = [[k] for k in keys] * 10  # a loop one chunk larger than the cache: LRU misses every time
    cache = ChunkCache({"x": (5, 2, np.float32)}, _uses(steps))
    _run_serial(cache, steps)
    assert _lru_misses(steps, 5) == 60
    assert cache.misses == _belady_misses(steps, 5) < 20


def test_never_needed_again_goes_first_and_resume_start():
    a, b, c = ("x", (0,)), ("x", (1,)), ("x", (2,))
    steps = [[a], [b], [c], [a]]
    cache = ChunkCache({"x": (2, 1, np.float64)}, _uses(steps))
    _run_serial(cache, steps)
    assert cache.misses == 3  # b (never needed again) was evicted for c, a stayed
    resumed = ChunkCache({"x": (2, 1, np.float64)}, _uses(steps), start_step=2)
    _run_serial(resumed, steps, start=2)
    assert resumed.misses == 2


def test_shared_chunk_filled_once_while_pending():
    k = ("x", (0,))
    steps = [[k], [k]]
    cache = ChunkCache({"x": (2, 3, np.float32)}, _uses(steps))
    r0 = cache.reserve(0, steps[0])
    r1 = cache.reserve(1, steps[1])
    assert r0.to_fill == [k] and r1.to_fill == [] and r1.to_wait == [k] and r1.hits == 1
    done = threading.Event()

    def waiter():
        cache.wait(r1, k)
        assert cache.arena("x")[r1.slots[k], 0] == 5.0
        done.set()

    t = threading.Thread(target=waiter)
    t.start()
    time.sleep(0.05)
    assert not done.is_set()
    cache.arena("x")[r0.slots[k]] = 5.0
    cache.filled(k)
    t.join(5)
    assert done.is_set()
    cache.release(r0)
    cache.release(r1)
    assert cache.misses == 1


def test_failed_fill_reaches_waiters_and_is_retried():
    k = ("x", (0,))
    steps = [[k], [k], [k]]
    cache = ChunkCache({"x": (1, 1, np.float32)}, _uses(steps))
    r0 = cache.reserve(0, steps[0])
    r1 = cache.reserve(1, steps[1])
    cache.filled(k, OSError("disk on fire"))
    with pytest.raises(OSError, match="disk on fire"):
        cache.wait(r1, k)
    cache.release(r0)
    cache.release(r1)
    r2 = cache.reserve(2, steps[2])
    assert r2.to_fill == [k]  # not cached as failed: fetched again
    cache.filled(k)
    cache.release(r2)


def test_reserve_blocks_until_slots_are_released_and_close_wakes():
    ks = [("x", (i,)) for i in range(3)]
    steps = [ks[:2], ks[1:], ks[:1]]
    cache = ChunkCache({"x": (2, 1, np.float32)}, _uses(steps))
    r0 = cache.reserve(0, steps[0])
    got = []
    t = threading.Thread(target=lambda: got.append(cache.reserve(1, steps[1])))
    t.start()
    time.sleep(0.1)
    assert not got  # both slots pinned by step 0
    for k in r0.to_fill:
        cache.filled(k)
    cache.release(r0)
    t.join(5)
    assert got and got[0].hits == 1
    errors = []

    def blocked():
        try:
            cache.reserve(2, [("x", (7,)), ("x", (8,))])
        except CacheClosedError as e:
            errors.append(e)

    t2 = threading.Thread(target=blocked)
    t2.start()
    time.sleep(0.05)
    cache.close()
    t2.join(5)
    assert errors


def test_step_larger_than_arena_is_an_error():
    cache = ChunkCache({"x": (2, 1, np.float32)}, {})
    with pytest.raises(ValueError, match="needs 3 chunks of array 'x'"):
        cache.reserve(0, [("x", (i,)) for i in range(3)])


def test_threads_never_see_a_slot_overwritten_while_pinned():
    rng = random.Random(1)
    universe = [(a, (i,)) for a in ("u", "v") for i in range(30)]
    steps = [rng.sample(universe, rng.randint(2, 8)) for _ in range(300)]
    cache = ChunkCache({"u": (12, 16, np.float64), "v": (9, 16, np.float64)}, _uses(steps))
    failures = []
    next_step = iter(range(len(steps)))
    lock = threading.Lock()

    def worker():
        while True:
            with lock:
                s = next(next_step, None)
            if s is None:
                return
            res = cache.reserve(s, steps[s])
            for k in res.to_fill:
                cache.arena(k[0])[res.slots[k]] = _value(k)
                cache.filled(k)
            for k in res.to_wait:
                cache.wait(res, k)
            time.sleep(0.0005)
            for k in steps[s]:
                if not np.all(cache.arena(k[0])[res.slots[k]] == _value(k)):
                    failures.append((s, k))
            cache.release(res)

    threads = [threading.Thread(target=worker) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    assert not failures
    assert cache.hits + cache.misses == sum(len(set(s)) for s in steps)


def test_size_arenas():
    n = size_arenas(1000, {"a": 10, "b": 100}, {"a": 2, "b": 3})
    assert n["a"] >= 2 and n["b"] >= 3
    assert n["a"] * 10 + n["b"] * 100 <= 1000
    assert size_arenas(10, {"a": 10, "b": 100}, {"a": 2, "b": 3}) == {"a": 2, "b": 3}
