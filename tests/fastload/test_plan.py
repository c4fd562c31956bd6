"""fastload.plan: batches, steps, chunk keys (against a brute-force reference), splitting, lazy horizon."""

from __future__ import annotations

import itertools

import numpy as np
import pytest

from fastload.errors import ConfigError
from fastload.plan import EpochPlan, split_batches
from fastload.sampling.chunks import FieldLayout, plan_batch
from fastload.sampling.geometry import random_boxes

BOX = (4, 6, 8)


def _layouts(periodic=True):
    # two per-variable fields (t, level, y, x) and an AtmoRep-like (t, field, level, y, x) array holding two more
    common = dict(periodic_x=periodic)
    return {
        "a": FieldLayout(name="a", array="a", shape=(20, 3, 16, 24), chunks=(3, 2, 5, 7), axes=(0, None, 1, 2, 3),
                         lev_idx=np.array([0, 2]), **common),
        "b": FieldLayout(name="b", array="b", shape=(20, 16, 24), chunks=(4, 16, 24), axes=(0, None, None, 1, 2),
                         **common),
        "c": FieldLayout(name="c", array="data", shape=(20, 2, 3, 16, 24), chunks=(2, 2, 3, 8, 8),
                         axes=(0, 1, 2, 3, 4), field_index=0, lev_idx=np.array([1]), **common),
        "d": FieldLayout(name="d", array="data", shape=(20, 2, 3, 16, 24), chunks=(2, 2, 3, 8, 8),
                         axes=(0, 1, 2, 3, 4), field_index=1, lev_idx=np.array([0, 1]), **common),
    }


