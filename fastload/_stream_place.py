"""Where a multi-stream sample is: the windows and places every stream serves, and a batch mapped into each.

Why this exists: the first stream (the reference) places a sample as an index box ``(t0, y0, x0)`` on its own
grid and steps; every other stream must serve the same period (its ``time_rule``, :mod:`fastload._stream_time`)
and the same region (:mod:`fastload._stream_space`). This module holds those decisions for
:class:`fastload.streams.MultiStream` (whose methods ``place``, ``check_boxes``, ``random_boxes`` and the
``space_ok`` property call it):

- at construction, the reference windows every stream serves (:func:`time_setup`: ``valid_t0``) and a check that
  every stream serves some place and some place is served by all of them at once (:func:`space_setup`: a lattice
  of up to 64 x 64 places first, every place only where the lattice has none);
- per batch, :func:`place`: each sample's time points, region, and per stream its time indices, its placement
  (reference boxes, index-box starts, or mesh regions) and whether it serves the sample;
- per epoch, :func:`random_boxes`: boxes drawn as a single store draws them, unless a regional stream refuses some,
  then drawn again by a generator of their own, uniformly (or by cos latitude) among the places :func:`space_ok`
  allows: either way independent draws from the single-store distribution restricted to the places every stream
  serves.

    python -m pytest tests/fastload/test_streams.py -q -k "servable or random or miss"
"""

from __future__ import annotations

import dataclasses
from typing import Any

import numpy as np

from ._stream_space import ReferenceRegions
from ._stream_time import align, describe_period, sample_times, servable
from .errors import ConfigError
from .sampling.geometry import GridExtent, _check_int
from .sampling.geometry import random_boxes as _random_boxes

__all__ = ["Placement", "time_setup", "space_setup", "raise_no_common_place", "n_x", "space_mask", "space_ok",
           "serves", "place", "raise_unserved", "random_boxes"]


@dataclasses.dataclass(frozen=True, slots=True, eq=False)
class Placement:
    """One batch's samples mapped into every stream."""

    boxes: np.ndarray
    """``(S, 3)`` reference boxes ``(t0, y0, x0)``."""
    times: np.ndarray
    """``(S, T)`` datetime64[ns] time points of each sample."""
    window: np.ndarray
    """``(S, 2)`` datetime64[ns] ``[start, end)``: the first time point to one cadence after the last."""
    regions: np.ndarray
    """``(S, 4)`` ``[lat_first, lat_last, lon_first, width]`` (degrees) of each sample."""
    t_steps: dict[str, np.ndarray]
    """Stream -> ``(S, T)`` the stream's time index of each time point."""
    where: dict[str, np.ndarray]
    """Stream -> its placement: reference boxes, ``(S, 2)`` index-box starts, or ``(S, 4)`` regions (mesh)."""
    served: dict[str, np.ndarray]
    """Stream -> ``(S,)`` whether the stream serves each sample (time and space)."""


def time_setup(ms: Any) -> None:
    """Find the reference windows every stream serves (``ms.valid_t0``) and each stream's time spread; refuse
    streams with no common period."""
    T = ms.box[0]
    others = [(s.name, s.time, s.rule) for s in ms.streams[1:]]
    ok, per, spread = servable(ms.time, T, ms.config.time_step, others)
    ms.time_spread = {s.name: (spread.get(s.name, 1) if s.has_time else 1) for s in ms.streams}
    ms.time_spread[ms.reference.name] = (T - 1) * ms.config.time_step + 1
    if not ok.any():
        lone = [n for n, m in per.items() if not m.any()]
        periods = "; ".join(f"{s.name!r} ({s.rule}): {describe_period(s.time)}" for s in ms.streams)
        who = f"stream(s) {lone} serve no window" if lone else "no window is served by all streams at once"
        raise ConfigError(
            f"streams: the time axes have no common period: {who} of {T} points x time_step "
            f"{ms.config.time_step} of the first stream {ms.reference.name!r}. Periods: {periods}")
    ms._t_ok = ok
    ms.valid_t0 = np.flatnonzero(ok).astype(np.int64)  # reference window starts every stream serves


