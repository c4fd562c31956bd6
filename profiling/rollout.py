"""Roll a trained Forecaster out from a time in a store and write the stitched global fields to a zarr store.

Why this module exists: it is the inference end of ``fastload train --preset cpu_tiny_forecaster``: the same global
tiling, the same :func:`fastload.extract` path and normalisation as training, :meth:`model.Forecaster.rollout`
in latent space, the overlapping tiles blended by :class:`model.TileBlender` with the taper weights of
:func:`fastload.sampling.geometry.stitch` (so a field the tiles agree on comes back exactly), and the result
written atomically through :class:`fastload.write.StoreWriter` as a store ``xr.open_zarr`` opens: per field its
ensemble mean (``<field>``) and spread (``<field>_spread``) over ``(time, [level,] latitude, longitude)`` at the
forecast's valid times, de-normalised to physical units unless ``--normalised``. The spread is the unbiased standard
deviation over the members (ddof 1, 0 for one member), as :func:`model.losses.ensemble_statistics` and the "stats"
loss define it.

    fastload rollout STORE --checkpoint runs/fc/last.pt --steps 8 --out forecast.zarr
    fastload rollout STORE --checkpoint CKPT --steps 40 --every 4 --time 2021-01-02T00 --out f.zarr

(``python -m profiling.rollout ...`` is the same command.) The checkpoint is one ``fastload train`` wrote for a
Forecaster: it holds the model, the run config (tiling overlap, neighbours, lead: the lead the training loader ran
with, recorded in its state; an unset ``forecast.lead`` is ``box_t * time_step`` store steps, the inputs' cadence,
and a checkpoint from before the lead was recorded keeps the default of its code, the window's ``time_span``:
:attr:`fastload.rollout_data.RolloutConfig.lead`) and the sampling config as trained
(fields, levels, tokens, normalisation coefficients). Before the first step, the normalisation store is checked for
every month the written steps fall in, so a rollout that would run out of coefficients fails before any work, and
its coefficients are compared with the fingerprint the training loader recorded (:func:`check_norm`; other ones, say
statistics recomputed since, are refused unless ``--allow-other-norm``).

Time axis. Valid times come from the store's own step, not from its indices (:func:`valid_times`): step ``k`` is
``k x lead`` steps after the last input window, on the regular step the store has from there (its own times while
they keep that step; past a gap or the record's end, the median step on from the last regular time), and the lead
the model is conditioned on is that distance in hours. A gap after the input windows, or anywhere else, so changes
neither times nor lead, and a forecast may run past the end of any record. The input windows must cross no gap
(refused naming the gap and the nearest initial times that cross none: :func:`check_input_windows`), and the
``--static-times`` windows are chosen among those that cross none. The lead and the time tokens are counted in
store steps, so the store must step as the training store did: training records the step in the checkpoint's
loader state (``time_step_hours``, :mod:`profiling.forecast`) and :func:`check_time_step` refuses another one,
naming both (a checkpoint written before that is recorded: a warning). The rollout reads no targets: nothing is
compared with stored truth.

Points with no value. A point that has no value at any time of the input windows is written NaN (as the source
store has it: an ocean field's land) only where the store also has no value at any time of ``--static-times K``
windows spread evenly over its record (default 4): the static mask passed to
:meth:`model.Forecaster.missing_points`. A gap at the input times only (a dropped observation) is then forecast,
even with ``input_window`` 1. The mask costs K more global reads of one window each; a point missing at all K
reference windows as well as at the input is taken for permanent. ``--static-times 0`` skips those reads: then
every point without a value at the input times is written NaN, transient gaps included.
"""

from __future__ import annotations

import argparse
import dataclasses
import sys
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from fastload._device import default_device
from fastload.errors import ConfigError

__all__ = ["load_forecaster", "forecast", "main"]


def load_forecaster(path: str | Path, device: torch.device | str = "cpu") -> tuple[Any, Any, Any]:
    """``(forecaster, run config, sampling config)`` of a Forecaster checkpoint written by ``fastload train``."""
    return _load(path, device)[:3]


