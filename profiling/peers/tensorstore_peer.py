"""Peer 4: tensorstore with its own concurrency: every box read issued asynchronously, futures gathered.

Why this exists: tensorstore is the fastest general zarr reader we know (C++, its own I/O and decode thread
pools); fastload's DESIGN.md measures it at the raw threaded read+decode roof for chunk-aligned reads. Here each
array is opened once through the ``zarr`` (v2) or ``zarr3`` driver, every box of a batch (two reads across the
0/360 seam) is issued at once with ``oindex[...].read()``, the next batch's reads are issued before this batch's
futures are gathered (one batch of read-ahead), and the results are tokenised with a NumPy reshape/transpose.
The data-copy (decode) pool is limited to ``workers`` threads; tensorstore's chunk cache is off (its default), but
reads of one chunk that are in flight at the same time share one fetch and decode. What it actually read and
decoded is taken from tensorstore's own metrics (``/tensorstore/cache/miss_count``, ``hit_count``,
``/tensorstore/kvstore/*/bytes_read``) as counters, so the table shows measured bytes, not a model. With ``latency_ms`` the arrays are read over HTTP from a local server
that delays every request (:mod:`profiling.peers._http`).
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from typing import Any

import numpy as np

from ._base import BasePeer, StoreSpec, as_tlyx, selection, tokenize, x_ranges

__all__ = ["TensorstorePeer", "open_tensorstore"]


def open_tensorstore(spec: StoreSpec, name: str, *, workers: int, base_url: str | None = None) -> Any:
    """Open one array read-only; ``base_url`` reads it over HTTP instead of from files."""
    import tensorstore as ts

    driver = "zarr3" if spec.zarr_format == 3 else "zarr"
    if base_url is None:
        kvstore: dict[str, Any] = {"driver": "file", "path": f"{spec.path.rstrip('/')}/{name}/"}
    else:
        kvstore = {"driver": "http", "base_url": base_url.rstrip("/"), "path": f"/{name}/"}
    context = {"data_copy_concurrency": {"limit": max(1, workers)}, "cache_pool": {"total_bytes_limit": 0}}
    return ts.open(
        {"driver": driver, "kvstore": kvstore, "context": context, "recheck_cached_data": False},
        read=True,
        open=True,
    ).result()


def _metrics() -> dict[str, float]:
    """tensorstore's process-wide chunk-cache and kvstore counters, summed over drivers."""
    import tensorstore as ts

    out = {"hits": 0.0, "misses": 0.0, "bytes_read": 0.0}
    for m in ts.experimental_collect_matching_metrics("/tensorstore/"):
        name = m["name"]
        if name not in ("/tensorstore/cache/hit_count", "/tensorstore/cache/miss_count") and not (
            name.startswith("/tensorstore/kvstore/") and name.endswith("/bytes_read")
        ):
            continue
        value = sum(float(v.get("value", 0)) for v in m.get("values", []))
        if m["name"] == "/tensorstore/cache/hit_count":
            out["hits"] += value
        elif m["name"] == "/tensorstore/cache/miss_count":
            out["misses"] += value
        elif m["name"].startswith("/tensorstore/kvstore/") and m["name"].endswith("/bytes_read"):
            out["bytes_read"] += value
    return out


class TensorstorePeer(BasePeer):
    """tensorstore reads of every box of a batch in flight at once, one batch of read-ahead."""

    name = "tensorstore"
    requires = ("tensorstore",)
    description = "tensorstore: all box reads of a batch issued async (+1 batch read-ahead), futures gathered"
    decode_model = "reported"

    def __init__(self, spec: StoreSpec, *, workers: int = 2, latency_ms: float = 0.0):
        super().__init__(spec, workers=workers, latency_ms=latency_ms)
        self._server: Any = None
        base_url = None
        if latency_ms:
            from ._http import DelayingHTTPServer

            self._server = DelayingHTTPServer(spec.path, latency_ms=latency_ms)
            base_url = self._server.url
        self._arrays = {a: open_tensorstore(spec, a, workers=workers, base_url=base_url) for a in spec.arrays}
        sizes = {int(np.prod(a.chunk_layout.read_chunk.shape)) * a.dtype.numpy_dtype.itemsize
                 for a in self._arrays.values()}  # fmt: skip
        # misses are counted over all arrays together: exact when every array has one chunk size
        self._chunk_nbytes = float(np.mean(sorted(sizes)))
        self._counters: dict[str, float] | None = None
        self._metrics0 = _metrics()

    def _issue(self, boxes: np.ndarray) -> list[list[list[Any]]]:
        """Futures per sample, per field, per x range."""
        spec = self.spec
        out = []
        for t0, y0, x0 in np.asarray(boxes, dtype=np.int64):
            per_field = []
            for f in spec.fields:
                arr = self._arrays[f.array]
                per_field.append(
                    [
                        arr.oindex[selection(f, spec, int(t0), int(y0), xr)].read()
                        for xr in x_ranges(int(x0), f.box[2], spec.nx, spec.periodic_x)
                    ]
                )
            out.append(per_field)
        return out

    def _gather(self, futures: list[list[list[Any]]]) -> dict[str, np.ndarray]:
        spec = self.spec
        out = {f.name: np.empty((len(futures), *f.sample_shape), np.float32) for f in spec.fields}
        for s, per_field in enumerate(futures):
            for f, parts in zip(spec.fields, per_field):
                blocks = [p.result() for p in parts]
                block = blocks[0] if len(blocks) == 1 else np.concatenate(blocks, axis=-1)
                out[f.name][s] = tokenize(as_tlyx(block, f), f)
        return out

    def iter_batches(self, batches: Sequence[np.ndarray]) -> Iterator[dict[str, np.ndarray]]:
        pending = self._issue(batches[0]) if len(batches) else None
        for i in range(len(batches)):
            current = pending
            pending = self._issue(batches[i + 1]) if i + 1 < len(batches) else None
            yield self._gather(current)  # type: ignore[arg-type]
        m1, m0 = _metrics(), self._metrics0
        d = {k: m1.get(k, 0.0) - m0.get(k, 0.0) for k in m1}
        self._counters = {"cache_hits": d["hits"], "cache_misses": d["misses"], "stored_bytes": d["bytes_read"],
                          "decoded_bytes": d["misses"] * self._chunk_nbytes}  # fmt: skip

    def counters(self) -> dict[str, float] | None:
        """Chunk cache hits (reads sharing an in-flight decode), misses, bytes read and decoded, from tensorstore's
        process-wide metrics between construction and the last batch."""
        return self._counters

    def close(self) -> None:
        self._arrays = {}
        server, self._server = self._server, None
        if server is not None:
            server.close()