def space_setup(ms: Any) -> None:
    """Check that every stream serves some place of the reference grid, and that some place is served by every
    stream at once (a lattice of places first, then, where the lattice finds none, every place)."""
    ms.regions = ReferenceRegions(ms.grid, ms.box)
    ms._space_full = None
    ny, H = ms.grid.ny, ms.box[1]
    ys = np.unique(np.linspace(0, ny - H, min(ny - H + 1, 64)).round().astype(np.int64))
    xs = np.unique(np.linspace(0, n_x(ms) - 1, min(n_x(ms), 64)).round().astype(np.int64))
    yy, xx = np.meshgrid(ys, xs, indexing="ij")
    reg = ms.regions.regions(np.stack([np.zeros(yy.size, np.int64), yy.ravel(), xx.ravel()], axis=1))
    common = np.ones(yy.size, bool)
    for st in ms.streams[1:]:
        on = serves(st, reg)
        common &= on
        if on.any() or space_mask(ms, st).any():
            continue
        g = st.store.grid
        lat = np.asarray(g.lat)
        raise ConfigError(
            f"streams.{st.name}: its {g.kind} grid ({st.store.path}; latitudes {lat.min():.2f} .. "
            f"{lat.max():.2f}) does not overlap the region sampled by the first stream {ms.reference.name!r}"
            f" (latitudes {ms.regions.yedge.min():.2f} .. {ms.regions.yedge.max():.2f}, longitudes "
            f"{ms.regions.xedge[0] % 360:.2f} .. {ms.regions.xedge[-1] % 360:.2f})")
    if not common.any() and not space_ok(ms).any():
        raise_no_common_place(ms)


def raise_no_common_place(ms: Any) -> None:
    """``ConfigError``: no place of the reference grid is served by every stream at once (each stream's grid
    overlaps the reference's, but not all of them one another), naming each stream's latitudes and longitudes."""
    def extent(st: Any) -> str:
        g = st.store.grid
        lat, lon = np.asarray(g.lat, np.float64), np.asarray(g.lon, np.float64)
        return (f"{st.name!r} ({st.store.path}: latitudes {np.nanmin(lat):.2f} .. {np.nanmax(lat):.2f}, "
                f"longitudes {np.nanmin(lon):.2f} .. {np.nanmax(lon):.2f})")

    H, W = ms.box[1], ms.box[2]
    raise ConfigError(
        f"streams: no place of the first stream {ms.reference.name!r} (boxes of {H} x {W} points) is served by "
        f"every stream at once: the regions of the streams do not overlap one another; streams "
        + "; ".join(extent(st) for st in ms.streams) + ". Use streams whose grids share a region at least one "
        "sample box wide")


def n_x(ms: Any) -> int:
    """Box starts along x: every column on a periodic reference, else those whose box fits."""
    return int(ms.grid.nx) if ms.grid.periodic_x else int(ms.grid.nx) - ms.box[2] + 1


def space_mask(ms: Any, st: Any) -> np.ndarray:
    """``(NY - H + 1, positions along x)`` bool: the box starts ``st`` serves (every place computed)."""
    yy, xx = np.meshgrid(np.arange(ms.grid.ny - ms.box[1] + 1), np.arange(n_x(ms)), indexing="ij")
    cand = np.stack([np.zeros(yy.size, np.int64), yy.ravel(), xx.ravel()], axis=1)
    return serves(st, ms.regions.regions(cand)).reshape(yy.shape)


def space_ok(ms: Any) -> np.ndarray:
    """``(NY - H + 1, positions along x)`` bool: box starts every stream serves (computed once, then kept)."""
    if ms._space_full is None:
        ok = np.ones((ms.grid.ny - ms.box[1] + 1, n_x(ms)), bool)
        for st in ms.streams[1:]:
            ok &= space_mask(ms, st)
        ms._space_full = ok
    return ms._space_full


def serves(st: Any, regions: np.ndarray) -> np.ndarray:
    """``(S,)`` bool: whether stream ``st`` (not the reference) serves each region."""
    if st.kind == "mesh":
        return st.sampler.index.overlaps(regions)
    return st.mapper.starts(regions)[1]


