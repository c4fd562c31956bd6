"""Rollout data compiles its gather kernels on a warm-up thread that is no daemon (review s13 g1 item 1).

The rollout loader's pump workers are daemon threads; on a cold Numba cache they compiled ``_gather_rows`` and
``_index_sample`` themselves (``fastload-rollout-worker-0``), and a compile still running on a daemon thread at the
process's exit aborts it. As the Loader's reader does (:func:`fastload.reader.start_kernel_warmup`), the rollout
loader now compiles them on a thread of its own and its workers wait for it, honouring a stop.
"""

from __future__ import annotations

import threading

import numpy as np
import pytest

from fastload.config import FieldConfig, LoaderConfig, SamplingConfig
from fastload.extract import extract
from fastload.loader import _doing
from fastload.rollout_data import RolloutConfig, RolloutLoader
from tests.fastload.stores import make_per_variable
from tests.fastload.test_loader_cold_jit import run_cold

_SCRIPT = """
import json, sys, threading, time
from numba.core import event

compiles = []


class Record(event.Listener):  # which thread compiles each Numba function
    def on_start(self, ev):
        t = threading.current_thread()
        compiles.append([t.name, t.daemon, ev.data["dispatcher"].py_func.__name__])

    def on_end(self, ev):
        pass


event.register("numba:compile", Record())
from fastload.config import FieldConfig, LoaderConfig, SamplingConfig
from fastload.rollout_data import RolloutConfig, RolloutLoader
from tests.fastload.stores import make_per_variable

make_per_variable(sys.argv[1], nt=12, ny=9, nx=16, missing_chunk=False, static=False)
kw = dict(num_tokens=(2, 2, 2), token_size=(1, 2, 3), normalization="none")
s = SamplingConfig(fields=(FieldConfig(name="t", levels=(500.0, 850.0), **kw), FieldConfig(name="sp", **kw)),
                   batch_size=1)
warm = getattr(RolloutLoader, "_warm_kernels", None)
if warm is not None:
    def late_warm(self):  # the warm-up starts late (a loaded machine): the workers reach their gathers first
        time.sleep(1.0)
        warm(self)

    RolloutLoader._warm_kernels = late_warm
with RolloutLoader(sys.argv[1], s, RolloutConfig(steps=2, batch_size=2), LoaderConfig(workers=2, prefetch=2,
                                                                                      seed=5)) as data:
    batches = list(data)
print(json.dumps({"batches": len(batches), "compiles": compiles}), flush=True)
"""


@pytest.mark.slow
def test_rollout_gather_kernels_compile_on_the_warm_up_thread_only(tmp_path):
    _, out = run_cold(tmp_path, _SCRIPT)
    assert out["batches"] > 0
    compiled = {tuple(c) for c in out["compiles"]}
    assert {f for _, _, f in compiled} >= {"_gather_rows", "_index_sample"}, compiled  # they did compile
    daemons = sorted({(name, f) for name, daemon, f in compiled if daemon})
    assert daemons == [], f"compiled on daemon threads: {daemons}"  # (before: fastload-rollout-worker-0)
    assert {(name, daemon) for name, daemon, _ in compiled} == {("fastload-rollout_warm", False)}, compiled


def test_rollout_workers_wait_for_the_warm_up_and_stop_with_the_iteration(tmp_path, monkeypatch):
    """While the warm-up runs, no worker reads a batch (they wait for it); a close stops them without it; the
    batches after it are the store's (``extract``)."""
    path = tmp_path / "s.zarr"
    make_per_variable(path, nt=12, ny=9, nx=16, missing_chunk=False, static=False)
    kw = dict(num_tokens=(2, 2, 2), token_size=(1, 2, 3), normalization="none")
    s = SamplingConfig(fields=(FieldConfig(name="t", levels=(500.0, 850.0), **kw), FieldConfig(name="sp", **kw)),
                       batch_size=1)
    entered, release, loading = threading.Event(), threading.Event(), threading.Event()

    def blocked_warm(self):
        entered.set()
        release.wait(60)

    load = RolloutLoader.load_batch

    def counted_load(self, epoch, index):
        loading.set()
        return load(self, epoch, index)

    monkeypatch.setattr(RolloutLoader, "_warm_kernels", blocked_warm, raising=False)
    monkeypatch.setattr(RolloutLoader, "load_batch", counted_load)
    cfg = LoaderConfig(workers=2, prefetch=2, seed=5, device="cpu")
    data = RolloutLoader(path, s, RolloutConfig(steps=1, batch_size=2), cfg)
    try:
        it = iter(data)
        assert entered.wait(30)
        workers = [t for t in it._pump.threads if "worker" in t.name]
        waiting = []
        for _ in range(1000):  # (until both workers are inside the wait; bounded)
            waiting = [_doing(t) for t in workers if "waiting for the gather kernels' compile" in _doing(t)]
            if len(waiting) == len(workers):
                break
            threading.Event().wait(0.01)
        assert len(waiting) == len(workers), [_doing(t) for t in workers]
        assert not loading.is_set()  # nothing read while the kernels compile
        data.close()
        for t in workers:
            t.join(10)
        assert not any(t.is_alive() for t in workers), [_doing(t) for t in workers]  # they honoured the stop
        assert not loading.is_set()
    finally:
        release.set()
    data._warm.join(10)
    assert not data._warm.daemon and not data._warm.is_alive()
    monkeypatch.undo()
    with RolloutLoader(path, s, RolloutConfig(steps=1, batch_size=2), cfg) as data:
        batch = next(iter(data))
        assert data._warm is not None and not data._warm.daemon
    boxes = batch.boxes.numpy()
    want = extract(path, s, boxes.reshape(-1, 3), mask_copies=False)
    got = batch["t"].numpy() if hasattr(batch, "__getitem__") else batch.fields["t"].numpy()
    assert np.array_equal(got.reshape(want["t"].data.shape), want["t"].data, equal_nan=True)
