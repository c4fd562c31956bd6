"""Normalisation coefficients, read lazily: :class:`Normalizer`, :func:`months_of`, :func:`normalize`.

Why this module exists: AtmoRep loaded gigabytes of local (per grid point) coefficients per level per dataset up
front. Here the coefficients live in their own zarr store (written by ``fastload stats``, see
:mod:`fastload.stats`), chunked one month x one level x the grid, and :class:`Normalizer` reads only the months and
levels a loader asks for, caching what it read. Each field picks its mode ("local", "global", "none") at load
time; swapping in another coefficient store is making another ``Normalizer``.

Layout of a coefficient store (``fastload/DESIGN.md``, "Normalisation coefficients")::

    NORM/                         root attributes: fastload_norm (format version), source, fields
      <field>/                    attributes: source, levels, level_type, grid_kind, grid_shape, latitude/
                                  longitude first and last values, transform, months_present (1-12), counts, ...
        global_mean, global_std   (12, L)          float64
        global_count              (12, L)          int64: finite values behind each global coefficient
        local_mean, local_std     (12, L, NY, NX)  float32, chunks (1, 1, NY, NX)
        month (12,), level (L,), latitude/longitude (1-D, latlon grids only): coordinates for xarray

Statistics are population statistics (``ddof=0``) of the finite values after the field's transform. A month
with no data has NaN coefficients; a grid point with no data in a month has NaN local coefficients.

Std guard. A standard deviation of zero or NaN where data exist (a constant cell: a dry desert month, a mask)
would turn normalised values into inf. :class:`Normalizer` floors it: a global std at ``abs_floor``, a local std at
``max(abs_floor, rel_floor * global_std)`` of the same month and level. Where no data existed (mean NaN) the
coefficients stay NaN, so such points normalise to NaN, like the data there. A static field (orography, a land-sea
mask) has a local std of 0 at every point, so "local" normalisation would make it all zeros: it is refused
(``Store.check`` and :meth:`Normalizer.check` name the field); use "global" or "none" for it.

Quick look::

    python -c "from fastload.norm import Normalizer; n = Normalizer('norm.zarr'); print(n.fields)"
"""

from __future__ import annotations

import hashlib
import math
import os
import re
import threading
from collections.abc import Sequence
from typing import Any

import numpy as np

from ._zarr_location import zarr_location
from .errors import ConfigError, SchemaError, StoreError, StoreNotFoundError

__all__ = ["Normalizer", "canonical_units", "months_of", "normalize", "FORMAT_VERSION", "MODES"]

FORMAT_VERSION = 1
"""Value of the root attribute ``fastload_norm`` of a coefficient store this module reads."""
MODES = ("local", "global", "none")
MONTH_NAMES = ("Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec")


def months_of(times: np.ndarray) -> np.ndarray:
    """Calendar month index (0 = January ... 11 = December) of each time.

    Parameters
    ----------
    times : array of datetime64
        Any shape, any datetime64 unit.

    Returns
    -------
    numpy.ndarray
        int32, same shape as ``times``.

    Raises
    ------
    SchemaError
        When ``times`` is not datetime64 or holds NaT.
    """
    t = np.asarray(times)
    if t.dtype.kind != "M":
        raise SchemaError(f"months_of: expected datetime64 times, got dtype {t.dtype}")
    if np.isnat(t).any():
        raise SchemaError(f"months_of: {int(np.isnat(t).sum())} time value(s) are NaT (not a time)")
    return (t.astype("datetime64[M]").astype(np.int64) % 12).astype(np.int32)


