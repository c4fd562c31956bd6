"""The global tiling as the forecaster consumes it: where every tile value lands, blend weights, centres, neighbours.

Why this exists: a global latent rollout encodes every tile of an overlapping tiling of the globe at one time and
decodes every tile again; the decoded tiles must then be blended back onto the grid without seams. The model side
(``model.stitch.TileBlender``, ``model.TileGeometry``) may not import fastload, so it takes plain arrays: the flat
global point index of every tile value, a positive weight per value, each tile's centre and a ``(T, K)``
neighbour table. :func:`global_tiles` builds them from a store's grid and a :class:`~fastload.config.SamplingConfig`
by reusing :mod:`.geometry` (the tiling of :func:`~.geometry.tile_grid`, the edge taper of
:func:`~.geometry.stitch`), so a ``TileBlender(index, weights, num_points)`` blends exactly what
:func:`~.geometry.stitch` blends, with the same weights, in the same tile order.

Global point space of one field: ``(L, Tp, NY, NX)`` flattened C-order, ``Tp = time_tokens * tt`` time points::

    index[i, l, a, b, c, u, v, w] = ((l * Tp + a*tt + u) * NY + y0_i + b*tlat + v) * NX + (x0_i + c*tlon + w) mod NX

(modulo only on periodic grids). Tile centres are the mean latitude of a tile's points and the circular mean of
their longitudes (as the tokenizer's token centres); neighbours are the ``K`` nearest other tiles by great-circle
distance between centres (ties broken by tile index).

Try it::

    python -c "import fastload; from fastload.sampling.tiles import global_tiles;
    s = fastload.open_store('tiny.zarr'); c = fastload.SamplingConfig.from_file('sampling.toml');
    g = global_tiles(s, c, overlap=(1, 1)); print(g.num_tiles, g.neighbors[:3])"
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from typing import Any

import numpy as np

from ..errors import ConfigError
from .geometry import GridExtent, Tiling, _taper, box_to_tokens, tile_grid
from .tokenizer import _circular_mean

__all__ = ["FieldTiles", "GlobalTiles", "global_tiles", "great_circle", "tile_centres", "nearest_tiles"]

_TIE_RAD = 1e-9  # distances closer than this (about 6 mm on Earth) count as equal; the tile index breaks the tie


@dataclasses.dataclass(frozen=True, kw_only=True, slots=True, eq=False)
class FieldTiles:
    """One field's tile values on the global grid: what ``model.stitch.TileBlender`` takes."""

    index: np.ndarray
    """``(T, L, nt, nlat, nlon, tt, tlat, tlon)`` int64: flat global point of every tile value."""
    weights: np.ndarray
    """Same shape, float64 > 0: the blend weight of every value (:func:`~.geometry.stitch`'s edge taper)."""
    grid_shape: tuple[int, int, int, int]
    """``(L, Tp, NY, NX)``: the global field the flat index points into."""

    @property
    def num_points(self) -> int:
        return int(np.prod(self.grid_shape))


@dataclasses.dataclass(frozen=True, kw_only=True, slots=True, eq=False)
class GlobalTiles:
    """An overlapping tiling of the whole grid and everything a forecaster needs to use it."""

    tiling: Tiling
    """The boxes at time 0 (:func:`~.geometry.tile_grid`); :meth:`boxes` moves them to another time."""
    overlap: tuple[int, int]
    """Requested overlap in tokens (rows, columns) of the config's first field."""
    lat: np.ndarray
    """``(T,)`` float64: tile centre latitudes (degrees)."""
    lon: np.ndarray
    """``(T,)`` float64: tile centre longitudes (degrees, [0, 360))."""
    neighbors: np.ndarray
    """``(T, K)`` int64: the K nearest other tiles of each tile, nearest first."""
    fields: dict[str, FieldTiles]
    """Field name -> its global point index and blend weights."""

    @property
    def num_tiles(self) -> int:
        return int(self.tiling.boxes.shape[0])

    @property
    def ramp(self) -> tuple[int, int]:
        """Taper width in grid points (rows, columns): the requested overlap in points."""
        return self.tiling.ramp

    def boxes(self, t0: int | Sequence[int] | np.ndarray) -> np.ndarray:
        """``(T, 3)`` int64 boxes at store time ``t0``, or ``(n, T, 3)`` for ``n`` times (not validated here:
        :func:`fastload.extract` checks them against the store)."""
        t = np.asarray(t0, dtype=np.int64)
        b = np.broadcast_to(self.tiling.boxes, t.shape + self.tiling.boxes.shape).copy()
        b[..., 0] = t[..., None]
        return b