def _load(path: str | Path, device: torch.device | str) -> tuple[Any, Any, Any, dict[str, Any]]:
    """:func:`load_forecaster` and the checkpoint's extras."""
    from fastload.config import SamplingConfig
    from model import Forecaster, ForecasterConfig, Multiformer, MultiformerConfig, load_checkpoint
    from model.checkpoint import read_checkpoint

    from .presets import RunConfig

    p = Path(path)
    try:  # a missing file, a folder, a file that is no checkpoint (a TOML file, a truncated .pt): named
        payload = read_checkpoint(p, "--checkpoint")
    except (FileNotFoundError, ValueError) as e:
        raise ConfigError(str(e)) from None
    extra = payload.get("extra", {}) if isinstance(payload, dict) else {}
    if not isinstance(payload, dict) or "multiformer_config" not in payload or "run" not in extra \
            or "sampling" not in extra:
        raise ConfigError(f"--checkpoint {str(p)!r}: not a Forecaster checkpoint of fastload train (kind "
                          f"{payload.get('kind') if isinstance(payload, dict) else None!r}; train one with "
                          "fastload train --preset cpu_tiny_forecaster)")
    try:
        net = Forecaster(ForecasterConfig.from_dict(payload["config"]),
                         Multiformer(MultiformerConfig.from_dict(payload["multiformer_config"])))
        load_checkpoint(p, net, restore_rng=False)
    except ValueError as e:
        raise ConfigError(f"--checkpoint {str(p)!r}: {e}") from None
    run = RunConfig.from_dict(extra["run"])
    return net.to(device).eval(), run, SamplingConfig.from_dict(extra["sampling"]), extra


def trained_lead(extra: dict[str, Any], lead: int | None, sampling: Any) -> int:
    """The lead (store steps) a Forecaster checkpoint's training loader ran with: recorded in its loader state;
    a checkpoint saved before the lead was recorded ran with ``forecast.lead``, else that code's default, the
    window's ``time_span`` (:func:`fastload.rollout_data.legacy_lead`)."""
    from fastload.rollout_data import legacy_lead

    states = extra.get("loader")
    if isinstance(states, list) and states and isinstance(states[0], dict) and states[0].get("lead") is not None:
        return int(states[0]["lead"])
    return legacy_lead({"lead": lead}, sampling)


def _parse_time(when: str) -> np.datetime64:
    """``--time``'s value as a ``datetime64[ns]``; a value that is no ISO 8601 time is a ConfigError naming it."""
    try:
        return np.datetime64(when, "ns")
    except (ValueError, TypeError):
        raise ConfigError(f"--time {when!r}: not a time; expected an ISO 8601 date and time such as 2021-01-02T00, "
                          "2021-01-02T06:00 or 2021-01-02") from None


def _time_index(store: Any, t0: int | None, when: str | None) -> int:
    if when is not None:
        hit = np.flatnonzero(store.time == _parse_time(when))
        if hit.size == 0:
            raise ConfigError(f"--time {when}: not a time of {store.path} ({store.time[0]} .. {store.time[-1]})")
        return int(hit[0])
    return 0 if t0 is None else int(t0)


def valid_times(time: np.ndarray, t_last: int, offsets: np.ndarray) -> np.ndarray:
    """Valid times ``offsets`` time steps after store index ``t_last``, on the axis' own regular step.

    From ``t_last`` up to the axis' first irregular step after it (a gap, or the record's end) these are the store's
    times; past it they go on from the last regular time with the median step (:func:`median_step`), whether or not
    the store has those times: a gap elsewhere, or one after the initial window, changes neither the times nor the
    lead. On an evenly spaced axis this is ``time[t_last] + offsets * step``.
    """
    from fastload._stream_time import first_irregular, median_step

    t = np.asarray(time).astype("datetime64[ns]")
    step = median_step(t)
    if step is None:
        raise ConfigError(f"the store has {t.size} time(s): a forecast's valid times need a time step (two times)")
    gap = first_irregular(t, int(t_last))
    last = t.size - 1 if gap is None else gap  # the last index on the regular step from t_last
    idx = int(t_last) + np.asarray(offsets, np.int64)
    if (idx > last).any():
        _check_fixed_steps(t, step, t[last])
    return np.where(idx <= last, t[np.minimum(idx, last)], t[last] + (idx - last) * step)