def place(ms: Any, boxes: Any, *, check: bool = True) -> Placement:
    """Map reference boxes into every stream (``check``: raise unless every stream serves every box)."""
    b = ms.reference.tokenizer.check_boxes(boxes)
    T, dt = ms.box[0], ms.config.time_step
    times = sample_times(ms.time, b[:, 0], T, dt)
    regions = ms.regions.regions(b)
    t_ok = ms._t_ok[np.minimum(b[:, 0], ms._t_ok.size - 1)] & (b[:, 0] < ms._t_ok.size)
    t_steps = {ms.reference.name: b[:, 0:1] + np.arange(T, dtype=np.int64) * dt}
    where: dict[str, np.ndarray] = {ms.reference.name: b}
    served = {ms.reference.name: np.ones(b.shape[0], bool)}
    for st in ms.streams[1:]:
        idx, ok_t = align(st.time, times, st.rule, ms.cadence)
        if st.kind == "mesh":
            w, ok_s = regions, st.sampler.index.overlaps(regions)
        else:
            w, ok_s = st.mapper.starts(regions)
        t_steps[st.name], where[st.name], served[st.name] = idx, w, ok_t & ok_s
        if check:
            raise_unserved(st, b, times, regions, ok_t, ok_s)
    if check and not t_ok.all():
        i = int(np.argmin(t_ok))
        raise ConfigError(f"boxes[{i}]: the window from {times[i, 0]} is not served by every stream (windows "
                          f"all streams serve: {ms.valid_t0.size} of {ms._t_ok.size})")
    window = np.stack([times[:, 0], times[:, -1] + ms.cadence], axis=1)
    return Placement(b, times, window, regions, t_steps, where, served)


def raise_unserved(st: Any, b: np.ndarray, times: np.ndarray, regions: np.ndarray, ok_t: np.ndarray,
                   ok_s: np.ndarray) -> None:
    """``ConfigError`` naming the first box ``st`` cannot serve, in time (``ok_t``) or space (``ok_s``)."""
    if not ok_t.all():
        i = int(np.argmin(ok_t))
        raise ConfigError(f"boxes[{i}] {b[i].tolist()}: stream {st.name!r} cannot serve the window "
                          f"{times[i, 0]} .. {times[i, -1]} by time_rule {st.rule!r}; its record is "
                          f"{describe_period(st.time)}")
    if not ok_s.all():
        i = int(np.argmin(ok_s))
        la0, la1, lo0, w = regions[i]
        raise ConfigError(f"boxes[{i}] {b[i].tolist()}: the region latitudes {la0:.2f} .. {la1:.2f}, longitudes "
                          f"{lo0:.2f} .. {(lo0 + w) % 360:.2f} does not overlap the grid of stream {st.name!r} "
                          f"({st.store.path})")


