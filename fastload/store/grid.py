"""The horizontal grid of a store (:class:`Grid`) and how it is read from coordinate arrays.

Why this exists: the sampler needs three facts about the grid and must never guess them: whether x wraps (global
in longitude), which way latitude runs, and the coordinates themselves (for per-token metadata and cos-lat
weights). Regular lat/lon grids have 1-D coordinates; curvilinear grids (ocean models) have 2-D ``latitude`` /
``longitude`` arrays over dims ``(y, x)`` and say whether x is periodic in an attribute ``periodic_x``.

Unstructured meshes (FESOM-style ocean meshes, point data) have 1-D ``latitude``/``longitude`` over one node
dimension; :func:`fastload.store._mesh.mesh_grid` builds their :class:`Grid` (``kind = "mesh"``, ``ny = 1``,
``nx`` = the number of nodes, optional ``face_nodes`` connectivity).

A 1-D longitude axis is global (``periodic_x``) when it is regularly spaced and covers 360 degrees (``n * step
== 360``), unless its ``periodic_x`` attribute says otherwise. Coordinates are checked here: finite, strictly
monotonic latitude and (after unwrapping across the dateline) longitude; violations raise
:class:`~fastload.errors.SchemaError` naming the array and the first bad position.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from typing import Any

import numpy as np

from ..errors import SchemaError

__all__ = ["Grid", "latlon_grid", "curvilinear_grid", "is_global_lon", "repeats_seam", "seam_hint"]


@dataclasses.dataclass(frozen=True, kw_only=True, slots=True, eq=False)
class Grid:
    """Horizontal grid of a store, in store order (index 0 first)."""

    kind: str
    """``"latlon"`` (1-D coordinates), ``"curvilinear"`` (2-D coordinates) or ``"mesh"`` (1-D per node)."""
    lat: np.ndarray
    """Latitudes in degrees: ``(NY,)`` for latlon, ``(NY, NX)`` for curvilinear, ``(N,)`` per node for mesh."""
    lon: np.ndarray
    """Longitudes in degrees: ``(NX,)`` for latlon, ``(NY, NX)`` for curvilinear, ``(N,)`` for mesh ([0, 360))."""
    periodic_x: bool
    """Whether x wraps around (a global grid in longitude): sample boxes may cross the x seam."""
    lat_descending: bool
    """Whether latitude decreases with the y index (north to south, as in ERA5)."""
    dims: tuple[str, str] = ("latitude", "longitude")
    """Names of the y and x dimensions in the store (a mesh: the node dimension twice)."""
    face_nodes: np.ndarray | None = None
    """Mesh connectivity ``(n_faces, n_vertices)`` int64 node indices, -1 where a face has fewer vertices; None
    when the store has none (and for structured grids)."""

    @property
    def ny(self) -> int:
        """Rows: 1 for a mesh (its nodes are one axis, ``nx``)."""
        return 1 if self.kind == "mesh" else int(self.lat.shape[0])

    @property
    def nx(self) -> int:
        return int(self.lon.shape[-1])

    @property
    def shape(self) -> tuple[int, int]:
        return (self.ny, self.nx)

    @property
    def x_period(self) -> int:
        """Columns after which x wraps: ``nx`` on a periodic grid; ``nx - 1`` on a global lat-lon grid stored with
        its seam column repeated (:func:`repeats_seam`: the repeated column is never read, a box crossing the seam
        wraps to column 0; the streams of a multi-stream config read it so); 0 on a regional grid or a mesh."""
        if self.periodic_x:
            return self.nx
        if self.kind == "latlon" and np.ndim(self.lon) == 1 and repeats_seam(self.lon):
            return self.nx - 1
        return 0

    @property
    def seam_note(self) -> str:
        """Why a lat-lon grid that looks global does not wrap (its last longitude repeats the first + 360, and how
        to fix the store), for messages about boxes at its edges; "" otherwise."""
        if self.kind != "latlon" or self.periodic_x or not repeats_seam(self.lon):
            return ""
        return f"the grid is read as regional: {seam_hint(self.lon, self.dims[1])}"

    def __repr__(self) -> str:
        if self.kind == "mesh":
            return f"Grid(mesh, {self.nx} nodes, faces={0 if self.face_nodes is None else len(self.face_nodes)})"
        if self.kind == "latlon" and self.ny and self.nx:
            span = f"lat {self.lat[0]:g}..{self.lat[-1]:g}, lon {self.lon[0]:g}..{self.lon[-1]:g}"
        else:
            span = f"dims {self.dims}"
        return f"Grid({self.kind}, {self.ny}x{self.nx}, {span}, periodic_x={self.periodic_x})"


def _flag(attrs: Mapping[str, Any], where: str) -> bool | None:
    v = attrs.get("periodic_x")
    if v is None:
        return None
    if isinstance(v, (bool, np.bool_)) or v in (0, 1):
        return bool(v)
    if isinstance(v, str) and v.lower() in ("true", "false"):
        return v.lower() == "true"
    raise SchemaError(f"{where}: attribute periodic_x = {v!r}; expected true or false")


def _strictly_monotonic(v: np.ndarray, name: str, where: str) -> None:
    if v.size < 2:
        return
    d = np.diff(v)
    if np.all(d > 0) or np.all(d < 0):
        return
    sign = np.sign(d[0]) if d[0] != 0 else 1.0
    bad = int(np.argmax(np.sign(d) != sign))
    raise SchemaError(
        f"{where}: coordinate {name!r} is not strictly monotonic: {v[bad]!r} at index {bad} is followed by "
        f"{v[bad + 1]!r}; expected strictly increasing or strictly decreasing values"
    )


def _finite(v: np.ndarray, name: str, where: str) -> np.ndarray:
    if v.dtype.kind not in "iuf":
        raise SchemaError(f"{where}: coordinate {name!r} has dtype {v.dtype}; expected numbers (degrees)")
    v = v.astype(np.float64)
    if not np.all(np.isfinite(v)):
        bad = np.argwhere(~np.isfinite(v))[0].tolist()
        raise SchemaError(f"{where}: coordinate {name!r} has a non-finite value at index {bad}")
    return v


def is_global_lon(lon: np.ndarray) -> bool:
    """Whether a 1-D longitude axis is regularly spaced and covers 360 degrees (so index NX wraps to 0)."""
    if lon.size < 2:
        return False
    d = np.diff(np.unwrap(lon, period=360.0))
    step = float(d.mean())
    if not np.allclose(d, step, rtol=1e-4, atol=1e-9):
        return False
    return abs(abs(step) * lon.size - 360.0) <= 1e-3 * abs(step)


def repeats_seam(lon: np.ndarray) -> bool:
    """Whether a 1-D longitude axis is a regular 360-degree circle with its first longitude repeated (+ 360) at the
    end (``0, 2.5, ..., 360``): global, but not periodic as stored (explained in messages; a stream of a
    multi-stream config wraps over its first ``nx - 1`` columns: :attr:`Grid.x_period`)."""
    lon = np.asarray(lon, dtype=np.float64)
    if lon.ndim != 1 or lon.size < 3 or not is_global_lon(lon[:-1]):
        return False
    u = np.unwrap(lon, period=360.0)
    return bool(abs(abs(u[-1] - u[0]) - 360.0) <= 1e-3 * abs(u[1] - u[0]))


def seam_hint(lon: np.ndarray, dim: str = "longitude") -> str:
    """The message for a longitude axis :func:`repeats_seam` (what is wrong, and how to make the grid periodic);
    ``dim``: the longitude dimension's name in the store."""
    return (f"the last longitude ({float(lon[-1]):g}) repeats the first ({float(lon[0]):g}) + 360: drop the last "
            f"{dim} column to make the grid periodic (xarray: ds.isel({dim}=slice(0, -1)).to_zarr(...))")


