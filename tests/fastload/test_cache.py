"""fastload.cache: next-use (Belady) eviction against a plain reference, pins, sharing, failures, threads."""

from __future__ import annotations

import random
import threading
import time

import numpy as np
import pytest

from fastload.cache import NEVER, CacheClosedError, ChunkCache, Uses, size_arenas
from fastload.errors import FastloadError


def _ids(keys) -> dict[str, np.ndarray]:
    """``[(array, id), ...]`` -> ``{array: unique int64 ids}`` (the reservation's form)."""
    out: dict[str, list[int]] = {}
    for a, i in dict.fromkeys(keys):
        out.setdefault(a, []).append(i)
    return {a: np.asarray(v, np.int64) for a, v in out.items()}


def _uses(steps, start=0) -> Uses:
    u = Uses()
    for s in range(start, len(steps)):
        u.add(s, _ids(steps[s]))
    return u


def _value(a, i) -> float:
    return float(hash((a, i)) % 100003)


def _fill_all(cache: ChunkCache, res) -> None:
    for a, pos in res.fill.items():
        for p in pos.tolist():
            cache.arena(a)[res.slots[a][p]] = _value(a, int(res.ids[a][p]))
        cache.filled(a, res.slots[a][pos])


def _check(cache: ChunkCache, res) -> bool:
    return all(np.all(cache.arena(a)[res.slots[a][p]] == _value(a, int(i)))
               for a, ids in res.ids.items() for p, i in enumerate(ids.tolist()))


def _run_serial(cache: ChunkCache, steps, start=0):
    for s in range(start, len(steps)):
        res = cache.reserve(s, _ids(steps[s]))
        _fill_all(cache, res)
        assert _check(cache, res)
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
    u = Uses()
    for step in (1, 3, 4, 9):
        u.add(step, {"a": np.array([7])})
    u.add(4, {"a": np.array([2])})
    nxt = lambda: u.next("a", np.array([7, 2, 5])).tolist()  # noqa: E731
    assert nxt() == [1, 4, NEVER]
    u.finish(3, ["a"])  # out of order: 1 is still pending
    assert nxt() == [1, 4, NEVER]
    u.finish(1, ["a"])
    assert nxt() == [4, 4, NEVER]  # 3 was already done
    u.finish(4, ["a"])
    u.finish(9, ["a"])
    assert nxt() == [NEVER, NEVER, NEVER] and len(u) == 0
    assert u.next("other", np.array([7])).tolist() == [NEVER]


@pytest.mark.parametrize("seed", range(6))
def test_eviction_matches_belady_reference(seed):
    rng = random.Random(seed)
    universe = [("x", i) for i in range(25)]
    steps = [rng.sample(universe[: rng.randint(8, 25)], rng.randint(1, 5)) for _ in range(120)]
    capacity = 7
    cache = ChunkCache({"x": (capacity, 4, np.float32)}, _uses(steps))
    _run_serial(cache, steps)
    assert cache.misses == _belady_misses(steps, capacity)
    assert cache.misses <= _lru_misses(steps, capacity)
    assert cache.hits + cache.misses == sum(len(set(s)) for s in steps)


def test_plan_beats_lru_on_a_cyclic_scan():
    keys = [("x", i) for i in range(6)]
    steps = [[k] for k in keys] * 10  # a loop one chunk larger than the cache: LRU misses every time
    cache = ChunkCache({"x": (5, 2, np.float32)}, _uses(steps))
    _run_serial(cache, steps)
    assert _lru_misses(steps, 5) == 60
    assert cache.misses == _belady_misses(steps, 5) < 20


def test_never_needed_again_goes_first_and_resume_start():
    a, b, c = ("x", 0), ("x", 1), ("x", 2)
    steps = [[a], [b], [c], [a]]
    cache = ChunkCache({"x": (2, 1, np.float64)}, _uses(steps))
    _run_serial(cache, steps)
    assert cache.misses == 3  # b (never needed again) was evicted for c, a stayed
    resumed = ChunkCache({"x": (2, 1, np.float64)}, _uses(steps, start=2))
    _run_serial(resumed, steps, start=2)
    assert resumed.misses == 2


def test_reset_keeps_chunks_and_ranks_by_the_new_plan():
    cache = ChunkCache({"x": (2, 1, np.float64)}, _uses([[("x", 0), ("x", 1)]]))
    _run_serial(cache, [[("x", 0), ("x", 1)]])
    assert cache.resident() == {("x", 0), ("x", 1)}
    steps = [[("x", 2)], [("x", 1)]]  # the new plan needs 1 again, never 0: 0 goes
    cache.reset(_uses(steps))
    _run_serial(cache, steps)
    assert cache.resident() == {("x", 1), ("x", 2)} and cache.misses == 3



