"""What a saved loader state must share with the loader resuming it: :func:`check_resume`, :func:`norm_fingerprint`,
:func:`store_fingerprint` and :func:`loader_identity`, used by :class:`fastload.Loader` and
:class:`fastload.rollout_data.RolloutLoader`.

Why this exists: a resumed run must draw the same samples, from the same data, and normalise them the same way, so
``load_state_dict`` compares the saved settings with its own. Comparing the sampling config whole refused a job
whose normalisation store had only moved (another scratch directory, a node-local copy: ``norm_path`` is an
absolute path), and its error printed two ~900-character dicts without saying which key differed. Here the
comparison names each differing setting (dotted: ``sampling.fields.t2m.normalization``) with its saved and current
value, and stores are compared by what they hold, not by their paths:

- the **normalisation store** by a fingerprint of the coefficients of the normalised fields
  (:func:`norm_fingerprint`): their recorded attributes, global mean and std per month and level, and the std
  floors (one small read per field, once per loader); and for fields normalised "local", by a digest of the
  decoded values of each (field, month) the run read (:func:`local_digests`, state key ``norm_local``): the
  :class:`~fastload.norm.Normalizer` digests each slab as it reads it (sha256 of a float32 grid: a few ms for a
  0.25-degree level, next to its read and decode), so a state costs no read, a copy in another zarr format,
  chunking or codec resumes, an edit in a month or level the run never read resumes, and the digests describe
  what the run read, not the store as it was at the first checkpoint. On resume the loader reads exactly the
  saved months (which the resumed run reads anyway) and names each (field, month) that differs;
- the **data stores** (the single store, or every stream of a multi-stream config) by a fingerprint of what decides
  the samples (:func:`store_fingerprint`), in parts a refusal names: ``time`` (first stamp and step, not the
  length: a store that grew along time resumes an explicit plan; an irregular axis, e.g. calendar months: its
  length and the digest of its stamps, and a resume digests as many leading stamps as the saved state had, so a
  store that grew resumes, one with a stamp changed among them does not), ``grid`` (coordinates summarised and compared
  with a relative tolerance of 1e-6: a copy one ulp off resumes) and ``fields.<name>`` (levels, axes, dtype, fill
  value, values read as missing, shape without the time axis); not the chunking, codecs or unused attributes (a
  rechunked, recompressed or xarray-rewritten copy gives the same samples) and not the data values (terabytes);
- the **plan**: a digest of the saved epoch's sample placements (:func:`plan_digest`), which catches an explicit
  plan (``boxes=``) that changed, and placement that changed for any other reason.

A state saved before a fingerprint existed compares what it did then: the normalisation store's path (no
fingerprint), the global part only (no ``norm_local``: a fingerprint ``sha256:<hex>``, or ``sha256:<hex>_<hex>``
whose local part digested stored chunk bytes and cannot be compared with digests of values; logged), the
streams' paths (no data-store fingerprint; a single store: nothing), no plan, ``drop_last``, masking or masks'
device.

:class:`~fastload.rollout_data.RolloutLoader` records :func:`norm_fingerprint`, :func:`local_digests`,
:func:`store_fingerprint` and the :func:`plan_digest` of its epoch's initial times, and compares them with
:func:`check_resume`. A refusal says how to resume on purpose (which state key to replace or drop).

Quick look, and the tests::

    python -c "from fastload._resume import differences; print(differences({'a': {'b': 1}}, {'a': {'b': 2}}))"
    python -m pytest tests/fastload/test_resume_checks.py tests/fastload/test_rollout_data.py -k "resume or fingerprint or digest"
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
from collections.abc import Mapping
from typing import Any

import numpy as np

from .errors import ConfigError
from .norm import values_digest

__all__ = ["norm_fingerprint", "local_digests", "store_fingerprint", "plan_digest", "loader_identity", "check_resume", "differences"]

log = logging.getLogger("fastload")

NO_NORMALISATION = "none"
"""The fingerprint of a config without normalised fields (no coefficient is read, so no store matters)."""
_PROVENANCE = ("source", "created")  # where and when the statistics were computed: not what they are
_LOCAL = ("local_mean", "local_std")
_MISSING = object()
_OPTIONAL = ("drop_last", "masking", "mask_device", "store_fingerprint", "norm_local", "time_indices", "plan")
"""Keys :func:`check_resume` compares only when the saved state has them (states saved before they were recorded)."""


def _hex(h: Any) -> str:
    return h.hexdigest()[:32]


def _canon(v: Any) -> Any:
    """``v`` as plain Python values for hashing: NumPy scalars and arrays by value (``.item()``, ``.tolist()``),
    never by their ``repr``/``str`` (which differ between NumPy 1 and 2, and with ``np.set_printoptions(legacy=)``).
    Floats stay floats: JSON writes them by Python's shortest round-trip repr, and every NaN as ``NaN``."""
    if isinstance(v, Mapping):
        return {str(k): _canon(x) for k, x in v.items()}
    if isinstance(v, (list, tuple)):
        return [_canon(x) for x in v]
    if isinstance(v, np.ndarray):
        return _canon(v.tolist())
    if isinstance(v, np.generic):
        return _canon(v.item())
    if isinstance(v, bytes):
        return v.hex()
    return v if v is None or isinstance(v, (str, int, float, bool)) else f"<{type(v).__name__}>{v}"


