"""What every peer loader shares: the sample geometry as plain values, box arithmetic, tokenisation, the base class.

Why this exists: a side-by-side comparison is only fair when every loader cuts the same boxes and lays them out
the same way. This module pins the geometry down once, in the store's own index space (fastload/DESIGN.md, "The
gather contract")::

    out[l, a, b, c, i, j, k] = data[t0 + (a*tt + i)*dt, lev[l], y0 + b*tlat + j, (x0 + c*tlon + k) mod NX]

(modulo only on global grids), and hands every peer the same :class:`StoreSpec`: which array each field lives in,
where its axes are, which field and level indices it uses. A peer turns an ``(B, 3)`` array of boxes
``(t0, y0, x0)`` into ``{field: (B, L, nt, nlat, nlon, tt, tlat, tlon) float32}`` of raw values (no
normalisation), through its own library, so the harness can check it against fastload bit for bit.

A :class:`StoreSpec` is plain, picklable data, so process workers of a DataLoader receive it as is.
"""

from __future__ import annotations

import abc
import dataclasses
import importlib.util
from collections.abc import Iterator, Sequence
from typing import Any, ClassVar

import numpy as np

__all__ = [
    "FieldSpec",
    "StoreSpec",
    "BasePeer",
    "DataLoaderPeer",
    "spec_from_store",
    "x_ranges",
    "tokenize",
    "as_tlyx",
]


@dataclasses.dataclass(frozen=True, kw_only=True, slots=True)
class FieldSpec:
    """One field of a sampling config, resolved against a store (all numbers are store indices)."""

    name: str
    """Field name as in the config."""
    array: str
    """Key of the zarr array that holds the field."""
    axes: tuple[int | None, int | None, int | None, int, int]
    """Positions of the (time, field, level, y, x) axes in the array; None where the array lacks the axis."""
    field_index: int | None
    """Index along the field axis (AtmoRep ``data`` arrays), else None."""
    level_index: tuple[int, ...] | None
    """Store indices of the config's levels along the level axis, else None."""
    num_tokens: tuple[int, int, int]
    """Tokens per sample along (time, lat, lon)."""
    token_size: tuple[int, int, int]
    """Grid points per token along (time, lat, lon)."""

    @property
    def box(self) -> tuple[int, int, int]:
        """Grid points (time steps, lat, lon) of one sample."""
        return tuple(n * s for n, s in zip(self.num_tokens, self.token_size))  # type: ignore[return-value]

    @property
    def num_levels(self) -> int:
        return 1 if self.level_index is None else len(self.level_index)

    @property
    def sample_shape(self) -> tuple[int, ...]:
        """``(L, nt, nlat, nlon, tt, tlat, tlon)``."""
        return (self.num_levels, *self.num_tokens, *self.token_size)


@dataclasses.dataclass(frozen=True, kw_only=True, slots=True)
class StoreSpec:
    """A store and the fields to cut from it: everything a peer needs, as plain values."""

    path: str
    """Local path of the store folder."""
    fields: tuple[FieldSpec, ...]
    """The config's fields, in order."""
    time_step: int
    """Store time indices between consecutive time points of a sample."""
    ny: int
    """Grid points along y (latitude)."""
    nx: int
    """Grid points along x (longitude)."""
    periodic_x: bool
    """Longitude wraps (global grid)."""
    zarr_format: int
    """2 or 3."""

    @property
    def box(self) -> tuple[int, int, int]:
        return self.fields[0].box

    @property
    def time_span(self) -> int:
        """Store time indices one sample spans: ``(box_t - 1) * time_step + 1``."""
        return (self.box[0] - 1) * self.time_step + 1

    @property
    def arrays(self) -> tuple[str, ...]:
        """The arrays the fields live in, each once, in field order."""
        return tuple(dict.fromkeys(f.array for f in self.fields))

    def sample_nbytes(self) -> int:
        """Bytes of one sample of all fields as float32 (the useful bytes)."""
        return sum(4 * int(np.prod(f.sample_shape)) for f in self.fields)