def _check_fixed_steps(t: np.ndarray, step: np.timedelta64, after: np.datetime64) -> None:
    """Refuse to extrapolate times past ``after`` on an axis whose regular steps differ in length by more than 5 %
    (calendar months: 28-31 days): a fixed step would drift off the calendar."""
    from fastload._stream_time import _on_cadence, _td

    d = np.diff(t.astype(np.int64))
    regular = d[_on_cadence(d, int(step.astype(np.int64)), 1)]
    if regular.size and int(regular.max() - regular.min()) > 0.05 * int(step.astype(np.int64)):
        raise ConfigError(
            f"valid times past {np.datetime_as_string(after, 'm')} (the record's end or a gap) cannot be computed: "
            f"the time axis' steps vary from {_td(np.timedelta64(int(regular.min()), 'ns'))} to "
            f"{_td(np.timedelta64(int(regular.max()), 'ns'))} (calendar months?), so no fixed step continues it; "
            "forecast only as far as the store's record goes without a gap"
        )


def step_hours(time: np.ndarray) -> float | None:
    """A time axis' step (its median step, :func:`fastload._stream_time.median_step`) in hours; None: one time."""
    from fastload._stream_time import median_step

    step = median_step(time)
    return None if step is None else float(step / np.timedelta64(1, "h"))


def same_step(a: float | None, b: float | None) -> bool:
    """Whether two time steps in hours agree to 5 % of the larger, either way round (a median step taken from an
    axis with minutes of jitter keeps its store's step; another cadence, at least 1.5x apart, does not)."""
    return a is not None and b is not None and abs(float(a) - float(b)) <= 0.05 * max(abs(float(a)), abs(float(b)))


def check_time_step(store: Any, extra: dict[str, Any], checkpoint: Any) -> None:
    """Refuse a store whose time step differs from the training store's (recorded by :mod:`profiling.forecast` in
    the checkpoint's loader state as ``time_step_hours``): the lead and the time tokens are counted in store steps,
    so another step changes both. A checkpoint without it (written before it was recorded) warns and goes on."""
    from fastload._stream_time import describe_period

    states = extra.get("loader")
    state = states[0] if isinstance(states, list) and states and isinstance(states[0], dict) else {}
    trained, have = state.get("time_step_hours"), step_hours(store.time)
    if trained is None:
        warnings.warn(f"--checkpoint {str(checkpoint)!r} does not record its training store's time step (written "
                      f"before it was recorded): cannot check that {store.path} ({describe_period(store.time)}) steps "
                      "as the training store did; the lead and time tokens are counted in store steps",
                      UserWarning, stacklevel=3)
        return
    if not same_step(trained, have):
        raise ConfigError(f"{store.path} steps every {_hours(have)} ({describe_period(store.time)}) but "
                          f"--checkpoint {str(checkpoint)!r} was trained on a store stepping every "
                          f"{_hours(float(trained))}: its lead and time tokens are counted in store steps, so "
                          "they would span other times; roll out on a store with the training store's step")


def _hours(h: float | None) -> str:
    return "? h (one time)" if h is None else f"{h:g} h"


