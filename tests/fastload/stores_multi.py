"""Tiny stores of three kinds sampled together, for the multi-stream and mesh tests (written with zarr-python).

- :func:`make_atmosphere`: ERA5-like, regular global grid (10 degrees, latitude north to south), **hourly**,
  **model levels**; ``t`` (time, level, lat, lon) and ``sp`` (time, lat, lon).
- :func:`make_ocean`: NEMO/ORCA-like, **curvilinear** 2-D coordinates (a slightly distorted 10-degree grid,
  periodic in x), **daily**, **depth levels**, NaN over land; ``thetao`` (time, depth, y, x), ``zos`` (time, y, x).
- :func:`make_mesh`: FESOM-like **unstructured mesh**: jittered nodes on the sphere, none over a "continent",
  stored in a spatially local order, with triangle connectivity ``face_nodes``, **6-hourly**, depth levels;
  ``temp`` (time, nz1, node) and ``ssh`` (time, node).

- :func:`make_latlon_xr`: a 5-degree regular lat-lon ocean-like store **written by xarray**, its latitudes
  ascending or descending and its longitudes from 0 or from -180: the same physical field either way round, for the
  row-order tests.

Each returns ``{name: array written}`` (times as datetime64[ns], coordinates as written), so the tests compare
what fastload gives with plain NumPy on these arrays. ``bad=`` variants write the broken meshes the error tests
need (a node outside valid coordinates, two nodes at one place).

    from tests.fastload.stores_multi import make_atmosphere, make_ocean, make_mesh
"""

from __future__ import annotations

import os
from collections.abc import Sequence

import numpy as np
import zarr

from .stores import T0, _array, _time_coord

__all__ = ["make_atmosphere", "make_ocean", "make_mesh", "mesh_nodes", "make_latlon_xr", "ATMO_T0", "OCEAN_T0",
           "MESH_T0"]

ATMO_T0 = T0  # 2000-01-01T00
OCEAN_T0 = T0 - np.timedelta64(1, "D")  # the ocean record starts a day earlier
MESH_T0 = T0


def _field(rng: np.random.Generator, shape: tuple[int, ...], offset: float) -> np.ndarray:
    """Smooth-ish random values (cumulative sums along the last two axes) around ``offset``."""
    base = rng.standard_normal(shape).cumsum(axis=-1)
    if len(shape) > 1:
        base = base.cumsum(axis=-2) / np.sqrt(shape[-2])
    return (base / np.sqrt(shape[-1]) + offset).astype(np.float32)


def make_atmosphere(path: str | os.PathLike[str], *, nt: int = 72, levels: Sequence[float] = (96, 105, 114, 137),
                    chunks: Sequence[int] = (6, 1, 8, 12), zarr_format: int = 2, seed: int = 10) -> dict:
    """Hourly, model levels, 10-degree global grid (19 x 36, latitude 90 .. -90)."""
    rng = np.random.default_rng(seed)
    lat = np.linspace(90.0, -90.0, 19)
    lon = np.arange(36) * 10.0
    lev = np.asarray(levels, np.float64)
    time = ATMO_T0 + np.arange(nt) * np.timedelta64(1, "h")
    t = _field(rng, (nt, lev.size, 19, 36), 250.0)
    sp = _field(rng, (nt, 19, 36), 1.0e5)
    root = zarr.open_group(os.fspath(path), mode="w", zarr_format=zarr_format)
    kw = dict(zarr_format=zarr_format, codec="blosc-lz4")
    ct, cl, cy, cx = chunks
    _array(root, "t", t, ("time", "level", "latitude", "longitude"), chunks=(ct, cl, cy, cx), attrs={"units": "K"},
           **kw)
    _array(root, "sp", sp, ("time", "latitude", "longitude"), chunks=(ct, cy, cx), attrs={"units": "Pa"}, **kw)
    _time_coord(root, time, **kw)  # as fastload synth writes it (a v2 fill value 0 read as NaT)
    _array(root, "level", lev, ("level",), chunks=(lev.size,), attrs={"level_type": "model"}, **kw)
    _array(root, "latitude", lat, ("latitude",), chunks=(19,), **kw)
    _array(root, "longitude", lon, ("longitude",), chunks=(36,), **kw)
    return {"t": t, "sp": sp, "time": time, "level": lev, "latitude": lat, "longitude": lon}