def spec_from_store(store: Any, config: Any) -> StoreSpec:
    """Resolve a :class:`fastload.SamplingConfig` against an opened :class:`fastload` store.

    Parameters
    ----------
    store
        The object ``fastload.open_store`` returns (uses ``fields``, ``grid``, ``zarr_format``,
        ``level_indices`` and ``check``).
    config : fastload.SamplingConfig

    Returns
    -------
    StoreSpec
    """
    store.check(config)
    fields = []
    for fc in config.fields:
        info = store.fields[fc.name]
        t, f, lev, y, x = info.axes
        level_index = None
        if fc.levels is not None:
            level_index = tuple(int(i) for i in store.level_indices(fc.name, fc.levels))
        fields.append(
            FieldSpec(
                name=fc.name,
                array=info.array,
                axes=(t, f, lev, y, x),
                field_index=info.field_index,
                level_index=level_index,
                num_tokens=tuple(fc.num_tokens),
                token_size=tuple(fc.token_size),
            )
        )
    return StoreSpec(
        path=str(store.path),
        fields=tuple(fields),
        time_step=int(config.time_step),
        ny=int(store.grid.ny),
        nx=int(store.grid.nx),
        periodic_x=bool(store.grid.periodic_x),
        zarr_format=int(store.zarr_format),
    )


def x_ranges(x0: int, width: int, nx: int, periodic: bool) -> list[tuple[int, int]]:
    """Half-open x index ranges of a box: one, or two when it crosses the 0/360 seam of a global grid."""
    if x0 < 0 or x0 >= nx:
        raise ValueError(f"x0={x0} outside the grid of {nx} points")
    if x0 + width <= nx:
        return [(x0, x0 + width)]
    if not periodic:
        raise ValueError(f"box x0={x0} width={width} runs past the edge of a regional grid of {nx} points")
    return [(x0, nx), (0, x0 + width - nx)]


def selection(field: FieldSpec, spec: StoreSpec, t0: int, y0: int, xr: tuple[int, int]) -> tuple[Any, ...]:
    """An orthogonal selection (one entry per array axis) of one box of ``field`` over the x range ``xr``."""
    bt, by, _ = field.box
    t, f, lev, y, x = field.axes
    ndim = 1 + max(a for a in field.axes if a is not None)
    sel: list[Any] = [slice(None)] * ndim
    if t is not None:
        sel[t] = slice(t0, t0 + (bt - 1) * spec.time_step + 1, spec.time_step)
    if f is not None:
        sel[f] = field.field_index
    if lev is not None:
        sel[lev] = list(field.level_index) if field.level_index is not None else slice(None)
    sel[y] = slice(y0, y0 + by)
    sel[x] = slice(*xr)
    return tuple(sel)


def as_tlyx(block: np.ndarray, field: FieldSpec) -> np.ndarray:
    """Bring what :func:`selection` read to ``(T, L, H, W)``: drop nothing, add the absent time/level axes.

    The field axis is gone (an integer index); the remaining axes keep their array order, which for every
    layout fastload reads is time, level, y, x. A field without time is broadcast over the box's time points.
    """
    t, _, lev, _, _ = field.axes
    if lev is None:
        block = block[:, None] if t is not None else block[None]
    if t is None:
        block = np.broadcast_to(block[None], (field.box[0], *block.shape))
    return block


def tokenize(block: np.ndarray, field: FieldSpec) -> np.ndarray:
    """``(T, L, H, W)`` -> ``(L, nt, nlat, nlon, tt, tlat, tlon)`` by reshape and transpose (a copy)."""
    nt, nlat, nlon = field.num_tokens
    tt, tlat, tlon = field.token_size
    L = block.shape[1]
    v = block.reshape(nt, tt, L, nlat, tlat, nlon, tlon)
    return np.ascontiguousarray(v.transpose(2, 0, 3, 5, 1, 4, 6), dtype=np.float32)


