"""Time alignment of a multi-stream sample: the sample's time points mapped onto each stream's own time axis.

Why this exists: streams of one config have their own time steps (hourly atmosphere, daily ocean, 6-hourly mesh
output), and the time axis is what they share. A sample's window is set by the first stream (the *reference*):
its time points are ``tau_k = time_ref[t0 + k * time_step]``, ``k = 0 .. T-1``, spaced ``cadence = time_step x``
the reference's median step. Every other stream maps each ``tau_k`` to one of its own steps by the rule its
:class:`~fastload.config.StreamConfig` states (``time_rule``):

- ``inside``: the stream's first step in ``[tau_k, tau_k + cadence)``, i.e. the steps inside the window at the
  sample's cadence (a stream at least as frequent as the sample's points, aligned with them);
- ``nearest``: the stream's step nearest ``tau_k`` (a tie goes to the earlier step);
- ``previous``: the stream's last step at or before ``tau_k`` (what was known at that time).

``inside`` and ``previous`` compare with a tolerance (:func:`time_tolerance`, 1 % of the smaller of the stream's
median step and the cadence): a step stored a few seconds off ``tau_k`` (float-encoded times) counts as at
``tau_k``, so ``inside`` looks in ``[tau_k - tol, tau_k + cadence - tol)`` and ``previous`` takes the last step at or
before ``tau_k + tol``, instead of the neighbouring step.

A point a stream cannot serve makes the whole window unservable for it: ``inside`` with no step in the interval;
``nearest`` with ``tau_k`` more than half a stream step from the step it would take, outside the record or inside
a gap of it (two steps 1.5 median steps apart or more: not one step to the nearest whole step, as
:func:`_on_cadence` counts, a spacing exactly half a step off included; within a regular stretch, e.g. calendar
months, every point is served); ``previous`` before the record's first step, or a full median stream step (or
more) after the step it would take where no step follows it on cadence: past the record's end, or across a gap.
Inside the record, between two steps one step apart as :func:`_on_cadence` counts, every point is served: the
31st of a 31-day month of a monthly record whose median step is 30 days takes the month's first day.
Windows some stream cannot serve are never drawn (:func:`servable`), and asking for one explicitly is an error. Nor
are windows whose reference points cross a gap of the reference's own axis (:func:`regular_windows`: each point
``time_step`` x the median step after the one before), as a single store's placement avoids them
(:mod:`fastload.sampling.geometry`).
The chosen indices travel with the tokens (``PointTokenMeta.t_steps``, ``time_rule``).

Check by hand::

    python -c "import numpy as np; from fastload._stream_time import align; h = np.timedelta64(1, 'h');
    t = np.datetime64('2000-01-01', 'ns') + np.arange(3) * 24 * h;
    print(align(t, t[:1] + np.arange(4)[None] * 13 * h, 'previous', 13 * h))"
"""

from __future__ import annotations

import numpy as np

from .errors import ConfigError

__all__ = ["TIME_RULES", "median_step", "cadence", "sample_times", "align", "servable", "describe_period",
           "regular_windows", "first_irregular", "time_tolerance"]

TIME_RULES = ("inside", "nearest", "previous")
_BLOCK = 1 << 16  # candidate windows aligned at once (bounds memory on long records)
_TOL_DIV = 100  # time_tolerance: 1 % of the smaller of the stream's step and the cadence


