"""One batch of rollout training data, and its layouts: on a device (:meth:`RolloutBatch.to`), as the Forecaster takes it.

Why this exists apart from ``rollout_data.py``: :class:`RolloutBatch` is plain data (the tiles at the initial times,
the targets of each step, their metadata and the batch's I/O counters) with the two layouts a training step needs,
while :mod:`fastload.rollout_data` holds the loader that plans, reads and prefetches the batches. It is public as
``fastload.rollout_data.RolloutBatch`` (re-exported there), as :class:`fastload.Batch` lives in
:mod:`fastload._loader_iter`.

Run its tests with ``python -m pytest tests/fastload/test_rollout_data.py tests/fastload/test_rollout_batch_to.py -q``.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from typing import Any

import torch

from ._io_stats import IOStats

__all__ = ["RolloutBatch"]


@dataclasses.dataclass(slots=True, eq=False)
class RolloutBatch:
    """One batch of rollout samples (CPU tensors, pinned when the loader feeds a GPU; see :meth:`to`).

    Shapes: ``B`` initial times, ``W`` input windows, ``T`` tiles, ``S`` steps; per field ``L`` levels and the
    token geometry of the sampling config (``nt``) or of the targets (``nt_out = readout_time_tokens``).
    """

    fields: dict[str, Any]
    """Field -> inputs ``(B, W, T, L, nt, nlat, nlon, tt, tlat, tlon)``."""
    meta: dict[str, dict[str, Any]]
    """Field -> ``hour``, ``day_of_year`` ``(B, W, T, nt)``; ``lat``, ``lon`` ``(B, T, nlat, nlon)`` token centres;
    ``level`` ``(L,)`` (NaN for a field without levels)."""
    targets: list[dict[str, Any]]
    """Per step k = 1..S: field -> ``(B, T, L, nt_out, nlat, nlon, tt, tlat, tlon)``."""
    boxes: Any
    """``(B, W, T, 3)`` int64: the input tiles' ``(t0, y0, x0)``."""
    t0: Any
    """``(B,)`` int64: store index of each sample's first input time."""
    lead_hours: Any
    """``(B,)`` float32: hours per rollout step (from the store's time axis, at the first step)."""
    index: int
    """Batch index in the epoch (this rank's)."""
    epoch: int
    stats: IOStats
    """I/O counters of this batch (inputs and targets)."""
    levelled: tuple[str, ...] = ()
    """Fields that have a level axis (their ``level`` metadata is meaningful)."""
    masks: dict[str, Any] | None = None
    """Always None (rollout batches are not masked); kept so code written for :class:`fastload.Batch` works."""
    sources: dict[str, Any] | None = None
    """Always None, as ``masks``."""

    def __len__(self) -> int:
        return int(self.boxes.shape[0])

    def to(self, device: Any, non_blocking: bool = True) -> RolloutBatch:
        """A copy with every tensor on ``device`` (tensors already there are shared, not copied). ``non_blocking``
        applies to copies to an accelerator only: a copy to the CPU always blocks, else its values may not have
        arrived when the host reads them (as :func:`model.model_inputs` moves tensors)."""
        dev = torch.device(device)
        asynchronous = non_blocking and dev.type != "cpu"

        def mv(x: Any) -> Any:
            if isinstance(x, torch.Tensor):
                return x if x.device == dev else x.to(dev, non_blocking=asynchronous)
            if isinstance(x, Mapping):
                return {k: mv(v) for k, v in x.items()}
            if isinstance(x, list):
                return [mv(v) for v in x]
            return x

        return dataclasses.replace(self, fields=mv(self.fields), meta=mv(self.meta), targets=mv(self.targets),
                                   lead_hours=mv(self.lead_hours))

    def model_inputs(self, device: Any = None) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
        """The Forecaster's batch layout (see :mod:`model.forecaster`), moved to ``device`` (non-blocking).

        Returns
        -------
        windows : list of W dicts
            ``{field: {"tokens": (B, T, L, nt, ...), "meta": {time_of_day, day_of_year, lat, lon[, level]}}}``,
            metadata ``(B, T, L, nt, nlat, nlon)`` (broadcast views), oldest window first.
        targets : list of S dicts
            ``{field: {"tokens": (B, T, L, nt_out, ...), "lat": (B, T, L, nt_out, nlat, nlon)}}``.
        """
        b = self if device is None else self.to(device)
        windows = []
        for w in range(next(iter(b.fields.values())).shape[1]):
            win = {}
            for name, x in b.fields.items():
                tokens = x[:, w]  # (B, T, L, nt, nlat, nlon, tt, tlat, tlon)
                grid = tuple(tokens.shape[:6])
                m = b.meta[name]
                meta = {"time_of_day": m["hour"][:, w, :, None, :, None, None].expand(grid),
                        "day_of_year": m["day_of_year"][:, w, :, None, :, None, None].expand(grid),
                        "lat": m["lat"][:, :, None, None].expand(grid),
                        "lon": m["lon"][:, :, None, None].expand(grid)}
                if name in b.levelled:
                    meta["level"] = m["level"][None, None, :, None, None, None].expand(grid)
                win[name] = {"tokens": tokens, "meta": meta}
            windows.append(win)
        targets = []
        for step in b.targets:
            tgt = {}
            for name, x in step.items():
                grid = tuple(x.shape[:6])
                tgt[name] = {"tokens": x, "lat": b.meta[name]["lat"][:, :, None, None].expand(grid)}
            targets.append(tgt)
        return windows, targets