def test_reset_while_a_step_holds_chunks_is_a_fastload_error_that_says_what_to_do():
    """A new plan under a running step (its pins would be lost) is refused with fastload's own error (a builtin
    RuntimeError before), naming the arrays and steps that hold chunks and how to get out of it; the cache is left
    as it was, and resets once the step has released."""
    from fastload.errors import CacheBusyError, FastloadError

    steps = [[("x", 0), ("y", 1)], [("x", 2)]]
    cache = ChunkCache({"x": (3, 1, np.float32), "y": (2, 1, np.float32)}, _uses(steps))
    r0 = cache.reserve(0, _ids(steps[0]))
    with pytest.raises(CacheBusyError) as e:
        cache.reset(_uses([[("x", 5)]]))
    assert isinstance(e.value, FastloadError) and isinstance(e.value, RuntimeError)  # old `except RuntimeError` holds
    msg = str(e.value)
    assert "'x'" in msg and "'y'" in msg and "2 chunk" in msg and "release" in msg
    assert cache.uses.next("x", np.array([2], np.int64))[0] == 1  # not reset: the running plan is untouched
    _fill_all(cache, r0)
    cache.release(r0)
    cache.reset(_uses([[("x", 5)]]))  # nothing pinned now


def test_a_slot_set_aside_outlives_its_step_and_plan_until_released():
    """A slot a given-up request may still write into (a hung direct read) is set aside from its step: the step
    releases the rest, a new plan starts (reset lets that pin through, and still refuses a step's own pins), the
    slot stays out of use while the new plan evicts around it, and its release frees it without touching the new
    plan's step of the same number."""
    from fastload.errors import CacheBusyError

    steps = [[("x", 0), ("x", 1)]]
    cache = ChunkCache({"x": (3, 1, np.float32)}, _uses(steps))
    r0 = cache.reserve(0, _ids(steps[0]))
    hung = int(r0.slots["x"][1])
    cache.failed("x", hung, OSError("given up"))  # the step gave the read up
    cache.arena("x")[r0.slots["x"][0]] = _value("x", 0)
    cache.filled("x", r0.slots["x"][:1])
    aside = cache.set_aside(r0, "x", hung)
    assert r0.ids["x"].tolist() == [0] and hung not in r0.slots["x"].tolist()
    assert aside.slots["x"].tolist() == [hung] and aside.ids["x"].tolist() == [1]
    cache.release(r0)
    new = [[("x", 5), ("x", 6)], [("x", 7), ("x", 8)]]
    cache.reset(_uses(new))  # before set_aside existed: CacheBusyError while the read hung
    for k, keys in enumerate(new):  # two new chunks per step with 2 usable slots: the hung one is never given out
        r = cache.reserve(k, _ids(keys))
        assert hung not in r.slots["x"].tolist()
        _fill_all(cache, r)
        assert _check(cache, r)
        if k == 1:
            with pytest.raises(CacheBusyError):  # a step's own pins still stop a new plan
                cache.reset(_uses(new))
            cache.release(aside)  # the read returned meanwhile: its slot is free, step 1's pins untouched
            assert cache._holders == {1: 1}
        cache.release(r)
    cache.reset(_uses([[("x", 9), ("x", 10), ("x", 11)]]))
    r = cache.reserve(0, _ids([("x", 9), ("x", 10), ("x", 11)]))  # all three slots usable again
    assert sorted(r.slots["x"].tolist()) == [0, 1, 2]