def latlon_grid(
    lat: np.ndarray, lon: np.ndarray, *, lat_name: str, lon_name: str, lon_attrs: Mapping[str, Any], where: str,
    dims: tuple[str, str],
) -> Grid:
    """A regular (1-D coordinates) grid, checked.

    Raises
    ------
    SchemaError
        Non-finite or non-monotonic coordinates, latitudes outside [-90, 90], or an inconsistent ``periodic_x``.
    """
    lat = _finite(np.asarray(lat), lat_name, where)
    lon = _finite(np.asarray(lon), lon_name, where)
    if lat.size and (lat.min() < -90 - 1e-9 or lat.max() > 90 + 1e-9):
        raise SchemaError(f"{where}: coordinate {lat_name!r} has values outside [-90, 90] (degrees expected)")
    _strictly_monotonic(lat, lat_name, where)
    _strictly_monotonic(np.unwrap(lon, period=360.0), lon_name, where)
    flag = _flag(lon_attrs, f"{where}/{lon_name}")
    periodic = is_global_lon(lon) if flag is None else flag
    if flag and lon.size >= 2 and not is_global_lon(lon):
        raise SchemaError(
            f"{where}: {lon_name!r} says periodic_x = true but its {lon.size} longitudes are not a regular "
            "360-degree circle" + (f"; {seam_hint(lon, dims[1])}" if repeats_seam(lon) else "")
        )
    return Grid(
        kind="latlon", lat=lat, lon=lon, periodic_x=bool(periodic),
        lat_descending=bool(lat.size > 1 and lat[0] > lat[-1]), dims=dims,
    )  # fmt: skip


def curvilinear_grid(
    lat: np.ndarray, lon: np.ndarray, *, lat_name: str, lon_name: str, attrs: list[Mapping[str, Any]], where: str,
    dims: tuple[str, str],
) -> Grid:
    """A curvilinear grid from 2-D ``(y, x)`` coordinates; ``periodic_x`` from the first attribute set having it.

    Raises
    ------
    SchemaError
        Shapes differ, values are not finite, or ``periodic_x`` is not a boolean.
    """
    lat = _finite(np.asarray(lat), lat_name, where)
    lon = _finite(np.asarray(lon), lon_name, where)
    if lat.ndim != 2 or lat.shape != lon.shape:
        raise SchemaError(
            f"{where}: curvilinear coordinates {lat_name!r} {lat.shape} and {lon_name!r} {lon.shape} must both "
            "be 2-D (y, x) with the same shape"
        )
    periodic = False
    for a in attrs:
        f = _flag(a, where)
        if f is not None:
            periodic = f
            break
    descending = bool(lat.shape[0] > 1 and lat[0].mean() > lat[-1].mean())
    return Grid(kind="curvilinear", lat=lat, lon=lon, periodic_x=periodic, lat_descending=descending, dims=dims)
