"""The tiles of rollout samples read through :func:`fastload.extract`: counted per batch, pinned for the GPU.

Why this exists: :class:`~fastload.rollout_data.RolloutLoader` reads a batch's input windows and targets, and
inference (:mod:`profiling.rollout`) reads input windows alone, both with :func:`fastload.extract` (the loader's
plan -> read -> gather path without its cache). :func:`extract_windows` turns initial times into the input windows'
tiles and reshapes extract's output into :class:`~fastload.rollout_data.RolloutBatch`'s layout; :class:`_CountingStore`
wraps the store so every chunk read and decoded is timed and counted into the batch's
:class:`~fastload.reader.IOStats`. ``fastload.rollout_data`` re-exports :func:`extract_windows`. Example::

    from fastload.rollout_data import extract_windows
    fields, meta, boxes = extract_windows(store, config, tiles, t0=[0, 24], input_window=2, lead=6)
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch

from .config import SamplingConfig
from .extract import _READ_TIMEOUT_S, extract
from .reader import IOStats
from .sampling.tiles import GlobalTiles
from .store import stored_nbytes

__all__ = ["extract_windows"]


class _CountingStore:
    """A store seen through :func:`fastload.extract` that times and counts every chunk it reads (one per batch)."""

    def __init__(self, store: Any):
        self._store = store
        self.stats = IOStats()

    def __getattr__(self, name: str) -> Any:
        return getattr(self._store, name)

    def chunk_bytes(self, array: str, chunk: Sequence[int]) -> bytes | None:
        """The store's request, timed (extract runs it on its I/O thread: only that thread writes these counters)."""
        t0 = time.perf_counter()
        raw = self._store.chunk_bytes(array, chunk)
        s = self.stats
        s.fetch_s += time.perf_counter() - t0
        s.bytes_stored += stored_nbytes(raw)
        return raw

    def decode(self, array: str, raw: Any, chunk: Sequence[int], out: np.ndarray | None = None) -> np.ndarray:
        """The store's decode, timed and counted (on extract's calling thread)."""
        t0 = time.perf_counter()
        dec = self._store.decode(array, raw, chunk, out)
        s = self.stats
        s.decode_s += time.perf_counter() - t0
        s.chunks += 1
        s.misses += 1
        s.bytes_decoded += int(self._store.arrays[array].chunk_nbytes)
        return dec


def _pinned(x: torch.Tensor, pin: bool) -> torch.Tensor:
    return x.pin_memory() if pin else x


def extract_windows(store: Any, config: SamplingConfig, tiles: GlobalTiles, t0: Any, *, input_window: int = 1,
                    lead: int = 1, norm: Any = None, jit: bool | None = None, pin: bool = False,
                    read_timeout_s: float | None = _READ_TIMEOUT_S
                    ) -> tuple[dict[str, Any], dict[str, dict[str, Any]], np.ndarray]:
    """The input windows of rollouts from initial times ``t0`` through :func:`fastload.extract`.

    Values are the store's at every tile index, halo and north-fold copies included (``mask_copies=False``).

    Parameters
    ----------
    store, config, norm, jit, read_timeout_s
        As for :func:`fastload.extract`.
    tiles : GlobalTiles
        The tiling (:func:`fastload.sampling.tiles.global_tiles`).
    t0 : array_like of int, shape (B,)
        Store index of each sample's first input time.
    input_window, lead : int
        ``W`` windows starting at ``t0 + j * lead``.
    pin : bool
        Pin the host tensors (for asynchronous copies to a GPU).

    Returns
    -------
    fields, meta, boxes
        As :attr:`RolloutBatch.fields`, :attr:`RolloutBatch.meta` and ``(B, W, T, 3)`` boxes.
    """
    t0 = np.asarray(t0, dtype=np.int64).reshape(-1)
    b, w, n_tiles = int(t0.shape[0]), int(input_window), tiles.num_tiles
    boxes = tiles.boxes(t0[:, None] + np.arange(w) * int(lead))  # (B, W, T, 3)
    ex = extract(store, config, boxes.reshape(-1, 3), norm=norm, jit=jit, as_torch=True, mask_copies=False,
                 read_timeout_s=read_timeout_s)

    def tmeta(a: np.ndarray) -> torch.Tensor:
        return _pinned(torch.from_numpy(np.ascontiguousarray(a, np.float32)), pin)

    fields, meta = {}, {}
    for f in config.fields:
        fields[f.name] = _pinned(ex[f.name].data.reshape(b, w, n_tiles, *f.sample_shape), pin)
        m = ex[f.name].meta
        nt, nlat, nlon = f.num_tokens
        meta[f.name] = {
            "hour": tmeta(m.hour.reshape(b, w, n_tiles, nt)),
            "day_of_year": tmeta(m.day_of_year.reshape(b, w, n_tiles, nt)),
            "lat": tmeta(m.lat.reshape(b, w, n_tiles, nlat, nlon)[:, 0]),
            "lon": tmeta(m.lon.reshape(b, w, n_tiles, nlat, nlon)[:, 0]),
            "level": tmeta(m.level),
        }
    return fields, meta, boxes
