"""Where samples go: box validation, random and explicit placement, global tiling and stitching.

A sample is placed by the store indices ``(t0, y0, x0)`` of the first time step, row and column of its box; the
box spans ``time_span = (T - 1) * time_step + 1`` time indices, ``H`` rows and ``W`` columns (``T, H, W`` =
``num_tokens * token_size``). Boxes never cross either end of the time axis or the first/last row; columns wrap
modulo ``NX`` only on periodic (global) grids. When the extent knows the store's time axis (``GridExtent.time``),
a sample's time points must also lie on the axis' regular step (``time_step`` x the median step apart): random
placement draws only such ``t0``, and an explicit box that crosses a gap (a missing step) is refused naming the
times and the gap. Everything here is index arithmetic on small integer arrays; no
data is read. Used by the loader's epoch plan (:func:`random_boxes`), by :func:`fastload.extract`
(:func:`check_boxes`) and by the forecaster's global rollout (:func:`tile_grid`, :func:`stitch`).

Try it::

    python -c "from fastload.sampling.geometry import *; e = GridExtent(nt=48, ny=181, nx=360, periodic_x=True);
    print(random_boxes(4, e, (36, 54, 108), seed=0, epoch=0))"
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from typing import Any

import numpy as np

from .._stream_time import _on_cadence, _td, first_irregular, median_step, regular_windows
from ..errors import ConfigError

__all__ = [
    "GridExtent",
    "check_boxes",
    "random_boxes",
    "Tiling",
    "tile_grid",
    "stitch",
    "tokens_to_box",
    "box_to_tokens",
]


def _is_int(v: Any) -> bool:
    return not isinstance(v, (bool, np.bool_)) and isinstance(v, (int, np.integer))


def _check_int(where: str, key: str, v: Any, lo: int) -> int:
    """``v`` as an int, or a ConfigError naming ``where``, ``key``, the value and the bound."""
    if not _is_int(v) or v < lo:
        raise ConfigError(f"{where}: {key} must be an integer >= {lo}, got {v!r}")
    return int(v)


def _check_ints(where: str, key: str, v: Any, n: int, lo: int, what: str) -> tuple[int, ...]:
    """``v`` as a tuple of ``n`` ints >= ``lo``, or a ConfigError naming ``where``, ``key`` and the value."""
    try:
        vals = tuple(v)
    except TypeError:
        vals = None
    if vals is None or len(vals) != n or not all(_is_int(x) for x in vals):
        raise ConfigError(f"{where}: {key} must be {n} integers ({what}), got {v!r}")
    if any(x < lo for x in vals):
        raise ConfigError(f"{where}: {key} must be {n} integers >= {lo} ({what}), got {v!r}")
    return tuple(int(x) for x in vals)


@dataclasses.dataclass(frozen=True, kw_only=True, slots=True)
class GridExtent:
    """Sizes of a store's index space: time steps, rows, columns, and whether columns wrap."""

    nt: int | None
    """Time steps in the store; ``None`` when no array has a time axis (then ``t0`` must be 0)."""
    ny: int
    """Rows (latitude or the curvilinear ``y``)."""
    nx: int
    """Columns (longitude or the curvilinear ``x``)."""
    periodic_x: bool = False
    """Columns wrap modulo ``nx`` (global grids)."""
    note: str = dataclasses.field(default="", compare=False, repr=False)
    """Added to the message of a box whose x0 is out of range (e.g. why a global grid does not wrap)."""
    time: np.ndarray | None = dataclasses.field(default=None, compare=False, repr=False)
    """The time axis (``(nt,)`` datetime64), when known: then a sample's time points must lie on its regular step
    (:meth:`regular_t0`); None: every ``t0`` in range is valid."""
    _regular: dict = dataclasses.field(default_factory=dict, init=False, compare=False, repr=False)

    def __post_init__(self) -> None:
        for key in ("ny", "nx"):
            v = getattr(self, key)
            if isinstance(v, bool) or not isinstance(v, (int, np.integer)) or v < 1:
                raise ConfigError(f"grid extent {key}: expected an integer >= 1, got {v!r}")
        if self.nt is not None and (isinstance(self.nt, bool) or not isinstance(self.nt, (int, np.integer))
                                    or self.nt < 1):
            raise ConfigError(f"grid extent nt: expected an integer >= 1 or None, got {self.nt!r}")
        if self.time is not None:
            t = np.asarray(self.time)
            if t.dtype.kind != "M" or t.ndim != 1 or t.shape[0] != self.nt:
                raise ConfigError(f"grid extent time: expected a datetime64 axis of nt={self.nt} steps, got dtype "
                                  f"{t.dtype} shape {t.shape}")
            object.__setattr__(self, "time", t.astype("datetime64[ns]"))

    @classmethod
    def from_store(cls, store: Any) -> GridExtent:
        """Extent of a :class:`fastload.store.Store` (duck-typed: ``store.grid``, ``store.time``), with its time
        axis."""
        nt = None if store.time is None else len(store.time)
        return cls(nt=nt, ny=int(store.grid.ny), nx=int(store.grid.nx), periodic_x=bool(store.grid.periodic_x),
                   time=store.time)

    def regular_t0(self, box: Sequence[int], time_step: int = 1) -> np.ndarray | None:
        """``(tmax + 1,)`` bool: the ``t0`` whose ``box[0]`` time points lie on the axis' regular step (each
        ``time_step`` x the median step after the one before: no gap inside); None when the extent has no time
        axis, or every ``t0`` qualifies."""
        if self.time is None:
            return None
        key = (int(box[0]), int(time_step))
        if key not in self._regular:  # computed once per box length (a mesh checks every batch's boxes)
            ok = regular_windows(self.time, *key)
            self._regular[key] = None if ok.all() else ok
        return self._regular[key]

    def describe_gap(self, t0: int, n_points: int, time_step: int = 1) -> str:
        """Why the window of ``n_points`` from ``t0`` is off the regular step: its times and the first gap."""
        t = self.time
        assert t is not None
        idx = int(t0) + np.arange(int(n_points)) * int(time_step)
        step = median_step(t)
        want = step * int(time_step)
        gaps = np.flatnonzero(~_on_cadence(np.diff(t[idx].astype(np.int64)), int(step.astype(np.int64)),
                                           int(time_step)))
        k = int(gaps[0]) if gaps.size else 0
        a, b = int(idx[k]), int(idx[k + 1])
        shown = [_iso(v) for v in t[idx]]
        if len(shown) > 8:
            shown = shown[:3] + ["..."] + shown[-3:]
        return (f"its {len(idx)} time points (time indices {int(idx[0])}..{int(idx[-1])}, time_step {time_step}) are "
                f"{', '.join(shown)}; the axis steps every {_td(step)} (its median step), so they should be "
                f"{_td(want)} apart, but {_iso(t[a])} -> {_iso(t[b])} (indices {a} -> {b}) is {_td(t[b] - t[a])}")

    def max_start(self, box: Sequence[int], time_step: int = 1) -> tuple[int, int, int]:
        """Largest valid ``(t0, y0, x0)`` for a box of ``(T, H, W)`` points; ConfigError if it does not fit."""
        t, h, w = _check_ints("sample box", "box", box, 3, 1, "time, rows, columns points")
        _check_int("sample box", "time_step", time_step, 1)
        span = (t - 1) * int(time_step) + 1
        nt = 1 if self.nt is None else self.nt
        if self.nt is not None and span > nt:
            raise ConfigError(
                f"sample box spans {span} time steps ({t} points x time_step {time_step}) "
                f"but the store has only {nt}")
        if h > self.ny:
            raise ConfigError(f"sample box has {h} rows (latitude points) but the grid has only {self.ny}")
        if w > self.nx:
            raise ConfigError(f"sample box has {w} columns (longitude points) but the grid has only {self.nx}")
        tmax = nt - span if self.nt is not None else 0
        xmax = self.nx - 1 if self.periodic_x else self.nx - w
        return (tmax, self.ny - h, xmax)