def great_circle(lat1: Any, lon1: Any, lat2: Any, lon2: Any) -> np.ndarray:
    """Great-circle angle (radians) between points given in degrees; broadcasts (atan2 form, exact at 0 and pi)."""
    p1, p2 = np.deg2rad(np.asarray(lat1, np.float64)), np.deg2rad(np.asarray(lat2, np.float64))
    dl = np.deg2rad(np.asarray(lon2, np.float64) - np.asarray(lon1, np.float64))
    a = np.cos(p2) * np.sin(dl)
    b = np.cos(p1) * np.sin(p2) - np.sin(p1) * np.cos(p2) * np.cos(dl)
    c = np.sin(p1) * np.sin(p2) + np.cos(p1) * np.cos(p2) * np.cos(dl)
    return np.arctan2(np.hypot(a, b), c)


def nearest_tiles(lat: np.ndarray, lon: np.ndarray, k: int) -> np.ndarray:
    """``(T, k)`` int64: for each centre, the ``k`` nearest other centres (great circle), nearest first.

    Distances within ``1e-9`` rad of each other are treated as equal and ordered by tile index, so symmetric
    tilings (east and west neighbours at the same distance) give a deterministic order.
    """
    n = int(np.asarray(lat).shape[0])
    if isinstance(k, bool) or not isinstance(k, (int, np.integer)) or not 0 <= k < max(n, 1):
        raise ConfigError(f"neighbors: expected an integer in [0, {max(n - 1, 0)}] (tiles - 1), got {k!r}")
    if k == 0:
        return np.zeros((n, 0), np.int64)
    d = great_circle(lat[:, None], lon[:, None], lat[None, :], lon[None, :])  # (T, T)
    q = np.round(d / _TIE_RAD)
    np.fill_diagonal(q, np.inf)
    idx = np.broadcast_to(np.arange(n), (n, n))
    order = np.lexsort((idx, q), axis=1)  # by quantised distance, then tile index
    return np.ascontiguousarray(order[:, :k], dtype=np.int64)


def tile_centres(grid: Any, boxes: np.ndarray, box: Sequence[int]) -> tuple[np.ndarray, np.ndarray]:
    """Centre ``(lat, lon)`` ``(T,)`` of each box: mean latitude, circular-mean longitude of its points."""
    h, w = int(box[1]), int(box[2])
    y = boxes[:, 1:2] + np.arange(h)  # (T, H)
    x = boxes[:, 2:3] + np.arange(w)  # (T, W)
    if grid.periodic_x:
        x = x % int(grid.nx)
    lat, lon = np.asarray(grid.lat, np.float64), np.asarray(grid.lon, np.float64)
    if grid.kind == "latlon":
        return lat[y].mean(axis=1), _circular_mean(lon[x], (1,))
    if grid.kind == "curvilinear":
        yy, xx = y[:, :, None], x[:, None, :]
        return lat[yy, xx].mean(axis=(1, 2)), _circular_mean(lon[yy, xx], (1, 2))
    raise ConfigError(f"global tiles: a {grid.kind!r} grid has no (y, x) boxes; tiling needs a latlon or "
                      "curvilinear grid")


def _tapers(length: int, ramp: int, lo: np.ndarray, hi: np.ndarray) -> np.ndarray:
    """``(T, length)``: :func:`~.geometry._taper` of each tile, picked from its four variants by the edge flags."""
    variants = np.stack([_taper(length, ramp, a, b) for a in (False, True) for b in (False, True)])  # (4, length)
    return variants[2 * lo.astype(np.int64) + hi.astype(np.int64)]


