"""The StepTimer's NVTX ranges stay balanced when recording an event raises or a step raises."""

from __future__ import annotations

import pytest

from profiling.timers import StepTimer


class FailingClock:
    """Host-like events; ``record`` raises (as a CUDA error would) while ``fail`` is set."""

    cuda = True

    def __init__(self):
        self.fail = False
        self.t = 0.0

    def new(self):
        return [0.0]

    def record(self, ev):
        if self.fail:
            raise RuntimeError("CUDA error: an illegal memory access was encountered (test)")
        self.t += 1.0
        ev[0] = self.t

    def done(self, ev):
        return True

    def wait(self, ev):
        return None

    def elapsed_ms(self, a, b):
        return b[0] - a[0]


def _balanced(calls):
    pushes = sum(c[0] == "push" for c in calls)
    pops = sum(c[0] == "pop" for c in calls)
    started = {c[4] for c in calls if c[0] == "start"}
    ended = {c[1] for c in calls if c[0] == "end"}
    return pushes == pops and started == ended


def test_a_failed_phase_start_pops_its_range_and_leaves_no_phase_open(nvtx_domain):
    clock = FailingClock()
    timer = StepTimer(device="cuda", warmup=0, clock=clock, nvtx=True)
    with timer.phase("data_wait"):
        pass
    clock.fail = True
    with pytest.raises(RuntimeError, match="illegal memory access"):
        with timer.phase("forward"):
            pass
    assert [c[0] for c in nvtx_domain.calls].count("push") == [c[0] for c in nvtx_domain.calls].count("pop") == 2
    clock.fail = False
    with timer.phase("forward"):  # no phase left open: the timer goes on
        pass
    timer.step_end(samples=1)
    assert _balanced(nvtx_domain.calls)
    assert timer.flush()[0]["forward_ms"] == 1.0


def test_a_step_that_raises_has_its_ranges_ended_by_close(nvtx_domain):
    clock = FailingClock()
    timer = StepTimer(device="cuda", warmup=0, clock=clock, nvtx=True)
    with pytest.raises(ValueError):
        with timer.phase("data_wait"):
            pass
        with timer.phase("forward"):
            raise ValueError("the model raised")
    clock.fail = True
    with pytest.raises(RuntimeError):
        with timer.phase("backward"):
            pass
    assert not _balanced(nvtx_domain.calls)  # the step's start/end range is still open
    timer.close()
    timer.close()  # twice is fine
    assert _balanced(nvtx_domain.calls)
    assert sum(c[0] == "start" for c in nvtx_domain.calls) == 1