def _json(obj: Any) -> bytes:
    return json.dumps(_canon(obj), sort_keys=True).encode()


def norm_fingerprint(norm: Any, config: Any) -> str | None:
    """A digest of what ``norm`` gives every month and level of the normalised fields of ``config``, without the
    per-grid-point arrays (those: :func:`local_digests`, per month read).

    It covers, per normalised field: the attributes ``fastload stats`` recorded (levels, grid, transform, months
    present, value counts per month, ...; not ``source``, a path), the global mean and guarded std of every month
    present and level, and the normaliser's std floors: one small read per field (``global_mean``, ``global_std``:
    12 x levels values each), once per loader.

    Returns
    -------
    str or None
        ``"sha256:<hex>"``; :data:`NO_NORMALISATION` when no field normalises; None for a normaliser that is not a
        :class:`~fastload.norm.Normalizer` (no attributes to read: only its path can be compared).
    """
    names = sorted({f.name for f in config.fields if f.normalization != "none"})
    if not names:
        return NO_NORMALISATION
    if norm is None or not all(hasattr(norm, a) for a in ("attrs", "months_present", "coefficients")):
        return None
    h = hashlib.sha256()
    h.update(json.dumps({"rel_floor": getattr(norm, "rel_floor", None),
                         "abs_floor": getattr(norm, "abs_floor", None)}, sort_keys=True).encode())
    for name in names:
        attrs = {k: v for k, v in norm.attrs(name).items() if k not in _PROVENANCE}
        h.update(_json([name, attrs]))
        months = list(norm.months_present(name))
        if months:
            for a in norm.coefficients(name, "global", None, months):  # (M, L, 1, 1) float32 each
                h.update(np.ascontiguousarray(a).tobytes())
    return "sha256:" + _hex(h)


def local_digests(norm: Any, config: Any, keys: Any = None) -> dict[str, str]:
    """Digests of the local (per grid point) coefficients of ``config``'s fields normalised "local", per field and
    calendar month: ``{"<field>/<month 1-12>": "sha256:<hex>"}``.

    Each is a digest of the decoded float32 values (:func:`fastload.norm.values_digest`) of the month's mean and
    std slabs of the config's levels, so a copy in another zarr format, chunking or codec, or with other attributes,
    has the same digests, and an edit in a month or level the run does not read changes none of them.

    ``keys`` None: the months ``norm`` has read so far (a :class:`~fastload.norm.Normalizer` digests each slab as
    it reads it, :attr:`~fastload.norm.Normalizer.slab_digests`: nothing is read here, so a state taken every
    step costs a dict lookup per month); for another normaliser, every month present, from its decoded
    coefficients. ``keys`` given (the saved state's, on resume): exactly those, reading the slabs not read yet (the
    resumed run reads them anyway); a key that cannot be had says why instead of a digest.
    """
    local = {f.name: f for f in config.fields if f.normalization == "local"}
    digests = getattr(norm, "slab_digests", None)
    if keys is not None:
        want = [_parse_key(k) for k in keys]
    elif norm is None or not local:
        return {}
    elif digests is None:
        want = [(n, m) for n in sorted(local) for m in norm.months_present(n)]
    else:
        want = sorted({(k[0], k[2]) for k in list(digests) if k[0] in local})
    out = {}
    for name, month in want:
        d = _month_digest(norm, local.get(name), month, read=keys is not None) if month is not None else None
        if d is not None or keys is not None:
            out[f"{name}/{month + 1}" if month is not None else name] = d or "not a <field>/<month 1-12> key"
    return out


