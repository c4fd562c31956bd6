"""The machinery of ``fastload stats``: per-(field, level) accumulators, the lazy chunk plan of a pass, and the
writer of the coefficient store (layout in :mod:`fastload.norm`).

Why a separate module: :mod:`fastload.stats` reads as config -> selection -> passes -> CLI; the numerics (Chan's
parallel merge of count/mean/M2 in float64) and the zarr writing live here, private.

A mesh store (``grid.kind == "mesh"``: fields with a node axis where x stands and no y axis) is a grid of one row:
``NY = 1``, ``NX`` = nodes, so local coefficients are ``(12, L, 1, N)``, what the point gather reads.
"""

from __future__ import annotations

import dataclasses
import datetime
from pathlib import Path
from typing import Any

import numpy as np

from ._write_temps import UNFINISHED_ATTR, unfinished_attr, writing
from ._zarr_location import zarr_location
from .norm import FORMAT_VERSION
from .write import sigint_deferred

__all__ = ["Target", "ChunkPlan", "feed", "CoefficientWriter"]


@dataclasses.dataclass(slots=True)
class Target:
    """One (field, level) pair and its running per-month statistics over the grid."""

    field: str
    array: str
    level_pos: int  # position along the output level axis
    store_level: int | None  # index along the array's level axis
    field_index: int | None
    fill_values: tuple = ()  # stored values that mean "missing" (the fill value xarray masks, missing_value)
    n: Any = None  # (12, NY, NX) int64, allocated when its pass starts
    mean: Any = None  # (12, NY, NX) float64
    m2: Any = None  # (12, NY, NX) float64

    def allocate(self, ny: int, nx: int) -> None:
        self.n = np.zeros((12, ny, nx), np.int64)
        self.mean = np.zeros((12, ny, nx))
        self.m2 = np.zeros((12, ny, nx))

    def release(self) -> None:
        self.n = self.mean = self.m2 = None

    def merge(self, month: int, ys: slice, xs: slice, block: np.ndarray) -> None:
        """Chan-merge a ``(T, ny, nx)`` float64 block (NaN = missing) into month ``month`` at ``[ys, xs]``."""
        valid = np.isfinite(block)
        nb = valid.sum(axis=0)
        if not nb.any():
            return
        x = np.where(valid, block, 0.0)
        mb = np.divide(x.sum(axis=0), nb, out=np.zeros(nb.shape), where=nb > 0)
        d = np.where(valid, block - mb, 0.0)
        m2b = np.einsum("tyx,tyx->yx", d, d)
        n = self.n[month, ys, xs]
        mean = self.mean[month, ys, xs]
        tot = n + nb
        delta = mb - mean
        frac = np.divide(nb, tot, out=np.zeros(nb.shape), where=tot > 0)
        mean += delta * frac
        self.m2[month, ys, xs] += m2b + delta * delta * n * frac
        n[...] = tot