def check_input_windows(store: Any, start: int, input_window: int, lead: int, n_points: int, time_step: int) -> None:
    """Refuse initial index ``start`` when its input windows (``input_window`` of them, ``lead`` apart, each
    ``n_points`` points ``time_step`` apart) cross a gap of the store's time axis, naming the gap and the nearest
    initial indices that cross none (the rule :func:`fastload.extract` and training apply:
    :func:`~fastload._stream_time.regular_windows`)."""
    from fastload._stream_time import _td, first_irregular, median_step, regular_windows

    t = np.asarray(store.time).astype("datetime64[ns]")
    span = (input_window - 1) * lead + (n_points - 1) * time_step + 1
    cand = np.arange(t.size - span + 1, dtype=np.int64)
    ok = regular_windows(t, input_window, lead)[cand]  # window starts, lead apart
    for j in range(input_window):
        ok &= regular_windows(t, n_points, time_step)[cand + j * lead]
    if ok[start]:
        return
    i = first_irregular(t, start, start + span)
    step = median_step(t)
    where = "" if i is None else (f": {np.datetime_as_string(t[i], 'm')} -> {np.datetime_as_string(t[i + 1], 'm')} "
                                  f"(time indices {i} -> {i + 1}) is {_td(t[i + 1] - t[i])}")
    good = np.flatnonzero(ok)
    near = "none does" if good.size == 0 else \
        f"the nearest that do: {sorted(good[np.argsort(np.abs(good - start), kind='stable')[:4]].tolist())}"
    raise ConfigError(f"--t0/--time: the {input_window} input window(s) from index {start} "
                      f"({np.datetime_as_string(t[start], 'm')}, {span} time steps) cross a gap in {store.path}'s time "
                      f"axis, which steps every {_td(step) if step is not None else '?'}{where}; give an initial time "
                      f"whose input windows cross no gap ({near})")


