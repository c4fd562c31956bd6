"""Space in a multi-stream sample: the region of the reference box, and where it lies in each stream's grid.

Why this exists: one sample is one place on the sphere. The first stream (the *reference*, a regular lat-lon grid)
places it as an index box ``(y0, x0)`` of ``H x W`` points; its **region** is the union of those points' cells
(cell edges half-way between neighbouring coordinates, half a spacing beyond the end points, latitudes clipped
to [-90, 90]): ``[lat_first, lat_last] x [lon_first, lon_first + width]``, ``lat_first`` on the side of row 0
(north for north-to-south grids). Every other stream finds the same region in its own index space:

- **lat-lon** (:class:`LatLonMapper`): the fractional row and column of the region's centre (linear
  interpolation of the 1-D coordinates), and the ``H x W`` index box centred there (nearest grid indices; on
  the same grid this is the reference box itself). A global grid stored with its seam column repeated (longitudes
  ``0 .. 360`` inclusive) wraps over its first ``nx - 1`` columns (:attr:`~fastload.store.grid.Grid.x_period`), so
  boxes at the seam stay centred; the repeated column is never read. Its token rows come out in the reference's row order
  (:class:`ReferenceRowSampler`): a stream whose latitudes run the other way (an ocean store south-to-north beside
  ERA5's north-to-south) has its box listed from its last row up, and its start is chosen in that order too, so
  a store and its latitude-reversed copy give identical samples;
- **curvilinear** (:class:`CurvilinearMapper`): the grid point nearest the region's centre (through a
  :class:`~fastload.sampling.mesh.MeshIndex` of the grid's points, so no scan over the grid), and the ``H x W``
  index box centred on it, so the box's points are those around the centre that fall inside the region; its
  token rows stay in the grid's own row order (south to north on NEMO/ORCA grids, whose rows bend and fold near
  the North Pole, so a grid has no one row order to compare with the reference's);
- **mesh**: the region itself; the mesh tokenizer bins nodes into its cells (:mod:`fastload.sampling.mesh`).

A stream *serves* a region when the centre lies within its grid (within one grid spacing of a grid point for a
curvilinear grid, inside the coordinate range plus half a cell for a lat-lon grid) or, for a mesh, when the region
meets the nodes' latitude band and longitudes. Boxes on regional grids are moved inside the grid, never wrapped.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from .errors import ConfigError
from .sampling.mesh import MeshIndex
from .sampling.points import BoxPointSampler

__all__ = ["cell_edges", "ReferenceRegions", "LatLonMapper", "ReferenceRowSampler", "rows_reversed",
           "CurvilinearMapper", "grid_spacing"]


def cell_edges(v: np.ndarray, *, clip_lat: bool = False, what: str = "points along each axis") -> np.ndarray:
    """``(n + 1,)`` cell edges of 1-D monotonic coordinates: midpoints, ends half a spacing beyond (``what``: the
    coordinates, for the error)."""
    v = np.asarray(v, np.float64)
    if v.size < 2:
        raise ConfigError(f"the grid needs at least two {what} to define cells, it has {v.size}")
    e = np.concatenate([[v[0] - (v[1] - v[0]) / 2], (v[1:] + v[:-1]) / 2, [v[-1] + (v[-1] - v[-2]) / 2]])
    return np.clip(e, -90.0, 90.0) if clip_lat else e


class ReferenceRegions:
    """Regions of index boxes on the reference (regular lat-lon) grid."""

    def __init__(self, grid: Any, box: tuple[int, int, int]):
        if grid.kind != "latlon":
            raise ConfigError(f"the first stream sets each sample's place and must be on a regular lat-lon grid; "
                              f"it is {grid.kind!r} (put a lat-lon stream first)")
        self.ny, self.nx, self.periodic = int(grid.ny), int(grid.nx), bool(grid.periodic_x)
        self.H, self.W = int(box[1]), int(box[2])
        self.yedge = cell_edges(grid.lat, clip_lat=True, what="latitudes")
        lon = np.unwrap(np.asarray(grid.lon, np.float64), period=360.0)
        if lon.size > 1 and np.any(np.diff(lon) <= 0):
            raise ConfigError(f"the first stream's longitudes must increase (after unwrapping across 0/360); they "
                              f"run {_ends(grid.lon)}")
        xe = cell_edges(lon, what="longitudes")
        if self.periodic:
            xe[-1] = xe[0] + 360.0
        self.xedge = xe

    def regions(self, boxes: np.ndarray) -> np.ndarray:
        """``(S, 4)`` ``[lat_first, lat_last, lon_first, width]`` of boxes ``(t0, y0, x0)``."""
        b = np.asarray(boxes, np.int64).reshape(-1, 3)
        y0, x0 = b[:, 1], b[:, 2]
        k = x0 + self.W
        wrap = k > self.nx
        last = np.where(wrap, self.xedge[np.where(wrap, k - self.nx, 0)] + 360.0, self.xedge[np.minimum(k, self.nx)])
        first = self.xedge[x0]
        return np.stack([self.yedge[y0], self.yedge[y0 + self.H], first % 360.0, last - first], axis=1)


def _ends(v: np.ndarray) -> str:
    """``first, second .. last`` of 1-D coordinates, for messages."""
    v = np.asarray(v, np.float64).reshape(-1)
    return f"{v[0]:g}, {v[1]:g} .. {v[-1]:g}" if v.size > 2 else ", ".join(f"{x:g}" for x in v)


def centres(regions: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Centre latitude and longitude ([0, 360)) of regions."""
    r = np.asarray(regions, np.float64).reshape(-1, 4)
    return (r[:, 0] + r[:, 1]) / 2.0, (r[:, 2] + r[:, 3] / 2.0) % 360.0


