"""Shared set-up of the benchmark suite: quick/full switch, ``bench_*.py`` collection, synthetic stores, configs.

Run::

    pytest benches                          # full mode (minutes to tens of minutes on 2 cores)
    pytest benches --quick                  # quick mode: tiny stores, few samples (a few minutes on 2 cores)
    FASTLOAD_BENCH=quick pytest benches     # the same through the environment
    pytest benches --benchmark-disable      # CI smoke run: every benchmark body once, quick mode

Quick mode is on with ``--quick``, ``FASTLOAD_BENCH=quick``, ``--benchmark-disable`` or a ``CI`` environment
variable; ``--full`` or ``FASTLOAD_BENCH=full`` forces full mode. Benchmark files are named ``bench_*.py``; they
are collected here even though the project's ``python_files`` names only ``test_*.py``.

Fixtures: ``bench_quick`` (bool), ``synth_store(**kw)`` (a synthetic store written once per session per set of
arguments: ``layout``, ``zarr_format``, ``codec``, ``chunks``, ``shards``, ``preset``), ``bench_config(store)``
(AtmoRep's geometry fitted to the store, raw values; smaller in quick mode) and ``report(benchmark, **figures)``
(puts throughput figures into the saved benchmark JSON and prints them).
"""

from __future__ import annotations

import fnmatch
import os
from typing import Any

import pytest

os.environ.setdefault("NUMBA_CACHE_DIR", os.path.join(os.path.dirname(os.path.dirname(__file__)), ".numba-cache"))


def pytest_addoption(parser: pytest.Parser) -> None:
    group = parser.getgroup("fastload benches")
    group.addoption("--quick", action="store_true", default=False, help="quick benchmark mode (tiny stores)")
    group.addoption("--full", action="store_true", default=False, help="full benchmark mode (overrides CI default)")


def pytest_collect_file(file_path, parent):
    """Collect ``bench_*.py`` under benches/ unless pytest already does (``python_files``, or named on the
    command line)."""
    if file_path.suffix != ".py" or not file_path.name.startswith("bench_"):
        return None
    if parent.session.isinitpath(file_path):
        return None
    if any(fnmatch.fnmatch(file_path.name, pat) for pat in parent.config.getini("python_files")):
        return None
    return pytest.Module.from_parent(parent, path=file_path)


def is_quick(config: pytest.Config) -> bool:
    """Quick mode, from the options and the environment (see the module notes)."""
    env = os.environ.get("FASTLOAD_BENCH", "").lower()
    if config.getoption("--full", default=False) or env == "full":
        return False
    if config.getoption("--quick", default=False) or env == "quick":
        return True
    return bool(config.getoption("benchmark_disable", default=False)) or bool(os.environ.get("CI"))


@pytest.fixture(scope="session")
def bench_quick(pytestconfig: pytest.Config) -> bool:
    return is_quick(pytestconfig)


@pytest.fixture(scope="session")
def synth_store(tmp_path_factory: pytest.TempPathFactory, bench_quick: bool):
    """``synth_store(layout=..., zarr_format=..., codec=..., chunks=..., shards=..., preset=...)`` -> path.

    Written with :func:`fastload.synth.synthesize` (same seed, so every variant holds the same values) once per
    session per argument set. Default preset: ``tiny`` in quick mode, ``small`` in full mode.
    """
    from fastload.synth import synthesize

    made: dict[tuple, str] = {}
    root = tmp_path_factory.mktemp("bench-stores")

    def make(*, layout: str = "per-variable", zarr_format: int = 2, codec: str = "blosc-lz4",
             chunks: tuple[int, ...] | None = None, shards: tuple[int, ...] | None = None,
             preset: str | None = None) -> str:  # fmt: skip
        preset = preset or ("tiny" if bench_quick else "small")
        key = (layout, zarr_format, codec, chunks, shards, preset)
        if key not in made:
            name = "-".join(str(k).replace(" ", "").replace(",", "_") for k in key if k is not None) + ".zarr"
            out = root / name
            synthesize(out, preset, 0, zarr_format=zarr_format, chunks=chunks, codec=codec, shards=shards,
                       layout=layout, progress=False)  # fmt: skip
            made[key] = str(out)
        return made[key]

    return make


@pytest.fixture(scope="session")
def bench_config(bench_quick: bool):
    """``bench_config(store_path, batch_size=None)``: AtmoRep's geometry fitted to the store (raw values).

    Quick mode keeps two fields on levels with two levels each and [4, 2, 4] tokens, so a pass takes seconds.
    """
    import dataclasses

    from fastload.store import open_store
    from profiling.bench_scenarios import fit_config

    def make(path: str, batch_size: int | None = None) -> Any:
        store = open_store(path)
        if bench_quick:
            cfg = fit_config(store, batch_size=batch_size or 4, level_fields=2, surface_fields=0, levels=2)
            fields = tuple(dataclasses.replace(f, num_tokens=tuple(min(n, m) for n, m in zip(f.num_tokens, (4, 2, 4))))
                           for f in cfg.fields)  # fmt: skip
            return dataclasses.replace(cfg, fields=fields)
        return fit_config(store, batch_size=batch_size or 16)

    return make


@pytest.fixture
def report():
    """``report(benchmark, **figures)``: record figures (samples/s, GB/s, ...) in the benchmark's extra_info."""

    def put(benchmark: Any, **figures: Any) -> None:
        for k, v in figures.items():
            benchmark.extra_info[k] = round(v, 4) if isinstance(v, float) else v
        print(" ".join(f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}" for k, v in figures.items()))

    return put