class ChunkPlan:
    """The chunks one pass reads, generated lazily (a long record has millions): (array, chunk index) -> targets.

    Chunks holding several targets of the pass (an AtmoRep chunk with many fields and levels) are read once.
    """

    def __init__(self, store: Any, targets: list[Target], tmask: np.ndarray | None):
        self.store = store
        self.groups: dict[tuple[str, int | None, int | None], list[Target]] = {}
        for tg in targets:
            arr, (t_ax, f_ax, l_ax, _, _) = store.arrays[tg.array], store.fields[tg.field].axes
            fc = None if f_ax is None else tg.field_index // arr.chunks[f_ax]
            lc = None if l_ax is None else tg.store_level // arr.chunks[l_ax]
            self.groups.setdefault((tg.array, fc, lc), []).append(tg)
        self.axes = {tg.array: store.fields[tg.field].axes for tg in targets}
        self.time_chunks: dict[str, list[int | None]] = {}
        for array, t_ax in ((a, ax[0]) for a, ax in self.axes.items()):
            if t_ax is None or tmask is None:
                self.time_chunks[array] = [None]
            else:
                ct = store.arrays[array].chunks[t_ax]
                self.time_chunks[array] = np.unique(np.flatnonzero(tmask) // ct).tolist()

    def nbytes(self) -> int:
        """Decoded bytes the pass reads."""
        total = 0
        for array, _, _ in self.groups:
            arr = self.store.arrays[array]
            _, _, _, y_ax, x_ax = self.axes[array]
            n_yx = _chunks_along(arr, y_ax) * arr.grid_shape[x_ax]
            total += len(self.time_chunks[array]) * n_yx * arr.chunk_nbytes
        return total

    def __iter__(self):
        for (array, fc, lc), tgs in self.groups.items():
            arr = self.store.arrays[array]
            t_ax, f_ax, l_ax, y_ax, x_ax = self.axes[array]
            chunk = [0] * len(arr.shape)
            if f_ax is not None:
                chunk[f_ax] = fc
            if l_ax is not None:
                chunk[l_ax] = lc
            for tc in self.time_chunks[array]:
                if t_ax is not None:
                    chunk[t_ax] = tc
                for yc in range(_chunks_along(arr, y_ax)):
                    if y_ax is not None:  # a mesh has no y axis: its nodes stand where x stands
                        chunk[y_ax] = yc
                    for xc in range(arr.grid_shape[x_ax]):
                        chunk[x_ax] = xc
                        yield (array, tuple(chunk)), tgs


def _chunks_along(arr: Any, axis: int | None) -> int:
    """Chunks of ``arr`` along ``axis``; 1 for an absent axis (a mesh's y)."""
    return 1 if axis is None else int(arr.grid_shape[axis])


def feed(
    store: Any, key: tuple[str, tuple], data: np.ndarray, targets: list[Target], cfg, tmask, tmonths, counts
):
    """Merge one decoded chunk into every target it holds."""
    array, chunk = key
    arr = store.arrays[array]
    start = [c * s for c, s in zip(chunk, arr.chunks)]
    stop = [min(b + s, n) for b, s, n in zip(start, arr.chunks, arr.shape)]
    data = data[tuple(slice(0, e - b) for b, e in zip(start, stop))]  # crop edge chunks
    for tg in targets:
        info = store.fields[tg.field]
        t_ax, f_ax, l_ax, y_ax, x_ax = info.axes
        sel: list[Any] = [slice(None)] * data.ndim
        if f_ax is not None:
            sel[f_ax] = tg.field_index - start[f_ax]
        if l_ax is not None:
            sel[l_ax] = tg.store_level - start[l_ax]
        block = data[tuple(sel)]  # (T, ny, nx) or (ny, nx); a mesh: (T, nodes) or (nodes,)
        if y_ax is None:
            block = block[..., None, :]  # the mesh's one row
        if t_ax is None:
            block, months = block[None], np.zeros(1, np.int32)
        else:
            rows = slice(start[t_ax], stop[t_ax])
            keep = tmask[rows] if tmask is not None else np.ones(stop[t_ax] - start[t_ax], bool)
            block, months = block[keep], tmonths[rows][keep]
        x = block.astype(np.float64)
        if tg.fill_values:  # missing as xarray decodes it: counted and left out like NaN
            x[np.isin(block, tg.fill_values)] = np.nan
        raw_nan = int(np.isnan(x).sum())
        c = counts[tg.field]
        if cfg.transforms.get(tg.field) == "log1p":
            finite = np.isfinite(x)
            with np.errstate(invalid="ignore", divide="ignore"):
                x = np.log1p(x)
            c["transform_dropped"] += int((finite & ~np.isfinite(x)).sum())  # log1p: x <= -1
        nonfinite = int((~np.isfinite(x)).sum())
        c["values"] += x.size - raw_nan  # not missing: what the coefficients could use
        c["missing"] += raw_nan
        c["excluded"] += nonfinite - raw_nan
        ys = slice(0, 1) if y_ax is None else slice(start[y_ax], stop[y_ax])
        xs = slice(start[x_ax], stop[x_ax])
        for m in np.unique(months):
            tg.merge(int(m), ys, xs, x[months == m])


class CoefficientWriter:
    """Creates the coefficient store (at the temporary path) and fills it target by target.

    Every zarr call runs under :func:`fastload.write.sigint_deferred`: Ctrl-C acts once zarr's writes are done,
    so none lands in the temporary folder after it has been removed; an OSError of its writes (a full disk) is a
    :class:`~fastload.errors.StoreError` naming the temporary, what was written and the error
    (:func:`fastload._write_temps.writing`).
    """

    def __init__(self, path: str, store: Any, selection: list, cfg: Any, tmask: np.ndarray | None, out: str):
        self.path, self.out = path, out
        with writing(path, out, "the coefficient store's metadata"), sigint_deferred():
            self._create(path, store, selection, cfg, tmask, out)

    def _create(self, path: str, store: Any, selection: list, cfg: Any, tmask: np.ndarray | None, out: str) -> None:
        import zarr

        self.fmt = cfg.zarr_format
        self.cfg = cfg
        grid = store.grid
        ny, nx = int(grid.ny), int(grid.nx)
        times = store.time[tmask] if tmask is not None else None
        self.root = zarr.open_group(zarr_location(path), mode="w", zarr_format=self.fmt, attributes={
            "fastload_norm": FORMAT_VERSION,
            "source": str(store.path),
            "fields": [name for name, _, _ in selection],
            "created": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
            "time_range": None if times is None else [str(times[0]), str(times[-1])],
            UNFINISHED_ATTR: unfinished_attr(Path(out)),  # removed by finish: a killed run's temporary says so
        })  # fmt: skip
        self.groups: dict[str, Any] = {}
        self.globals: dict[str, dict[str, np.ndarray]] = {}
        self.static: dict[str, bool] = {}
        ydim, xdim = {"latlon": ("latitude", "longitude"), "mesh": ("y", "node")}.get(grid.kind, ("y", "x"))
        for name, _, values in selection:
            info = store.fields[name]
            n_lev = 1 if values is None else len(values)
            self.static[name] = not info.has_time or store.time is None
            lat, lon = np.asarray(grid.lat, np.float64).ravel(), np.asarray(grid.lon, np.float64).ravel()
            g = self.root.create_group(name, attributes={
                "field": name,
                "source": str(store.path),
                "levels": None if values is None else [float(v) for v in values],
                "level_type": info.level_type,
                "units": info.units,
                "grid_kind": grid.kind,
                "grid_shape": [ny, nx],
                "latitude_first_last": [float(lat[0]), float(lat[-1])],
                "longitude_first_last": [float(lon[0]), float(lon[-1])],
                "periodic_x": bool(grid.periodic_x),
                "transform": cfg.transforms.get(name),
                "static": self.static[name],
                "time_steps": 0 if self.static[name] else int(tmask.sum()),
                "std_ddof": 0,
            })  # fmt: skip
            self._array(g, "month", np.arange(1, 13, dtype=np.int32), ("month",))
            if values is not None:
                self._array(g, "level", np.asarray(values, np.float64), ("level",))
            if grid.kind == "latlon":
                self._array(g, ydim, lat, (ydim,))
                self._array(g, xdim, lon, (xdim,))
            for stat in ("local_mean", "local_std"):
                self._array(g, stat, None, ("month", "level", ydim, xdim), shape=(12, n_lev, ny, nx),
                            chunks=(1, 1, ny, nx), dtype=np.float32)  # fmt: skip
            self.groups[name] = g
            self.globals[name] = {
                "global_count": np.zeros((12, n_lev), np.int64),
                "global_mean": np.full((12, n_lev), np.nan),
                "global_std": np.full((12, n_lev), np.nan),
            }

    def _array(self, g: Any, name: str, data: np.ndarray | None, dims: tuple[str, ...], **kw: Any) -> None:
        shape = kw.pop("shape", None if data is None else data.shape)
        dtype = kw.pop("dtype", None if data is None else data.dtype)
        extra: dict[str, Any] = (
            {"dimension_names": dims} if self.fmt == 3 else {"attributes": {"_ARRAY_DIMENSIONS": list(dims)}}
        )
        fill = np.nan if np.dtype(dtype).kind == "f" else 0
        a = g.create_array(
            name, shape=shape, dtype=dtype, chunks=kw.pop("chunks", shape), fill_value=fill, **extra
        )
        if data is not None:
            a[...] = data

    def write_target(self, tg: Target) -> None:
        n, mean, m2 = tg.n, tg.mean, tg.m2
        if self.static[tg.field]:  # no time axis: the one snapshot stands for every month
            n, mean, m2 = (np.broadcast_to(a[:1], a.shape) for a in (n, mean, m2))
        has = n > 0
        local_mean = np.where(has, mean, np.nan).astype(np.float32)
        local_std = np.sqrt(np.divide(m2, n, out=np.full(m2.shape, np.nan), where=has)).astype(np.float32)
        g = self.groups[tg.field]
        with writing(self.path, self.out, f"the local coefficients of field {tg.field!r}"), sigint_deferred():
            g["local_mean"][:, tg.level_pos] = local_mean
            g["local_std"][:, tg.level_pos] = local_std
        # global = exact Chan merge of the per-point statistics over the grid
        tot = n.sum(axis=(1, 2))
        gm = np.divide((n * mean).sum(axis=(1, 2)), tot, out=np.full(12, np.nan), where=tot > 0)
        dev = np.where(has, mean - gm[:, None, None], 0.0)
        gm2 = m2.sum(axis=(1, 2)) + (n * dev * dev).sum(axis=(1, 2))
        gl = self.globals[tg.field]
        gl["global_count"][:, tg.level_pos] = tot
        gl["global_mean"][:, tg.level_pos] = gm
        gl["global_std"][:, tg.level_pos] = np.sqrt(
            np.divide(gm2, tot, out=np.full(12, np.nan), where=tot > 0)
        )

    def finish(self, counts: dict[str, dict[str, int]]) -> None:
        with writing(self.path, self.out, "the global coefficients"), sigint_deferred():
            self._finish(counts)

    def _finish(self, counts: dict[str, dict[str, int]]) -> None:
        for name, g in self.groups.items():
            for key, arr in self.globals[name].items():
                self._array(g, key, arr, ("month", "level"))
            per_month = self.globals[name]["global_count"].sum(axis=1)
            g.attrs.update({
                "months_present": [int(m) + 1 for m in np.flatnonzero(per_month > 0)],
                "counts": [int(c) for c in per_month],
                "missing_values": int(counts[name]["missing"]),
                "excluded_nonfinite": int(counts[name]["excluded"]),
            })  # fmt: skip
        del self.root.attrs[UNFINISHED_ATTR]  # complete: what is renamed into place is a finished store
