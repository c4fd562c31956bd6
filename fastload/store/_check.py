"""A sampling config against a store: fields exist, levels exist, the sample box fits the grid and time axis.

Why this exists: a config that asks for a level the store lacks, or a box wider than a regional grid, must fail
when the loader is built, with a message naming the field and the numbers, not as an index error in a worker.
"""

from __future__ import annotations

import logging
from collections.abc import Collection, Sequence
from typing import TYPE_CHECKING, Any

import numpy as np

from .._stream_time import _td, first_irregular, median_step, regular_windows
from ..errors import ConfigError

if TYPE_CHECKING:
    from ._open import Store

__all__ = ["check_config", "level_indices", "unknown_field", "warn_not_fields"]

log = logging.getLogger("fastload")


def _fmt(values: np.ndarray | Sequence[float]) -> list[float | int]:
    return [int(v) if float(v).is_integer() else float(v) for v in values]


def unknown_field(store: Store, field: str) -> str:
    """Why ``field`` is not a field of ``store``: the reason an array of that name is not one
    (:attr:`Store.not_fields`), else that the store has no such array; with the fields it has."""
    why = getattr(store, "not_fields", {}).get(field)
    if why is not None:
        return f"array {field!r} in store {store.path} is not a field: {why}; the fields are {list(store.fields)}"
    return f"not in store {store.path}; it has {list(store.fields)}"


def warn_not_fields(store: Store, what: str, kept: Collection[str] = ()) -> dict[str, str]:
    """Log a WARNING (``fastload`` logger) for every array of ``store`` left out of its fields
    (:attr:`Store.not_fields`) except those in ``kept`` (the tool copies them as they are), naming it and why, and
    return them (name -> why) for the tool's own report.

    For the tools that go over all the fields when none are named (``what``: ``"stats"``, ``"rechunk"``): a field
    written with a typo (dims out of order, a level dimension without its coordinate) must not just go missing
    from their output."""
    left = {n: why for n, why in (getattr(store, "not_fields", {}) or {}).items() if n not in kept}
    for name, why in left.items():
        log.warning("%s: array %r of %s is not a field and is left out: %s", what, name, store.path, why)
    return left


def level_indices(store: Store, field: str, values: Sequence[float] | None) -> np.ndarray:
    """Indices of ``values`` in the field's level coordinate (see :meth:`Store.level_indices`)."""
    if field not in store.fields:
        raise ConfigError(f"fields.{field}: {unknown_field(store, field)}")
    f = store.fields[field]
    if f.levels is None:
        if values is not None:
            raise ConfigError(
                f"fields.{field}.levels: the field has no level axis in {store.path}; omit 'levels' for it"
            )
        return np.zeros(1, np.int64)
    if values is None:
        raise ConfigError(
            f"fields.{field}.levels: the field has levels {_fmt(f.levels)} in {store.path}; say which to use"
        )
    out = []
    missing = []
    have = np.asarray(f.levels, np.float64)
    for v in values:
        # within 1e-6 relative (as the coefficient store matches, fastload.norm): a float32 coordinate holds 850.3
        # as 850.29998779 (1.2e-5 off, 1.4e-8 relative), which 1e-6 absolute refused; the nearest of several
        tol = 1e-6 * max(1.0, abs(float(v)))
        dist = np.abs(have - float(v))
        if dist.size and dist.min() <= tol:
            out.append(int(np.argmin(dist)))
        else:
            missing.append(v)
    if missing:
        kind = f" {f.level_type}" if f.level_type else ""
        raise ConfigError(
            f"fields.{field}.levels: {_fmt(missing)} not in the store's{kind} levels {_fmt(f.levels)} ({store.path})"
        )
    return np.asarray(out, dtype=np.int64)


def refuse_packed(info: Any, where: str) -> None:
    """Raise :class:`ConfigError` naming ``where`` when field ``info`` is stored packed (``scale_factor`` /
    ``add_offset``): fastload reads stored values as they are (the loader, its streams and ``fastload stats``)."""
    packed = sorted(k for k in ("scale_factor", "add_offset") if k in info.attrs)
    if packed:
        raise ConfigError(f"{where}: stored packed (attributes {packed}); fastload reads stored values as they are "
                          "and does not unpack them. Copy the store unpacked to float32 first: fastload rechunk "
                          "STORE OUT --unpack (a zarr store; fastload convert unpacks NetCDF/GRIB files)")