def random_boxes(ms: Any, n: int, *, seed: int, epoch: int, rank: int = 0, world_size: int = 1,
                 samples_per_window: int = 1, centers: str | None = None,
                 t_range: tuple[int, int] | None = None) -> np.ndarray:
    """This rank's share of an epoch of ``n`` reference boxes that every stream serves.

    Same contract as :func:`fastload.sampling.geometry.random_boxes` (deterministic from ``(seed, epoch)``,
    ranks disjoint and together the epoch, ``samples_per_window`` consecutive samples share a window), with
    window starts drawn from ``ms.valid_t0``. Places are drawn exactly as there when every stream serves every
    drawn box; otherwise (a regional stream) the epoch is drawn again, from a generator of its own
    (``SeedSequence([seed, epoch, 1])``, independent of the refused draw), uniformly, or by cos(latitude of the box
    centre), among the places :func:`space_ok` allows.

    What this guarantees: every box is a place every stream serves, and the epoch's boxes are independent draws
    from the single-store distribution restricted to those places (uniform over them, or cos-latitude weighted),
    their windows uniform over ``ms.valid_t0``, whatever the epoch's size. A kept first draw is such a draw (a
    uniform draw that lands in a subset is uniform over it), and the second draw is one whatever the first drew.
    The second draw once reused the first's generator: its places were nearly a remap of the refused ones (row
    correlation 0.995), and since the refusals are the draws that reached outside the region, small epochs (1-4
    samples) drew the first and last allowed rows 1.6-1.7 times as often as the others.

    ``t_range = (start, stop)``: only the windows of ``ms.valid_t0`` whose every reference time index lies in
    ``[start, stop)`` (:func:`fastload._time_range.time_range_indices` checked it against the axis).
    """
    centers = centers or ms.config.centers
    _, H, W = ms.box
    # each checked as the single-store draw checks it (an int() here turned samples_per_window=2.7 into 2 and a
    # rank of 0.5 drew an empty share, silently)
    for key, v, lo in (("n", n, 0), ("seed", seed, 0), ("epoch", epoch, 0), ("world_size", world_size, 1),
                       ("samples_per_window", samples_per_window, 1), ("rank", rank, 0)):
        _check_int("random_boxes", key, v, lo)
    spw = int(samples_per_window)
    if not 0 <= rank < world_size:
        raise ConfigError(f"random_boxes: rank must satisfy 0 <= rank < world_size={world_size}, got {rank}")
    # Always try the single-store draw first, whatever this object computed before (``space_ok`` is a lazily
    # filled cache): the boxes are a function of the data and (seed, epoch) alone, so a resumed or fresh object
    # draws the same epoch as one that drew other epochs first.
    valid_t0 = ms.valid_t0
    if t_range is not None:
        span = ms.time_spread[ms.reference.name]
        valid_t0 = valid_t0[(valid_t0 >= int(t_range[0])) & (valid_t0 + span <= int(t_range[1]))]
        if valid_t0.size == 0:
            raise ConfigError(f"random_boxes: no window that every stream serves lies in the first stream's time "
                              f"indices {list(t_range)} (of its {ms.valid_t0.size} served windows, from "
                              f"{int(ms.valid_t0[0])} to {int(ms.valid_t0[-1])}); expected a range that holds one")
    ext = GridExtent(nt=int(valid_t0.size), ny=int(ms.grid.ny), nx=int(ms.grid.nx),
                     periodic_x=bool(ms.grid.periodic_x))
    out = _random_boxes(n, ext, (1, H, W), seed=seed, epoch=epoch, samples_per_window=spw, centers=centers,
                        lat=ms.grid.lat if centers == "coslat" else None)
    out[:, 0] = valid_t0[out[:, 0]]
    reg = ms.regions.regions(out)
    if all(serves(st, reg).all() for st in ms.streams[1:]):  # every stream serves the draw: keep it
        win = np.arange(out.shape[0]) // spw
        return np.ascontiguousarray(out[win % int(world_size) == int(rank)])
    # A generator of its own: drawn from the first draw's, the places of the second were a remap of the refused ones
    rng = np.random.Generator(np.random.PCG64(np.random.SeedSequence([int(seed), int(epoch), 1])))
    allowed = space_ok(ms)
    pos = np.flatnonzero(allowed.ravel())
    if pos.size == 0:  # space_setup refuses such streams; a guard against a numpy error naming nothing
        raise_no_common_place(ms)
    y0, x0 = np.divmod(pos, allowed.shape[1])
    p = None
    if centers == "coslat":  # the first draw's weights (geometry._coslat_starts): the mean latitude of the rows
        lat = np.asarray(ms.grid.lat, np.float64)
        csum = np.concatenate([[0.0], np.cumsum(lat)])
        p = np.clip(np.cos(np.deg2rad((csum[y0 + H] - csum[y0]) / H)), 0.0, None)
        p = p / p.sum() if p.sum() > 0 else None
    t0 = valid_t0[rng.integers(0, valid_t0.size, size=-(-n // spw))]
    pick = rng.choice(pos.size, size=n, p=p)
    win = np.arange(n) // spw
    out = np.stack([t0[win], y0[pick], x0[pick]], axis=1).astype(np.int64)
    return np.ascontiguousarray(out[win % int(world_size) == int(rank)])
