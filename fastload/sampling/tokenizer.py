"""Tokenizers: the one interface the reader and :func:`fastload.extract` use to turn boxes into token tensors.

A tokenizer owns everything that depends on the kind of grid: which boxes are valid, which chunks a batch needs
(:meth:`BaseTokenizer.plan`), how decoded chunks become token tensors (:meth:`BaseTokenizer.gather`), and the
per-token metadata for positional encodings (:meth:`BaseTokenizer.meta`). The reader only calls these four
methods, so a new grid kind (an unstructured mesh, with its own plan and kernel) is a new subclass registered
with :func:`register_tokenizer`, not a change to the reader.

Structured grids (regular lat-lon, curvilinear ocean grids) share the box geometry, the chunk plan and the gather
kernel, and differ only in where token centres are: :class:`LatLonTokenizer` reads 1-D coordinates,
:class:`CurvilinearTokenizer` 2-D ones. A token's centre is the mean latitude of its points and the circular mean
of their longitudes (unwrapped around the token's first point, in [0, 360)); its time is the time of its first
step, with hour of day and (0-based, fractional) day of year.

A curvilinear grid that stores one place at several indices (NEMO/ORCA: the east-west halo columns and the rows of
the tripolar north fold, :mod:`._copies`) keeps each place once per sample: :class:`CurvilinearTokenizer` gives
such a grid's fields :class:`SlotTokenMeta`, whose ``valid`` marks the slots that repeat a place already in the
sample, and writes 0 into them, exactly as a multi-stream sample's point slots
(:class:`~.points.BoxPointSampler`). Grids without copies are untouched (plain :class:`TokenMeta`). That masking
is for a consumer that takes the slot mask (the Multiformer); ``mask_copies=False`` keeps the store's values at
the copies and plain :class:`TokenMeta` (the forecaster's global tiles, which work in index space).
"""

from __future__ import annotations

import abc
import dataclasses
from collections.abc import Mapping
from typing import Any, ClassVar

import numpy as np

from ..errors import ConfigError
from ._copies import grid_copies, kept_slots
from .chunks import BatchPlan, FieldLayout, field_layouts, plan_batch
from .geometry import GridExtent, check_boxes
from .neighborhood import as_out_array, gather_batch, month_table

__all__ = [
    "TokenMeta",
    "SlotTokenMeta",
    "BaseTokenizer",
    "StructuredTokenizer",
    "LatLonTokenizer",
    "CurvilinearTokenizer",
    "TOKENIZERS",
    "register_tokenizer",
    "build_tokenizer",
]


@dataclasses.dataclass(frozen=True, kw_only=True, slots=True, eq=False)
class TokenMeta:
    """Per-token metadata of one field of a batch (shapes for a batch of ``B`` samples)."""

    t_index: np.ndarray
    """``(B, nt)`` int64: store time index of each time token's first step."""
    time: np.ndarray | None
    """``(B, nt)`` datetime64[ns] of each time token's first step; ``None`` when the store has no time axis."""
    hour: np.ndarray
    """``(B, nt)`` float32: hour of day (fractional) of ``time``; NaN without a time axis."""
    day_of_year: np.ndarray
    """``(B, nt)`` float32: days since 1 January 00:00 of the same year (0-based, fractional); NaN without time."""
    lat: np.ndarray
    """``(B, nlat, nlon)`` float64: latitude of each spatial token's centre (degrees)."""
    lon: np.ndarray
    """``(B, nlat, nlon)`` float64: longitude of each spatial token's centre (degrees, in [0, 360))."""
    level: np.ndarray
    """``(L,)`` float64: level value of each output level (NaN for a field without levels)."""

    def to_torch(self, device: Any = None) -> dict[str, Any]:
        """The numeric metadata as float32 torch tensors (``time`` as int64 nanoseconds since 1970)."""
        import torch

        out = {k: torch.as_tensor(np.asarray(getattr(self, k), np.float32), device=device)
               for k in ("hour", "day_of_year", "lat", "lon", "level")}
        out["t_index"] = torch.as_tensor(self.t_index, device=device)
        if self.time is not None:
            out["time"] = torch.as_tensor(self.time.astype("datetime64[ns]").astype(np.int64), device=device)
        return out