def make_ocean(path: str | os.PathLike[str], *, nt: int = 5, depths: Sequence[float] = (5.0, 50.0, 200.0),
               chunks: Sequence[int] = (2, 1, 8, 12), zarr_format: int = 2, seed: int = 11,
               t0: np.datetime64 = OCEAN_T0, regional: bool = False) -> dict:
    """Daily, depth levels, curvilinear 17 x 36 grid (latitude -79.5 .. 80.5, distorted by up to 1.5 degrees).

    ``regional``: a patch over the North Pacific only (not periodic), for the no-overlap error.
    """
    rng = np.random.default_rng(seed)
    ny, nx = 17, 36
    jj, ii = np.meshgrid(np.arange(ny), np.arange(nx), indexing="ij")
    lat = -79.5 + 10.0 * jj + 1.5 * np.sin(2 * np.pi * ii / nx)
    lon = (1.0 + 10.0 * ii + 2.0 * np.cos(np.pi * jj / ny)) % 360.0
    if regional:
        ny, nx = 4, 5
        lat = 20.5 + 2.0 * jj[:ny, :nx] + 0.1 * ii[:ny, :nx]
        lon = 180.5 + 2.0 * ii[:ny, :nx]
    dep = np.asarray(depths, np.float64)
    time = t0 + np.arange(nt) * np.timedelta64(1, "D")
    thetao = _field(rng, (nt, dep.size, ny, nx), 10.0)
    zos = _field(rng, (nt, ny, nx), 0.0)
    if not regional:
        thetao[:, :, 9:12, 3:7] = np.nan  # land
        zos[:, 9:12, 3:7] = np.nan
    root = zarr.open_group(os.fspath(path), mode="w", zarr_format=zarr_format)
    kw = dict(zarr_format=zarr_format, codec="zstd")
    ct, cl, cy, cx = chunks
    _array(root, "thetao", thetao, ("time", "depth", "y", "x"), chunks=(ct, cl, cy, cx), attrs={"units": "degC"}, **kw)
    _array(root, "zos", zos, ("time", "y", "x"), chunks=(ct, cy, cx), attrs={"units": "m"}, **kw)
    _time_coord(root, time, **kw)  # as fastload synth writes it (a v2 fill value 0 read as NaT)
    _array(root, "depth", dep, ("depth",), chunks=(dep.size,), attrs={"units": "m", "positive": "down"}, **kw)
    _array(root, "latitude", lat, ("y", "x"), chunks=(ny, nx), **kw)
    _array(root, "longitude", lon, ("y", "x"), chunks=(ny, nx), attrs={"periodic_x": not regional}, **kw)
    return {"thetao": thetao, "zos": zos, "time": time, "depth": dep, "latitude": lat, "longitude": lon}


