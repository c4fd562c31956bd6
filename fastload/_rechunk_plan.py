"""What ``fastload rechunk`` (:mod:`fastload.rechunk`) copies of a source besides its fields: :func:`copy_plan`.

Why this exists apart: a per-variable source keeps its names in the copy, so the copy's dimensions are named as the
source's (:func:`_dim_names`), the source's small arrays along the copied dimensions (CDS's ``expver(valid_time)``,
a scalar ``number``, CESM's ``gw(lat)``) are copied as they are (:func:`_copy_extra`, with the ``_FillValue``
attribute xarray reads in zarr v3: :func:`_fill_attr`, which the fields' copies use too), and every other array is
left out with why (the CLI prints those). :mod:`fastload.rechunk` re-exports :func:`copy_plan`.
"""

from __future__ import annotations

import base64
from collections.abc import Sequence
from typing import Any

import numpy as np

from ._zarr_location import zarr_location
from .errors import ConfigError
from .store._check import unknown_field
from .write import StoreWriter, attr_fill_value

_EXTRA_MAX_BYTES = 64 * 2**20  # larger non-field arrays are not "small coordinates": left out, and said so


def _dim_names(src: Any, names: Sequence[str]) -> dict[str, str]:
    """The source's names of the copy's dimensions (usual name -> source name): a per-variable source's are kept;
    an AtmoRep source's data has no per-variable names, and its copy uses the usual ones."""
    if src.layout != "per_variable":
        return {}
    out = {"latitude": src.grid.dims[0], "longitude": src.grid.dims[1]}
    tname = next((c for c in src.coords if c in ("time", "valid_time")), None)
    if tname is not None:
        out["time"] = tname
    for n in names:
        f = src.fields[n]
        dims = src.arrays[f.array].dims or ()
        if f.has_time:
            out["time"] = dims[f.axes[0]]
        if f.levels is not None:
            out["level"] = dims[f.axes[2]]
    return out


def copy_plan(src: Any, fields: Sequence[str] | None = None) -> tuple[dict[str, str], list[tuple[str, tuple[str, ...]]],
                                                                    dict[str, str]]:  # fmt: skip
    """What :func:`rechunk` copies of ``src`` besides the fields: ``(dim_names, extras, left_out)``.

    ``dim_names`` maps the copy's usual dimension names (time, level, latitude, longitude) to the source's;
    ``extras`` are the source's other arrays copied as they are (name and their dimensions in usual names: small
    coordinates such as CDS's ``expver(valid_time)`` and scalar ``number``, or CESM's ``gw(lat)``); ``left_out``
    says, for every other array that is neither a copied field nor a dimension coordinate, why it is not copied.
    An array over both grid dimensions that is not a field (``src.not_fields``) is left out with the reason it is
    not one, not copied as it is: it is most likely a field written wrong, to be fixed, not carried along.
    """
    names = _field_names(src, fields)
    dim_names = _dim_names(src, names)
    left_out = {n: "not among the fields asked for (--fields)" for n in src.fields if n not in names}
    extras: list[tuple[str, tuple[str, ...]]] = []
    if src.layout != "per_variable":
        return dim_names, extras, left_out
    have = {"latitude", "longitude"} | ({"time"} if src.time is not None else set())
    have |= {"level"} if any(src.fields[n].levels is not None for n in names) else set()
    usual = {v: k for k, v in dim_names.items() if k in have}  # source name -> usual name
    for name, arr in _source_group(src).arrays():
        if name in src.fields or name in usual:
            continue
        dims = _array_dims(arr)
        not_field = getattr(src, "not_fields", {}).get(name)
        if not_field is not None and dims is not None and set(src.grid.dims) <= set(dims):
            left_out[name] = f"not a field: {not_field}"  # a field written wrong (dims, level): not copied as it is
        elif dims is None:
            left_out[name] = "no dimension names (_ARRAY_DIMENSIONS / dimension_names)"
        elif any(d not in usual for d in dims):
            left_out[name] = f"dims {dims}: {[d for d in dims if d not in usual]} not among the copy's {list(usual)}"
        elif arr.nbytes > _EXTRA_MAX_BYTES:
            left_out[name] = f"{arr.nbytes / 2**20:.0f} MiB, over the {_EXTRA_MAX_BYTES >> 20} MiB copied as is"
        else:
            extras.append((name, tuple(usual[d] for d in dims)))
    return dim_names, extras, left_out


def _field_names(src: Any, fields: Sequence[str] | None) -> list[str]:
    """The fields to copy (default: all), each one a field of ``src``, else a :class:`ConfigError` saying why."""
    names = list(src.fields) if fields is None else list(fields)
    unknown = [n for n in dict.fromkeys(names) if n not in src.fields]
    if unknown:
        raise ConfigError("fields: " + "; ".join(f"{n!r}: {unknown_field(src, n)}" for n in unknown))
    return names


def _source_group(src: Any) -> Any:
    """The source as a zarr-python group (read-only), for the small arrays copied as they are."""
    import zarr

    return zarr.open_group(zarr_location(src.path, src.storage_options), mode="r")


def _array_dims(arr: Any) -> tuple[str, ...] | None:
    if arr.metadata.zarr_format == 2:
        d = arr.attrs.get("_ARRAY_DIMENSIONS")
        return None if d is None and arr.ndim else tuple(d or ())
    d = arr.metadata.dimension_names
    return None if d is None and arr.ndim else tuple(d or ())


def _copy_extra(w: StoreWriter, arr: Any, name: str, dims: tuple[str, ...], fmt: int) -> None:
    """Copy a small source array as it is: stored values, attributes, and the fill value xarray masks in it."""
    attrs = {k: v for k, v in arr.attrs.items() if k not in ("_ARRAY_DIMENSIONS", "_FillValue")}
    dt = np.dtype(arr.dtype) if not hasattr(arr.dtype, "to_native_dtype") else arr.dtype.to_native_dtype()
    fill = None  # what xarray masks (as fastload.write.declared_fill_value says, for any array)
    if arr.metadata.zarr_format == 2 and arr.metadata.fill_value is not None:
        fill = arr.metadata.fill_value
    elif "_FillValue" in arr.attrs and dt.kind in "biuf":
        fill = attr_fill_value(arr.attrs["_FillValue"], dt)
    if fill is not None and fmt == 3 and dt.kind in "biuf" and not (dt.kind == "f" and np.isnan(fill)):
        attrs["_FillValue"] = _fill_attr(fill, dt)
    w.add_coordinate(name, dims, arr[...], attrs=attrs, fill_value=fill if fmt == 2 else None)


def _fill_attr(fill: Any, dtype: Any) -> Any:
    """A v3 ``_FillValue`` attribute as xarray writes and reads it: an integer, or for floats the base64 of the
    value's float64 little-endian bytes."""
    if np.dtype(dtype).kind == "f":
        return base64.b64encode(np.float64(fill).astype("<f8").tobytes()).decode("ascii")
    return int(fill)
