"""Unstructured meshes: a spatial index of the nodes, and the mesh tokenizer that bins nodes into token cells.

Why this exists: a FESOM-style ocean mesh (or any point data) has no index box; a token is a lat-lon cell, and the
nodes inside it vary in number. This module answers "which nodes fall in each token cell of this box" without a
scan over all nodes, and turns the answer into token tensors through the point gather (:mod:`.points`).

**Spatial index** (:class:`MeshIndex`, built once per store): nodes sorted into a regular lat-lon bucket grid
(CSR arrays ``bstart``/``bnodes``), with buckets about twice the mean node spacing. Binning a batch visits only
the buckets that overlap each sample's region (Numba :func:`._mesh_kernels.bin_nodes`; the NumPy twin tests every
node and is the brute-force check).

**Token rule** (documented in :mod:`._mesh_kernels`): the sample's region is cut into the field's
``nlat x nlon`` equal lat-lon cells; a cell keeps its ``K = tlat * tlon`` nodes nearest the cell centre (slot 0
the nearest; distance ``dlat**2 + (cos(lat_centre) * dlon)**2``, ties to the smaller node index); missing slots
are padding (value 0, ``valid`` False in :class:`~.points.PointTokenMeta`). ``count`` in the metadata says how
many nodes a cell had, so a model or a test can see what ``K`` dropped. Token centres are the cell centres.

**Placement**: in a multi-stream config the region comes from the first (lat-lon) stream's box
(:mod:`fastload.streams`). A mesh store on its own is sampled through :class:`MeshTokenizer` (registered for
``grid.kind == "mesh"``) on a virtual global lat-lon *placement grid* whose spacing is the mean node spacing
(or ``resolution=``), rows north to south from 90 degrees, columns east from 0: a box ``(t0, y0, x0)`` of
``(T, H, W)`` points covers latitudes ``90 - y0*res`` down to ``90 - (y0 + H)*res`` and longitudes ``x0*res`` to
``(x0 + W)*res``.

Try it::

    python -c "import numpy as np; from fastload.sampling.mesh import MeshIndex; r = np.random.default_rng(0);
    i = MeshIndex(r.uniform(-90, 90, 1000), r.uniform(0, 360, 1000)); print(i.bin(np.array([[60., 0., 10., 40.]]), 2, 2, 4))"
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np

from ..errors import ConfigError
from .geometry import GridExtent, check_boxes
from .points import PointLayout, PointSampler, PointTokenMeta, point_kernels
from .tokenizer import BaseTokenizer, register_tokenizer

__all__ = ["MeshIndex", "MeshPointSampler", "MeshTokenizer", "cell_centres", "point_layouts"]

_SPHERE_DEG2 = 41252.96  # area of the sphere in square degrees


class MeshIndex:
    """Nodes sorted into a regular lat-lon bucket grid (CSR), built once; bins regions' nodes into token cells.

    Parameters
    ----------
    lat, lon : array_like (N,)
        Node coordinates in degrees (longitudes any convention; kept in [0, 360)).
    bucket_deg : float, optional
        Bucket size; default about twice the mean node spacing (at most ~N/2 buckets, at least 0.01 degrees).
    """

    def __init__(self, lat: Any, lon: Any, *, bucket_deg: float | None = None):
        lat = np.ascontiguousarray(np.asarray(lat, np.float64).reshape(-1))
        lon = np.ascontiguousarray(np.asarray(lon, np.float64).reshape(-1) % 360.0)
        lon[lon >= 360.0] = 0.0
        if lat.shape != lon.shape or lat.size == 0:
            raise ConfigError(f"MeshIndex: expected matching non-empty lat/lon, got {lat.shape} and {lon.shape}")
        if not (np.isfinite(lat).all() and np.isfinite(lon).all()) or np.abs(lat).max() > 90.0:
            raise ConfigError("MeshIndex: node coordinates must be finite with latitudes in [-90, 90]")
        n = lat.size
        self.lat, self.lon = lat, lon
        self.lat_min, self.lat_max = float(lat.min()), float(lat.max())
        band = max((np.sin(np.deg2rad(self.lat_max)) - np.sin(np.deg2rad(self.lat_min))) / 2.0, 1e-9)
        self.spacing = float(np.sqrt(_SPHERE_DEG2 * band / n))
        """Mean node spacing in degrees (area of the nodes' latitude band over the node count)."""
        if bucket_deg is None:
            bucket_deg = max(2.0 * self.spacing, float(np.sqrt(2.0 * 64800.0 / n)), 0.01)
        bd = float(min(max(bucket_deg, 1e-3), 180.0))
        nby, nbx = int(np.ceil(180.0 / bd)), int(np.ceil(360.0 / bd))
        self.bgeo = np.array([180.0 / nby, 360.0 / nbx, nby, nbx], np.float64)
        row = np.clip(np.floor((lat + 90.0) / self.bgeo[0]), 0, nby - 1).astype(np.int64)
        col = np.clip(np.floor(lon / self.bgeo[1]), 0, nbx - 1).astype(np.int64)
        bucket = row * nbx + col
        self.bnodes = np.ascontiguousarray(np.argsort(bucket, kind="stable").astype(np.int64))
        self.bstart = np.zeros(nby * nbx + 1, np.int64)
        np.cumsum(np.bincount(bucket, minlength=nby * nbx), out=self.bstart[1:])
        # longitudes covered: the circle minus its largest gap between nodes (a regional mesh), or all of it
        ls = np.unique(lon)
        gaps = np.diff(np.concatenate([ls, ls[:1] + 360.0]))
        g = int(np.argmax(gaps))
        if gaps[g] > 2.0 * self.bgeo[1]:
            self.lon_start, self.lon_width = float(ls[(g + 1) % ls.size]), float(360.0 - gaps[g])
        else:
            self.lon_start, self.lon_width = 0.0, 360.0

    def __len__(self) -> int:
        return int(self.lat.size)

    def bin(self, regions: Any, nlat: int, nlon: int, k: int, *, jit: bool | None = None
            ) -> tuple[np.ndarray, np.ndarray]:
        """Nodes of every token cell of every region (see the module notes for the rule).

        Parameters
        ----------
        regions : (S, 4) float
            ``[lat_first, lat_last, lon_first, width]`` in degrees; row 0 of the cells is at ``lat_first``.
        nlat, nlon : int
            Cells per region.
        k : int
            Slots per cell.

        Returns
        -------
        nodes : (S, nlat, nlon, k) int64
            Node index per slot (nearest the cell centre first), -1 where empty.
        count : (S, nlat, nlon) int64
            Nodes in each cell before keeping ``k``.
        """
        r = np.ascontiguousarray(np.asarray(regions, np.float64).reshape(-1, 4))
        if not np.isfinite(r).all() or (r[:, 3] <= 0).any():
            raise ConfigError("mesh regions must be finite with a positive longitude width")
        r = r.copy()
        r[:, 3] = np.minimum(r[:, 3], 360.0)
        S = r.shape[0]
        nodes = np.empty((S, int(nlat), int(nlon), int(k)), np.int64)
        count = np.empty((S, int(nlat), int(nlon)), np.int64)
        clat, _ = cell_centres(r, nlat, 1)
        coslat = np.ascontiguousarray(np.cos(np.deg2rad(clat[:, :, 0])))
        point_kernels(jit).bin_nodes(self.bstart, self.bnodes, self.bgeo, self.lat, self.lon, r, coslat, nodes, count)
        return nodes, count

    def nearest(self, lat: Any, lon: Any, radius: float, *, jit: bool | None = None) -> np.ndarray:
        """``(S,)`` index of the node nearest each point within ``radius`` degrees (-1 where none is)."""
        lat = np.asarray(lat, np.float64).reshape(-1)
        lon = np.asarray(lon, np.float64).reshape(-1)
        cos = np.maximum(np.cos(np.deg2rad(np.clip(np.abs(lat) + radius, 0.0, 90.0))), 1e-6)
        half = np.minimum(radius / cos, 180.0)
        regions = np.stack([lat + radius, lat - radius, lon - half, 2.0 * half], axis=1)
        return self.bin(regions, 1, 1, 1, jit=jit)[0].reshape(-1)

    def overlaps(self, regions: Any) -> np.ndarray:
        """``(S,)`` bool: each region meets the nodes' latitude band and covered longitudes."""
        r = np.asarray(regions, np.float64).reshape(-1, 4)
        lo, hi = np.minimum(r[:, 0], r[:, 1]), np.maximum(r[:, 0], r[:, 1])
        lat_ok = (hi >= self.lat_min) & (lo <= self.lat_max)
        if self.lon_width >= 360.0:
            return lat_ok
        a0, aw = r[:, 2] % 360.0, np.minimum(r[:, 3], 360.0)
        lon_ok = ((self.lon_start - a0) % 360.0 <= aw) | ((a0 - self.lon_start) % 360.0 <= self.lon_width)
        return lat_ok & lon_ok


def cell_centres(regions: np.ndarray, nlat: int, nlon: int) -> tuple[np.ndarray, np.ndarray]:
    """Centre ``(lat, lon)`` ``(S, nlat, nlon)`` of the equal cells of each region (lon in [0, 360))."""
    r = np.asarray(regions, np.float64).reshape(-1, 4)
    b = np.arange(nlat)[None, :]
    c = np.arange(nlon)[None, :]
    lat = r[:, 0:1] + (b + 0.5) * (r[:, 1:2] - r[:, 0:1]) / nlat  # same arithmetic as the binning kernel
    lon = (r[:, 2:3] % 360.0 + (c + 0.5) * r[:, 3:4] / nlon) % 360.0
    S = r.shape[0]
    return (np.ascontiguousarray(np.broadcast_to(lat[:, :, None], (S, nlat, nlon))),
            np.ascontiguousarray(np.broadcast_to(lon[:, None, :], (S, nlat, nlon))))


def point_layouts(store: Any, config: Any) -> dict[str, PointLayout]:
    """:class:`~.points.PointLayout` of every field of ``config`` in ``store``."""
    return {f.name: PointLayout.from_store(store, f.name, f.levels) for f in config.fields}


class MeshPointSampler(PointSampler):
    """Point sampling of a mesh: ``where`` is ``(S, 4)`` regions ``[lat_first, lat_last, lon_first, width]``."""

    def __init__(self, config: Any, layouts: Mapping[str, PointLayout], time: np.ndarray | None, grid: Any,
                 index: MeshIndex | None = None):
        super().__init__(config, layouts, time, grid.lat, grid.lon)
        self.index = index if index is not None else MeshIndex(grid.lat, grid.lon)

    def points(self, where, field, *, jit=None):
        _, nlat, nlon = field.num_tokens
        _, tlat, tlon = field.token_size
        nodes, count = self.index.bin(where, nlat, nlon, tlat * tlon, jit=jit)
        lat, lon = cell_centres(where, nlat, nlon)
        return nodes.reshape(nodes.shape[0], nlat * nlon * tlat * tlon), count, lat, lon  # (also for 0 samples)


class MeshTokenizer(BaseTokenizer):
    """Tokenizer of a mesh store on its own: boxes on a virtual lat-lon placement grid (see the module notes).

    Parameters
    ----------
    grid : Grid
        A mesh grid (``kind == "mesh"``: per-node ``lat``/``lon``).
    time : datetime64 array or None
    config : SamplingConfig
        The fields (their ``token_size`` gives ``K = tlat * tlon`` node slots per token).
    layouts : {field: PointLayout}
        From :func:`point_layouts` (or :meth:`from_store`).
    resolution : float, optional
        Placement-grid spacing in degrees (default: the mean node spacing, rounded so 180 / resolution is whole).
    """

    kind = "mesh"

    def __init__(self, grid: Any, time: np.ndarray | None, config: Any, layouts: Mapping[str, Any], *,
                 resolution: float | None = None, index: MeshIndex | None = None):
        super().__init__(grid, time, config, layouts)
        bad = [n for n, lay in self.layouts.items() if not isinstance(lay, PointLayout)]
        if bad:
            raise ConfigError(f"mesh tokenizer: fields {bad} need point layouts (fastload.sampling.mesh.point_layouts)")
        self.sampler = MeshPointSampler(config, self.layouts, self.time, grid, index)
        res = float(resolution) if resolution is not None else self.sampler.index.spacing
        if not res > 0:
            raise ConfigError(f"mesh tokenizer: resolution must be > 0 degrees, got {resolution!r}")
        ny = max(1, int(round(180.0 / res)))
        self.resolution = 180.0 / ny
        nt = None if self.time is None else int(self.time.shape[0])
        self.extent = GridExtent(nt=nt, ny=ny, nx=2 * ny, periodic_x=True, time=self.time)
        self.lat = 90.0 - (np.arange(ny) + 0.5) * self.resolution
        """Latitudes of the placement grid's rows (for cos-lat placement)."""

    @classmethod
    def from_store(cls, store: Any, config: Any, **kw: Any) -> MeshTokenizer:
        """The tokenizer of a mesh store (``store.grid``, ``store.time``) and the fields of ``config``."""
        if store.grid.kind != "mesh":
            raise ConfigError(f"store {store.path!r} has a {store.grid.kind!r} grid, not a mesh")
        return cls(store.grid, store.time, config, point_layouts(store, config), **kw)

    def sample_chunk_bound(self) -> dict[str, int]:
        """Per array, the most chunks one sample can touch: distinct (level chunk) x time chunks x
        ``min(node chunks, nlat * nlon * K)`` (every slot in another node chunk at worst), for cache sizing."""
        T = self.config.box[0]
        span = (T - 1) * self.config.time_step + 1
        pairs: dict[str, set] = {}
        most: dict[str, int] = {}
        for f in self.config.fields:
            lay = self.layouts[f.name]
            ta, _, la, _, xa = lay.axes
            g = lay.grid_shape
            nt_ = 1 if ta is None else min(g[ta], T, (span - 1) // lay.chunks[ta] + 2)
            _, nlat, nlon = f.num_tokens
            _, tlat, tlon = f.token_size
            n = nt_ * min(g[xa], nlat * nlon * tlat * tlon)
            pairs.setdefault(lay.array, set()).update({0} if la is None else set((lay.lev_idx // lay.chunks[la]).tolist()))
            most[lay.array] = max(most.get(lay.array, 0), n)
        return {a: len(pairs[a]) * most[a] for a in pairs}

    def regions(self, boxes: np.ndarray) -> np.ndarray:
        """``(S, 4)`` lat-lon regions of placement-grid boxes."""
        b = np.asarray(boxes, np.int64).reshape(-1, 3)
        _, H, W = self.config.box
        res = self.resolution
        top = 90.0 - b[:, 1] * res
        return np.stack([top, top - H * res, b[:, 2] * res, np.full(b.shape[0], W * res)], axis=1)

    def t_steps(self, boxes: np.ndarray) -> np.ndarray:
        b = np.asarray(boxes, np.int64).reshape(-1, 3)
        return b[:, 0:1] + np.arange(self.config.box[0]) * self.config.time_step

    def check_boxes(self, boxes: Any) -> np.ndarray:
        return check_boxes(boxes, self.extent, self.config.box, self.config.time_step)

    def plan(self, boxes: np.ndarray):
        b = self.check_boxes(boxes)
        return self.sampler.plan(self.regions(b), self.t_steps(b), b)

    def gather(self, slots, tables, boxes, outs, *, coefficients=None, month_of=None, samples=None, jit=None):
        sl = samples if samples is not None else slice(None)
        b = np.asarray(boxes, np.int64)[sl]
        self.sampler.gather(self.regions(b), self.t_steps(b), slots, {f: t[sl] for f, t in tables.items()},
                            {f: o[sl] for f, o in outs.items()}, coefficients=coefficients,
                            month_of=None if month_of is None else month_of[sl], jit=jit)

    def meta(self, boxes: np.ndarray) -> dict[str, PointTokenMeta]:
        b = np.asarray(boxes, np.int64)
        return self.sampler.meta(self.regions(b), self.t_steps(b))


register_tokenizer("mesh", MeshTokenizer)