def forecast(store: Any, checkpoint: str | Path, out: str | Path, *, steps: int, t0: int | None = None,
             when: str | None = None, every: int = 1, normalised: bool = False, norm: str | None = None,
             device: str = "cpu", overwrite: bool = False, static_times: int = 4, allow_other_norm: bool = False,
             log: Any = print) -> Path:
    """Roll out ``steps`` steps from store time ``t0`` (index) or ``when`` (ISO) and write every ``every``-th step.

    ``static_times``: store windows the static missing-value mask is read from (0: none; see the module notes).
    ``allow_other_norm``: roll out with normalisation coefficients other than those the checkpoint was trained
    with (a warning instead of the refusal of :func:`check_norm`).
    Returns the path of the written store. See the module notes for its layout.
    """
    import fastload
    from fastload.norm import Normalizer, months_of
    from fastload.reader import IOStats
    from fastload.rollout_data import RolloutBatch, extract_windows
    from fastload.sampling.tiles import global_tiles
    from fastload.write import LEVEL_TYPES, StoreWriter
    from model import TileBlender

    from .forecast import geometry

    if isinstance(steps, bool) or not isinstance(steps, int) or steps < 1:
        raise ConfigError(f"--steps: expected an integer >= 1, got {steps!r}")
    if isinstance(every, bool) or not isinstance(every, int) or every < 1:
        raise ConfigError(f"--every: expected an integer >= 1, got {every!r}")
    if isinstance(static_times, bool) or not isinstance(static_times, int) or static_times < 0:
        raise ConfigError(f"--static-times: expected an integer >= 0, got {static_times!r}")
    if when is not None:  # before the checkpoint is read
        _parse_time(when)
    dev = torch.device(device)
    net, run, sampling, extra = _load(checkpoint, dev)
    if norm is not None:
        sampling = dataclasses.replace(sampling, norm_path=norm)
    store = fastload.open_store(store) if isinstance(store, (str, Path)) else store
    if store.grid.kind != "latlon":
        raise ConfigError(f"{store.path}: a {store.grid.kind!r} grid; the rollout writer writes latlon grids "
                          "(1-D latitude/longitude coordinates) only")
    check_time_step(store, extra, checkpoint)
    fcfg, fc = net.config, run.forecast
    tiles = global_tiles(store, sampling, overlap=fc.overlap, neighbors=fc.neighbors,
                         time_tokens=fcfg.readout_time_tokens)
    if tuple(tiles.ramp) != tuple(fcfg.overlap):
        raise ConfigError(f"the tiling of {store.path} tapers over {list(tiles.ramp)} points; the forecaster was "
                          f"trained with overlap {list(fcfg.overlap)}")
    lead = trained_lead(extra, fc.lead, sampling)
    start = _time_index(store, t0, when)
    w = fcfg.input_window
    span = (w - 1) * lead + sampling.time_span
    if not 0 <= start <= len(store.time) - span:
        raise ConfigError(f"--t0/--time: the {w} input window(s) from index {start} need {span} time steps; "
                          f"{store.path} has {len(store.time)} (valid initial indices 0..{len(store.time) - span})")
    check_input_windows(store, start, w, lead, sampling.box[0], sampling.time_step)
    normalizer = Normalizer(sampling.norm_path) if any(f.normalization != "none" for f in sampling.fields) \
        and sampling.norm_path is not None else None
    t_last = start + (w - 1) * lead
    decode = sorted({*range(every, steps + 1, every), steps})
    ts = sampling.time_step
    tp = {f.name: fcfg.readout_time_tokens * f.token_size[0] for f in sampling.fields}
    if len(set(tp.values())) != 1:
        raise ConfigError(f"fields decode different numbers of time points per step ({tp}); write them separately")
    n_tp = next(iter(tp.values()))
    offsets = np.array([k * lead + j * ts for k in decode for j in range(n_tp)], dtype=np.int64)  # after t_last
    if np.any(np.diff(offsets) <= 0):
        raise ConfigError(f"decoded steps overlap in time: lead {lead} < {n_tp} time points x time_step {ts}; "
                          "decode every step at most once per lead (--every)")
    valid = valid_times(store.time, t_last, offsets)  # (steps written x n_tp,) the valid time of every written row
    if normalizer is not None:  # inputs are normalised with them (and outputs de-normalised unless --normalised)
        months = months_of(np.concatenate([np.asarray(store.time[start:start + span]).astype("datetime64[ns]"),
                                           valid.astype("datetime64[ns]")]))
        check_norm(normalizer, sampling, extra, checkpoint, months, allow=allow_other_norm)
    if not normalised:  # every month the written steps fall in, before any step runs
        check_months(normalizer, sampling, valid)
    fields, meta, boxes = extract_windows(store, sampling, tiles, [start], input_window=w, lead=lead,
                                          norm=normalizer, jit=None)
    t_in = np.datetime64(store.time[t_last], "ns")  # the last input window's first time: lead_h is its distance
    lead_h = float((valid_times(store.time, t_last, np.array([lead]))[0] - t_in) / np.timedelta64(1, "h"))
    batch = RolloutBatch(fields=fields, meta=meta, targets=[], boxes=torch.from_numpy(boxes),
                         t0=torch.tensor([start]), lead_hours=torch.tensor([lead_h]), index=0, epoch=0,
                         stats=IOStats(), levelled=tuple(f.name for f in sampling.fields if f.levels is not None))
    windows, _ = batch.model_inputs(dev)
    geo = geometry(tiles, dev)
    blenders = {f: TileBlender(torch.from_numpy(t.index), torch.from_numpy(t.weights), t.num_points).to(dev)
                for f, t in tiles.fields.items()}
    static = None
    if static_times:
        refs = reference_times(store, sampling.box[0], sampling.time_step, static_times)
        static = {k: v.to(dev) for k, v in static_missing(store, sampling, tiles, refs).items()}
        log(f"rollout: static missing-value mask from the windows at store times {refs.tolist()}")
    levelled = [f for f in sampling.fields if f.levels is not None]
    levels = sorted({float(v) for f in levelled for v in f.levels})
    level_type = next((store.fields[f.name].level_type for f in levelled), None)
    ny, nx = store.grid.ny, store.grid.nx
    attrs = {"fastload_rollout": 1, "source_store": str(store.path), "checkpoint": str(checkpoint),
             "initial_time": str(store.time[start]), "lead_steps": lead, "lead_hours": lead_h, "steps": steps,
             "decoded_steps": decode, "values": "normalised" if normalised else "physical",
             "ensemble_size": fcfg.ensemble_size}
    with StoreWriter(out, overwrite=overwrite, attrs=attrs, sources=[str(store.path), str(checkpoint)]) as wr:
        wr.set_time(valid)
        wr.set_grid(store.grid.lat, store.grid.lon)
        if levels:
            wr.set_levels(levels, level_type=level_type if level_type in LEVEL_TYPES else "model")
        for f in sampling.fields:
            dims = ("time", "level", "latitude", "longitude") if f.levels is not None else ("time", "latitude",
                                                                                          "longitude")
            chunks = (1, 1, ny, nx) if f.levels is not None else (1, ny, nx)
            src = store.fields[f.name]
            for name in (f.name, f"{f.name}_spread"):
                wr.add_variable(name, dims, chunks=chunks, units=src.units, attrs={
                    "long_name": f"{f.name} forecast ensemble "
                                 f"{'spread (unbiased std, ddof 1)' if name.endswith('_spread') else 'mean'}"})
        with torch.no_grad():
            state = net.initial_state([net.encode(win, fc.tiles_per_chunk) for win in windows])
            # points the input windows never hold a value for and the reference windows neither (a store's declared
            # missing values, e.g. an ocean field's land) are written NaN, as the store has them, not as predictions
            # no loss has trained; a gap at the input times only is forecast
            missing = net.missing_points(windows, static=static)
            prev, row = 0, 0
            for k in decode:  # one rollout call per written step: only one step's global fields in memory
                n = k - prev
                res = net.rollout(state, n, lead_time=lead_h, geometry=geo, decode_at=[n], missing=missing,
                                  stitch=lambda f, x: blenders[f](x))  # (1, E, L * Tp * NY * NX) per field
                state, prev = res.state, k
                months = months_of(valid[row:row + n_tp])
                for f in sampling.fields:
                    members = res.outputs[n][f.name][0].float().cpu().numpy()
                    members = members.reshape(members.shape[0], f.num_levels, n_tp, ny, nx)  # (E, L, Tp, NY, NX)
                    if not normalised and f.normalization != "none":
                        members = _denormalise(members, normalizer, f, months)
                    _write(wr, f, members, levels, row)
                row += n_tp
                log(f"rollout: step {k}/{steps} written ({valid[row - 1]})")
    log(f"rollout: {out} ({len(decode)} step(s) x {n_tp} time point(s), {'normalised' if normalised else 'physical'}"
        " values; xr.open_zarr opens it)")
    return Path(out)