def normalize(
    values: np.ndarray, mean: np.ndarray, std: np.ndarray, transform: str | None = None
) -> np.ndarray:
    """Reference normalisation ``(transform(values) - mean) / std`` in float32, with NumPy broadcasting.

    Bit for bit what the gather kernels compute (:mod:`fastload.sampling._kernels`): the value as float32,
    ``log1p`` taken in float64 and rounded to float32, then ``(x - mean) / std`` in float32. Tests and tools use it
    as the reference. ``mean`` and ``std`` are used as given (take them from :meth:`Normalizer.coefficients`, which
    applies the std guard).

    Parameters
    ----------
    values : array_like
        Raw values.
    mean, std : array_like
        Coefficients broadcastable against ``values``.
    transform : {None, "log1p"}
        Applied to ``values`` before normalising. ``log1p`` of a value below -1 is NaN.
    """
    x = np.asarray(values, dtype=np.float32)
    if transform == "log1p":
        with np.errstate(invalid="ignore", divide="ignore"):
            x = np.log1p(x.astype(np.float64)).astype(np.float32)  # as the kernels: float64 log1p, then rounded
    elif transform is not None:
        raise ConfigError(f"transform: expected None or 'log1p', got {transform!r}")
    with np.errstate(invalid="ignore", divide="ignore", over="ignore"):
        return ((x - np.asarray(mean, np.float32)) / np.asarray(std, np.float32)).astype(np.float32)


_UNIT_WORDS = {
    "kelvin": "k", "kelvins": "k", "degk": "k", "deg_k": "k", "degree_k": "k", "degrees_k": "k", "degreek": "k",
    "degreesk": "k", "degree_kelvin": "k", "degrees_kelvin": "k",
    "celsius": "degc", "deg_c": "degc", "degree_c": "degc", "degrees_c": "degc", "°c": "degc", "degreec": "degc",
    "degreesc": "degc", "degree_celsius": "degc", "degrees_celsius": "degc",
    "pascal": "pa", "pascals": "pa", "mbar": "hpa", "millibar": "hpa", "millibars": "hpa", "mb": "hpa",
    "metre": "m", "meter": "m", "metres": "m", "meters": "m", "second": "s", "seconds": "s", "sec": "s",
    "kilogram": "kg", "kilograms": "kg", "percent": "%",
}  # fmt: skip
_DIMENSIONLESS = ("", "1", "-", "~", "dimensionless", "unitless", "none", "fraction", "(0 - 1)", "(0-1)", "0-1")
_UNIT_TOKEN = re.compile(r"^([a-z_%°]+)(-?\d+)?$")


def canonical_units(units: str) -> tuple[tuple[str, int], ...] | str:
    """A comparable form of a units string: ``(symbol, exponent)`` pairs, so that spellings of the same unit
    compare equal ("K" and "kelvin", "m s**-1", "m s-1" and "m/s", "degC" and "degrees_Celsius", "hPa" and "mbar",
    "1" and "(0 - 1)"); a string it cannot parse is compared as written (lower case, single spaces)."""
    u = " ".join(str(units).strip().lower().split())
    u = re.sub(r"\bdeg(?:ree)?s?[ _]?(celsius|kelvin|c|k)\b", lambda m: "degc" if m[1][0] == "c" else "k", u)
    if u in _DIMENSIONLESS:
        return ()
    out: dict[str, int] = {}
    for i, part in enumerate(u.replace("**", "").replace("^", "").split("/")):
        for tok in re.split(r"[\s.*]+", part.strip()):
            m = _UNIT_TOKEN.match(tok)
            if m is None:
                if tok == "1":
                    continue
                return u
            sym = _UNIT_WORDS.get(m[1], m[1])
            out[sym] = out.get(sym, 0) + (-1 if i else 1) * int(m[2] or 1)
    return tuple(sorted((k, v) for k, v in out.items() if v))


def _same(a: Any, b: Any) -> bool:
    return bool(np.allclose(np.asarray(a, np.float64), np.asarray(b, np.float64), rtol=1e-6, atol=1e-6))


def values_digest(a: np.ndarray) -> str:
    """``"sha256:<hex>"`` of ``a``'s float32 values, C order, with one NaN and one zero (a NaN's payload and the
    sign of a zero do not change a normalised value): the same for a copy in any zarr format, chunking or codec."""
    c = np.ascontiguousarray(a, np.float32) + np.float32(0)  # a copy; -0.0 + 0.0 is +0.0
    c[np.isnan(c)] = np.nan
    return "sha256:" + hashlib.sha256(c.view(np.uint8).reshape(-1)).hexdigest()[:32]