def _parse_key(key: Any) -> tuple[str, int | None]:
    name, _, month = str(key).rpartition("/")
    return (name, int(month) - 1) if month.isdigit() and 1 <= int(month) <= 12 else (str(key), None)


def _month_digest(norm: Any, f: Any, month: int, *, read: bool) -> str | None:
    """Digest of field ``f``'s local mean and std slabs of ``month`` and its levels; None when not all were read
    (and ``read`` is false)."""
    if f is None:
        return "the field is not normalised 'local' here"
    if norm is None:
        return "no normalisation store"
    digests = getattr(norm, "slab_digests", None)
    try:
        if digests is None:  # another normaliser: its decoded coefficients
            parts = [values_digest(a) for a in norm.coefficients(f.name, "local", f.levels, [month])]
        else:
            levels = [int(i) for i in norm.level_indices(f.name, f.levels)]
            keys = [(f.name, stat, month, lv) for stat in _LOCAL for lv in levels]
            if read and not all(k in digests for k in keys):
                norm.coefficients(f.name, "local", f.levels, [month])  # reads (and digests) the slabs
            if not all(k in digests for k in keys):
                return None
            parts = [digests[k] for k in keys]
    except ConfigError as e:  # a month or level the store does not have
        return f"not readable: {e}"
    return "sha256:" + _hex(hashlib.sha256(_json([f.name, month, list(f.levels or []), parts])))


STORE_FORMAT = 2
"""Version of :func:`store_fingerprint`'s parts (1: one ``"sha256:<hex>"`` string, not comparable: not compared)."""
_W = (np.sqrt(5.0) - 1) / 2  # weights 1 + frac(i * golden ratio): never near 0, differ between neighbours


def store_fingerprint(store: Any, config: Any) -> Any:
    """What of a data store decides the samples of ``config``, in parts that a refusal names: ``time`` (first
    time stamp and step; not the length; of an irregular axis, its length and a digest of its stamps, compared over
    the saved length: :func:`_time_against`), ``grid`` (kind, layout, coordinates summarised by :func:`_coord`) and
    ``fields.<name>`` (levels, level type, axes, time dependence, units, dtype, zarr fill value, the values read as
    missing, and the array shape without its time axis).

    Not the chunking, codecs or path (a moved, rechunked or recompressed copy gives the same samples), not the data
    values (terabytes; an edit of values at the same times and places is not seen), not attributes the reader does
    not use (an xarray-added ``_FillValue`` equal to the fill value), and not the length of the time axis: a
    store that grew along time gives the same samples at the same time steps, and a plan drawn on it differs in
    ``plan`` (an explicit plan, unchanged, resumes). Coordinates and levels compare with a relative tolerance
    of 1e-6 (:func:`differences`), so a copy whose latitudes differ in the last bit resumes. A multi-stream
    :class:`~fastload.streams.MultiStream` gives a dict stream -> its store's fingerprint.

    Returns
    -------
    dict or None
        The parts, with ``format`` (:data:`STORE_FORMAT`); a dict of them per stream; None for a store that is not
        a :class:`~fastload.store.Store` (no grid, time axis or field table: not compared).
    """
    streams = getattr(store, "streams", None)
    if streams is not None and not hasattr(store, "fields"):
        return {st.name: store_fingerprint(st.store, st.config) for st in streams}
    if not all(hasattr(store, a) for a in ("grid", "time", "fields", "arrays")):
        return None
    from .stats import missing_markers

    g = store.grid
    grid = _canon({k: getattr(g, k, None) for k in ("kind", "periodic_x", "lat_descending", "dims")})
    for k in ("lat", "lon", "face_nodes"):
        grid[k] = _coord(getattr(g, k, None))
    fields = {}
    for f in config.fields:
        info = store.fields.get(f.name)
        if info is None:
            fields[f.name] = None
            continue
        arr = store.arrays.get(info.array)
        shape = None if arr is None else [int(n) for i, n in enumerate(arr.shape) if i != info.axes[0]]
        fields[f.name] = _canon({
            "array": info.array, "field_index": info.field_index, "level_type": info.level_type,
            "levels": None if info.levels is None else np.asarray(info.levels, np.float64),
            "has_time": info.has_time, "units": info.units, "dtype": str(info.dtype), "axes": list(info.axes),
            "shape": shape, "fill_value": None if arr is None else arr.fill_value,
            "missing": sorted(float(v) for v in missing_markers(store, f.name))})
    return _no_nan({"format": STORE_FORMAT, "time": _time(store.time), "grid": grid, "fields": fields})


