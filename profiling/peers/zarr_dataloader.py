"""Peer 1: zarr-python slicing per sample inside a ``torch.utils.data.DataLoader`` with process workers.

Why this exists: it is what most training code does (and what AtmoRep's users start from): a map-style Dataset
whose ``__getitem__`` slices one box out of the zarr arrays, tokenises it with reshape/permute, and lets the
DataLoader's worker processes run many of those at once. Each worker opens the arrays once. A box that crosses
the 0/360 seam is read as two slices. Nothing is shared between samples, so a chunk that two samples touch is
fetched and decoded twice.

:class:`ZarrsDataLoaderPeer` is the same loader with zarr-python's codec pipeline swapped for the Rust one of
the ``zarrs`` package (set in every worker), which decodes the chunks of one request in parallel.
"""

from __future__ import annotations

import importlib
from collections.abc import Iterator, Sequence
from typing import Any

import numpy as np

from ._base import DataLoaderPeer, StoreSpec, as_tlyx, selection, x_ranges

__all__ = ["ZarrDataLoaderPeer", "ZarrsDataLoaderPeer", "open_zarr_array"]

ZARRS_PIPELINE = "zarrs.ZarrsCodecPipeline"


def open_zarr_array(spec: StoreSpec, name: str, latency_ms: float = 0.0) -> Any:
    """Open one array read-only with zarr-python, through zarr's ``LatencyStore`` when ``latency_ms`` > 0."""
    import zarr
    from zarr.storage import LocalStore

    store: Any = LocalStore(spec.path, read_only=True)
    if latency_ms:
        from zarr.testing.store import LatencyStore

        store = LatencyStore(store, get_latency=latency_ms / 1000.0)
    return zarr.open_array(store=store, path=name, mode="r", zarr_format=spec.zarr_format)


def read_box_torch(arrays: dict[str, Any], spec: StoreSpec, box: np.ndarray) -> dict[str, Any]:
    """One sample through zarr slicing, tokenised with torch reshape/permute: ``{field: (L, nt, ..., tlon)}``."""
    import torch

    t0, y0, x0 = (int(v) for v in box)
    out = {}
    for f in spec.fields:
        arr = arrays[f.array]
        parts = [arr.oindex[selection(f, spec, t0, y0, xr)] for xr in x_ranges(x0, f.box[2], spec.nx, spec.periodic_x)]
        block = parts[0] if len(parts) == 1 else np.concatenate(parts, axis=-1)
        tb = torch.from_numpy(np.ascontiguousarray(as_tlyx(block, f), dtype=np.float32))
        nt, nlat, nlon = f.num_tokens
        tt, tlat, tlon = f.token_size
        tok = tb.reshape(nt, tt, tb.shape[1], nlat, tlat, nlon, tlon).permute(2, 0, 3, 5, 1, 4, 6)
        out[f.name] = tok.contiguous()
    return out


class _SampleDataset:
    """Map-style dataset over a flat list of boxes; arrays are opened lazily, once per worker process."""

    def __init__(self, spec: StoreSpec, boxes: np.ndarray, latency_ms: float, pipeline: str | None):
        self.spec = spec
        self.boxes = boxes
        self.latency_ms = latency_ms
        self.pipeline = pipeline
        self._arrays: dict[str, Any] | None = None

    def __len__(self) -> int:
        return len(self.boxes)

    def __getitem__(self, i: int) -> dict[str, Any]:
        if self._arrays is None:
            import contextlib

            import zarr

            # the pipeline is fixed when an array is opened, so the setting need not outlive the opening
            ctx = zarr.config.set({"codec_pipeline.path": self.pipeline}) if self.pipeline else contextlib.nullcontext()
            with ctx:
                self._arrays = {a: open_zarr_array(self.spec, a, self.latency_ms) for a in self.spec.arrays}
        return read_box_torch(self._arrays, self.spec, self.boxes[i])


class ZarrDataLoaderPeer(DataLoaderPeer):
    """zarr-python slicing per sample in a torch DataLoader with ``workers`` process workers."""

    name = "zarr+DataLoader"
    requires = ("zarr", "torch")
    description = "zarr-python slicing per sample in a torch DataLoader with process workers"
    pipeline: str | None = None

    def __init__(self, spec: StoreSpec, *, workers: int = 2, latency_ms: float = 0.0):
        super().__init__(spec, workers=workers, latency_ms=latency_ms)
        import zarr  # noqa: F401  (imported here, forked workers inherit it instead of importing it each)

        if self.pipeline is not None:
            importlib.import_module(self.pipeline.rsplit(".", 1)[0])

    def iter_batches(self, batches: Sequence[np.ndarray]) -> Iterator[dict[str, np.ndarray]]:
        flat = self._flat_boxes(batches)
        if flat is None:
            return
        boxes, batch_size = flat
        yield from self._iterate(_SampleDataset(self.spec, boxes, self.latency_ms, self.pipeline), batch_size)


class ZarrsDataLoaderPeer(ZarrDataLoaderPeer):
    """As :class:`ZarrDataLoaderPeer`, with the ``zarrs`` (Rust) codec pipeline in every worker."""

    name = "zarrs+DataLoader"
    requires = ("zarr", "torch", "zarrs")
    description = "zarr-python with the zarrs codec pipeline, slicing per sample in a torch DataLoader"
    pipeline = ZARRS_PIPELINE
    supports_latency = False  # zarrs reads local files itself; behind LatencyStore zarr falls back to Python
