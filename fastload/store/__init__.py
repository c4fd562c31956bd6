"""The store layer: :func:`open_store` checks a zarr store once and then serves raw chunks and decodes them.

Why this exists: everything above (plan, reader, gather, tools) needs one description of a store (fields, levels,
grid, time axis, chunk grid, codecs) and a cheap, thread-safe way to get decoded chunks by index, with no zarr
per-chunk machinery. Contract: ``fastload/DESIGN.md``, "The Store contract". Print what a store holds with
``python -m fastload.store PATH_OR_URL``.

Layouts read (zarr format 2 and 3; local folders or fsspec URLs):

**Per-variable** (what xarray writes; WeatherBench2 / ARCO-ERA5 style). One array per variable with dims
``(time, [level], latitude, longitude)`` from ``_ARRAY_DIMENSIONS`` (v2) or ``dimension_names`` (v3); static
fields without ``time`` are allowed. Coordinates:

- ``time``: CF-encoded numbers (``units = "hours since 1979-01-01"``, ``calendar`` standard/gregorian/
  proleptic_gregorian) or datetime64; strictly increasing.
- ``latitude``/``lat`` and ``longitude``/``lon``: 1-D (a regular grid) or 2-D over dims ``(y, x)`` (a curvilinear
  grid). 1-D longitudes are global (x wraps) when regularly spaced over 360 degrees; a ``periodic_x`` attribute
  (on the longitude array, the latitude array or the group) overrides, and is how curvilinear grids say x wraps.
- a vertical coordinate: any 1-D array named after its dimension (usually ``level``). Its kind comes from the
  attribute ``level_type`` (one of ``model``, ``pressure``, ``surface``, ``depth``, ``height``), else from CF
  ``units`` (Pa/hPa -> pressure; m with ``positive = "down"`` -> depth, else height).

Arrays over neither grid dimension (e.g. ``time_bnds``) are ignored. An array over a grid dimension that cannot be
a field (CESM's ``gw(lat)`` or ``lat_edges(lat, nv)``, other dims or their order, a level dimension without a
coordinate array, a non-numeric dtype, dates coded as numbers with CF units ``"... since ..."``) is left out of the fields and listed in ``Store.not_fields`` with why
(``fastload inspect`` shows it); asking for it as a field is a :class:`~fastload.errors.ConfigError` saying why.
Coordinates may be of any type xarray writes, including zarr-python's v3 fixed-size strings
(``fixed_length_utf32``, ``null_terminated_bytes``: NumPy ``U``/``S``), e.g. ERA5's ``expver``, and
variable-length strings or bytes (v2 ``|O`` with ``vlen-utf8``/``vlen-bytes``, v3 ``string``/``variable_length_bytes``):
these are never fields, and :meth:`Store.read_array` reads their values as zarr-python does.

**Mesh** (per-variable on an unstructured mesh; :mod:`fastload.store._mesh`). ``latitude`` and ``longitude`` are
1-D over one shared node dimension; fields have dims ``(time, [level], node)``; optional ``face_nodes``
connectivity. The grid is ``Grid(kind="mesh")`` (``ny = 1``, ``nx`` = nodes); field axes are
``(time, None, level, None, node)``. Nodes outside [-90, 90] x [-180, 360] or at the same place are refused. An
array along the nodes that cannot be a field (``node_vertices(node, nv)``, dims out of order, extra dims) is left
out and listed in ``Store.not_fields``, as on lat-lon grids.

**AtmoRep**. Array ``data`` with axes ``(time, field, level, lat, lon)`` and optional ``data_sfc`` with axes
``(time, field, lat, lon)``, plus coordinate arrays ``time``, ``lat``/``latitude``/``lats``,
``lon``/``longitude``/``lons`` and optionally ``level``. Attributes:

- ``data.attrs["fields"]`` (or the group's ``fields``): the field names along axis 1 of ``data``;
- ``data.attrs["levels"]`` (or the group's ``levels``, or the ``level`` array): level values along axis 2;
- ``data.attrs["level_type"]`` (or the group's): the kind of those levels, default ``"model"``;
- ``data_sfc.attrs["fields"]`` (or the group's ``sfc_fields``): surface field names (level type ``surface``);
- optional ``units``: a list aligned with ``fields`` or a mapping field -> units.

Raw access: :class:`BaseByteSource` (:class:`LocalSource`, :class:`FsspecSource`, :class:`ObstoreSource` (optional
obstore), :class:`LatencySource`); chunk
keys follow the metadata (v2 ``dimension_separator``, v3 ``chunk_key_encoding``); sharded v3 arrays read one
cached shard index per shard and then the inner chunk's byte range, or the whole shard when a bytes-to-bytes codec
follows ``sharding_indexed`` (:mod:`._shard`). Decoding calls numcodecs directly.
"""

from __future__ import annotations

from ._codecs import SAFE_NUMCODECS
from ._layout import FieldInfo
from ._meta import ArrayInfo
from ._obstore import ObstoreSource
from ._open import BACKENDS, Store, make_source, open_store
from ._shard import stored_nbytes
from ._source import BaseByteSource, FsspecSource, LatencySource, LocalSource
from .grid import Grid

__all__ = [
    "open_store",
    "make_source",
    "Store",
    "Grid",
    "FieldInfo",
    "ArrayInfo",
    "BaseByteSource",
    "LocalSource",
    "FsspecSource",
    "ObstoreSource",
    "BACKENDS",
    "LatencySource",
    "SAFE_NUMCODECS",
    "stored_nbytes",
]
