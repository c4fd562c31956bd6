"""The loader backend of a multi-stream config: one plan, one cache budget, one reader for all streams.

Why this exists: :class:`fastload.Loader` talks to its workers through a backend (``alloc``, ``start``, ``read``,
``close``; :mod:`fastload._backend`). A :class:`~fastload.streams.MultiStream` is both the store (chunk keys
``"stream/array"``) and the tokenizer the reader drives, so the thread backend works unchanged once its cache is
sized for all streams from the one byte budget (:func:`fastload._stream_chunks.cache_layout`): the epoch plan,
the plan-aware cache, the prefetch ring and the reader's I/O threads are shared by every stream.

:class:`fastload.Loader` builds it for a config with streams; on its own::

    ms = MultiStream(config)
    backend = StreamBackend(ms, spec, ms.coefficients() if normalised else None)
    backend.start(ms.random_boxes(n, seed=0, epoch=0), 0)
    stats, kept = backend.read(0, outs, None, lambda: False)
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np

from ._backend import LoadSpec, ThreadBackend
from ._ring import torch_alloc
from .cache import ChunkCache
from .reader import ChunkReader

__all__ = ["StreamBackend"]


class StreamBackend(ThreadBackend):
    """:class:`~fastload._backend.ThreadBackend` over a :class:`~fastload.streams.MultiStream`.

    Parameters
    ----------
    multi : MultiStream
        The opened streams (store and tokenizer of the reader).
    spec : LoadSpec
        Batch size, workers, cache budget, prefetch, retries, ... (``months`` is unused: each stream's
        coefficients cover the months of its own record).
    coefficients : mapping, optional
        From :meth:`MultiStream.coefficients` when fields normalise.
    """

    def __init__(self, multi: Any, spec: LoadSpec, coefficients: Mapping[str, tuple[np.ndarray, np.ndarray]] | None):
        self.spec = spec
        self.tokenizer = multi
        lay = multi.cache_layout(spec.cache_bytes, spec.workers)
        arenas = {a: (n, int(np.prod(multi.arrays[a].chunks)), multi.arrays[a].dtype) for a, n in lay.slots.items()}
        self.cache = ChunkCache(arenas, {})
        self.capacity = lay.capacity
        self.reader = ChunkReader(multi, multi, self.cache, fetch_concurrency=spec.fetch_concurrency,
                                  decode_workers=spec.workers, retries=spec.retries, on_bad_chunk=spec.on_bad_chunk,
                                  coefficients=coefficients, months=None,
                                  useful_bytes_per_sample=spec.useful_bytes_per_sample, jit=spec.jit,
                                  read_ahead_bytes=spec.read_ahead_bytes)
        self.alloc = torch_alloc(spec.pin)
        self.plan = None