def test_a_step_kept_out_only_by_set_aside_slots_waits_for_them_at_most_held_timeout():
    """A step that needs every slot of an array cannot be reserved while one is set aside for a hung read: reserve
    waited for ever. With held_timeout it raises ChunkTimeoutError naming the hung read (array, chunk, slot, how
    long) and the setting; without, or while the set-aside slot is not what keeps the step out (it would fit once
    the steps' own pins go), it waits as before and gets its slots."""
    from fastload.errors import ChunkTimeoutError

    steps = [[("x", 0), ("x", 1)], [("x", 2), ("x", 3), ("x", 4)], [("x", 5), ("x", 6)]]
    cache = ChunkCache({"x": (3, 1, np.float32)}, _uses(steps))
    r0 = cache.reserve(0, _ids(steps[0]))
    hung = int(r0.slots["x"][1])
    cache.failed("x", hung, OSError("given up"))
    aside = cache.set_aside(r0, "x", hung, chunk=(0, 1), what="the direct read of x/0.1",
                            since=time.monotonic() - 5)
    _fill_all(cache, r0)
    cache.release(r0)
    with pytest.raises(ChunkTimeoutError) as e:  # 3 chunks, 3 slots, 1 set aside: never, while the read hangs
        cache.reserve(1, _ids(steps[1]), held_timeout=0.2)
    assert e.value.array == "x" and e.value.chunk == (0, 1)
    msg = str(e.value)
    assert "the direct read of x/0.1" in msg and f"slot {hung}" in msg and "set aside" in msg, msg
    assert "loader.read_timeout_s = 0.2" in msg and "hanging for 5" in msg, msg
    assert cache._waiting == []  # noqa: SLF001 - the step no longer waits (a later one is not held behind it)

    # 2 chunks fit beside the set-aside slot once step 0's pins go: a step waits for those as long as it takes
    r0 = cache.reserve(0, _ids(steps[0]))
    _fill_all(cache, r0)
    got: dict = {}
    waiter = threading.Thread(target=lambda: got.setdefault("r", cache.reserve(2, _ids(steps[2]),
                                                                               held_timeout=0.01)))
    waiter.start()
    time.sleep(0.3)  # (no assertion on time: only that it neither raised nor was granted while step 0 held on)
    assert "r" not in got
    cache.release(r0)
    waiter.join(10)
    assert "r" in got and hung not in got["r"].slots["x"].tolist()
    _fill_all(cache, got["r"])
    cache.release(got["r"])

    def later() -> None:  # the read returns: its slot is free, and the step that needs every slot gets it
        time.sleep(0.2)
        cache.release(aside)

    threading.Thread(target=later).start()
    r1 = cache.reserve(1, _ids(steps[1]), held_timeout=30)
    assert sorted(r1.slots["x"].tolist()) == [0, 1, 2]


def test_shared_chunk_filled_once_while_pending():
    k = [("x", 0)]
    cache = ChunkCache({"x": (2, 3, np.float32)}, _uses([k, k]))
    r0 = cache.reserve(0, _ids(k))
    r1 = cache.reserve(1, _ids(k))
    assert r0.fill["x"].tolist() == [0] and not r1.fill and r1.wait["x"].tolist() == [0] and r1.hits == 1
    done = threading.Event()

    def waiter():
        assert cache.wait(r1) == {}
        assert cache.arena("x")[r1.slots["x"][0], 0] == 5.0
        done.set()

    t = threading.Thread(target=waiter)
    t.start()
    time.sleep(0.05)
    assert not done.is_set()
    cache.arena("x")[r0.slots["x"][0]] = 5.0
    cache.filled("x", r0.slots["x"])
    t.join(5)
    assert done.is_set()
    cache.release(r0)
    cache.release(r1)
    assert cache.misses == 1


def test_present_counts_filling_and_ready_chunks_not_absent_ones():
    k = [("x", 0), ("x", 1)]
    cache = ChunkCache({"x": (3, 1, np.float32)}, _uses([k]))
    ids = np.array([0, 1, 2], np.int64)
    assert cache.present("x", ids).tolist() == [False, False, False]
    r = cache.reserve(0, _ids(k))
    assert cache.present("x", ids).tolist() == [True, True, False]  # being filled: a read-ahead must skip them
    assert cache.resident() == set()  # (resident() counts only finished chunks)
    cache.filled("x", r.slots["x"])
    cache.release(r)
    assert cache.present("x", ids).tolist() == [True, True, False]


def test_failed_fill_reaches_waiters_and_is_retried():
    k = [("x", 0)]
    cache = ChunkCache({"x": (1, 1, np.float32)}, _uses([k, k, k]))
    r0 = cache.reserve(0, _ids(k))
    r1 = cache.reserve(1, _ids(k))
    cache.failed("x", int(r0.slots["x"][0]), OSError("disk on fire"))
    bad = cache.wait(r1)
    assert isinstance(bad["x"][0], OSError) and "disk on fire" in str(bad["x"][0])
    cache.release(r0)
    cache.release(r1)
    r2 = cache.reserve(2, _ids(k))
    assert r2.fill["x"].tolist() == [0]  # not cached as failed: fetched again
    cache.filled("x", r2.slots["x"])
    cache.release(r2)
    assert cache.resident() == {("x", 0)}