def _no_nan(v: Any) -> Any:
    """``v`` with non-finite floats as text ("nan", "inf"), so that states compare equal with ``==`` too."""
    if isinstance(v, Mapping):
        return {k: _no_nan(x) for k, x in v.items()}
    if isinstance(v, list):
        return [_no_nan(x) for x in v]
    return str(v) if isinstance(v, float) and not math.isfinite(v) else v


def _time(t: Any) -> Any:
    """First time stamp and step (ns) of a regular axis; else the first stamp, the number of stamps and a digest of
    them all (an irregular axis: calendar months, gaps: a resume on a store that grew digests as many leading stamps
    as the saved state did, :func:`_time_against`); None without time."""
    if t is None:
        return None
    ns = np.asarray(t, "datetime64[ns]").view(np.int64)
    step = np.diff(ns)
    start = np.datetime_as_string(ns[:1].astype("datetime64[ns]"))[0] if ns.size else None
    if ns.size > 1 and (step == step[0]).all():
        return {"start": str(start), "step_ns": int(step[0])}
    return {"start": start and str(start), "length": int(ns.size), "irregular": _stamps_digest(ns)}


def _stamps_digest(ns: np.ndarray) -> str:
    return "sha256:" + _hex(hashlib.sha256(np.ascontiguousarray(ns, np.int64).tobytes()))


def _time_against(saved: Any, mine: Any, time: Any) -> Any:
    """``mine``'s time part as compared with ``saved``'s: of an irregular axis that grew (more stamps than the saved
    state's ``length``), the digest of the saved number of leading stamps of ``time`` (the current store's axis,
    which ``mine`` was computed from), so that an axis that only grew compares equal and one changed within the
    saved stamps does not; without ``length`` in ``saved`` (a state saved before it was recorded: the digest of
    every stamp), ``mine`` without it; fewer stamps than saved: ``mine`` with the saved digest (one difference, the
    length, is named). Anything else (and without ``time``): ``mine`` as it is."""
    if not (isinstance(saved, Mapping) and isinstance(mine, Mapping) and "irregular" in saved
            and "irregular" in mine):
        return mine
    if "length" not in saved:
        return {k: v for k, v in mine.items() if k != "length"}
    n_saved, n_mine = saved.get("length"), mine.get("length")
    if isinstance(n_saved, int) and isinstance(n_mine, int) and n_mine < n_saved:  # refused as shorter, named so
        return {**mine, "irregular": saved["irregular"]}
    if not (isinstance(n_saved, int) and isinstance(n_mine, int) and 0 < n_saved < n_mine):
        return mine
    ns = None if time is None else np.asarray(time, "datetime64[ns]").view(np.int64)
    if ns is None or ns.size != n_mine or _stamps_digest(ns) != mine["irregular"]:  # not the axis mine was made of
        return mine
    return {**mine, "length": n_saved, "irregular": _stamps_digest(ns[:n_saved])}


