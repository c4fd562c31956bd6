"""The reader benchmark's steady rate (``benches/bench_reader.py``) and what the machine gave a measurement
(``profiling.roofs.cpu_share``).

A Loader writes batch ``j`` into ring buffer ``j % (prefetch + 2)``; the first write of each buffer is a first touch
of fresh memory, whose cost the machine sets (RESULTS 16.1: 50 ms or 230-540 ms of system time for 608 MB on the
benchmark VM). The steady window must start once every buffer has been written once.
"""

from __future__ import annotations

import numpy as np
import pytest

from benches.bench_reader import loader_pass, steady_window
from fastload.store import open_store
from profiling.bench_scenarios import draw_batches
from profiling.roofs import cpu_share
from tests.fastload.loader_ref import build

pytestmark = pytest.mark.usefixtures("nothing_left")


class _Clock:
    """A fake clock for loader_pass: call 0 is the pass's start, call k (1..n) the arrival of batch k - 1, then the
    end. Start-up takes 5 s, a batch that writes a ring buffer for the first time 2 s, any other batch 0.5 s."""

    def __init__(self, ring: int):
        self.ring, self.calls, self.now = ring, 0, 0.0

    def __call__(self) -> float:
        k = self.calls
        self.calls += 1
        if k == 1:
            self.now += 5.0
        elif k >= 2:
            self.now += 2.0 if k - 1 < self.ring else 0.5
        return self.now


@pytest.mark.parametrize("prefetch", [1, 2])
def test_steady_rate_leaves_out_the_first_fill_of_each_ring_buffer(tmp_path, prefetch):
    _, cfg = build("per_variable", tmp_path / "s.zarr", batch_size=4)
    boxes = draw_batches(open_store(tmp_path / "s.zarr"), cfg, batches=8, batch_size=4, seed=3, epoch=0,
                         plan="random")
    ring = prefetch + 2
    p = loader_pass(str(tmp_path / "s.zarr"), cfg, np.concatenate(boxes), clock=_Clock(ring), prefetch=prefetch)
    assert p.stats.samples == 32
    # from the arrival of batch ring - 1 (every buffer written once) to batch 7: 0.5 s per batch of 4 samples
    assert steady_window(8, ring) == ring - 1
    assert p.per_sample == pytest.approx(0.5 / 4)
    assert p.seconds == pytest.approx(5.0 + 2.0 * (ring - 1) + 0.5 * (8 - ring) + 0.5)


def test_steady_window_with_few_batches():
    assert steady_window(12, 4) == 3
    assert steady_window(3, 4) == 1  # the last but one
    assert steady_window(1, 4) == 0


def test_cpu_share_against_hand_counts():
    before = (10.0, 1.0, 0.5, (100.0, 2.0))
    after = (10.5, 1.4, 0.6, (100.9, 2.1))  # 0.5 s: we used 0.4 + 0.1 s, the machine was busy 0.9 s, 0.1 s stolen
    s = cpu_share(before, after)
    assert s["ours_cores"] == pytest.approx(1.0)
    assert s["sys_cores"] == pytest.approx(0.2)
    assert s["others_cores"] == pytest.approx(0.8)
    assert s["steal_cores"] == pytest.approx(0.2)
    short = cpu_share(before, (10.05, 1.04, 0.51, (100.2, 2.0)))  # under min_wall: ticks too coarse to tell
    assert short["others_cores"] is None and short["ours_cores"] == pytest.approx(1.0)
    assert cpu_share(before[:3] + (None,), after)["others_cores"] is None  # no /proc/stat