def _reference_keys(boxes, layouts, box, time_step):
    """Every (array, chunk) any box touches, by enumerating the points' chunk coordinates."""
    keys = set()
    T, H, W = box
    for t0, y0, x0 in np.asarray(boxes).tolist():
        for lay in layouts.values():
            ta, fa, la, ya, xa = lay.axes
            per_axis = []
            for ax in range(len(lay.shape)):
                if ax == ta:
                    pts = [t0 + k * time_step for k in range(T)]
                elif ax == fa:
                    pts = [lay.field_index]
                elif ax == la:
                    pts = lay.lev_idx.tolist()
                elif ax == ya:
                    pts = range(y0, y0 + H)
                else:
                    pts = [(x0 + k) % lay.shape[xa] for k in range(W)]
                per_axis.append(sorted({p // lay.chunks[ax] for p in pts}))
            keys.update((lay.array, c) for c in itertools.product(*per_axis))
    return keys


def _grids(lays):
    return {lay.array: lay.grid_shape for lay in lays.values()}


def _grid_of(lays, array):
    lay = next(v for v in lays.values() if v.array == array)
    return lay.shape, lay.chunks


def _planner(lays, time_step=1):
    return lambda boxes: plan_batch(boxes, lays, BOX, time_step)


def _boxes(n, seed=0, periodic=True, time_step=1):
    lay = _layouts(periodic)["a"]
    return random_boxes(n, lay.extent, BOX, seed=seed, epoch=0, time_step=time_step)


def test_split_batches():
    assert split_batches(np.zeros((10, 3)), 4, True) == [(0, 4), (4, 8)]
    assert split_batches(np.zeros((10, 3)), 4, False) == [(0, 4), (4, 8), (8, 10)]
    assert split_batches(np.zeros((3, 3)), 4, True) == []


@pytest.mark.parametrize("periodic,time_step", [(True, 1), (False, 1), (True, 3)])
def test_steps_cover_batches_with_the_reference_chunks(periodic, time_step):
    lays = _layouts(periodic)
    boxes = _boxes(23, periodic=periodic, time_step=time_step)
    plan = EpochPlan(boxes, _planner(lays, time_step), batch_size=5, drop_last=False, horizon=100,
                     grids=_grids(lays))
    assert len(plan) == 5
    for b in range(len(plan)):
        (step,) = plan.steps(b)
        assert (step.start, step.stop) == (0, plan.batches[b][1] - plan.batches[b][0])
        assert step.index == b * 5
        assert len(set(step.keys)) == len(step.keys)
        assert set(step.keys) == _reference_keys(plan.batch_boxes(b), lays, BOX, time_step)
    first: dict = {}
    for b in range(len(plan)):
        (step,) = plan.steps(b)
        for a, idx in step.plan.chunks.items():  # ids: C-order linear indices, ascending like the rows
            grid = tuple(-(-s // c) for s, c in zip(_grid_of(lays, a)[0], _grid_of(lays, a)[1]))
            assert step.ids[a].tolist() == [int(np.ravel_multi_index(tuple(c), grid)) for c in idx.tolist()]
            for i in step.ids[a].tolist():
                first.setdefault((a, i), step.index)
    for a, (ids, _) in plan.uses.pairs().items():
        assert len(ids) == sum(len(plan.steps(b)[0].ids.get(a, ())) for b in range(len(plan)))
        got = plan.uses.next(a, np.unique(ids))
        assert got.tolist() == [first[(a, i)] for i in np.unique(ids).tolist()]


def test_batches_split_into_steps_that_fit_capacity():
    lays = _layouts()
    boxes = _boxes(16, seed=3)
    full = EpochPlan(boxes, _planner(lays), batch_size=8)
    cap = {"a": 40, "b": 100, "data": 30}
    plan = EpochPlan(boxes, _planner(lays), batch_size=8, capacity=cap)
    for b in range(2):
        steps = plan.steps(b)
        assert len(steps) > 1
        assert steps[0].start == 0 and steps[-1].stop == 8
        assert all(s.stop == t.start for s, t in zip(steps, steps[1:]))
        assert [s.index for s in steps] == list(range(b * 8, b * 8 + len(steps)))
        union = set()
        for s in steps:
            for array, idx in s.plan.chunks.items():
                assert idx.shape[0] <= cap[array]
            assert set(s.keys) == _reference_keys(plan.batch_boxes(b)[s.start:s.stop], lays, BOX, 1)
            union |= set(s.keys)
        assert union == set(full.steps(b)[0].keys)


@pytest.mark.parametrize("cap", [{"a": 80, "b": 100, "data": 40}, {"a": 100, "b": 8, "data": 30}, {"a": 120, "data": 50}])
def test_runs_are_the_greedy_cut_at_half_the_capacity(cap):
    # reference: each sample's chunk set from the brute-force keys; a run takes samples while the chunks of the
    # run stay within half the capacity of every array (any number of chunks of an array without a capacity)
    lays = _layouts()
    boxes = _boxes(24, seed=7)
    plan = EpochPlan(boxes, _planner(lays), batch_size=12, capacity=cap)
    for b in range(len(plan)):
        sets = [_reference_keys(box[None], lays, BOX, 1) for box in plan.batch_boxes(b)]
        runs, start, run = [], 0, set()
        for i, keys in enumerate(sets):
            both = run | keys
            if i > start and any(sum(1 for a, _ in both if a == arr) > max(1, c // 2) for arr, c in cap.items()):
                runs.append((start, i))
                start, both = i, set(keys)
            run = both
        runs.append((start, len(sets)))
        whole = set().union(*sets)  # a batch whose chunks fit the capacity is one step
        split = any(sum(1 for a, _ in whole if a == arr) > c for arr, c in cap.items())
        steps = plan.steps(b)
        assert [(s.start, s.stop) for s in steps] == (runs if split else [(0, 12)])
        for s in steps:
            assert set(s.keys) == set().union(*sets[s.start:s.stop])


def test_one_sample_over_capacity_names_the_setting():
    plan = EpochPlan(_boxes(4), _planner(_layouts()), batch_size=2, capacity={"a": 1})
    with pytest.raises(ConfigError, match="cache_bytes"):
        plan.steps(0)


def test_planning_is_lazy_and_resumable():
    timings = []
    plan = EpochPlan(_boxes(40), _planner(_layouts()), batch_size=4, horizon=2, start_batch=3,
                     on_plan=lambda b, s: timings.append(b))
    assert timings == []
    plan.steps(3)
    assert timings == [3, 4, 5]
    plan.steps(4)
    assert timings == [3, 4, 5, 6]
    assert min(int(st.min()) for _, st in plan.uses.pairs().values()) >= 3 * 4
    with pytest.raises(IndexError):
        plan.steps(2)
    plan.forget(3)
    with pytest.raises(KeyError):
        plan.steps(3)


def test_strided_plan_reads_only_its_batches():
    plan = EpochPlan(_boxes(40), _planner(_layouts()), batch_size=4, horizon=1, start_batch=1, batch_stride=3)
    plan.steps(4)
    assert sorted(plan._steps) == [1, 4, 7]
    with pytest.raises(IndexError):
        plan.steps(5)
    assert all(s // 4 in (1, 4, 7) for _, st in plan.uses.pairs().values() for s in st.tolist())


def test_use_lists_stay_bounded_over_a_long_epoch():
    from fastload.cache import ChunkCache

    lays = _layouts()
    plan = EpochPlan(_boxes(400), _planner(lays), batch_size=4, horizon=3)
    cache = ChunkCache({"a": (200, 84, np.float32), "b": (60, 1536, np.float32), "data": (200, 384, np.float32)},
                       plan.uses)
    sizes = []
    for b in range(len(plan)):
        for st in plan.steps(b):
            res = cache.reserve(st.index, st.ids)
            for a, pos in res.fill.items():
                cache.filled(a, res.slots[a][pos])
            cache.release(res)
        plan.forget(b)
        sizes.append(len(plan.uses))
    assert max(sizes[50:]) <= 2 * max(sizes[:10])  # bounded by the horizon, not growing with the epoch
    assert sizes[-1] == 0 and not plan._steps


@pytest.mark.parametrize("layout", ["grid", "points"])
def test_a_field_layout_for_a_left_out_array_says_why(layout):
    """Asking the sampling layer directly for an array the store left out as not a field names the reason the store
    gave, not only 'not in the store'; an unknown name says there is no such field."""
    from types import SimpleNamespace

    from fastload.sampling.points import PointLayout

    cls = FieldLayout if layout == "grid" else PointLayout
    store = SimpleNamespace(path="/data/s.zarr", fields={"t": None}, arrays={},
                            not_fields={"gw": "dims ('lat',); a field has dims (time, [level], lat, lon)"})
    with pytest.raises(ConfigError, match=r"^array 'gw' of the store '/data/s.zarr' is not a field: dims \('lat',\); "
                                          r"a field .*; fields: \['t'\]$"):
        cls.from_store(store, "gw")
    with pytest.raises(ConfigError, match=r"^field 'q' is not in the store '/data/s.zarr'; fields: \['t'\]$"):
        cls.from_store(store, "q")