def _stores_against(saved: Any, mine: Any, store: Any) -> Any:
    """``mine``'s data-store fingerprint (one store's, or per stream) with each time part as :func:`_time_against`
    compares it with ``saved``'s; ``store`` is what ``mine`` was computed from (a store, a
    :class:`~fastload.streams.MultiStream`, or None)."""
    if not (isinstance(saved, Mapping) and isinstance(mine, Mapping)):
        return mine
    if "format" in mine:
        if "time" not in mine:
            return mine
        return {**mine, "time": _time_against(saved.get("time"), mine["time"], getattr(store, "time", None))}
    by_name = {st.name: st.store for st in getattr(store, "streams", ())}
    return {k: _stores_against(saved.get(k), v, by_name.get(k)) for k, v in mine.items()}


def _coord(v: Any) -> Any:
    """A coordinate summarised by numbers that :func:`differences` compares with a tolerance: shape, first, last,
    min, max, and a weighted mean of its offsets from the minimum (weights 1..2 that differ point to point: a shift,
    a reversal or a change of a few points of a small grid moves it); integers (a mesh's face nodes): a digest."""
    if v is None:
        return None
    a = np.asarray(v)
    if a.dtype.kind in "iub":
        return {"shape": list(a.shape), "sha256": _hex(hashlib.sha256(np.ascontiguousarray(a, np.int64).tobytes()))}
    x = np.asarray(a, np.float64).reshape(-1)
    if not x.size:
        return {"shape": list(a.shape)}
    with np.errstate(all="ignore"):
        lo, hi = float(np.nanmin(x)) if np.isfinite(x).any() else math.nan, float(np.nanmax(x)) if np.isfinite(
            x).any() else math.nan
        w = 1 + (np.arange(x.size) * _W) % 1
        wmean = float(np.nansum((x - lo) * w) / np.sum(w))
    return {"shape": list(a.shape), "first": float(x[0]), "last": float(x[-1]), "min": lo, "max": hi,
            "wmean": wmean, "nan": int(np.isnan(x).sum())}


def plan_digest(boxes: Any) -> str:
    """Digest of an epoch's ``(n, 3)`` sample placements, in batch order."""
    b = np.ascontiguousarray(np.asarray(boxes, np.int64))
    return "sha256:" + _hex(hashlib.sha256(_json(list(b.shape)) + b.tobytes()))


def loader_local_digests(loader: Any, keys: Any = None) -> dict[str, Any]:
    """:func:`local_digests` of a :class:`fastload.Loader`: of the months read so far, or of the saved ``keys``
    (read if not yet); per stream for a multi-stream config."""
    if loader.multi is None:
        return local_digests(loader._norm, loader.config, keys)
    if loader._norm is None:
        return {} if keys is None else {n: local_digests(None, loader.config, k if isinstance(k, Mapping) else {})
                                        for n, k in keys.items()}
    from ._stream_norm import normalizers

    norms = {st.name: (norm, st.config) for st, _, norm in normalizers(loader.multi)}
    if keys is None:
        return {n: local_digests(norm, cfg) for n, (norm, cfg) in norms.items()}
    return {n: local_digests(*norms.get(n, (None, loader.config)), k if isinstance(k, Mapping) else {})
            for n, k in keys.items()}


def loader_identity(loader: Any, epoch: int) -> dict[str, Any]:
    """The state entries of a :class:`fastload.Loader` that :func:`check_resume` compares besides its settings:
    ``norm_local`` (:func:`loader_local_digests`: the local coefficients' months read so far), ``drop_last``, ``masking``, ``mask_device`` (masks are drawn by a generator on the batch's device, and a CUDA
    generator draws other masks than the CPU's), ``store_fingerprint`` (once per loader) and ``plan`` (the digest
    of ``epoch``'s placements; the last epoch's is kept, so a state taken every few steps does not redraw it)."""
    cache = loader.__dict__.setdefault("_resume_cache", {})
    if "store" not in cache:
        cache["store"] = store_fingerprint(loader.multi if loader.multi is not None else loader.store, loader.config)
    if cache.get("plan", (None,))[0] != epoch:
        cache["plan"] = (epoch, plan_digest(loader.epoch_boxes(epoch)))
    masking = getattr(loader, "masking", None)
    return {"norm_local": loader_local_digests(loader), "drop_last": bool(loader.loader_config.drop_last),
            "masking": None if masking is None else masking.to_dict(),
            "mask_device": None if masking is None else loader.device.type,
            "store_fingerprint": cache["store"], "plan": cache["plan"][1]}