def median_step(time: np.ndarray | None) -> np.timedelta64 | None:
    """Median spacing of a time axis, the lower of the two middle steps for an even count, so always a step the
    axis has (None for fewer than two steps)."""
    if time is None or len(time) < 2:
        return None
    d = np.sort(np.diff(np.asarray(time).astype("datetime64[ns]").astype(np.int64)))
    return np.timedelta64(int(d[(d.size - 1) // 2]), "ns")


def _on_cadence(d: np.ndarray, step: int, n_steps: int) -> np.ndarray:
    """Whether spacings ``d`` (int64 ns) are ``n_steps`` x ``step``, to the nearest whole step: less than half a step
    off it. Calendar months (28 to 31 days), seconds of jitter and float-encoded times keep their windows; a missing
    step is a gap, as is a spacing exactly half a step off, for every ``n_steps`` alike (exact integer arithmetic:
    ``np.rint`` rounds ties to even, which took 1.5 and 2.5 steps as 2 and 3.5 as 4, so a tie was a gap for some
    ``n_steps`` and not for others)."""
    d = np.asarray(d, np.int64)
    step, n = int(step), int(n_steps)
    big = int(np.iinfo(np.int64).max)
    if n - 1 > big:  # n x step is beyond any int64 spacing (and n, n - 1 beyond an int64 quotient)
        return np.zeros(d.shape, bool)
    # d = q x step + r, 0 <= r < step: no product n x step, which overflows int64 for windows over ~292 years
    q, r = np.divmod(d, step)
    near_n = (q == n) & (r < step - r) if n <= big else np.zeros(d.shape, bool)  # n x step + r, r < step / 2
    return (d > 0) & (near_n | (q == n - 1) & (step - r < r))  # (n - 1) x step + r, r > step / 2


def regular_windows(time: np.ndarray, n_points: int, time_step: int) -> np.ndarray:
    """``(NT - span + 1,)`` bool: the window starts ``t0`` whose time points ``time[t0 + k * time_step]`` are each
    ``time_step`` x the axis' median step after the one before (to the nearest whole step: :func:`_on_cadence`),
    i.e. windows that cross no gap of the axis. Every start qualifies when a window has one point; none when the
    median step is not positive (``span = (n_points - 1) * time_step + 1``; an empty array when the axis is shorter
    than one window)."""
    t = np.asarray(time).astype("datetime64[ns]").astype(np.int64)
    n, ts = int(n_points), int(time_step)
    span = (n - 1) * ts + 1
    n_cand = max(0, t.size - span + 1)
    if n <= 1 or n_cand == 0:
        return np.ones(n_cand, bool)
    step = median_step(time)
    if step is None or int(step.astype(np.int64)) <= 0:
        return np.zeros(n_cand, bool)
    pair = _on_cadence(t[ts:] - t[:-ts], int(step.astype(np.int64)), ts)  # (NT - ts,): point i -> i + ts
    ok = np.ones(n_cand, bool)
    for k in range(n - 1):
        ok &= pair[k * ts: k * ts + n_cand]
    return ok


def first_irregular(time: np.ndarray, start: int = 0, stop: int | None = None) -> int | None:
    """Index ``i`` (``start <= i < stop - 1``) of the first step ``time[i] -> time[i + 1]`` that is not one median step
    (to the nearest whole step: :func:`_on_cadence`); None: none in that range, or fewer than two steps."""
    step = median_step(time)
    if step is None:
        return None
    t = np.asarray(time).astype("datetime64[ns]").astype(np.int64)[int(start):stop]
    bad = np.flatnonzero(~_on_cadence(np.diff(t), int(step.astype(np.int64)), 1))
    return int(start) + int(bad[0]) if bad.size else None


def time_tolerance(step: int, cadence: int) -> int:
    """Nanoseconds within which a stream step counts as *at* a time point for ``inside`` and ``previous``: 1 % of
    the smaller of the stream's median step and the sample's cadence (36 s for hourly data), so that float-encoded
    times and seconds of jitter keep their step, as they keep their windows on the reference (:func:`_on_cadence`),
    instead of silently moving to the neighbouring step."""
    return max(0, min(int(step), int(cadence))) // _TOL_DIV


def sample_times(ref_time: np.ndarray, t0: np.ndarray, n_points: int, time_step: int) -> np.ndarray:
    """``(S, T)`` datetime64[ns] time points of windows starting at reference indices ``t0``."""
    idx = np.asarray(t0, np.int64)[:, None] + np.arange(n_points, dtype=np.int64) * int(time_step)
    return np.asarray(ref_time).astype("datetime64[ns]")[idx]


def align(stream_time: np.ndarray | None, times: np.ndarray, rule: str, cadence: np.timedelta64
          ) -> tuple[np.ndarray, np.ndarray]:
    """Map sample time points onto a stream's axis.

    Parameters
    ----------
    stream_time : datetime64 array (N,) or None
        The stream's time axis (strictly increasing); None for a stream without time (all points served, index 0).
    times : datetime64 array (S, T)
        The samples' time points.
    rule : {"inside", "nearest", "previous"}
    cadence : timedelta64
        Spacing of the sample's time points (the ``inside`` interval length).

    Returns
    -------
    idx : (S, T) int64
        Stream time index per point (meaningful where the sample is served).
    ok : (S,) bool
        Whether the stream serves every point of the sample.
    """
    if rule not in TIME_RULES:
        raise ConfigError(f"time_rule: expected one of {list(TIME_RULES)}, got {rule!r}")
    tau = np.asarray(times).astype("datetime64[ns]").astype(np.int64)
    if stream_time is None:
        return np.zeros(tau.shape, np.int64), np.ones(tau.shape[0], bool)
    st = np.asarray(stream_time).astype("datetime64[ns]").astype(np.int64)
    n = st.size
    if n == 0:
        return np.zeros(tau.shape, np.int64), np.zeros(tau.shape[0], bool)
    cad = int(np.asarray(cadence).astype("timedelta64[ns]").astype(np.int64))
    step = median_step(stream_time)
    delta = cad if step is None else int(step.astype(np.int64))
    tol = time_tolerance(delta, cad)
    if rule == "inside":
        i = np.searchsorted(st, tau - tol, side="left")
        ic = np.minimum(i, n - 1)
        ok = (i < n) & (st[ic] < tau + cad - tol)
        idx = ic
    elif rule == "nearest":
        i = np.searchsorted(st, tau, side="left")
        lo, hi = np.clip(i - 1, 0, n - 1), np.clip(i, 0, n - 1)
        idx = np.where(np.abs(st[hi] - tau) < np.abs(tau - st[lo]), hi, lo)
        ok = (2 * (st[0] - tau) <= delta) & (2 * (tau - st[-1]) <= delta)
        # inside a gap of the record (the steps around tau more than one step apart and not one step as _on_cadence
        # counts: half a step more or longer) only points within half a step of a step are served: a gap is not filled
        near = 2 * np.abs(st[idx] - tau) <= delta
        d = st[hi] - st[lo]
        ok &= near | (d <= delta) | _on_cadence(d, delta, 1)
    else:  # previous
        i = np.searchsorted(st, tau + tol, side="right") - 1
        idx = np.maximum(i, 0)
        # inside the record a point is served unless the step after it is a gap (_on_cadence: calendar months of
        # 31 days beside a median of 30 are steps, not gaps); past the end, or across a gap, for one step only
        nxt = np.minimum(idx + 1, n - 1)
        step_on = (idx < n - 1) & _on_cadence(st[nxt] - st[idx], delta, 1) if delta > 0 else np.zeros(idx.shape, bool)
        ok = (i >= 0) & ((tau - st[idx] < delta) | step_on)
    return idx.astype(np.int64), ok.all(axis=1)


def servable(ref_time: np.ndarray, n_points: int, time_step: int,
             streams: list[tuple[str, np.ndarray | None, str]]) -> tuple[np.ndarray, dict[str, np.ndarray], dict[str, int]]:
    """Which window starts of the reference every stream can serve.

    Parameters
    ----------
    ref_time : datetime64 (NT,)
        The reference stream's time axis.
    n_points, time_step : int
        Time points per sample and their stride on the reference axis.
    streams : list of (name, time, rule)
        The other streams.

    Returns
    -------
    ok : (NT - span + 1,) bool
        Per candidate ``t0``: served by every stream, and its reference points on the reference's regular step.
    per_stream : {name: (NT - span + 1,) bool}
        The same, per stream.
    max_spread : {name: int}
        Largest spread of stream time indices over one served window, plus one (for chunk bounds).
    """
    span = (n_points - 1) * time_step + 1
    n_cand = len(ref_time) - span + 1
    if n_cand < 1:
        raise ConfigError(f"one sample spans {span} reference time steps but the first stream has {len(ref_time)}")
    cad = cadence(ref_time, time_step)
    per = {name: np.zeros(n_cand, bool) for name, _, _ in streams}
    spread = {name: 1 for name, _, _ in streams}
    for lo in range(0, n_cand, _BLOCK):
        t0 = np.arange(lo, min(lo + _BLOCK, n_cand), dtype=np.int64)
        tau = sample_times(ref_time, t0, n_points, time_step)
        for name, time, rule in streams:
            idx, ok = align(time, tau, rule, cad)
            per[name][t0] = ok
            if ok.any():
                spread[name] = max(spread[name], int((idx.max(axis=1) - idx.min(axis=1))[ok].max()) + 1)
    ok_all = regular_windows(ref_time, n_points, time_step)  # the reference's own points cross none of its gaps
    for v in per.values():
        ok_all &= v
    return ok_all, per, spread


def cadence(ref_time: np.ndarray, time_step: int) -> np.timedelta64:
    """Spacing of a sample's time points: ``time_step`` x the reference's median step."""
    step = median_step(ref_time)
    if step is None:
        raise ConfigError("the first stream needs at least two time steps to set the sample's time cadence")
    return step * int(time_step)


def describe_period(time: np.ndarray | None) -> str:
    """``first .. last (N steps of S)`` of a time axis, for messages."""
    if time is None or len(time) == 0:
        return "no time axis"
    step = median_step(time)
    every = "" if step is None else f" every {_td(step)}"
    return f"{np.datetime_as_string(time[0], 'm')} .. {np.datetime_as_string(time[-1], 'm')} ({len(time)} steps{every})"


def _td(d: np.timedelta64) -> str:
    ns = int(d.astype("timedelta64[ns]").astype(np.int64))
    for unit, size in (("d", 86_400 * 10**9), ("h", 3_600 * 10**9), ("min", 60 * 10**9), ("s", 10**9)):
        if ns % size == 0:
            return f"{ns // size} {unit}"
    return f"{ns} ns"
