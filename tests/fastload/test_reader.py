"""fastload.reader: decode slots served earliest step first; a failing step with a look-ahead step in flight;
cache sizing from the field layouts."""

from __future__ import annotations

import threading
import time

import numpy as np
import pytest

from fastload.errors import ChunkReadError
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