def check_norm(normalizer: Any, sampling: Any, extra: dict[str, Any], checkpoint: Any, months: Any, *,
               allow: bool = False) -> None:
    """Refuse normalisation coefficients other than those the checkpoint's training run used: their fingerprint
    (:func:`fastload._resume.norm_fingerprint`: attributes, global mean and std, std floors) against the one its
    loader state recorded, and the local (per grid point) coefficients of the calendar ``months`` (0-11) the
    rollout uses, where the training run read them (:func:`fastload._resume.local_digests`). Other coefficients
    would normalise the inputs and de-normalise the forecast otherwise than training did, silently (recomputed
    statistics, another store's). ``allow`` (``--allow-other-norm``): a warning instead. A checkpoint that records
    no fingerprint (written before it was recorded, or without a Normalizer): a warning, nothing compared."""
    from fastload._resume import _strip_local, local_digests, norm_fingerprint

    states = extra.get("loader")
    state = states[0] if isinstance(states, list) and states and isinstance(states[0], dict) else {}
    saved = _strip_local(state.get("norm_fingerprint"))[0]
    where = f"the normalisation coefficients {str(sampling.norm_path)!r}"
    if not isinstance(saved, str) or not saved.startswith("sha256:"):
        warnings.warn(f"--checkpoint {str(checkpoint)!r} records no fingerprint of the coefficients it was trained "
                      f"with: cannot check that {where} are those", UserWarning, stacklevel=3)
        return
    differ = []
    if norm_fingerprint(normalizer, sampling) != saved:
        differ.append("their attributes, global mean or std, or std floors")
    saved_local = state.get("norm_local")
    if isinstance(saved_local, dict):
        want = {int(m) + 1 for m in months}
        keys = [k for k in saved_local if str(k).rpartition("/")[2].isdigit() and int(str(k).rpartition("/")[2]) in want]
        if keys:
            now = local_digests(normalizer, sampling, keys)
            differ += [f"the local coefficients of {k}" for k in sorted(keys) if now.get(k) != saved_local[k]]
    if not differ:
        return
    what = (f"{where} differ from those --checkpoint {str(checkpoint)!r} was trained with ({'; '.join(differ)}): "
            "the inputs would be normalised, and the forecast de-normalised, otherwise than in training")
    if allow:
        warnings.warn(f"{what}; rolling out with them as --allow-other-norm asks", UserWarning, stacklevel=3)
        return
    raise ConfigError(f"{what}. Point --norm at the training run's coefficients, or pass --allow-other-norm to roll "
                      "out with these on purpose")