class Normalizer:
    """Lazy reader of a coefficient store written by ``fastload stats``.

    Parameters
    ----------
    path : str, path-like or zarr store
        Local path, fsspec URL, or a zarr-python store object.
    storage_options : mapping, optional
        For fsspec URLs.
    rel_floor : float
        A local std is floored at ``rel_floor`` times the global std of the same month and level.
    abs_floor : float
        Every std where data exist is floored at ``abs_floor`` (replaces zeros and NaNs).

    Raises
    ------
    StoreNotFoundError
        Nothing at ``path``.
    SchemaError
        ``path`` is not a coefficient store of a version this module reads.

    Notes
    -----
    Thread-safe: many loader threads may call :meth:`coefficients` at once; each (field, month, level) slab of the
    local coefficients is read at most once and cached (:meth:`clear_cache` drops the cache).
    """

    def __init__(
        self,
        path: Any,
        *,
        storage_options: dict[str, Any] | None = None,
        rel_floor: float = 1e-3,
        abs_floor: float = 1e-12,
    ):
        import zarr

        if not (rel_floor >= 0 and abs_floor > 0):
            raise ConfigError(
                f"Normalizer: rel_floor must be >= 0 and abs_floor > 0, got {rel_floor}, {abs_floor}"
            )
        self.path = (
            os.path.abspath(os.fspath(path))
            if isinstance(path, (str, os.PathLike)) and "://" not in str(path)
            else path
        )
        self.rel_floor = float(rel_floor)
        self.abs_floor = float(abs_floor)
        if isinstance(self.path, str) and "://" not in self.path and not os.path.isdir(self.path):
            raise StoreNotFoundError(
                f"normalisation store {self.path!r} does not exist (make one: fastload stats)"
            )
        if isinstance(self.path, str) and ("://" in self.path or "::" in self.path):
            from .store._source import fsspec_filesystem

            # the stores' one check of a URL: an unknown protocol, or one whose package is not installed, is a
            # StoreError naming the URL and what to install (zarr would raise fsspec's bare ValueError/ImportError)
            try:
                fsspec_filesystem(self.path, storage_options)
            except StoreError as e:
                raise StoreError(f"normalisation store {e}") from e.__cause__
        try:
            location = zarr_location(self.path, storage_options)  # a local path with storage_options: ConfigError
            self._root = zarr.open_group(location, mode="r")
        except ConfigError:
            raise
        except FileNotFoundError as e:  # zarr's GroupNotFoundError included
            raise StoreNotFoundError(f"no normalisation store (zarr group) at {self.path!r}: {e}") from e
        except (ValueError, TypeError, KeyError) as e:
            raise SchemaError(f"normalisation store {self.path!r} has unreadable metadata: {e}") from e
        attrs = dict(self._root.attrs)
        from ._write_temps import unfinished_message

        msg = unfinished_message(self.path, attrs)
        if msg:
            raise SchemaError(msg)
        if attrs.get("fastload_norm") != FORMAT_VERSION:
            raise SchemaError(
                f"{self.path!r} is not a fastload normalisation store (root attribute fastload_norm="
                f"{attrs.get('fastload_norm')!r}, expected {FORMAT_VERSION}); make one with fastload stats"
            )
        self.source: str | None = attrs.get("source")
        self.fields: tuple[str, ...] = tuple(attrs.get("fields", ()))
        self._attrs: dict[str, dict[str, Any]] = {}
        self._global: dict[str, tuple[np.ndarray, np.ndarray]] = {}
        self._local: dict[tuple[str, str, int, int], np.ndarray] = {}
        self.slab_digests: dict[tuple[str, str, int, int], str] = {}
        """(field, "local_mean"/"local_std", month, level index) -> :func:`values_digest` of each local slab read
        (kept by :meth:`clear_cache`: what was read; :mod:`fastload._resume` compares them on resume)."""
        self._lock = threading.Lock()

    # -- metadata ------------------------------------------------------------------------------------------------
    def attrs(self, field: str) -> dict[str, Any]:
        """The attributes recorded for ``field`` (source, levels, grid, transform, months_present, counts...)."""
        if field not in self.fields:
            raise ConfigError(
                f"normalisation store {self._where()} has no coefficients for field {field!r}; it has "
                f"{list(self.fields)} (compute them with fastload stats --fields {field})"
            )
        with self._lock:
            if field not in self._attrs:
                self._attrs[field] = dict(self._root[field].attrs)
            return self._attrs[field]

    def levels(self, field: str) -> np.ndarray | None:
        """Level values of ``field`` in the coefficient store (None for a field without levels)."""
        lv = self.attrs(field).get("levels")
        return None if lv is None else np.asarray(lv, np.float64)

    def transform(self, field: str) -> str | None:
        """The transform the statistics of ``field`` were computed after (None or "log1p")."""
        return self.attrs(field).get("transform")

    def months_present(self, field: str) -> tuple[int, ...]:
        """Month indices (0-11) for which ``field`` has coefficients."""
        return tuple(int(m) - 1 for m in self.attrs(field).get("months_present", ()))

    def _where(self) -> str:
        return repr(self.path) if isinstance(self.path, str) else type(self.path).__name__

    def level_indices(self, field: str, levels: Sequence[float] | None) -> np.ndarray:
        """Indices into the coefficient store's level axis of ``field`` for the given level values."""
        have = self.levels(field)
        if have is None:
            if levels is not None and len(levels) > 0:
                raise ConfigError(
                    f"field {field!r}: levels {list(levels)} requested but the normalisation store "
                    f"{self._where()} holds it without levels"
                )
            return np.zeros(1, np.int64)
        if levels is None:
            return np.arange(len(have), dtype=np.int64)
        out = []
        missing = []
        for v in levels:
            hit = np.flatnonzero(np.isclose(have, float(v), rtol=0, atol=1e-6 * max(1.0, abs(float(v)))))
            if hit.size:
                out.append(int(hit[0]))
            else:
                missing.append(v)
        if missing:
            raise ConfigError(
                f"field {field!r}: level(s) {missing} not in the normalisation store {self._where()}; it has "
                f"levels {have.tolist()}"
            )
        return np.asarray(out, np.int64)

    # -- coefficients ----------------------------------------------------------------------------------------
    def _global_arrays(self, field: str) -> tuple[np.ndarray, np.ndarray]:
        with self._lock:
            got = self._global.get(field)
            if got is None:
                g = self._root[field]
                got = (
                    np.asarray(g["global_mean"][...], np.float64),
                    np.asarray(g["global_std"][...], np.float64),
                )
                self._global[field] = got
            return got

    def _local_slab(self, field: str, stat: str, month: int, level: int) -> np.ndarray:
        key = (field, stat, month, level)
        with self._lock:
            got = self._local.get(key)
            if got is None:
                got = np.asarray(self._root[field][stat][month, level], np.float32)  # (NY, NX): one chunk
                self._local[key] = got
                self.slab_digests[key] = values_digest(got)
            return got

    def coefficients(
        self,
        field: str,
        mode: str,
        levels: Sequence[float] | None = None,
        months: Sequence[int] | None = None,
    ) -> tuple[np.ndarray, np.ndarray]:
        """Mean and (guarded) std of ``field`` for the given months and levels.

        Parameters
        ----------
        field : str
            Field name.
        mode : {"local", "global", "none"}
            Per grid point, per level, or no normalisation.
        levels : sequence of float, optional
            Level values, in the order wanted; None: all levels of the field in the coefficient store.
        months : sequence of int, optional
            Month indices 0-11, in the order wanted (the gather's ``month_of`` indexes into this order);
            None: all twelve.

        Returns
        -------
        mean, std : numpy.ndarray
            float32, C-contiguous, shape ``(M, L, NYm, NXm)``: NYm = NXm = 1 for "global", the grid for
            "local"; M = 0 for "none".

        Raises
        ------
        ConfigError
            Unknown mode or field, a level not in the store, a month out of range or without data.
        """
        if mode not in MODES:
            raise ConfigError(
                f"field {field!r}: normalization mode expected one of {list(MODES)}, got {mode!r}"
            )
        month_idx = list(range(12)) if months is None else [int(m) for m in months]
        bad = [m for m in month_idx if not 0 <= m < 12]
        if bad:
            raise ConfigError(f"field {field!r}: month indices must be 0-11, got {bad}")
        if mode == "none":
            n_lev = 1 if levels is None else len(levels)
            empty = np.zeros((0, n_lev, 1, 1), np.float32)
            return empty, empty.copy()
        lev_idx = self.level_indices(field, levels)
        present = set(self.months_present(field))
        absent = [m for m in month_idx if m not in present]
        if absent:
            raise ConfigError(
                f"field {field!r}: the normalisation store {self._where()} has no data for month(s) "
                f"{[MONTH_NAMES[m] for m in absent]}; recompute with fastload stats over a time range covering them"
            )
        gmean, gstd = self._global_arrays(field)
        gm = gmean[np.ix_(month_idx, lev_idx)]  # (M, L)
        gs = gstd[np.ix_(month_idx, lev_idx)]
        gs_guarded = np.where(
            np.isfinite(gm), np.where(np.isfinite(gs), np.maximum(gs, self.abs_floor), self.abs_floor), gs
        )
        if mode == "global":
            shape = (len(month_idx), len(lev_idx), 1, 1)
            return (
                np.ascontiguousarray(gm.reshape(shape), np.float32),
                np.ascontiguousarray(gs_guarded.reshape(shape), np.float32),
            )
        ny, nx = (int(v) for v in self.attrs(field)["grid_shape"])
        mean = np.empty((len(month_idx), len(lev_idx), ny, nx), np.float32)
        std = np.empty_like(mean)
        for i, m in enumerate(month_idx):
            for j, li in enumerate(lev_idx):
                mean[i, j] = self._local_slab(field, "local_mean", m, int(li))
                s = self._local_slab(field, "local_std", m, int(li))
                floor = (
                    max(self.abs_floor, self.rel_floor * gs_guarded[i, j])
                    if math.isfinite(gs_guarded[i, j])
                    else self.abs_floor
                )
                ok = np.isfinite(mean[i, j])
                std[i, j] = np.where(ok, np.where(np.isfinite(s), np.maximum(s, floor), floor), s)
        return mean, std

    def clear_cache(self) -> None:
        """Forget every coefficient read so far (they are read again on demand)."""
        with self._lock:
            self._local.clear()
            self._global.clear()

    # -- consistency with a data store ------------------------------------------------------------------------------
    def check_field(
        self, store: Any, field: str, levels: Sequence[float] | None, transform: str | None, *,
        time_steps: Any = None,
    ) -> None:
        """Check that the coefficients of ``field`` fit ``store`` (a :class:`fastload.store.Store`).

        ``time_steps``: the store time indices each box reads, one row per box (:func:`fastload.extract`'s boxes,
        shape ``(B, n)``): only their months need coefficients, and a box needing a month without any is named.
        None: every month of the store's time axis (the Loader's random placement can reach any).

        Raises
        ------
        ConfigError
            The field, a level, the level type, the units (both recorded, compared by :func:`canonical_units`) or
            the transform does not match (or the field has levels on one side only), or a month of the store's time
            axis (of the boxes, with ``time_steps``) has no coefficients.
        SchemaError
            The grid differs (shape, or first/last latitude or longitude, e.g. flipped latitude order).
        """
        a = self.attrs(field)
        if field not in store.fields:
            from .store._check import unknown_field

            raise ConfigError(f"field {field!r}: {unknown_field(store, field)}")
        grid = store.grid
        shape = [int(v) for v in a.get("grid_shape", ())]
        if shape != [int(grid.ny), int(grid.nx)]:
            raise SchemaError(
                f"field {field!r}: normalisation store {self._where()} was computed on a {shape[0]}x{shape[1]} grid "
                f"but the data store {store.path!r} has {grid.ny}x{grid.nx}"
            )
        for name, coord in (("latitude", grid.lat), ("longitude", grid.lon)):
            want = a.get(f"{name}_first_last")
            c = np.asarray(coord, np.float64).ravel()
            if want is not None and c.size and not _same(want, [c[0], c[-1]]):
                raise SchemaError(
                    f"field {field!r}: normalisation store {self._where()} has {name} running {want[0]}..{want[1]} "
                    f"but the data store {store.path!r} runs {c[0]}..{c[-1]} (different grid or order)"
                )
        have_lv, data_lv = self.levels(field), store.fields[field].levels
        if (have_lv is None) != (data_lv is None):  # a field on levels and a same-named surface field
            coef = "without levels" if have_lv is None else f"for levels {have_lv.tolist()}"
            data = "no level axis" if data_lv is None else f"levels {np.asarray(data_lv, np.float64).tolist()}"
            raise ConfigError(
                f"field {field!r}: the normalisation store {self._where()} holds coefficients {coef} but in the data "
                f"store {store.path!r} the field has {data}: not the same field; recompute the coefficients with "
                f"fastload stats on a store like this one"
            )
        info = store.fields[field]
        have_lt, data_lt = a.get("level_type"), info.level_type
        if have_lt and data_lt and str(have_lt).lower() != str(data_lt).lower():
            raise ConfigError(
                f"field {field!r}: the normalisation store {self._where()} holds coefficients on {have_lt} levels "
                f"but in the data store {store.path!r} the field is on {data_lt} levels: not the same field (the "
                f"level numbers may coincide); recompute the coefficients with fastload stats on a store like this one"
            )
        have_u, data_u = a.get("units"), info.units
        if have_u and data_u and canonical_units(have_u) != canonical_units(data_u):
            raise ConfigError(
                f"field {field!r}: the coefficients in {self._where()} were computed on data in units {have_u!r} "
                f"but the data store {store.path!r} has the field in {data_u!r}; recompute the coefficients with "
                f"fastload stats on a store in these units (or correct the 'units' attribute if it is only "
                f"spelled differently)"
            )
        self.level_indices(field, levels)
        have_t = self.transform(field)
        if have_t != transform:
            raise ConfigError(
                f"field {field!r}: config asks for transform {transform!r} but the coefficients in "
                f"{self._where()} were computed after transform {have_t!r}; recompute with fastload stats "
                f"--transform {field}={transform or 'none'} or change the config"
            )
        if store.time is None or not store.fields[field].has_time:
            return
        if time_steps is None:
            need = sorted(set(np.unique(months_of(store.time)).tolist()))
            absent = sorted(set(need) - set(self.months_present(field)))
            if absent:
                raise ConfigError(
                    f"field {field!r}: the data store has times in {[MONTH_NAMES[m] for m in absent]} but the "
                    f"normalisation store {self._where()} has no coefficients for those months"
                )
            return
        steps = np.asarray(time_steps, dtype=np.int64)  # (B, n)
        if steps.ndim != 2:
            raise ConfigError(f"check: time_steps: expected (boxes, steps) store time indices, got shape {steps.shape}")
        times = np.asarray(store.time)
        lacking = ~np.isin(months_of(times[steps]), list(self.months_present(field)))  # (B, n)
        if lacking.any():  # (none with no boxes)
            i = int(np.flatnonzero(lacking.any(axis=1))[0])
            row = steps[i]
            absent = [MONTH_NAMES[m] for m in sorted(set(months_of(times[row[lacking[i]]]).tolist()))]
            span = f"{str(times[row[0]])[:16]} .. {str(times[row[-1]])[:16]}"
            raise ConfigError(
                f"field {field!r}: box {i} (store time steps {row[0]}..{row[-1]}, {span}) reads times in {absent}, "
                f"but the normalisation store {self._where()} has coefficients only for "
                f"{[MONTH_NAMES[m] for m in self.months_present(field)]}; recompute with fastload stats over a time "
                f"range covering them"
            )

    def check(self, store: Any, config: Any, *, time_steps: Any = None) -> None:
        """Check every normalised field of a :class:`~fastload.config.SamplingConfig` against ``store``.

        ``time_steps`` (``(B, n)`` store time indices of each box, one row per box): only the boxes' months need
        coefficients (:func:`fastload.extract`); None: every month of the store's time axis (the Loader).

        Also refuses "local" normalisation of a static field (no time axis in ``store``): each point's std over
        time is 0, so the std guard would turn every value into ``(x - x) / floor = 0``.
        """
        for f in config.fields:
            if f.normalization != "none":
                self.check_field(store, f.name, f.levels, f.transform, time_steps=time_steps)
            if f.normalization == "local" and (store.time is None or not store.fields[f.name].has_time):
                raise ConfigError(
                    f"fields.{f.name}: the field is static (no time axis in {store.path}): local normalisation "
                    "makes it constant (every point is its own mean, so (x - mean) / std is 0 everywhere); set "
                    "normalization = 'global' (one mean and std over the grid) or 'none'")

    def __repr__(self) -> str:
        return f"Normalizer({self._where()}, fields={list(self.fields)})"