@dataclasses.dataclass(frozen=True, kw_only=True, slots=True, eq=False)
class SlotTokenMeta(TokenMeta):
    """:class:`TokenMeta` plus which of each token's ``K = tlat * tlon`` point slots hold a place of their own."""

    valid: np.ndarray
    """``(B, nlat, nlon, K)`` bool, slots row-major over ``tlat x tlon``: False for a slot whose place is already in
    an earlier slot of the sample (a halo or north-fold copy; its value is 0)."""

    def to_torch(self, device: Any = None) -> dict[str, Any]:
        """As :meth:`TokenMeta.to_torch`, plus ``valid`` (bool)."""
        import torch

        out = TokenMeta.to_torch(self, device)
        out["valid"] = torch.as_tensor(self.valid, device=device)
        return out


class BaseTokenizer(abc.ABC):
    """What the reader needs from a grid kind: validate boxes, plan chunks, gather tokens, describe tokens.

    Parameters
    ----------
    grid : Grid-like
        ``kind``, ``lat``, ``lon``, ``periodic_x``, ``ny``, ``nx`` (a :class:`fastload.store.Grid`).
    time : datetime64 array or None
        The store's time axis.
    config : SamplingConfig
        Fields, token geometry, ``time_step``, ``out_dtype``.
    layouts : {field: FieldLayout}
        Where each field's data sit in its array's chunks.
    """

    kind: ClassVar[str] = ""

    def __init__(self, grid: Any, time: np.ndarray | None, config: Any, layouts: Mapping[str, FieldLayout]):
        self.grid = grid
        self.time = None if time is None else np.asarray(time).astype("datetime64[ns]")
        self.config = config
        missing = [f.name for f in config.fields if f.name not in layouts]
        if missing:
            raise ConfigError(f"tokenizer: no layout for field(s) {missing}")
        self.layouts = {f.name: layouts[f.name] for f in config.fields}

    @abc.abstractmethod
    def check_boxes(self, boxes: Any) -> np.ndarray:
        """Validated placements as an int64 array (ConfigError naming the first bad one)."""

    @abc.abstractmethod
    def plan(self, boxes: np.ndarray) -> BatchPlan:
        """Unique chunks per array and per-field index tables of a batch."""

    @abc.abstractmethod
    def gather(self, slots: Mapping[str, np.ndarray], tables: Mapping[str, np.ndarray], boxes: np.ndarray,
               outs: Mapping[str, Any], *, coefficients: Mapping[str, tuple[np.ndarray, np.ndarray]] | None = None,
               month_of: np.ndarray | None = None, samples: slice | None = None, jit: bool | None = None) -> None:
        """Write the token tensors of ``boxes[samples]`` into ``outs[field][samples]``."""

    @abc.abstractmethod
    def meta(self, boxes: np.ndarray) -> dict[str, TokenMeta]:
        """Per-field token metadata of a batch."""

    def month_table(self, boxes: np.ndarray, months: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
        """Coefficient months of a batch and ``month_of`` (see :func:`~.neighborhood.month_table`)."""
        return month_table(self.time, boxes, self.config.box[0], self.config.time_step, months)


class StructuredTokenizer(BaseTokenizer):
    """Shared machinery of grids indexed by ``(y, x)``: boxes, chunk plan and gather kernel."""

    def __init__(self, grid: Any, time: np.ndarray | None, config: Any, layouts: Mapping[str, FieldLayout]):
        super().__init__(grid, time, config, layouts)
        self.extent = GridExtent(nt=None if self.time is None else int(self.time.shape[0]), ny=int(grid.ny),
                                 nx=int(grid.nx), periodic_x=bool(grid.periodic_x), time=self.time,
                                 note=getattr(grid, "seam_note", ""))

    def check_boxes(self, boxes: Any) -> np.ndarray:
        return check_boxes(boxes, self.extent, self.config.box, self.config.time_step)

    def plan(self, boxes: np.ndarray) -> BatchPlan:
        return plan_batch(boxes, self.layouts, self.config.box, self.config.time_step, extent=self.extent)

    def gather(self, slots, tables, boxes, outs, *, coefficients=None, month_of=None, samples=None, jit=None):
        gather_batch(self.config, self.layouts, slots, tables, boxes, outs, coefficients=coefficients,
                     month_of=month_of, samples=samples, jit=jit)

    @abc.abstractmethod
    def token_centres(self, y: np.ndarray, x: np.ndarray, nlat: int, nlon: int) -> tuple[np.ndarray, np.ndarray]:
        """Centre ``(lat, lon)`` ``(B, nlat, nlon)`` of tokens over row indices ``y (B, H)``, columns ``x (B, W)``."""

    def meta(self, boxes: np.ndarray) -> dict[str, TokenMeta]:
        b = np.asarray(boxes, dtype=np.int64)
        dt = self.config.time_step
        out: dict[str, TokenMeta] = {}
        done: dict[tuple, tuple] = {}  # fields of the same token geometry: computed once, copied for the others
        for f in self.config.fields:
            nt, nlat, nlon = f.num_tokens
            tt, tlat, tlon = f.token_size
            key = (*f.num_tokens, *f.token_size)
            if key in done:
                t_idx, time, hour, doy, lat, lon = (None if a is None else a.copy() for a in done[key])
            else:
                t_idx = b[:, 0:1] + np.arange(nt) * (tt * dt)  # (B, nt)
                if self.time is None:
                    time = None
                    hour, doy = np.full(t_idx.shape, np.nan, np.float32), np.full(t_idx.shape, np.nan, np.float32)
                else:
                    time = self.time[t_idx]
                    hour = ((time - time.astype("datetime64[D]")) / np.timedelta64(1, "h")).astype(np.float32)
                    doy = ((time - time.astype("datetime64[Y]")) / np.timedelta64(1, "D")).astype(np.float32)
                y = b[:, 1:2] + np.arange(nlat * tlat)
                x = b[:, 2:3] + np.arange(nlon * tlon)
                if self.extent.periodic_x:
                    x %= self.extent.nx
                lat, lon = self.token_centres(y, x, nlat, nlon)
                done[key] = (t_idx, time, hour, doy, lat, lon)
            lay = self.layouts[f.name]
            level = np.full(1, np.nan) if lay.levels is None else np.asarray(lay.levels, np.float64)
            out[f.name] = TokenMeta(t_index=t_idx, time=time, hour=hour, day_of_year=doy, lat=lat, lon=lon,
                                    level=level)
        return out


def _circular_mean(lon: np.ndarray, axes: tuple[int, ...]) -> np.ndarray:
    """Mean longitude over ``axes``, unwrapped around the first point so a token across the seam averages right."""
    first = lon
    for a in axes:
        first = np.take(first, [0], axis=a)
    d = (lon - first + 180.0) % 360.0 - 180.0
    return (np.squeeze(first, axis=axes) + d.mean(axis=axes)) % 360.0


class LatLonTokenizer(StructuredTokenizer):
    """Regular grids with 1-D latitude ``(NY,)`` and longitude ``(NX,)``."""

    kind = "latlon"

    def token_centres(self, y, x, nlat, nlon):
        lat1 = np.asarray(self.grid.lat, np.float64)
        lon1 = np.asarray(self.grid.lon, np.float64)
        B = y.shape[0]
        la = lat1[y].reshape(B, nlat, y.shape[1] // nlat).mean(axis=2)  # (B, nlat)
        lo = _circular_mean(lon1[x].reshape(B, nlon, x.shape[1] // nlon), (2,))  # (B, nlon)
        return (np.ascontiguousarray(np.broadcast_to(la[:, :, None], (B, nlat, nlon))),
                np.ascontiguousarray(np.broadcast_to(lo[:, None, :], (B, nlat, nlon))))


class CurvilinearTokenizer(StructuredTokenizer):
    """Curvilinear grids (e.g. NEMO/ORCA) with 2-D latitude and longitude ``(NY, NX)``; x may be periodic.

    A grid that repeats places (ORCA's halo columns and north fold) keeps each once per sample: its fields' metadata
    is :class:`SlotTokenMeta` and the repeating slots are written 0 (see the module notes), unless ``mask_copies``
    is False: then the copies hold the store's values and the metadata is plain :class:`TokenMeta`.

    Parameters
    ----------
    grid, time, config, layouts
        As :class:`BaseTokenizer`.
    mask_copies : bool
        Make the slots that repeat a place already in the sample padding (default); False reads them as stored.
    """

    kind = "curvilinear"

    def __init__(self, grid: Any, time: np.ndarray | None, config: Any, layouts: Mapping[str, FieldLayout], *,
                 mask_copies: bool = True):
        super().__init__(grid, time, config, layouts)
        self.mask_copies = bool(mask_copies)
        """Whether copies are padding (may be changed before a batch is read, as :func:`fastload.extract` does)."""

    @property
    def same(self) -> np.ndarray | None:
        """:func:`~._copies.same_points` of the grid, computed once per grid (:func:`~._copies.grid_copies`);
        None when every index is its own place or ``mask_copies`` is False."""
        return grid_copies(self.grid) if self.mask_copies else None

    def kept(self, boxes: np.ndarray, field: Any) -> np.ndarray:
        """The slots of each box whose place is not in an earlier slot of its sample.

        Parameters
        ----------
        boxes : array_like of int, shape (B, 3)
            ``(t0, y0, x0)`` placements.
        field : FieldConfig
            Token geometry (``num_tokens``, ``token_size``).

        Returns
        -------
        ndarray of bool, shape (B, nlat, nlon, K)
            ``K = tlat * tlon`` slots per token, row-major; False for a copy of a place already in the sample (all
            True on a grid without copies, or with ``mask_copies`` False).
        """
        same = self.same
        b = np.asarray(boxes, np.int64).reshape(-1, 3)
        _, nlat, nlon = field.num_tokens
        _, tlat, tlon = field.token_size
        if same is None:
            return np.ones((b.shape[0], nlat, nlon, tlat * tlon), bool)
        y = b[:, 1:2] + np.arange(nlat * tlat)
        x = b[:, 2:3] + np.arange(nlon * tlon)
        if self.extent.periodic_x:
            x %= self.extent.nx
        flat = (y[:, :, None] * self.extent.nx + x[:, None, :]).reshape(b.shape[0], nlat, tlat, nlon, tlon)
        return kept_slots(same, flat.transpose(0, 1, 3, 2, 4).reshape(b.shape[0], nlat, nlon, tlat * tlon))

    def gather(self, slots, tables, boxes, outs, *, coefficients=None, month_of=None, samples=None, jit=None):
        super().gather(slots, tables, boxes, outs, coefficients=coefficients, month_of=month_of, samples=samples,
                       jit=jit)
        if self.same is None:
            return
        sl = samples if samples is not None else slice(None)
        b = np.asarray(boxes, np.int64)[sl]
        for f in self.config.fields:
            drop = ~self.kept(b, f)  # (S, nlat, nlon, K)
            if not drop.any():
                continue
            _, nlat, nlon = f.num_tokens
            _, tlat, tlon = f.token_size
            out = as_out_array(outs[f.name][sl], self.config.out_dtype)  # (S, L, nt, nlat, nlon, tt, tlat, tlon)
            np.copyto(out, 0, where=drop.reshape(-1, 1, 1, nlat, nlon, 1, tlat, tlon))

    def meta(self, boxes: np.ndarray) -> dict[str, TokenMeta]:
        out = super().meta(boxes)
        if self.same is None:
            return out
        return {name: SlotTokenMeta(**{k: getattr(m, k) for k in TokenMeta.__slots__},
                                    valid=self.kept(boxes, self.config.field(name))) for name, m in out.items()}

    def token_centres(self, y, x, nlat, nlon):
        lat2 = np.asarray(self.grid.lat, np.float64)
        lon2 = np.asarray(self.grid.lon, np.float64)
        B = y.shape[0]
        yy, xx = y[:, :, None], x[:, None, :]
        la = lat2[yy, xx].reshape(B, nlat, y.shape[1] // nlat, nlon, x.shape[1] // nlon)  # (B, nlat, tlat, nlon, tlon)
        lo = lon2[yy, xx].reshape(la.shape)
        return la.mean(axis=(2, 4)), _circular_mean(lo, (2, 4))


TOKENIZERS: dict[str, type[BaseTokenizer]] = {"latlon": LatLonTokenizer, "curvilinear": CurvilinearTokenizer}
"""Grid kind -> tokenizer class."""


def register_tokenizer(kind: str, cls: type[BaseTokenizer]) -> None:
    """Make ``build_tokenizer`` use ``cls`` for stores whose ``grid.kind`` is ``kind``."""
    if not (isinstance(cls, type) and issubclass(cls, BaseTokenizer)):
        raise ConfigError(f"register_tokenizer: {cls!r} is not a BaseTokenizer subclass")
    TOKENIZERS[kind] = cls


def build_tokenizer(store: Any, config: Any, layouts: Mapping[str, FieldLayout] | None = None) -> BaseTokenizer:
    """The tokenizer for ``store``'s grid kind (``store.grid``, ``store.time``, and field layouts from the store)."""
    kind = store.grid.kind
    if kind not in TOKENIZERS:
        raise ConfigError(f"store {store.path!r} has a {kind!r} grid; no tokenizer for it (known: {list(TOKENIZERS)})")
    if layouts is None:
        layouts = field_layouts(store, config)
    return TOKENIZERS[kind](store.grid, store.time, config, layouts)