def _same(a: Any, b: Any, key: str) -> bool:
    if isinstance(a, float) and isinstance(b, float):
        if math.isnan(a) or math.isnan(b):
            return math.isnan(a) and math.isnan(b)
        # the data store's coordinates and levels: as the store checks compare them (a 1-ulp difference resumes)
        return a == b or (key.startswith("store_fingerprint") and math.isclose(a, b, rel_tol=1e-6, abs_tol=1e-9))
    if isinstance(a, Mapping) and isinstance(b, Mapping):
        return not differences(a, b, key)
    if isinstance(a, (list, tuple)) and isinstance(b, (list, tuple)):
        return len(a) == len(b) and all(_same(x, y, key) for x, y in zip(a, b))
    return bool(a == b)


def differences(saved: Any, mine: Any, prefix: str = "") -> list[tuple[str, Any, Any]]:
    """``(dotted key, saved value, this value)`` of every leaf that differs (a missing one is ``<missing>``; a
    table on one side and a value or nothing on the other is one difference, named by the table's key)."""
    if isinstance(saved, Mapping) and isinstance(mine, Mapping):
        out = []
        for k in sorted(set(saved) | set(mine), key=str):
            out += differences(saved.get(k, _MISSING), mine.get(k, _MISSING), f"{prefix}.{k}" if prefix else str(k))
        return out
    return [] if _same(saved, mine, prefix) else [(prefix, saved, mine)]


def _show(v: Any) -> str:
    s = "<missing>" if v is _MISSING else repr(v)
    return s if len(s) <= 160 else s[:150] + "...(cut)"


def _without(sampling: Mapping[str, Any], key: str, *, top: bool) -> dict[str, Any]:
    """The sampling dict without ``key`` in each stream's table (and at the top level with ``top``)."""
    out = {k: v for k, v in sampling.items() if not (top and k == key)}
    streams = out.get("streams")
    if isinstance(streams, Mapping):
        out["streams"] = {n: {k: v for k, v in s.items() if k != key} if isinstance(s, Mapping) else s
                          for n, s in streams.items()}
    return out


def _known(fp: Any) -> bool:
    """A fingerprint that stands for the store (None: could not be computed)."""
    if isinstance(fp, Mapping):
        return all(v is not None for v in fp.values())
    return fp is not None


def _store_known(fp: Any) -> bool:
    """A data-store fingerprint of this format (per stream too) that stands for the store."""
    if isinstance(fp, Mapping) and "format" not in fp and fp:
        return all(_store_known(v) for v in fp.values())
    return isinstance(fp, Mapping) and fp.get("format") == STORE_FORMAT


def _strip_local(fp: Any) -> tuple[Any, bool]:
    """A normalisation fingerprint without the local part of the format before :func:`local_digests` (``sha256:
    <global>_<stored bytes>``, not comparable with digests of values), and whether it had one."""
    if isinstance(fp, Mapping):
        pairs = {k: _strip_local(v) for k, v in fp.items()}
        return {k: v for k, (v, _) in pairs.items()}, any(c for _, c in pairs.values())
    if isinstance(fp, str) and fp.startswith("sha256:") and "_" in fp:
        return fp.split("_", 1)[0], True
    return fp, False


def _normalises_local(sampling: Any) -> bool:
    """Whether a saved sampling dict (streams' included) has a field normalised "local"."""
    if isinstance(sampling, Mapping):
        return sampling.get("normalization") == "local" or any(_normalises_local(v) for v in sampling.values())
    return isinstance(sampling, (list, tuple)) and any(_normalises_local(v) for v in sampling)


_ADVICE = ("norm_fingerprint", "norm_local", "store_fingerprint", "plan", "mask_device")
"""Keys whose saved value a user may replace to resume on purpose (the others are settings of the loader)."""


