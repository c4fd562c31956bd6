"""Peer 2: AtmoRep's batch method: one time window per batch, the whole globe read, boxes cropped in Python.

Why this exists: it is the reference implementation's way, the one whose profile (fastload's DESIGN.md) shows five
fast steps and a long stall: for each batch it picks a time window, reads the *whole globe* of every field and
level it uses for that window through zarr (on AtmoRep's store one chunk is several hours x all fields x all
levels x the globe, so that is what gets decoded), then cuts each sample's box out of the globe with
``np.take(..., mode="wrap")`` and tokenises it with torch reshape/permute, one sample at a time in Python. Whole
batches are made by the worker processes of a ``torch.utils.data.DataLoader`` (``batch_size=None``), as in the
reference.

Here a batch may hold several time windows (the harness's plan decides); each distinct window is read once per
array, which is AtmoRep's method when the plan has one window per batch (``samples_per_window`` = batch size).
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from typing import Any

import numpy as np

from ._base import DataLoaderPeer, StoreSpec
from .zarr_dataloader import open_zarr_array

__all__ = ["AtmoRepPeer", "read_globe_batch"]


def _window_read(arr: Any, spec: StoreSpec, fields: list, t0: int) -> tuple[np.ndarray, dict[str, Any]]:
    """Read the whole globe of ``fields`` (all in one array) for the window at ``t0``; one zarr call."""
    f0 = fields[0]
    t, fa, lev, _, _ = f0.axes
    ndim = 1 + max(a for a in f0.axes if a is not None)
    sel: list[Any] = [slice(None)] * ndim
    if t is not None:
        sel[t] = slice(t0, t0 + spec.time_span, spec.time_step)
    if fa is not None:
        findex = sorted({f.field_index for f in fields})
        sel[fa] = findex
    if lev is not None and all(f.level_index is not None for f in fields):
        lindex = sorted({i for f in fields for i in f.level_index})
        sel[lev] = lindex
    globe = np.asarray(arr.oindex[tuple(sel)])
    # where each field's levels sit in what was read
    where: dict[str, Any] = {}
    for f in fields:
        fpos = findex.index(f.field_index) if fa is not None else None
        if lev is None:
            lpos: Any = None
        elif isinstance(sel[lev], list):
            lpos = [sel[lev].index(i) for i in f.level_index]
        else:
            lpos = slice(None)
        where[f.name] = (fpos, lpos)
    return globe, where


def read_globe_batch(arrays: dict[str, Any], spec: StoreSpec, boxes: np.ndarray) -> dict[str, Any]:
    """One batch the AtmoRep way: ``{field: torch.Tensor (B, L, nt, nlat, nlon, tt, tlat, tlon)}``."""
    import torch

    by_array: dict[str, list] = {}
    for f in spec.fields:
        by_array.setdefault(f.array, []).append(f)
    samples: dict[str, list] = {f.name: [None] * len(boxes) for f in spec.fields}
    for t0 in np.unique(boxes[:, 0]):
        members = np.flatnonzero(boxes[:, 0] == t0)
        for name, fields in by_array.items():
            globe, where = _window_read(arrays[name], spec, fields, int(t0))
            for f in fields:
                fpos, lpos = where[f.name]
                g = globe
                t_ax, fa, lev, _, _ = f.axes
                if fa is not None:
                    g = np.take(g, fpos, axis=fa)  # drops the field axis
                if lev is not None and isinstance(lpos, list):
                    g = np.take(g, lpos, axis=lev - (1 if fa is not None and fa < lev else 0))
                if lev is None:
                    g = g[:, None] if t_ax is not None else g[None]
                if t_ax is None:
                    g = np.broadcast_to(g[None], (f.box[0], *g.shape))
                _, bh, bw = f.box
                nt, nlat, nlon = f.num_tokens
                tt, tlat, tlon = f.token_size
                for s in members:  # per-sample Python loop, as the reference
                    _, y0, x0 = (int(v) for v in boxes[s])
                    crop = g[:, :, y0 : y0 + bh]
                    crop = np.take(crop, np.arange(x0, x0 + bw), axis=-1, mode="wrap" if spec.periodic_x else "raise")
                    tb = torch.from_numpy(np.ascontiguousarray(crop, dtype=np.float32))
                    tok = tb.reshape(nt, tt, tb.shape[1], nlat, tlat, nlon, tlon).permute(2, 0, 3, 5, 1, 4, 6)
                    samples[f.name][s] = tok
    return {k: torch.stack(v) for k, v in samples.items()}


class _BatchDataset:
    """Map-style dataset whose items are whole batches (``DataLoader(batch_size=None)``)."""

    def __init__(self, spec: StoreSpec, batches: list[np.ndarray], latency_ms: float):
        self.spec = spec
        self.batches = batches
        self.latency_ms = latency_ms
        self._arrays: dict[str, Any] | None = None

    def __len__(self) -> int:
        return len(self.batches)

    def __getitem__(self, i: int) -> dict[str, Any]:
        if self._arrays is None:
            self._arrays = {a: open_zarr_array(self.spec, a, self.latency_ms) for a in self.spec.arrays}
        return read_globe_batch(self._arrays, self.spec, self.batches[i])


class AtmoRepPeer(DataLoaderPeer):
    """AtmoRep's batch method: whole-globe window reads through zarr, per-sample crop and tokenise in Python."""

    name = "atmorep-batch"
    requires = ("zarr", "torch")
    description = "AtmoRep's method: whole globe per time window via zarr, per-sample Python crop + tokenise"
    decode_model = "per_window"

    def __init__(self, spec: StoreSpec, *, workers: int = 2, latency_ms: float = 0.0):
        super().__init__(spec, workers=workers, latency_ms=latency_ms)
        import zarr  # noqa: F401  (imported here, forked workers inherit it instead of importing it each)

    def iter_batches(self, batches: Sequence[np.ndarray]) -> Iterator[dict[str, np.ndarray]]:
        ds = _BatchDataset(self.spec, [np.asarray(b, dtype=np.int64) for b in batches], self.latency_ms)
        yield from self._iterate(ds, batch_size=None)