def check_boxes(boxes: Any, extent: GridExtent, box: Sequence[int], time_step: int = 1) -> np.ndarray:
    """Validate sample placements and return them as a C-contiguous ``(n, 3)`` int64 array.

    Parameters
    ----------
    boxes : array_like of int, shape (n, 3)
        Rows of ``(t0, y0, x0)`` store indices.
    extent : GridExtent
        The store's index space.
    box : (T, H, W)
        Grid points per sample along time, rows and columns.
    time_step : int
        Stride between consecutive time points of a sample.

    Raises
    ------
    ConfigError
        Naming the first offending sample, its value and the valid range.
    """
    arr = np.asarray(boxes)
    if arr.ndim != 2 or arr.shape[1] != 3:
        raise ConfigError(f"boxes: expected an integer array of (t0, y0, x0) rows, shape (n, 3); got {arr.shape}")
    if arr.size and not np.issubdtype(arr.dtype, np.integer):
        if not np.issubdtype(arr.dtype, np.floating) or not np.all(np.isfinite(arr)) or np.any(arr != np.round(arr)):
            raise ConfigError(f"boxes: expected integer store indices, got dtype {arr.dtype}")
    hi = extent.max_start(box, time_step)
    for axis, name in enumerate(("t0", "y0", "x0")):  # in the given dtype: a uint64 over 2**63 is not wrapped
        bad = np.flatnonzero((arr[:, axis] < 0) | (arr[:, axis] > hi[axis]))
        if bad.size:
            i = int(bad[0])
            raise ConfigError(
                f"boxes[{i}]: {name} = {int(arr[i, axis])} is outside [0, {hi[axis]}] for a box of "
                f"{list(box)} points (time_step {time_step}) on a grid of nt={extent.nt}, ny={extent.ny}, "
                f"nx={extent.nx}{' (periodic in x)' if extent.periodic_x else ''}; {bad.size} box(es) out of range"
                + (f" ({extent.note})" if name == "x0" and extent.note else ""))
    arr = np.ascontiguousarray(arr, dtype=np.int64)
    ok = extent.regular_t0(box, time_step)
    if ok is not None and arr.size:
        bad = np.flatnonzero(~ok[arr[:, 0]])
        if bad.size:
            i = int(bad[0])
            raise ConfigError(
                f"boxes[{i}] {arr[i].tolist()} crosses a gap in the store's time axis: "
                f"{extent.describe_gap(int(arr[i, 0]), int(box[0]), time_step)}; {bad.size} box(es) cross a gap "
                f"({int(ok.sum())} of {ok.size} t0 give windows on the regular step)")
    return arr