def check_months(normalizer: Any, sampling: Any, valid: np.ndarray) -> None:
    """Raise the :class:`ConfigError` de-normalising would raise at the first step lacking coefficients: a field that
    normalises without coefficients, or a month of ``valid`` (the written steps' valid times) the normalisation
    store has no data for."""
    from fastload.norm import months_of

    need = sorted({int(m) for m in months_of(valid)})
    for f in sampling.fields:
        if f.normalization == "none":
            continue
        if normalizer is None:
            raise _no_coefficients(f)
        normalizer.coefficients(f.name, "global", f.levels, need)  # the month check of _denormalise's call


def reference_times(store: Any, n_points: int, time_step: int, k: int) -> np.ndarray:
    """Up to ``k`` store indices spread evenly over the record, each the start of a window of ``n_points`` points
    ``time_step`` apart that crosses no gap of the time axis (the even positions, each moved to the nearest such
    start); ``--static-times`` windows are never ones :func:`fastload.extract` would refuse."""
    from fastload._stream_time import regular_windows

    ok = np.flatnonzero(regular_windows(store.time, n_points, time_step))
    if ok.size == 0:
        span = (n_points - 1) * time_step + 1
        raise ConfigError(f"--static-times {k}: every window of {span} time steps of {store.path} crosses a gap in "
                          "its time axis, so no window is left to read the static missing-value mask from; pass "
                          "--static-times 0")
    want = np.linspace(0, len(store.time) - ((n_points - 1) * time_step + 1), k).round()
    return np.unique(ok[np.abs(ok[None, :] - want[:, None]).argmin(axis=1)]).astype(np.int64)


def static_missing(store: Any, sampling: Any, tiles: Any, times: Sequence[int]) -> dict[str, torch.Tensor]:
    """``{field: (1, T, L, 1, nlat, nlon, 1, tlat, tlon) bool}``, True where the field has no value (NaN or a
    declared fill value) at any time of the windows starting at store indices ``times``: the static mask of
    :meth:`model.Forecaster.missing_points`. Raw values are read (no coefficients needed), one window at a time."""
    from fastload.rollout_data import extract_windows

    raw = dataclasses.replace(sampling, norm_path=None, out_dtype="float32", fields=tuple(  # raw values: float32
        dataclasses.replace(f, normalization="none") for f in sampling.fields))  # (a pressure in Pa is inf in f16)
    present: dict[str, torch.Tensor] = {}
    for t in times:
        fields, _, _ = extract_windows(store, raw, tiles, [int(t)], input_window=1, jit=None)
        for name, x in fields.items():  # (1, 1, T, L, nt, nlat, nlon, tt, tlat, tlon)
            p = torch.isfinite(x[:, 0]).any(6, keepdim=True).any(3, keepdim=True)  # (1, T, L, 1, ..., 1, ...)
            present[name] = p if name not in present else present[name] | p
    return {name: ~p for name, p in present.items()}


def _no_coefficients(f: Any) -> ConfigError:
    return ConfigError(f"fields.{f.name} normalises but the run's sampling config names no coefficients; pass "
                       "--norm NORM or --normalised")


def _denormalise(x: np.ndarray, normalizer: Any, f: Any, months: np.ndarray) -> np.ndarray:
    """``x * std + mean`` per level and time point (then the inverse transform), float32 as the gather works."""
    if normalizer is None:
        raise _no_coefficients(f)
    uniq = sorted({int(m) for m in months})
    mean, std = normalizer.coefficients(f.name, f.normalization, f.levels, uniq)  # (M, L, NYm, NXm)
    pos = np.searchsorted(uniq, months)
    m = np.moveaxis(mean[pos], 0, 1)[None]  # (1, L, Tp, NYm, NXm)
    s = np.moveaxis(std[pos], 0, 1)[None]
    y = (x.astype(np.float32) * s + m).astype(np.float32)
    if f.transform == "log1p":
        y = np.expm1(y)
    return y


