"""fastload and the peer loaders on the same store and samples: samples/s, time to first batch, memory, CPU.

Why this exists: this is ``fastload bench`` as a pytest-benchmark grid, so the comparison runs with the rest of the
suite (and as a smoke test in CI). Each case first checks the loader's first batch against
``fastload.extract`` bit for bit, then times whole passes (construction to last batch) through the harness's
:func:`profiling.bench_run.time_pass`. Stores: AtmoRep's layout (8 h x all fields x all levels x the globe per
chunk) with AtmoRep's plan (one time window per batch), and the writer's tile chunks with independent samples.
Ratios and roofs side by side come from the CLI (``fastload bench``), which interleaves the loaders in one run.

    pytest benches/bench_peers.py --quick
"""

from __future__ import annotations

import numpy as np
import pytest

from profiling.bench import first_batch, loader_factory
from profiling.bench_fastload import DEFAULT_ROWS, fastload_status
from profiling.bench_run import compare_outputs, summarise, time_pass
from profiling.bench_scenarios import draw_batches
from profiling.peers import PEERS, peer_status, spec_from_store

LOADERS = (*DEFAULT_ROWS, *PEERS)
STORES = {"tiles": ("per-variable", "random"), "atmorep": ("atmorep", "window")}


@pytest.fixture(scope="module")
def setups(synth_store, bench_config, bench_quick):
    """Per store kind: (path, config, spec, verification plan, timed plan, reference first batch)."""
    from fastload.extract import extract
    from fastload.store import open_store

    out = {}
    for kind, (layout, plan) in STORES.items():
        path = synth_store(layout=layout)
        store = open_store(path)
        config = bench_config(path)
        bs = config.batch_size
        spw = bs if plan == "window" else 1
        verify = draw_batches(store, config, batches=1, batch_size=bs, seed=0, epoch=0, plan=plan)
        timed = draw_batches(store, config, batches=3 if bench_quick else 12, batch_size=bs, seed=0, epoch=1,
                             plan=plan)  # fmt: skip
        ref = {k: np.asarray(v.data) for k, v in extract(store, config, verify[0]).items()}
        metas = ({"seed": 0, "epoch": 0, "samples_per_window": spw}, {"seed": 0, "epoch": 1, "samples_per_window": spw})
        out[kind] = (path, config, spec_from_store(store, config), verify, timed, ref, metas)
    return out


@pytest.mark.parametrize("kind", list(STORES))
@pytest.mark.parametrize("loader", LOADERS)
def test_loader(benchmark, report, setups, bench_quick, kind, loader):
    reason = {**fastload_status(), **peer_status()}[loader]
    if reason is not None:
        pytest.skip(f"{loader}: {reason}")
    path, config, spec, verify, timed, ref, metas = setups[kind]
    workers = 2
    first = first_batch(loader_factory(loader, path, spec, config, workers, 0.0, metas[0]), verify)
    problem = compare_outputs(first, ref)
    assert problem is None, f"{loader} differs from fastload.extract: {problem}"
    make = loader_factory(loader, path, spec, config, workers, 0.0, metas[1])
    passes = []

    def one_pass():
        passes.append(time_pass(make, timed))

    benchmark.pedantic(one_pass, rounds=1 if bench_quick else 3, iterations=1)
    row = summarise(passes, sample_nbytes=spec.sample_nbytes(), decoded_bytes=None, stored_bytes=None)
    report(benchmark, loader=loader, store=kind, samples_per_s=row["samples_per_s"],
           useful_gbps=row["useful_gbps"], ttfb_s=row["ttfb_s"], peak_mem_mb=row["peak_mem_mb"],
           cpu_s_per_sample=row["cpu_s_per_sample"])  # fmt: skip
    assert row["samples_per_s"] > 0