def mesh_nodes(n: int = 700, seed: int = 12) -> tuple[np.ndarray, np.ndarray]:
    """Jittered Fibonacci-lattice nodes (degrees, lon in [0, 360)), none in a 'continent' (lat 10..40, lon
    100..150), ordered by 15-degree tiles so that a node chunk holds neighbouring nodes, as mesh writers do."""
    rng = np.random.default_rng(seed)
    k = np.arange(n) + 0.5
    lat = np.rad2deg(np.arcsin(1.0 - 2.0 * k / n))
    lon = (k * 137.50776405) % 360.0
    lat = np.clip(lat + rng.uniform(-1.0, 1.0, n), -89.9, 89.9)
    lon = (lon + rng.uniform(-1.0, 1.0, n)) % 360.0
    land = (lat > 10) & (lat < 40) & (lon > 100) & (lon < 150)
    lat, lon = lat[~land], lon[~land]
    order = np.lexsort((lon, (lon // 15).astype(int), (lat // 15).astype(int)))
    return lat[order], lon[order]


def _triangles(lat: np.ndarray, lon: np.ndarray) -> np.ndarray:
    from scipy.spatial import ConvexHull

    la, lo = np.deg2rad(lat), np.deg2rad(lon)
    xyz = np.stack([np.cos(la) * np.cos(lo), np.cos(la) * np.sin(lo), np.sin(la)], axis=1)
    return ConvexHull(xyz).simplices.astype(np.int32)  # the spherical Delaunay triangulation


def make_mesh(path: str | os.PathLike[str], *, nt: int = 14, depths: Sequence[float] = (5.0, 100.0),
              node_chunk: int = 64, time_chunk: int = 4, zarr_format: int = 2, seed: int = 13, n: int = 700,
              bad: str | None = None, faces: bool = True, lon_range: str = "0-360") -> dict:
    """6-hourly mesh store; ``bad`` = ``"outside"`` (a node at latitude 95) or ``"duplicate"`` (two nodes at
    one place); ``lon_range="-180-180"`` stores longitudes in [-180, 180)."""
    rng = np.random.default_rng(seed)
    lat, lon = mesh_nodes(n, seed + 1)
    if bad == "outside":
        lat = lat.copy()
        lat[7] = 95.0
    elif bad == "duplicate":
        lat, lon = lat.copy(), lon.copy()
        lat[20], lon[20] = lat[3], lon[3]
    stored_lon = np.where(lon >= 180.0, lon - 360.0, lon) if lon_range == "-180-180" else lon
    n_nodes = lat.size
    dep = np.asarray(depths, np.float64)
    time = MESH_T0 + np.arange(nt) * np.timedelta64(6, "h")
    temp = _field(rng, (nt, dep.size, n_nodes), 12.0)
    ssh = _field(rng, (nt, n_nodes), 0.0)
    root = zarr.open_group(os.fspath(path), mode="w", zarr_format=zarr_format)
    kw = dict(zarr_format=zarr_format, codec="blosc-lz4")
    _array(root, "temp", temp, ("time", "nz1", "nod2"), chunks=(time_chunk, 1, node_chunk), attrs={"units": "degC"},
           **kw)
    _array(root, "ssh", ssh, ("time", "nod2"), chunks=(time_chunk, node_chunk), attrs={"units": "m"}, **kw)
    _time_coord(root, time, **kw)  # as fastload synth writes it (a v2 fill value 0 read as NaT)
    _array(root, "nz1", dep, ("nz1",), chunks=(dep.size,), attrs={"units": "m", "positive": "down"}, **kw)
    _array(root, "latitude", lat, ("nod2",), chunks=(n_nodes,), **kw)
    _array(root, "longitude", stored_lon, ("nod2",), chunks=(n_nodes,), **kw)
    out = {"temp": temp, "ssh": ssh, "time": time, "nz1": dep, "latitude": lat, "longitude": lon}
    if faces and bad is None:
        tri = _triangles(lat, lon)
        _array(root, "face_nodes", tri, ("nelem", "n3"), chunks=tri.shape, attrs={"start_index": 0},
               fill_value=-1, **kw)
        out["face_nodes"] = tri
    return out


def make_latlon_xr(path: str | os.PathLike[str], *, ascending: bool, lon_start: float = 0.0, nt: int = 16,
                   names: tuple[str, str] = ("sst", "uo"), zarr_format: int = 2, seed: int = 21) -> dict:
    """6-hourly (from ``ATMO_T0``) 5-degree global grid (37 x 72) written with xarray: ``names[0]`` (time, lat, lon)
    and ``names[1]`` (time, depth, lat, lon), depths 0 and 50 m.

    The values are one physical field whatever the layout: drawn on latitudes 90 .. -90 and longitudes 0 .. 355,
    then stored with latitudes ascending (``ascending``) or descending and longitudes rolled to start at
    ``lon_start`` (0 or -180). Returns the arrays as written (in the store's order) and the coordinates.
    """
    import xarray as xr

    rng = np.random.default_rng(seed)
    lat = np.linspace(90.0, -90.0, 37)
    lon = np.arange(72) * 5.0
    dep = np.array([0.0, 50.0])
    time = ATMO_T0 + np.arange(nt) * np.timedelta64(6, "h")
    a = _field(rng, (nt, 37, 72), 15.0)
    b = _field(rng, (nt, dep.size, 37, 72), 0.0)
    shift = int(round((lon_start % 360.0) / 5.0))
    lon = np.roll(lon, -shift)
    lon = np.where(lon >= lon_start + 360.0, lon - 360.0, lon)
    lon = np.where(lon < lon_start, lon + 360.0, lon)
    a, b = np.roll(a, -shift, axis=-1), np.roll(b, -shift, axis=-1)
    if ascending:
        lat, a, b = lat[::-1], a[..., ::-1, :], b[..., ::-1, :]
    a, b = np.ascontiguousarray(a), np.ascontiguousarray(b)
    ds = xr.Dataset({names[0]: (("time", "latitude", "longitude"), a),
                     names[1]: (("time", "depth", "latitude", "longitude"), b)},
                    coords={"time": time, "latitude": lat, "longitude": lon, "depth": dep})
    enc = {names[0]: {"chunks": (4, 10, 24)}, names[1]: {"chunks": (4, 1, 10, 24)}}
    ds.to_zarr(os.fspath(path), mode="w", zarr_format=zarr_format, encoding=enc, consolidated=False)
    return {names[0]: a, names[1]: b, "time": time, "latitude": lat, "longitude": lon, "depth": dep}