class BasePeer(abc.ABC):
    """A loader we compare against: same boxes in, same token tensors out.

    Subclasses set :attr:`name`, :attr:`requires` and :attr:`description`, implement :meth:`iter_batches`,
    and say how many chunk decodes a batch costs them in :attr:`decode_model` (used for the decoded-bytes
    column, which peers do not report themselves).

    Parameters
    ----------
    spec : StoreSpec
        Store and fields.
    workers : int
        Worker processes (or threads, or concurrency limit) the peer may use.
    latency_ms : float
        Delay added to every storage request (remote-like scenarios); 0 for none.
    """

    name: ClassVar[str]
    requires: ClassVar[tuple[str, ...]] = ()
    description: ClassVar[str]
    decode_model: ClassVar[str] = "per_sample"
    """``per_sample``: every sample decodes the chunks it touches (no cache shared between samples);
    ``per_window``: every distinct time window of a batch decodes the whole globe of each field;
    ``reported``: the peer measures it (:meth:`counters`)."""
    supports_latency: ClassVar[bool] = True

    def __init__(self, spec: StoreSpec, *, workers: int = 2, latency_ms: float = 0.0):
        self.spec = spec
        self.workers = int(workers)
        self.latency_ms = float(latency_ms)

    @classmethod
    def unavailable(cls, latency_ms: float = 0.0) -> str | None:
        """Why this peer cannot run here (a missing package, an unsupported scenario), or None when it can."""
        missing = [m for m in cls.requires if importlib.util.find_spec(m) is None]
        if missing:
            return f"not installed: {', '.join(missing)}"
        if latency_ms and not cls.supports_latency:
            return "no way to inject latency into this peer's storage layer"
        return None

    @abc.abstractmethod
    def iter_batches(self, batches: Sequence[np.ndarray]) -> Iterator[dict[str, np.ndarray]]:
        """Yield, for each ``(B, 3)`` int array of boxes, ``{field: (B, L, nt, nlat, nlon, tt, tlat, tlon)}``."""

    def counters(self) -> dict[str, float] | None:
        """I/O counters of the last pass the peer measured itself (``decoded_bytes``, ``stored_bytes``,
        ``cache_hits``, ``cache_misses``), or None."""
        return None

    @abc.abstractmethod
    def close(self) -> None:
        """Release workers and open handles; safe to call twice."""

    def __enter__(self) -> BasePeer:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class DataLoaderPeer(BasePeer):
    """A peer whose batches come out of a ``torch.utils.data.DataLoader`` with ``workers`` forked processes.

    Subclasses build a map-style dataset and hand it to :meth:`_iterate`; closing drops the DataLoader
    iterator, which shuts its worker processes down when it is collected.
    """

    def __init__(self, spec: StoreSpec, *, workers: int = 2, latency_ms: float = 0.0):
        super().__init__(spec, workers=workers, latency_ms=latency_ms)
        self._iter: Any = None

    def _flat_boxes(self, batches: Sequence[np.ndarray]) -> tuple[np.ndarray, int] | None:
        """All boxes as one ``(N, 3)`` int64 array and the common batch size, or None when there are no batches.

        Raises ValueError when the batches differ in size (a DataLoader cuts one fixed batch size).
        """
        sizes = {len(b) for b in batches}
        if len(sizes) > 1:
            raise ValueError(f"{self.name}: all batches must have the same size, got {sorted(sizes)}")
        if not batches:
            return None
        return np.concatenate([np.asarray(b, dtype=np.int64) for b in batches]), sizes.pop()

    def _iterate(self, dataset: Any, batch_size: int | None) -> Iterator[dict[str, np.ndarray]]:
        """Run ``dataset`` through a DataLoader (``batch_size=None``: its items are whole batches) and yield
        each batch as NumPy arrays; the workers are released when the iteration ends or is abandoned."""
        from torch.utils.data import DataLoader

        loader = DataLoader(
            dataset,
            batch_size=batch_size,
            shuffle=False,
            num_workers=self.workers,
            multiprocessing_context="fork" if self.workers else None,
        )
        self._iter = iter(loader)
        try:
            for batch in self._iter:
                yield {k: v.numpy() for k, v in batch.items()}
        finally:
            self.close()

    def close(self) -> None:
        # a DataLoader iterator shuts its worker processes down when it is collected (refcount drops to zero)
        self._iter = None