def _note(key: str, va: Any, vb: Any, saved: Mapping[str, Any], by_norm: bool, by_store: bool) -> str:
    if key.startswith("norm_fingerprint"):
        return (" (the normalisation store now holds other coefficients than the saved run's: attributes, global "
                "mean or std, or std floors)")
    if key.startswith("norm_local"):
        name, month = _parse_key(key.split(".")[-1])
        from .norm import MONTH_NAMES

        when = MONTH_NAMES[month] if month is not None else "?"
        return (f" (the local, per grid point, coefficients of field {name!r} for {when} differ from those the "
                "saved run read)")
    if key.startswith("store_fingerprint") and key.endswith(".time.length") and isinstance(va, int) \
            and isinstance(vb, int):
        return (" (the data store differs from the saved run's: its time axis has fewer time stamps)" if vb < va else
                " (the data store's time axis grew, and its leading time stamps were not compared with the saved "
                "run's: check_resume was given no store)")
    if key.startswith("store_fingerprint") and key.endswith(".time.irregular") and isinstance(va, str) \
            and isinstance(vb, str):
        if "length" not in _time_part(saved.get("store_fingerprint"), key):
            return (" (the data store differs from the saved run's: other time stamps, or more of them: the saved "
                    "state records no length of its irregular time axis, so an axis that grew cannot be told from "
                    "one that changed)")
        return (" (the data store differs from the saved run's: other time stamps than the saved run's, among as "
                "many leading stamps as it had)")
    if key.startswith("store_fingerprint"):
        part = next((p for p in ("time", "grid", "fields") if f".{p}" in key), "")
        what = {"time": "its time axis starts or steps elsewhere: other times at the same time steps",
                "grid": "another grid or coordinates", "fields": "this field is stored otherwise (levels, axes, "
                "dtype, fill or missing values, shape)"}.get(part, "another layout")
        return f" (the data store differs from the saved run's: {what})"
    if key == "mask_device":
        return " (masks are drawn on the batch's device: a CUDA generator draws other masks than the CPU's)"
    if key == "plan":
        return (f" (this loader draws other samples for the saved epoch {saved.get('epoch')!r}: an explicit plan "
                "(boxes=) that changed, or a placement that changed with the data store or fastload)")
    if key.endswith("norm_path") and not by_norm:
        return (" (the saved state records no fingerprint of the coefficients, so the normalisation store must be at "
                "the same path)" if "norm_fingerprint" not in saved else
                " (this normaliser's coefficients cannot be fingerprinted, so its path must match)")
    if key.startswith("sampling.streams.") and key.endswith(".path") and not by_store:
        return (" (the saved state records no fingerprint of the data stores, or one of an older format, so each "
                "stream's store must be at the same path)" if not _store_known(saved.get("store_fingerprint")) else
                " (this stream's store cannot be fingerprinted, so its path must match)")
    return ""


def _time_part(fp: Any, key: str) -> Mapping[str, Any]:
    """The saved time part that a difference ``key`` (``store_fingerprint[.<stream>].time.irregular``) names."""
    for k in key.split(".")[1:-1]:
        fp = fp.get(k) if isinstance(fp, Mapping) else None
    return fp if isinstance(fp, Mapping) else {}


def state_position(state: Mapping[str, Any], n_batches: int | None = None) -> tuple[int, int]:
    """A saved state's ``(epoch, batch)``, checked: integers >= 0, and ``batch <= n_batches`` when given (a
    malformed state is a :class:`ConfigError` naming the key, not a TypeError from deep inside the plan; check the
    range after the settings, so that a changed setting is named as such)."""
    out = []
    for key, hi in (("epoch", None), ("batch", n_batches)):
        v = state.get(key)
        if isinstance(v, bool) or not isinstance(v, (int, np.integer)) or v < 0 or (hi is not None and v > hi):
            raise ConfigError(f"load_state_dict: state[{key!r}] = {v!r}; expected an integer in "
                              f"[0, {'...' if hi is None else hi}]")
        out.append(int(v))
    return out[0], out[1]