def _write(wr: Any, f: Any, members: np.ndarray, levels: Sequence[float], row: int) -> None:
    """Write the ensemble mean and spread (unbiased std over the members, ddof 1) of one decoded step
    (``(E, L, Tp, NY, NX)``) at time row ``row``."""
    first = members[0]
    dev = members - first  # about the first member: members that agree give exactly their value and zero spread
    mean = first + dev.mean(axis=0)
    # the unbiased std (ddof 1), as model.losses.ensemble_statistics and the "stats" loss the model trained with;
    # one member: 0
    spread = dev.std(axis=0, ddof=1) if members.shape[0] > 1 else np.zeros_like(first)
    for name, v in ((f.name, mean), (f"{f.name}_spread", spread)):
        v = np.moveaxis(v, 1, 0)  # (Tp, L, NY, NX)
        if f.levels is None:
            wr.write(name, np.ascontiguousarray(v[:, 0]), row)
            continue
        full = np.full((v.shape[0], len(levels), *v.shape[2:]), np.nan, np.float32)
        full[:, [levels.index(float(x)) for x in f.levels]] = v
        wr.write(name, full, row)


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m profiling.rollout STORE --checkpoint CKPT --steps N --out OUT.zarr``."""
    p = argparse.ArgumentParser(
        prog="fastload rollout", description=__doc__.split("\n\n")[0],
        epilog="The lead of a step is the one the training loader ran with, in store steps (recorded in the "
               "checkpoint; the output store's 'lead_steps' attribute): forecast.lead, unset box_t * time_step, the "
               "inputs' cadence (time_step 6, box_t 3: inputs at steps 0, 6, 12, targets at 18, 24, 30). A "
               "checkpoint saved before the lead was recorded keeps its code's default, (box_t - 1) * time_step + 1.")
    p.add_argument("store", help="the store to start from (the training store or one like it)")
    p.add_argument("--checkpoint", required=True, help="a Forecaster checkpoint of fastload train (last.pt)")
    p.add_argument("--steps", type=int, required=True, help="rollout steps")
    p.add_argument("--out", required=True, help="the zarr store to write (atomically)")
    p.add_argument("--t0", type=int, help="store time index of the first input window (default 0)")
    p.add_argument("--time", help="ISO time of the first input window (instead of --t0)")
    p.add_argument("--every", type=int, default=1, help="write every K-th step (and the last)")
    p.add_argument("--normalised", action="store_true", help="write the model's normalised values")
    p.add_argument("--norm", help="normalisation coefficients (default: the run's); they must be those the checkpoint "
                                  "was trained with (compared by fingerprint, not path) unless --allow-other-norm")
    p.add_argument("--allow-other-norm", action="store_true",
                   help="roll out with coefficients that differ from the training run's (a warning, not an error)")
    p.add_argument("--device", help="cpu, cuda or cuda:N (default: $FASTLOAD_DEVICE, else the GPU when there is one)")
    p.add_argument("--overwrite", action="store_true", help="replace an existing --out")
    p.add_argument("--static-times", type=int, default=4, metavar="K",
                   help="a point without a value at the input times is written NaN only if it has none in K store "
                        "windows spread over the record either (K more global reads); 0: no such reads, every gap "
                        "at the input times is written NaN, transient ones too (default 4)")
    a = p.parse_args(argv)
    if a.t0 is not None and a.time is not None:
        raise ConfigError("--t0 and --time: give one")
    forecast(a.store, a.checkpoint, a.out, steps=a.steps, t0=a.t0, when=a.time, every=a.every,
             normalised=a.normalised, norm=a.norm, device=a.device or str(default_device()), overwrite=a.overwrite,
             static_times=a.static_times, allow_other_norm=a.allow_other_norm)
    return 0


if __name__ == "__main__":
    from fastload.cli import main as _cli

    sys.exit(_cli(["rollout", *sys.argv[1:]]))
