"""Unstructured meshes (FESOM-style ocean meshes, station or satellite point data): detection, checks, fields.

Why this exists: a mesh store has no (y, x) grid; its fields live on one node axis, and the sampler must find the
nodes of a lat-lon box without scanning them all. This module describes such a store once, at open, in the same
terms as the structured layouts (:class:`~fastload.store._layout.Layout`, :class:`~fastload.store.FieldInfo`), and
refuses what would make sampling wrong: node coordinates that are not finite, outside [-90, 90] x [-180, 360], or
duplicated (two nodes at one place), and connectivity that names nodes the mesh does not have.

A mesh store is per-variable (what xarray writes):

- ``latitude``/``lat`` and ``longitude``/``lon``: 1-D over the same dimension (the *node* dimension, any name,
  e.g. ``nod2``); that shared dimension is what marks a store as a mesh;
- fields with dims ``(time, [level], node)``, ``(level, node)`` or ``(node,)``; the level coordinate and its kind
  as in the per-variable layout (``depth`` with ``positive = "down"``, ``level_type`` attribute, ...);
- optionally ``face_nodes`` ``(face, vertex)`` integers (UGRID ``face_node_connectivity``; ``start_index`` 0 or 1;
  negative or ``_FillValue`` entries mean "no vertex"), read once and kept on the grid.

Other arrays along the node dimension that cannot be fields (``node_vertices(node, nv)``, ``mask(node, time)``,
a ``(time, level, member, node)`` ensemble, strings, dates, a level dimension without its coordinate array) are
left out and listed in ``Layout.not_fields`` with why, as in the per-variable layout; opening warns of each.

The grid is ``Grid(kind="mesh")`` with ``lat``/``lon`` per node (longitudes brought to [0, 360)), ``ny = 1`` and
``nx`` = the number of nodes. Field axes are ``(time, None, level, None, node)``: a mesh has no y axis, and the
node axis stands where x stands (the last axis). Print a mesh store with ``python -m fastload.store PATH``.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING

import numpy as np

from ..errors import SchemaError
from ._meta import StoreMetadata
from .grid import Grid

if TYPE_CHECKING:
    from ._layout import Layout

__all__ = ["is_mesh", "mesh_grid", "mesh_layout", "FACE_NAMES"]

FACE_NAMES = ("face_nodes", "face_node_connectivity", "elements")
_LAT = ("latitude", "lat", "lats")
_LON = ("longitude", "lon", "lons")
_DUP_DECIMALS = 7  # coordinates equal to 1e-7 degrees (about 1 cm) are the same place


def _names(meta: StoreMetadata) -> tuple[str | None, str | None]:
    return next((n for n in _LAT if n in meta.arrays), None), next((n for n in _LON if n in meta.arrays), None)


def is_mesh(meta: StoreMetadata) -> bool:
    """Whether the store's latitude and longitude are 1-D over one shared (node) dimension."""
    la, lo = _names(meta)
    if la is None or lo is None:
        return False
    a, b = meta.arrays[la], meta.arrays[lo]
    return a.ndim == 1 and b.ndim == 1 and a.dims is not None and a.dims == b.dims


def mesh_grid(lat: np.ndarray, lon: np.ndarray, *, where: str, lat_name: str = "latitude",
              lon_name: str = "longitude", node_dim: str = "node", face_nodes: np.ndarray | None = None) -> Grid:
    """A checked mesh grid from per-node coordinates (degrees).

    Raises
    ------
    SchemaError
        Coordinates not numeric, not finite, of different lengths, outside latitude [-90, 90] or longitude
        [-180, 360]; two nodes at the same place; connectivity naming a node outside ``[0, N)``.
    """
    lat = np.asarray(lat)
    lon = np.asarray(lon)
    for name, v in ((lat_name, lat), (lon_name, lon)):
        if v.dtype.kind not in "iuf":
            raise SchemaError(f"{where}: mesh coordinate {name!r} has dtype {v.dtype}; expected numbers (degrees)")
    lat = lat.astype(np.float64).reshape(-1)
    lon = lon.astype(np.float64).reshape(-1)
    if lat.shape != lon.shape:
        raise SchemaError(f"{where}: mesh coordinates {lat_name!r} {lat.shape} and {lon_name!r} {lon.shape} differ")
    if lat.size == 0:
        raise SchemaError(f"{where}: the mesh has no nodes")
    for name, v, lo, hi in ((lat_name, lat, -90.0, 90.0), (lon_name, lon, -180.0, 360.0)):
        bad = np.flatnonzero(~np.isfinite(v) | (v < lo) | (v > hi))
        if bad.size:
            i = int(bad[0])
            raise SchemaError(
                f"{where}: mesh node {i} has {name} = {float(v[i])}, outside the valid range [{lo:g}, {hi:g}] degrees "
                f"({bad.size} node(s) out of range)"
            )
    lon = np.mod(lon, 360.0)
    lon[lon >= 360.0] = 0.0  # mod of a tiny negative number can round up to 360
    _check_duplicates(lat, lon, where)
    faces = None if face_nodes is None else _check_faces(np.asarray(face_nodes), lat.size, where)
    return Grid(kind="mesh", lat=lat, lon=lon, periodic_x=True, lat_descending=False, dims=(node_dim, node_dim),
                face_nodes=faces)