def check_resume(saved: Mapping[str, Any], mine: Mapping[str, Any], keys: tuple[str, ...], store: Any = None) -> None:
    """Raise a :class:`ConfigError` naming every setting in ``keys`` (and below) where ``saved`` and ``mine`` differ.

    ``store``: the data store (or :class:`~fastload.streams.MultiStream`) ``mine["store_fingerprint"]`` was
    computed from; with it, an irregular time axis that grew is compared over the saved state's stamps
    (:func:`_time_against`).

    Also compared where both states have them (a state saved before they existed does not): ``drop_last``,
    ``masking``, ``mask_device``, ``store_fingerprint``, ``norm_local`` (``mine``'s computed for the saved keys)
    and ``plan``; the plan (which follows from the rest) only when nothing else differs, so that a changed seed is
    named as the seed. When both states carry a known ``norm_fingerprint`` the normalisation store's paths in
    ``sampling`` are not compared (the fingerprints are); when both carry a known ``store_fingerprint`` the
    streams' store paths are not (the fingerprints are). A saved normalisation fingerprint of the first format
    (``sha256:<global>_<local>``: the local part digested stored bytes) is compared by its global part; a state
    without ``norm_local`` compares no local coefficients (both logged when it resumes).
    """
    a = {k: saved.get(k, _MISSING) for k in keys}
    b = {k: mine[k] for k in keys}
    masked = saved.get("masking") is not None and mine.get("masking") is not None
    for k in _OPTIONAL:  # (the masks' device matters where both mask: masking itself is compared)
        if k in saved and k in mine and k != "plan" and (k != "mask_device" or masked):
            a[k], b[k] = saved[k], mine[k]
    by_norm = _known(saved.get("norm_fingerprint")) and _known(mine.get("norm_fingerprint"))
    by_store = _store_known(saved.get("store_fingerprint")) and _store_known(mine.get("store_fingerprint"))
    old_store = "store_fingerprint" in saved and not by_store and _known(saved["store_fingerprint"])
    if old_store:  # a fingerprint of the first format (one digest) or not computable here: not compared
        a.pop("store_fingerprint", None), b.pop("store_fingerprint", None)
    elif by_store:  # an irregular time axis that grew: its saved number of leading stamps compared
        b["store_fingerprint"] = _stores_against(saved["store_fingerprint"], mine["store_fingerprint"], store)
    for by, key in ((by_norm, "norm_path"), (by_store, "path")):
        if by:
            if isinstance(a.get("sampling"), Mapping):
                a["sampling"] = _without(a["sampling"], key, top=key == "norm_path")
            if isinstance(b.get("sampling"), Mapping):
                b["sampling"] = _without(b["sampling"], key, top=key == "norm_path")
    old_local = False
    if by_norm:
        a["norm_fingerprint"], old_local = _strip_local(saved["norm_fingerprint"])
        b["norm_fingerprint"] = _strip_local(mine["norm_fingerprint"])[0]
    diffs = differences(a, b)
    if not diffs and "plan" in saved and "plan" in mine:  # the plan follows from the rest: named only on its own
        diffs = differences({"plan": saved["plan"]}, {"plan": mine["plan"]})
    if diffs:
        parts = [f"the saved {key} {_show(va)}, this loader's {_show(vb)}{_note(key, va, vb, saved, by_norm, by_store)}"
                 for key, va, vb in diffs]
        tops = sorted({key.split(".")[0] for key, _, _ in diffs} & set(_ADVICE))
        advice = "" if not tops else "; to resume on purpose all the same, change the saved state first: " + ", ".join(
            f"del state[{k!r}]" if k in ("plan", "mask_device") else f"state[{k!r}] = loader.state_dict()[{k!r}]"
            for k in tops)
        raise ConfigError(f"load_state_dict: the saved state differs from this loader in {len(parts)} setting(s): "
                          + "; ".join(parts) + "; resume needs the same settings" + advice)
    if old_store:
        log.warning("fastload: load_state_dict: the saved state's data-store fingerprint is of an older format (or "
                    "this store cannot be fingerprinted): the data stores are not compared")
    if by_norm and "norm_local" not in saved and _normalises_local(saved.get("sampling")):
        log.warning("fastload: load_state_dict: the saved state %s: only the global coefficients and attributes "
                    "of the normalisation store are compared",
                    "digested the local coefficients' stored bytes (an older format, not comparable with digests "
                    "of their values)" if old_local else "predates the local (per grid point) coefficients' digests")