def _start(f: np.ndarray, n: int, size: int, periodic: bool) -> np.ndarray:
    s = np.round(f - (size - 1) / 2.0).astype(np.int64)
    return s % n if periodic else np.clip(s, 0, n - size)


def rows_reversed(grid: Any, reference: Any) -> bool:
    """Whether the rows of lat-lon ``grid`` run the other way from those of the ``reference`` lat-lon grid (one
    south-to-north, the other north-to-south)."""
    def ascending(g: Any) -> bool:
        lat = np.asarray(g.lat, np.float64).reshape(-1)
        return bool(lat[-1] > lat[0])

    return ascending(grid) != ascending(reference)


class LatLonMapper:
    """Index boxes of ``H x W`` points centred on regions' centres, on a regular lat-lon stream grid.

    ``reversed_rows`` (:func:`rows_reversed`): the grid's rows run the other way from the reference's; the box start
    is then rounded in the reference's row order (mirrored indices), so that the box is the one the same grid
    stored the reference's way round would give (ties of an even ``H`` go the same way in both).
    """

    def __init__(self, grid: Any, H: int, W: int, *, reversed_rows: bool = False):
        self.ny, self.nx = int(grid.ny), int(grid.nx)
        self.H, self.W = int(H), int(W)
        period = grid.x_period  # a global grid repeating its seam column wraps over its first nx - 1 columns
        self.periodic = period > 0
        self._period = period if self.periodic else self.nx
        self.reversed_rows = bool(reversed_rows)
        lat = np.asarray(grid.lat, np.float64)
        self._lat, self._rows = (lat, np.arange(lat.size, dtype=np.float64)) if lat[-1] > lat[0] else \
            (lat[::-1], np.arange(lat.size, dtype=np.float64)[::-1])
        ye = cell_edges(self._lat, clip_lat=True, what="latitudes")
        self.lat_range = (float(ye[0]), float(ye[-1]))
        lon = np.unwrap(np.asarray(grid.lon, np.float64)[:self._period], period=360.0)
        if lon.size > 1 and np.any(np.diff(lon) <= 0):
            raise ConfigError(f"a lat-lon stream's longitudes must increase (after unwrapping across 0/360); they "
                              f"run {_ends(grid.lon)}")
        self._lon0 = float(lon[0])
        rel = lon - lon[0]
        if self.periodic:
            self._xp, self._fp = np.append(rel, 360.0), np.arange(lon.size + 1, dtype=np.float64)
            self._half = (0.0, 0.0)
        else:
            self._xp, self._fp = rel, np.arange(lon.size, dtype=np.float64)
            xe = cell_edges(lon, what="longitudes")
            self._half = (float(lon[0] - xe[0]), float(xe[-1] - lon[-1]))

    def starts(self, regions: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """``(S, 2)`` box starts ``(y0, x0)`` and ``(S,)`` whether the grid serves each region."""
        clat, clon = centres(regions)
        fy = np.interp(clat, self._lat, self._rows)
        ok = (clat >= self.lat_range[0]) & (clat <= self.lat_range[1])
        if self.periodic:
            fx = np.interp((clon - self._lon0) % 360.0, self._xp, self._fp) % self._period
        else:
            rel = (clon - (self._lon0 - self._half[0])) % 360.0 - self._half[0]
            ok &= rel <= self._xp[-1] + self._half[1]
            fx = np.interp(rel, self._xp, self._fp)
        if self.reversed_rows:  # round in the reference's row order, then back to the grid's own index
            y0 = self.ny - self.H - _start(self.ny - 1 - fy, self.ny, self.H, False)
        else:
            y0 = _start(fy, self.ny, self.H, False)
        return np.stack([y0, _start(fx, self._period, self.W, self.periodic)], 1), ok


class ReferenceRowSampler(BoxPointSampler):
    """:class:`~fastload.sampling.points.BoxPointSampler` of a lat-lon stream whose rows run the other way from the
    reference's: each index box ``(y0, x0)`` is listed from its last row up, so token row ``b`` slot
    ``j * tlon + k`` is the point ``(y0 + H - 1 - (b * tlat + j), x0 + c * tlon + k)``: token row 0 lies on the
    reference's row-0 side (north for a north-to-south reference), like the reference's and the mesh streams' tokens.

    Only the point lists change (token centres and point counts are reordered with them): the gather kernels, the
    plan, local coefficients and :class:`~fastload.sampling.points.PointTokenMeta` all follow the lists, so the
    samples are written in this order directly, with no copy of the output. A grid that repeats places (a
    duplicated seam column) keeps the copy the store-order listing keeps.
    """

    def points(self, where, field, *, jit=None):
        pts, count, lat, lon = super().points(where, field, jit=jit)
        S = pts.shape[0]
        _, nlat, nlon = field.num_tokens
        _, tlat, tlon = field.token_size
        flipped = pts.reshape(S, nlat, nlon, tlat, tlon)[:, ::-1, :, ::-1, :]
        return (np.ascontiguousarray(flipped).reshape(S, -1), np.ascontiguousarray(count[:, ::-1]),
                np.ascontiguousarray(lat[:, ::-1]), np.ascontiguousarray(lon[:, ::-1]))


def grid_spacing(lat: np.ndarray, lon: np.ndarray) -> float:
    """Largest distance (degrees, longitude scaled by cos latitude) between neighbouring points of a 2-D grid."""
    lat, lon = np.asarray(lat, np.float64), np.asarray(lon, np.float64)
    out = 0.0
    for ax in (0, 1):
        if lat.shape[ax] < 2:
            continue
        dlat = np.diff(lat, axis=ax)
        dlon = (np.diff(lon, axis=ax) + 180.0) % 360.0 - 180.0
        mlat = (lat[1:] + lat[:-1]) / 2 if ax == 0 else (lat[:, 1:] + lat[:, :-1]) / 2
        out = max(out, float(np.sqrt(dlat**2 + (np.cos(np.deg2rad(mlat)) * dlon) ** 2).max()))
    return out


class CurvilinearMapper:
    """Index boxes of ``H x W`` points centred on the grid point nearest each region's centre (curvilinear)."""

    def __init__(self, grid: Any, H: int, W: int, *, jit: bool | None = None):
        self.ny, self.nx, self.periodic = int(grid.ny), int(grid.nx), bool(grid.periodic_x)
        self.H, self.W = int(H), int(W)
        self.jit = jit
        self.index = MeshIndex(np.asarray(grid.lat).ravel(), np.asarray(grid.lon).ravel())
        self.radius = grid_spacing(grid.lat, grid.lon)

    def starts(self, regions: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        clat, clon = centres(regions)
        node = self.index.nearest(clat, clon, self.radius, jit=self.jit)
        ok = node >= 0
        yc, xc = np.divmod(np.maximum(node, 0), self.nx)
        y0 = np.clip(yc - (self.H - 1) // 2, 0, self.ny - self.H)
        x0 = xc - (self.W - 1) // 2
        x0 = x0 % self.nx if self.periodic else np.clip(x0, 0, self.nx - self.W)
        return np.stack([y0, x0], axis=1).astype(np.int64), ok