def random_boxes(
    n: int,
    extent: GridExtent,
    box: Sequence[int],
    *,
    seed: int,
    epoch: int,
    time_step: int = 1,
    rank: int = 0,
    world_size: int = 1,
    samples_per_window: int = 1,
    centers: str = "uniform",
    lat: np.ndarray | None = None,
    t_range: tuple[int, int] | None = None,
) -> np.ndarray:
    """This rank's share of an epoch of ``n`` random sample placements, as ``(m, 3)`` int64 rows.

    The whole epoch is drawn from ``numpy.random.Generator(PCG64(SeedSequence([seed, epoch])))``, so it depends
    only on ``(seed, epoch)``; it is made of ``ceil(n / samples_per_window)`` time windows (the samples of one
    window share ``t0``), and rank ``r`` takes windows ``r, r + world_size, ...``. Ranks are therefore disjoint
    and together cover the epoch; their counts differ by at most ``samples_per_window``. When ``extent.time`` has
    gaps, ``t0`` is drawn uniformly among the starts whose window crosses none (:meth:`GridExtent.regular_t0`);
    on a regular axis the draw is the same as without ``time``.

    Parameters
    ----------
    n : int
        Samples in the epoch over all ranks.
    extent, box, time_step
        As in :func:`check_boxes`.
    seed, epoch : int
        Determine the epoch's placements.
    rank, world_size : int
        Which share to return.
    samples_per_window : int
        Samples drawn per time window (consecutive samples share ``t0``).
    centers : {"uniform", "coslat"}
        Box centres uniform in the row index (= latitude on regular grids), or area-weighted by the cosine of
        the latitude at the box centre (needs ``lat``: 1-D ``(NY,)`` or 2-D ``(NY, NX)``).
    t_range : (start, stop), optional
        Restrict the windows to store time indices ``[start, stop)`` (e.g. the training years): two integers,
        ``0 <= start``, ``start + span <= stop <= nt`` (``span = (T - 1) * time_step + 1``); a range outside the
        axis, reversed or too short for one box is a ConfigError (a ValueError) naming it and the valid range.
    """
    for key, v, lo in (("n", n, 0), ("seed", seed, 0), ("epoch", epoch, 0), ("world_size", world_size, 1),
                       ("samples_per_window", samples_per_window, 1), ("rank", rank, 0),
                       ("time_step", time_step, 1)):
        _check_int("random_boxes", key, v, lo)
    if not 0 <= rank < world_size:
        raise ConfigError(f"random_boxes: rank must satisfy 0 <= rank < world_size={world_size}, got {rank}")
    if centers not in ("uniform", "coslat"):
        raise ConfigError(f"random_boxes: centers must be 'uniform' or 'coslat', got {centers!r}")
    tmax, ymax, xmax = extent.max_start(box, time_step)
    span = (int(box[0]) - 1) * int(time_step) + 1
    t_lo, t_hi = 0, tmax
    if t_range is not None:
        t_lo, t_hi = _check_t_range(t_range, extent, box, time_step)
    regular = extent.regular_t0(box, time_step)
    cand = None if regular is None or regular[t_lo:t_hi + 1].all() else t_lo + np.flatnonzero(regular[t_lo:t_hi + 1])
    if cand is not None and cand.size == 0:
        i = first_irregular(extent.time, t_lo, t_hi + span)
        first = "" if i is None else f" (the first irregular step is time index {i} -> {i + 1})"
        raise ConfigError(
            f"random_boxes: no window of {int(box[0])} time points (time_step {time_step}) in time indices "
            f"[{t_lo}, {t_hi + span - 1}] lies on the time axis' regular step{first}")
    rng = np.random.Generator(np.random.PCG64(np.random.SeedSequence([int(seed), int(epoch)])))
    n_win = -(-n // samples_per_window)
    if cand is None:  # every t0 in range is valid: the draw of before
        t0 = rng.integers(t_lo, t_hi + 1, size=n_win)
    else:  # only windows that cross no gap of the time axis
        t0 = cand[rng.integers(0, cand.size, size=n_win)]
    if centers == "uniform":
        y0 = rng.integers(0, ymax + 1, size=n)
        x0 = rng.integers(0, xmax + 1, size=n)
    else:
        y0, x0 = _coslat_starts(rng, n, extent, box, lat, ymax, xmax)
    win = np.arange(n) // samples_per_window
    out = np.stack([t0[win], y0, x0], axis=1).astype(np.int64)
    return np.ascontiguousarray(out[win % world_size == rank])


def _check_t_range(t_range: Any, extent: GridExtent, box: Sequence[int], time_step: int) -> tuple[int, int]:
    """The first and last window start ``t0`` that ``t_range = (start, stop)`` allows, or a ConfigError (a
    ValueError) naming ``t_range``, the value given and the valid range: two integer store time indices with
    ``0 <= start``, ``start + span <= stop <= nt`` (``span``: the time indices one box spans). A range outside the
    axis is refused, not clamped (it was clamped silently: a typo in the training years trained on others)."""
    if extent.nt is None:
        raise ConfigError(f"random_boxes: t_range = {t_range!r} restricts the time axis, but the grid has none "
                          "(GridExtent.nt is None); expected t_range=None")
    nt = int(extent.nt)
    span = (int(box[0]) - 1) * int(time_step) + 1
    valid = (f"expected two integer store time indices (start, stop), 0 <= start < stop <= {nt} (the store's "
             f"{nt} time steps), at least {span} apart (one box spans {span} time indices: {int(box[0])} points x "
             f"time_step {time_step})")
    if isinstance(t_range, (str, bytes)):
        vals = None
    else:
        try:
            vals = tuple(t_range)
        except TypeError:
            vals = None
    if vals is None or len(vals) != 2 or not all(_is_int(v) for v in vals):
        raise ConfigError(f"random_boxes: t_range = {t_range!r}: {valid}")
    start, stop = (int(v) for v in vals)
    if start >= stop:
        why = "is empty" if start == stop else "is reversed (start > stop)"
    elif start < 0 or stop > nt:
        why = "lies outside the time axis"
    elif stop - start < span:
        why = f"holds {stop - start} time steps, fewer than a box spans"
    else:
        return start, stop - span
    raise ConfigError(f"random_boxes: t_range = {[start, stop]} {why}: {valid}")


def _iso(t: Any) -> str:
    return str(np.datetime_as_string(np.datetime64(t, "s"), "m"))


def _coslat_starts(rng: np.random.Generator, n: int, extent: GridExtent, box: Sequence[int], lat: Any,
                   ymax: int, xmax: int) -> tuple[np.ndarray, np.ndarray]:
    """Box starts with probability proportional to cos(latitude of the box centre)."""
    if lat is None:
        raise ConfigError("centers = 'coslat' needs the grid's latitudes (lat)")
    lat = np.asarray(lat, dtype=np.float64)
    h, w = int(box[1]), int(box[2])
    bad = np.flatnonzero(~(np.abs(lat) <= 90.0 + 1e-9))  # NaN and +-inf fail too (the tolerance: open_store's)
    if bad.size:
        i = np.unravel_index(int(bad[0]), lat.shape)
        raise ConfigError(f"coslat: lat must be finite latitudes in degrees within [-90, 90]; got "
                          f"{float(lat[i])} at index {list(map(int, i))} ({bad.size} value(s) outside)")
    if lat.ndim == 1:
        if lat.shape != (extent.ny,):
            raise ConfigError(f"coslat: lat has shape {lat.shape}, expected ({extent.ny},)")
        # centre latitude of each candidate box: mean of its rows' latitudes
        csum = np.concatenate([[0.0], np.cumsum(lat)])
        centre = (csum[h:h + ymax + 1] - csum[:ymax + 1]) / h
        p = np.clip(np.cos(np.deg2rad(centre)), 0.0, None)
        if p.sum() <= 0:
            raise ConfigError("coslat: every candidate box centre lies on a pole (cos(lat) = 0)")
        y0 = rng.choice(ymax + 1, size=n, p=p / p.sum())
        return y0, rng.integers(0, xmax + 1, size=n)
    if lat.shape != (extent.ny, extent.nx):
        raise ConfigError(f"coslat: lat has shape {lat.shape}, expected ({extent.ny}, {extent.nx})")
    # curvilinear: weight every (y0, x0) candidate jointly by the latitude at the box's central point
    yc = np.arange(ymax + 1) + h // 2
    xc = np.arange(xmax + 1) + w // 2
    if extent.periodic_x:
        xc %= extent.nx
    p = np.clip(np.cos(np.deg2rad(lat[np.ix_(yc, xc)])), 0.0, None).ravel()
    if not np.isfinite(p).all() or p.sum() <= 0:
        raise ConfigError("coslat: the grid's latitudes give no positive finite weight")
    flat = rng.choice(p.size, size=n, p=p / p.sum())
    return flat // (xmax + 1), flat % (xmax + 1)


# ------------------------------------------------------------------------------------------------- tiling
@dataclasses.dataclass(frozen=True, kw_only=True, slots=True, eq=False)
class Tiling:
    """Boxes covering the whole grid at one time, and what :func:`stitch` needs to put them back."""

    boxes: np.ndarray
    """``(n, 3)`` int64 rows of ``(t0, y0, x0)``, row-major over (row tiles, column tiles)."""
    box: tuple[int, int, int]
    """Grid points ``(T, H, W)`` of one box."""
    extent: GridExtent
    """The grid tiled."""
    ramp: tuple[int, int]
    """Taper width in points along (rows, columns): the requested overlap in tokens x token size."""


def _starts(size: int, length: int, stride: int, periodic: bool) -> np.ndarray:
    if periodic:
        n = -(-size // stride)
        return np.round(np.arange(n) * (size / n)).astype(np.int64)
    if length == size:
        return np.zeros(1, dtype=np.int64)
    n = -(-(size - length) // stride) + 1
    return np.round(np.linspace(0, size - length, n)).astype(np.int64)


def tile_grid(extent: GridExtent, num_tokens: Sequence[int], token_size: Sequence[int], *,
              overlap: Sequence[int] = (0, 0), t0: int = 0, time_step: int = 1) -> Tiling:
    """Cover the grid at time ``t0`` with boxes that overlap by at least ``overlap`` tokens (rows, columns).

    Periodic grids wrap in x (tiles spaced evenly around the globe); along y and on regional grids the
    tiles are spaced evenly between the edges, the last one flush with the far edge. The overlap between
    neighbours is therefore never less than requested.
    """
    nt_, nlat, nlon = _check_ints("tile_grid", "num_tokens", num_tokens, 3, 1, "time, lat, lon")
    tt, tlat, tlon = _check_ints("tile_grid", "token_size", token_size, 3, 1, "time, lat, lon")
    oy, ox = _check_ints("tile_grid", "overlap", overlap, 2, 0, "rows, columns, in tokens")
    t0 = _check_int("tile_grid", "t0", t0, 0)
    _check_int("tile_grid", "time_step", time_step, 1)
    for name, o, n in (("rows", oy, nlat), ("columns", ox, nlon)):
        if o < 0 or o >= n:
            raise ConfigError(f"tile_grid: overlap along {name} is {o} tokens; expected 0 <= overlap < {n}")
    box = (nt_ * tt, nlat * tlat, nlon * tlon)
    hi = extent.max_start(box, time_step)
    if not 0 <= t0 <= hi[0]:
        raise ConfigError(f"tile_grid: t0 = {t0} is outside [0, {hi[0]}]")
    h, w = box[1], box[2]
    ys = _starts(extent.ny, h, h - oy * tlat, False)
    xs = _starts(extent.nx, w, w - ox * tlon, extent.periodic_x)
    yy, xx = np.meshgrid(ys, xs, indexing="ij")
    boxes = np.stack([np.full(yy.size, t0), yy.ravel(), xx.ravel()], axis=1).astype(np.int64)
    return Tiling(boxes=boxes, box=box, extent=extent, ramp=(oy * tlat, ox * tlon))


def _taper(length: int, ramp: int, lo: bool, hi: bool) -> np.ndarray:
    """Weights along one side of a tile: a sin^2 ramp in (0, 1) over ``ramp`` points at each inner edge."""
    w = np.ones(length, dtype=np.float64)
    r = min(ramp, length // 2)
    if r > 0:
        up = np.sin(0.5 * np.pi * np.arange(1, r + 1) / (r + 1)) ** 2
        if lo:
            w[:r] = up
        if hi:
            w[length - r:] = up[::-1]
    return w


def _is_tensor(x: Any) -> bool:
    return type(x).__module__.startswith("torch") and hasattr(x, "shape")


def _stacked(where: str, key: str, x: Any) -> Any:
    """``x`` as an array: an array (anything with ``shape`` and ``ndim``: NumPy, torch, xarray) as given, a list
    or tuple of equal-shape arrays stacked along a new first axis (``torch.stack`` when every item is a tensor,
    else ``np.stack``), anything else a TypeError naming ``where`` and ``key``."""
    if not isinstance(x, (list, tuple)) and hasattr(x, "shape") and hasattr(x, "ndim"):
        return x
    if not isinstance(x, (list, tuple)):
        raise TypeError(f"{where}: {key} must be a NumPy array, a torch tensor or a list of equal-shape arrays, "
                        f"got {type(x).__name__}")
    if not x:
        raise ConfigError(f"{where}: {key} is an empty {type(x).__name__}; expected equal-shape arrays")
    tensors = [_is_tensor(v) for v in x]
    if any(tensors) and not all(tensors):
        raise TypeError(f"{where}: {key} mixes torch tensors and other values; expected all tensors or all arrays")
    items = list(x) if all(tensors) else [np.asarray(v) for v in x]
    shapes = [tuple(v.shape) for v in items]
    if len(set(shapes)) > 1:
        i = next(k for k, sh in enumerate(shapes) if sh != shapes[0])
        raise ConfigError(f"{where}: {key} holds arrays of different shapes ({key}[0] {shapes[0]}, {key}[{i}] "
                          f"{shapes[i]}); expected equal shapes, stacked along a new first axis")
    if not all(tensors):
        return np.stack(items)
    import torch

    try:
        return torch.stack(items)
    except RuntimeError as e:  # tensors on different devices
        raise ConfigError(f"{where}: {key}: cannot stack its tensors ({e})") from None


def stitch(tiles: Any, tiling: Tiling) -> Any:
    """Blend per-tile predictions back onto the grid: ``(n, ..., H, W)`` -> ``(..., NY, NX)``.

    Works on NumPy arrays and torch tensors (on any device), and on a list (or tuple) of ``n`` equal-shape tiles,
    stacked first. Each tile is weighted by a smooth taper that ramps from near 0 to 1 over the overlap at every
    edge shared with a neighbour (edges on the border of a regional grid or at a pole keep weight 1). The blend
    is a running weighted mean, ``acc += w / (W + w) * (tile - acc)``, so equal inputs come back bit-for-bit (a
    constant field stays exactly constant). Real numbers only: integer and bool tiles blend as float64 (float32
    on torch); complex, string or object values are a TypeError.
    """
    if not isinstance(tiling, Tiling):
        raise TypeError(f"stitch: tiling must be the Tiling that tile_grid returned, got {type(tiling).__name__}")
    tiles = _stacked("stitch", "tiles", tiles)
    n_tiles = tiling.boxes.shape[0]
    h, w = tiling.box[1], tiling.box[2]
    if _is_tensor(tiles):
        bad = tiles.is_complex()
    else:
        tiles = np.asarray(tiles)
        bad = tiles.dtype.kind not in "biuf"
    if bad:
        raise TypeError(f"stitch: tiles must hold real numbers (bool, integer or floating), got dtype {tiles.dtype}")
    if tiles.ndim < 3 or tiles.shape[0] != n_tiles or tuple(tiles.shape[-2:]) != (h, w):
        raise ConfigError(f"stitch: expected tiles of shape ({n_tiles}, ..., {h}, {w}), got {tuple(tiles.shape)}")
    ext = tiling.extent
    lead = tuple(tiles.shape[1:-2])
    is_torch = type(tiles).__module__.startswith("torch")
    if is_torch:
        import torch

        if not tiles.is_floating_point():
            tiles = tiles.float()
        acc = torch.zeros(lead + (ext.ny, ext.nx), dtype=tiles.dtype, device=tiles.device)
        wsum = torch.zeros((ext.ny, ext.nx), dtype=torch.float64, device=tiles.device)

        def arr(a: np.ndarray, float_: bool = True) -> Any:
            t = torch.as_tensor(a, device=tiles.device)
            return t.to(torch.float64) if float_ else t

        def cast(a: Any) -> Any:
            return a.to(tiles.dtype)
    else:
        if tiles.dtype.kind != "f":
            tiles = tiles.astype(np.float64)
        acc = np.zeros(lead + (ext.ny, ext.nx), dtype=tiles.dtype)
        wsum = np.zeros((ext.ny, ext.nx), dtype=np.float64)

        def arr(a: np.ndarray, float_: bool = True) -> Any:
            return a.astype(np.float64) if float_ else a

        def cast(a: Any) -> Any:
            return a.astype(tiles.dtype)
    ry, rx = tiling.ramp
    for i in range(n_tiles):
        _, y0, x0 = (int(v) for v in tiling.boxes[i])
        wy = _taper(h, ry, y0 > 0, y0 + h < ext.ny)
        wx = _taper(w, rx, ext.periodic_x or x0 > 0, ext.periodic_x or x0 + w < ext.nx)
        wt = arr(np.outer(wy, wx))
        xs = arr((x0 + np.arange(w)) % ext.nx, float_=False)
        ws = wsum[y0:y0 + h, xs] + wt  # weight sums and fractions in float64, cast once (as model.TileBlender)
        alpha = cast(wt / ws)
        cur = acc[..., y0:y0 + h, xs]
        acc[..., y0:y0 + h, xs] = cur + alpha * (tiles[i] - cur)
        wsum[y0:y0 + h, xs] = ws
    return acc


def tokens_to_box(x: Any) -> Any:
    """Token layout ``(..., nt, nlat, nlon, tt, tlat, tlon)`` -> box layout ``(..., T, H, W)`` (numpy or torch;
    a list of equal-shape arrays is stacked first)."""
    x = _stacked("tokens_to_box", "x", x)
    nd = x.ndim
    if nd < 6:
        raise ConfigError(f"tokens_to_box: expected at least 6 axes (nt, nlat, nlon, tt, tlat, tlon), got {nd}")
    lead = list(range(nd - 6))
    perm = lead + [nd - 6, nd - 3, nd - 5, nd - 2, nd - 4, nd - 1]
    y = x.permute(*perm) if hasattr(x, "permute") else np.transpose(x, perm)
    s = x.shape
    return y.reshape(*s[:-6], s[-6] * s[-3], s[-5] * s[-2], s[-4] * s[-1])


def box_to_tokens(x: Any, token_size: Sequence[int]) -> Any:
    """Box layout ``(..., T, H, W)`` -> token layout ``(..., nt, nlat, nlon, tt, tlat, tlon)`` (numpy or torch;
    a list of equal-shape arrays is stacked first)."""
    tt, tlat, tlon = _check_ints("box_to_tokens", "token_size", token_size, 3, 1, "time, lat, lon")
    x = _stacked("box_to_tokens", "x", x)
    if x.ndim < 3:
        raise ConfigError(f"box_to_tokens: expected at least 3 axes (T, H, W), got shape {tuple(x.shape)}")
    *lead, t, h, w = x.shape
    if t % tt or h % tlat or w % tlon:
        raise ConfigError(f"box_to_tokens: box {(t, h, w)} is not a multiple of token_size {(tt, tlat, tlon)}")
    y = x.reshape(*lead, t // tt, tt, h // tlat, tlat, w // tlon, tlon)
    k = len(lead)
    perm = list(range(k)) + [k, k + 2, k + 4, k + 1, k + 3, k + 5]
    y = y.permute(*perm) if hasattr(y, "permute") else np.transpose(y, perm)
    return y