def test_a_step_that_gives_up_fails_its_waiters_instead_of_hanging():
    k = [("x", 0)]
    cache = ChunkCache({"x": (2, 1, np.float32)}, _uses([k, k]))
    r0 = cache.reserve(0, _ids(k))
    r1 = cache.reserve(1, _ids(k))
    cache.release(r0, step_done=False)  # the filler stopped before filling
    bad = cache.wait(r1, poll=0.01)
    assert isinstance(bad["x"][0], CacheClosedError)
    assert isinstance(bad["x"][0], FastloadError) and isinstance(bad["x"][0], RuntimeError)
    cache.release(r1)
    assert cache.resident() == set()
    r2 = cache.reserve(1, _ids(k))
    assert r2.fill["x"].tolist() == [0]
    cache.release(r2, step_done=False)


def test_reserve_blocks_until_slots_are_released_and_close_wakes():
    ks = [("x", i) for i in range(3)]
    steps = [ks[:2], ks[1:], ks[:1]]
    cache = ChunkCache({"x": (2, 1, np.float32)}, _uses(steps))
    r0 = cache.reserve(0, _ids(steps[0]))
    got = []
    t = threading.Thread(target=lambda: got.append(cache.reserve(1, _ids(steps[1]))))
    t.start()
    time.sleep(0.1)
    assert not got  # both slots pinned by step 0
    _fill_all(cache, r0)
    cache.release(r0)
    t.join(5)
    assert got and got[0].hits == 1
    errors = []

    def blocked():
        try:
            cache.reserve(2, _ids([("x", 7), ("x", 8)]))
        except CacheClosedError as e:
            errors.append(e)

    t2 = threading.Thread(target=blocked)
    t2.start()
    time.sleep(0.05)
    cache.close()
    t2.join(5)
    assert errors


def test_look_ahead_takes_only_free_slots_and_yields_to_waiting_steps():
    steps = [[("x", 0), ("x", 1)], [("x", 2)], [("x", 3)], [("x", 0)]]
    cache = ChunkCache({"x": (3, 1, np.float32)}, _uses(steps))
    r0 = cache.reserve(0, _ids(steps[0]))
    r1 = cache.reserve(1, _ids(steps[1]), block=False)  # a free slot is left: granted
    assert r1 is not None and r1.fill["x"].tolist() == [0]
    _fill_all(cache, r0)
    _fill_all(cache, r1)
    cache.release(r0)
    cache.release(r1)
    # no free slot: a look-ahead never evicts (1 is never needed again, but only a blocking reserve takes it)
    assert cache.reserve(2, _ids(steps[2]), block=False) is None
    r2 = cache.reserve(2, _ids(steps[2]))
    assert r2.fill["x"].tolist() == [0] and cache.evictions == 1
    _fill_all(cache, r2)
    cache.release(r2)
    assert cache.resident() == {("x", 0), ("x", 2), ("x", 3)}
    hold = cache.reserve(3, _ids(steps[3]))  # pins one slot: step 4's three new chunks cannot fit yet
    got: list = []
    waiting = threading.Thread(target=lambda: got.append(cache.reserve(4, _ids([("x", 5), ("x", 6), ("x", 7)]))))
    waiting.start()
    time.sleep(0.05)
    assert not got
    assert cache.reserve(5, _ids([("x", 0)]), block=False) is None  # step 4 waits: later steps do not jump it
    cache.release(hold)
    waiting.join(5)
    assert got and got[0].fill["x"].tolist() == [0, 1, 2]


def test_step_larger_than_arena_is_an_error():
    cache = ChunkCache({"x": (2, 1, np.float32)}, {})
    with pytest.raises(ValueError, match="needs 3 chunks of array 'x'"):
        cache.reserve(0, _ids([("x", i) for i in range(3)]))


def test_threads_never_see_a_slot_overwritten_while_pinned():
    rng = random.Random(1)
    universe = [(a, i) for a in ("u", "v") for i in range(30)]
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
            res = cache.reserve(s, _ids(steps[s]))
            _fill_all(cache, res)
            assert cache.wait(res) == {}
            time.sleep(0.0005)
            if not _check(cache, res):
                failures.append(s)
            cache.release(res)

    threads = [threading.Thread(target=worker) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    assert not failures
    assert cache.hits + cache.misses == sum(len(set(s)) for s in steps)
    assert len(cache.uses) == 0  # every step finished: no uses left


def test_size_arenas():
    n = size_arenas(1000, {"a": 10, "b": 100}, {"a": 2, "b": 3})
    assert n["a"] >= 2 and n["b"] >= 3
    assert n["a"] * 10 + n["b"] * 100 <= 1000
    assert size_arenas(10, {"a": 10, "b": 100}, {"a": 2, "b": 3}) == {"a": 2, "b": 3}