def _check_duplicates(lat: np.ndarray, lon: np.ndarray, where: str) -> None:
    qlat = np.round(lat, _DUP_DECIMALS)
    qlon = np.where(np.abs(qlat) >= 90.0, 0.0, np.round(lon, _DUP_DECIMALS) % 360.0)  # every longitude of a pole
    order = np.lexsort((qlon, qlat))
    same = (np.diff(qlat[order]) == 0) & (np.diff(qlon[order]) == 0)
    if same.any():
        k = int(np.argmax(same))
        i, j = sorted((int(order[k]), int(order[k + 1])))
        raise SchemaError(
            f"{where}: mesh nodes {i} and {j} are at the same place (lat {lat[i]:.7f}, lon {lon[i]:.7f}); "
            f"{int(same.sum())} duplicate node(s) in all; every node must be a distinct point"
        )


def _check_faces(f: np.ndarray, n: int, where: str) -> np.ndarray:
    if f.ndim != 2 or f.dtype.kind not in "iu":
        raise SchemaError(f"{where}: face_nodes has shape {f.shape} and dtype {f.dtype}; expected 2-D integers")
    f = f.astype(np.int64)
    bad = np.argwhere(f >= n)
    if bad.size:
        r, c = (int(v) for v in bad[0])
        raise SchemaError(f"{where}: face_nodes[{r}, {c}] = {f[r, c]} names a node outside [0, {n})")
    return np.where(f < 0, -1, f)


def _faces(meta: StoreMetadata, read: Callable[[str], np.ndarray], where: str) -> tuple[str | None, np.ndarray | None]:
    name = next((n for n in FACE_NAMES if n in meta.arrays), None)
    if name is None:
        return None, None
    info = meta.arrays[name]
    raw = np.asarray(read(name))
    if raw.ndim != 2:
        raise SchemaError(f"{where}: {name!r} has shape {raw.shape}; expected (face, vertex)")
    if raw.dtype.kind not in "iu":
        raise SchemaError(f"{where}: {name!r} has dtype {raw.dtype}; expected integers")
    if raw.shape[1] > 8 >= raw.shape[0]:  # stored (vertex, face), as some writers do: the vertex axis is short
        raw = raw.T
    raw = raw.astype(np.int64)
    fill = info.attrs.get("_FillValue", info.fill_value)
    if fill is not None and np.isfinite(float(fill)):
        raw = np.where(raw == int(fill), -1, raw)
    start = int(info.attrs.get("start_index", 0))
    if start not in (0, 1):
        raise SchemaError(f"{where}: {name!r} has start_index {start!r}; expected 0 or 1")
    return name, np.where(raw >= start, raw - start, -1)


def mesh_layout(meta: StoreMetadata, read: Callable[[str], np.ndarray], where: str) -> Layout:
    """Describe a mesh store as a per-variable :class:`~fastload.store._layout.Layout`.

    The arrays along the node dimension are sorted as the per-variable layout's are
    (:class:`~fastload.store._layout.FieldSorter`, grid dims ``(node,)``): one that cannot be a field (other dims
    or their order, a level dimension without a coordinate array, strings or dates) is left out and listed in
    ``not_fields`` with why, with a warning at open."""
    from ._layout import FieldSorter, Layout, _time_axis

    lat_name, lon_name = _names(meta)
    assert lat_name is not None and lon_name is not None
    node_dim = meta.arrays[lat_name].dims[0]  # type: ignore[index]
    face_name, faces = _faces(meta, read, where)
    grid = mesh_grid(read(lat_name), read(lon_name), where=where, lat_name=lat_name, lon_name=lon_name,
                     node_dim=node_dim, face_nodes=faces)
    tname, time = _time_axis(meta, read, where)
    tdim = (meta.arrays[tname].dims or (tname,))[0] if tname else "time"
    skip = {lat_name, lon_name, tname, face_name} - {None}
    dim_coords = {n for n, a in meta.arrays.items() if a.ndim == 1 and (a.dims or (None,))[0] == n}
    # a level coordinate may lack dimension names on a mesh (unnamed arrays are skipped here; they gave levels before)
    level_coords = dim_coords | {n for n, a in meta.arrays.items() if a.ndim == 1 and a.dims is None}
    bounds = {a.attrs.get("bounds") for a in meta.arrays.values()} - {None}
    sorter = FieldSorter(meta, read, where, tdim, time, (node_dim,), (grid.nx,), level_coords, set(skip))
    for name, info in meta.arrays.items():
        if name in skip or name in dim_coords or name in bounds or info.ndim == 0 or info.dims is None:
            continue
        if node_dim not in info.dims or name.endswith(("_bnds", "_bounds")):
            continue  # not on the mesh (e.g. time bounds), or a bounds array: ignored
        sorter.add(info)
    fields = sorter.finish(f"mesh store (nodes along {node_dim!r}) has no data arrays with dims {sorter.expected}")
    return Layout("per_variable", grid, time, fields, tuple(fields), tuple(sorted(sorter.used)), sorter.not_fields)
