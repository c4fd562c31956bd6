"""Thread backend of the loader: one cache and one reader shared by the worker threads of this process.

Why this exists: the loader talks to its workers through a small interface (``alloc``, ``start``, ``read``,
``close``) so that the thread mode (here) and the process mode (:mod:`fastload._procs`) share everything else:
the plan, the ring of batch buffers, the device copy and the Batch. In thread mode the pump's worker threads call
:meth:`ThreadBackend.read` directly; decoding and the gather kernels release the GIL, so threads scale with cores.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

import numpy as np

from ._ring import torch_alloc
from .cache import ChunkCache
from .plan import EpochPlan
from .reader import ChunkReader, IOStats, plan_cache

__all__ = ["ThreadBackend", "LoadSpec", "choose_horizon", "build_cache", "make_tokenizer", "chunk_grids"]


class LoadSpec:
    """What a backend needs to read batches (plain data: it crosses process boundaries in process mode)."""

    def __init__(self, *, batch_size: int, drop_last: bool, prefetch: int, workers: int, cache_bytes: int,
                 fetch_concurrency: int, retries: int, on_bad_chunk: str, months: np.ndarray | None,
                 useful_bytes_per_sample: int, jit: bool | None, pin: bool, read_ahead_bytes: int | None = None,
                 read_timeout_s: float | None = 300.0, worker_start_timeout_s: float | None = 300.0):
        self.batch_size = batch_size
        self.drop_last = drop_last
        self.prefetch = prefetch
        self.workers = workers
        self.cache_bytes = cache_bytes
        self.fetch_concurrency = fetch_concurrency
        self.retries = retries
        self.on_bad_chunk = on_bad_chunk
        self.months = months
        self.useful_bytes_per_sample = useful_bytes_per_sample
        self.jit = jit
        self.pin = pin
        self.read_ahead_bytes = read_ahead_bytes
        self.read_timeout_s = read_timeout_s
        self.worker_start_timeout_s = worker_start_timeout_s


def choose_horizon(plan: EpochPlan, first_batch: int, cache: ChunkCache, prefetch: int) -> int:
    """Batches to plan ahead: about as many as the cache holds (Belady needs to see that far), at least
    ``prefetch + 2``, at most 256."""
    steps = plan.steps(first_batch)  # plans the first batch (and the current horizon)
    per_batch = max(1, sum(s.n_chunks for s in steps))
    held = sum(cache.n_slots(a) for a in {a for s in steps for a in s.ids})
    return int(min(256, max(prefetch + 2, -(-held // per_batch) + prefetch)))


def chunk_grids(store: Any) -> dict[str, tuple[int, ...]]:
    """``array -> chunk grid shape`` of a store (or a multi-stream), for the plan's chunk ids."""
    return {a: tuple(int(g) for g in info.grid_shape) for a, info in store.arrays.items()}


def make_tokenizer(store: Any, config: Any) -> Any:
    """The tokenizer of ``store``'s grid kind: ``cls.from_store(store, config)`` where the registered class has one
    (a mesh reads point layouts, not the structured ones), else :func:`~fastload.sampling.build_tokenizer`."""
    from .sampling import TOKENIZERS, build_tokenizer

    cls = TOKENIZERS.get(store.grid.kind)
    if cls is not None and hasattr(cls, "from_store"):
        return cls.from_store(store, config)
    return build_tokenizer(store, config)


def build_cache(store: Any, tokenizer: Any, config: Any, budget: int, workers: int, *,
                warn: bool = True) -> tuple[ChunkCache, dict[str, int]]:
    """A cache sized from ``budget`` and the per-step capacity that lets ``workers`` steps run at once (the
    tokenizer's own ``sample_chunk_bound()`` where it has one); ``warn``: :func:`plan_cache`'s warning of a budget
    below one sample (a process-mode worker's budget is its share of the loader's, which the loader warns of)."""
    bound = tokenizer.sample_chunk_bound() if hasattr(tokenizer, "sample_chunk_bound") else None
    lay = plan_cache(store, tokenizer.layouts, config.box, config.time_step, budget, workers, bound=bound,
                     warn=warn)
    arenas = {a: (n, int(np.prod(store.arrays[a].chunks)), store.arrays[a].dtype) for a, n in lay.slots.items()}
    return ChunkCache(arenas, {}), lay.capacity


class ThreadBackend:
    """Reads batches on the calling (worker) thread, sharing one cache and one I/O pool."""

    def __init__(self, store: Any, tokenizer: Any, config: Any, spec: LoadSpec,
                 coefficients: Mapping[str, tuple[np.ndarray, np.ndarray]] | None):
        self.spec = spec
        self.tokenizer = tokenizer
        self.cache, self.capacity = build_cache(store, tokenizer, config, spec.cache_bytes, spec.workers)
        self.reader = ChunkReader(store, tokenizer, self.cache, fetch_concurrency=spec.fetch_concurrency,
                                  decode_workers=spec.workers, retries=spec.retries, on_bad_chunk=spec.on_bad_chunk,
                                  coefficients=coefficients, months=spec.months,
                                  useful_bytes_per_sample=spec.useful_bytes_per_sample, jit=spec.jit,
                                  read_ahead_bytes=spec.read_ahead_bytes)
        self.alloc = torch_alloc(spec.pin)
        self.plan: EpochPlan | None = None

    def start(self, boxes: np.ndarray, start_batch: int) -> None:
        """Begin reading an epoch of ``boxes`` at ``start_batch``."""
        plan = EpochPlan(boxes, self.tokenizer.plan, batch_size=self.spec.batch_size, drop_last=self.spec.drop_last,
                         capacity=self.capacity, horizon=0, start_batch=start_batch,
                         grids=chunk_grids(self.reader.store))
        self.cache.reset(plan.uses)
        self.reader.read_timeout = self.spec.read_timeout_s  # (here: StreamBackend builds its own reader)
        self.reader.warm(np.float32 if getattr(self.tokenizer.config, "out_dtype", "float32") == "float32"
                         else np.uint16)
        if start_batch < len(plan):
            plan.horizon = choose_horizon(plan, start_batch, self.cache, self.spec.prefetch)
        self.plan = plan

    def set_coefficients(self, coefficients: Mapping[str, tuple[np.ndarray, np.ndarray]] | None,
                         months: np.ndarray | None) -> None:
        """Normalisation coefficients (covering ``months``) for the epochs started from now on."""
        self.reader.set_coefficients(coefficients, months)

    def read(self, batch: int, arrays: Mapping[str, np.ndarray], segment: Any,
             should_stop: Callable[[], bool]) -> tuple[IOStats, np.ndarray]:
        assert self.plan is not None, "start() first"
        return self.reader.read_batch(self.plan, batch, arrays, should_stop)

    def close(self, timeout: float | None = 5.0) -> None:
        """Close the reader (waiting for its I/O threads at most ``timeout`` seconds; one stuck in a store request
        is left running as a daemon and named in a warning) and the cache."""
        self.reader.close(timeout)
        self.cache.close()