def _field_tiles(tiling: Tiling, extent: GridExtent, num_tokens: Sequence[int], token_size: Sequence[int],
                 levels: int, time_tokens: int) -> FieldTiles:
    _, nlat, nlon = (int(v) for v in num_tokens)
    tt, tlat, tlon = (int(v) for v in token_size)
    h, w, tp = nlat * tlat, nlon * tlon, time_tokens * tt
    if (h, w) != tiling.box[1:]:
        raise ConfigError(f"global tiles: a field tiles {h} x {w} points but the tiling's box is {tiling.box[1:]}")
    ny, nx = extent.ny, extent.nx
    boxes = tiling.boxes
    y = boxes[:, 1, None] + np.arange(h)  # (T, H)
    x = boxes[:, 2, None] + np.arange(w)  # (T, W)
    if extent.periodic_x:
        x = x % nx
    lt = (np.arange(levels)[:, None] * tp + np.arange(tp)[None, :])  # (L, Tp)
    flat = ((lt[None, :, :, None, None] * ny + y[:, None, None, :, None]) * nx
            + x[:, None, None, None, :])  # (T, L, Tp, H, W)
    # the taper geometry.stitch applies to each tile (sin^2 ramps at edges shared with a neighbour), (T, H, W)
    ry, rx = tiling.ramp
    wy = _tapers(h, ry, boxes[:, 1] > 0, boxes[:, 1] + h < ny)  # (T, H)
    inner_x = np.full(len(boxes), extent.periodic_x)
    wx = _tapers(w, rx, inner_x | (boxes[:, 2] > 0), inner_x | (boxes[:, 2] + w < nx))  # (T, W)
    wts = np.broadcast_to((wy[:, :, None] * wx[:, None, :])[:, None, None], flat.shape)
    tok = (time_tokens, tt), (nlat, tlat), (nlon, tlon)
    index = np.ascontiguousarray(box_to_tokens(flat, [s for _, s in tok]), dtype=np.int64)
    weights = np.ascontiguousarray(box_to_tokens(wts, [s for _, s in tok]), dtype=np.float64)
    return FieldTiles(index=index, weights=weights, grid_shape=(levels, tp, ny, nx))


def global_tiles(store: Any, config: Any, *, overlap: Sequence[int] = (1, 1), neighbors: int = 4,
                 time_tokens: int | None = None) -> GlobalTiles:
    """The overlapping global tiling of ``store``'s grid for ``config``'s token geometry.

    Parameters
    ----------
    store : Store or Grid
        A :class:`fastload.store.Store` (its ``grid``) or a :class:`~fastload.store.grid.Grid` itself.
    config : SamplingConfig
        Fields, levels and token geometry; the tiling uses the first field's tokens (every field tiles the same
        box of points).
    overlap : (rows, columns)
        Least overlap between neighbouring tiles, in tokens of the first field (:func:`~.geometry.tile_grid`).
    neighbors : int
        K, the neighbours listed per tile.
    time_tokens : int, optional
        Time tokens per tile value in ``index``/``weights`` (default each field's ``num_tokens[0]``); a forecaster
        decodes ``readout_time_tokens``.

    Raises
    ------
    ConfigError
        An overlap, neighbour count or time-token count that does not fit, or a grid kind without boxes.
    """
    grid = getattr(store, "grid", store)
    if getattr(grid, "kind", None) not in ("latlon", "curvilinear"):
        raise ConfigError(f"global tiles: a {getattr(grid, 'kind', None)!r} grid has no (y, x) boxes; tiling needs "
                          "a latlon or curvilinear grid")
    ov = tuple(overlap)
    if len(ov) != 2 or any(isinstance(v, bool) or not isinstance(v, (int, np.integer)) for v in ov):
        raise ConfigError(f"overlap: expected two integers (rows, columns) in tokens, got {overlap!r}")
    first = config.fields[0]
    extent = GridExtent(nt=None, ny=int(grid.ny), nx=int(grid.nx), periodic_x=bool(grid.periodic_x))
    tiling = tile_grid(extent, first.num_tokens, first.token_size, overlap=ov)
    lat, lon = tile_centres(grid, tiling.boxes, tiling.box)
    nb = nearest_tiles(lat, lon, neighbors)
    fields = {}
    for f in config.fields:
        nt = f.num_tokens[0] if time_tokens is None else time_tokens
        if isinstance(nt, bool) or not isinstance(nt, (int, np.integer)) or not 1 <= nt <= f.num_tokens[0]:
            raise ConfigError(f"time_tokens: expected an integer in [1, {f.num_tokens[0]}] "
                              f"(fields.{f.name}.num_tokens[0]), got {nt!r}")
        fields[f.name] = _field_tiles(tiling, extent, f.num_tokens, f.token_size, f.num_levels, int(nt))
    return GlobalTiles(tiling=tiling, overlap=(int(ov[0]), int(ov[1])), lat=lat, lon=lon, neighbors=nb,
                       fields=fields)