def check_config(store: Store, config: Any, *, stream: str | None = None) -> None:
    """Raise :class:`ConfigError` unless every field of ``config`` (of ``stream``) can be sampled from ``store``."""
    fields = list(config.fields)
    if config.streams:
        names = [s.name for s in config.streams]
        if stream is None:
            raise ConfigError(f"the config has streams {names}; say which one store {store.path} is (stream=...)")
        if stream not in names:
            raise ConfigError(f"stream {stream!r} is not in the config's streams {names}")
        fields = [f for f in fields if f.stream == stream]
    bt, by, bx = config.box
    span = config.time_span
    g = store.grid
    timed = False  # some field has a time axis in the store
    for f in fields:
        if f.name not in store.fields:
            raise ConfigError(f"fields.{f.name}: {unknown_field(store, f.name)}")
        level_indices(store, f.name, f.levels)
        info = store.fields[f.name]
        refuse_packed(info, f"fields.{f.name}")
        _check_time(store, f, info, bt)
        if g.kind == "mesh":
            pass  # a mesh has no index box: the tokenizer bins nodes into the box's token cells
        elif by > g.ny:
            raise ConfigError(
                f"fields.{f.name}: the sample box spans {by} grid points in latitude (num_tokens "
                f"{list(f.num_tokens)} x token_size {list(f.token_size)}) but the grid has {g.ny}"
            )
        if g.kind != "mesh" and bx > g.nx:
            raise ConfigError(
                f"fields.{f.name}: the sample box spans {bx} grid points in longitude (num_tokens "
                f"{list(f.num_tokens)} x token_size {list(f.token_size)}) but the grid has {g.nx}"
            )
        if info.has_time:
            nt = 0 if store.time is None else store.time.size
            if span > nt:
                raise ConfigError(
                    f"fields.{f.name}: one sample spans {span} time steps ({bt} points x time_step "
                    f"{config.time_step}) but the store has {nt}"
                )
            timed = True
    if timed and bt > 1:
        _check_cadence(store, bt, config.time_step)


def _check_time(store: Store, f: Any, info: Any, bt: int) -> None:
    """A timeless store samples one time point, and normalises nothing; a static field does not normalise locally."""
    if store.time is None and bt > 1:
        raise ConfigError(
            f"fields.{f.name}: the store has no time axis ({store.path}): num_tokens[0] * token_size[0] must be 1, "
            f"got {f.num_tokens[0]} * {f.token_size[0]} = {bt} time points per sample")
    if store.time is None and f.normalization != "none":
        raise ConfigError(
            f"fields.{f.name}: normalization = {f.normalization!r} uses monthly coefficients, but the store has no "
            f"time axis ({store.path}); set normalization = 'none' for it")
    if f.normalization == "local" and not info.has_time:
        raise ConfigError(
            f"fields.{f.name}: the field is static (no time axis in {store.path}): local normalisation makes it "
            "constant (every point is its own mean, so (x - mean) / std is 0 everywhere); set normalization = "
            "'global' (one mean and std over the grid) or 'none'")


def _check_cadence(store: Store, bt: int, time_step: int) -> None:
    """Refuse a time axis on which no sample window is regular; log how many windows its gaps rule out."""
    assert store.time is not None
    ok = regular_windows(store.time, bt, time_step)
    if ok.all():
        return
    t = np.asarray(store.time).astype("datetime64[ns]")
    i = first_irregular(t)
    step = median_step(t)
    first = "" if i is None else (
        f"; the first irregular step is time index {i} -> {i + 1}: {_iso(t[i])} -> {_iso(t[i + 1])} "
        f"({_td(t[i + 1] - t[i])})")
    if not ok.any():
        raise ConfigError(
            f"store {store.path}: its time axis has no regular stretch for a sample of {bt} time points x "
            f"time_step {time_step}: no window has its points {_td(step * int(time_step))} apart (time_step x the "
            f"median step {_td(step)}){first}")
    log.info("fastload: the time axis of %s has gaps: %d of %d sample windows cross one and are never drawn "
             "(explicit boxes that cross one are refused)%s", store.path, int((~ok).sum()), ok.size, first)


def _iso(t: Any) -> str:
    return str(np.datetime_as_string(np.datetime64(t, "s"), "m"))
