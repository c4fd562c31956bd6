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
  (:func:`norm_fingerprint`): their recorded attributes, global mean and std per month and level, the std floors,
  and for fields normalised "local" the stored bytes of the chunks of their per-grid-point arrays (hashed, not
  decoded: the bytes the loader's own first epoch reads, without decoding them; about 1 s for a 0.25-degree field
  of 5 levels x 12 months x 2 arrays, 379 MB stored, from the page cache on a busy 2-core box, a fifth of the
  loader's own read of them: see the commit that added it);
- the **data stores** (the single store, or every stream of a multi-stream config) by a fingerprint of what decides
  the samples (:func:`store_fingerprint`): time axis, grid, and per sampled field its levels, axes, dtype, fill and
  missing-value markers and array shape; not the chunking or codecs (a rechunked or recompressed copy gives the same
  samples) and not the data values (terabytes);
- the **plan**: a digest of the saved epoch's sample placements (:func:`plan_digest`), which catches an explicit
  plan (``boxes=``) that changed, and placement that changed for any other reason.

A state saved before a fingerprint existed compares what it did then: the normalisation store's path (no
fingerprint), the global part only (a fingerprint without the local part, ``sha256:<hex>``), the streams' paths
(no data-store fingerprint; a single store: nothing), no plan, ``drop_last``, masking or masks' device.

:class:`~fastload.rollout_data.RolloutLoader` records :func:`norm_fingerprint`, :func:`store_fingerprint` and the
:func:`plan_digest` of its epoch's initial times, and compares them with :func:`check_resume`.

Quick look, and the tests::

    python -c "from fastload._resume import differences; print(differences({'a': {'b': 1}}, {'a': {'b': 2}}))"
    python -m pytest tests/fastload/test_resume_checks.py tests/fastload/test_loader_ranks.py -k "resume or fingerprint"
"""

from __future__ import annotations

import hashlib
import itertools
import json
import logging
import os
from collections.abc import Mapping
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import numpy as np

from .errors import ConfigError

__all__ = ["norm_fingerprint", "store_fingerprint", "plan_digest", "loader_identity", "check_resume", "differences"]

log = logging.getLogger("fastload")

NO_NORMALISATION = "none"
"""The fingerprint of a config without normalised fields (no coefficient is read, so no store matters)."""
_PROVENANCE = ("source", "created")  # where and when the statistics were computed: not what they are
_LOCAL = ("local_mean", "local_std")
_MISSING = object()
_OPTIONAL = ("drop_last", "masking", "mask_device", "store_fingerprint", "plan")
"""Keys :func:`check_resume` compares only when the saved state has them (states saved before they were recorded)."""
_HASH_THREADS = min(16, (os.cpu_count() or 1) + 4)  # reads of a remote store wait more than they compute


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
    """A digest of the coefficients ``norm`` gives the normalised fields of ``config``.

    It covers, per normalised field: the attributes ``fastload stats`` recorded (levels, grid, transform, months
    present, value counts per month, ...; not ``source``, a path), the global mean and guarded std of every month
    present and level, and the normaliser's std floors; for a field normalised "local", also its per-grid-point
    coefficients (:func:`_local_digest`): the array metadata and the stored bytes of every chunk of the months
    present and the config's levels, hashed as stored (a copy of the store has the same bytes; an edit of a single
    value changes them). Global-only fields cost one small read each; local ones read their chunks once.

    Returns
    -------
    str or None
        ``"sha256:<hex>"`` (global part), followed by ``"_<hex>"`` (local part) when a field normalises "local";
        :data:`NO_NORMALISATION` when no field normalises; None for a normaliser that is not a
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
    local = sorted((f for f in config.fields if f.normalization == "local"), key=lambda f: f.name)
    out = "sha256:" + _hex(h)
    return out + "_" + _local_digest(norm, local) if local else out


def _local_digest(norm: Any, fields: list[Any]) -> str:
    """Digest of the local (per grid point) coefficients of ``fields``: for a :class:`~fastload.norm.Normalizer`
    (a zarr group), each local array's metadata and the stored bytes of its chunks (shards) that hold the months
    present and the field's levels, hashed on threads (hashlib releases the GIL), nothing decoded; for another
    normaliser, its decoded local coefficients (:meth:`coefficients` of the same months and levels)."""
    root = getattr(norm, "_root", None)
    h = hashlib.sha256()
    jobs: list[tuple[Any, str]] = []
    for f in fields:
        months = list(norm.months_present(f.name))
        h.update(_json([f.name, f.levels, months]))
        if root is None:
            if months:
                for a in norm.coefficients(f.name, "local", f.levels, months):  # (M, L, NY, NX) float32
                    h.update(np.ascontiguousarray(a).tobytes())
            continue
        levels = [int(i) for i in norm.level_indices(f.name, f.levels)]
        for stat in _LOCAL:
            arr = root[f.name][stat]
            h.update(_json([stat, arr.metadata.to_dict()]))
            jobs += [(arr, key) for key in _chunk_keys(arr, months, levels)]
    if jobs:
        with ThreadPoolExecutor(min(_HASH_THREADS, len(jobs)), thread_name_prefix="fastload-fingerprint") as pool:
            for (arr, key), digest in zip(jobs, pool.map(_stored_digest, jobs)):
                h.update(f"{arr.path}/{key}={digest};".encode())
    return _hex(h)


def _chunk_keys(arr: Any, months: list[int], levels: list[int]) -> list[str]:
    """Store keys of the chunks (shards, for a sharded array) of a ``(12, L, ...)`` array that hold ``months`` and
    ``levels`` (every chunk of the other axes)."""
    unit = tuple(getattr(arr, "shards", None) or arr.chunks)
    axes: list[Any] = [sorted({m // unit[0] for m in months}), sorted({lv // unit[1] for lv in levels})]
    axes += [range(-(-n // c)) for n, c in zip(arr.shape[2:], unit[2:])]
    return [arr.metadata.encode_chunk_key(tuple(c)) for c in itertools.product(*axes)]


def _stored_digest(job: tuple[Any, str]) -> str:
    """sha256 of one stored chunk's bytes as they are in the store ("absent": never written, the fill value)."""
    from zarr.core.buffer import default_buffer_prototype
    from zarr.core.sync import sync

    arr, key = job
    buf = sync((arr.store_path / key).get(prototype=default_buffer_prototype()))
    return "absent" if buf is None else _hex(hashlib.sha256(memoryview(buf.as_numpy_array())))


def store_fingerprint(store: Any, config: Any) -> Any:
    """What of a data store decides the samples of ``config``: its time axis, grid, and per sampled field the
    levels, level type, axes, time dependence, units, dtype, fill value, missing-value markers and array shape.

    Not the chunking, codecs or path (a moved, rechunked or recompressed copy gives the same samples) and not the
    data values (terabytes; an edit of values at the same times and places is not seen). A multi-stream
    :class:`~fastload.streams.MultiStream` gives a dict stream -> its store's fingerprint.

    Returns
    -------
    str, dict or None
        ``"sha256:<hex>"``; a dict for streams; None for a store that is not a :class:`~fastload.store.Store` (no
        grid, time axis or field table: not compared).
    """
    streams = getattr(store, "streams", None)
    if streams is not None and not hasattr(store, "fields"):
        return {st.name: store_fingerprint(st.store, st.config) for st in streams}
    if not all(hasattr(store, a) for a in ("grid", "time", "fields", "arrays")):
        return None
    h = hashlib.sha256()
    g = store.grid
    h.update(_json({k: getattr(g, k, None) for k in ("kind", "periodic_x", "lat_descending", "dims")}))
    for k in ("lat", "lon", "face_nodes"):
        v = getattr(g, k, None)
        h.update(b"-" if v is None else _json([k, np.shape(v), str(np.asarray(v).dtype)]))
        if v is not None:
            h.update(np.ascontiguousarray(v).tobytes())
    t = store.time
    h.update(b"no time" if t is None else np.ascontiguousarray(np.asarray(t, "datetime64[ns]")).tobytes())
    for f in sorted(config.fields, key=lambda f: f.name):
        info = store.fields.get(f.name)
        if info is None:
            h.update(_json([f.name, None]))
            continue
        arr = store.arrays.get(info.array)
        attrs = dict(getattr(info, "attrs", {}) or {})
        if arr is not None:
            attrs.update(getattr(arr, "attrs", {}) or {})
        h.update(_json({
            "field": f.name, "array": info.array, "field_index": info.field_index,
            "levels": None if info.levels is None else np.asarray(info.levels, np.float64).tolist(),
            "level_type": info.level_type, "has_time": info.has_time, "units": info.units, "dtype": str(info.dtype),
            "axes": info.axes, "shape": None if arr is None else list(arr.shape),
            "fill_value": None if arr is None else arr.fill_value,
            "markers": {k: attrs.get(k) for k in ("_FillValue", "missing_value", "scale_factor", "add_offset")},
        }))
    return "sha256:" + _hex(h)


def plan_digest(boxes: Any) -> str:
    """Digest of an epoch's ``(n, 3)`` sample placements, in batch order."""
    b = np.ascontiguousarray(np.asarray(boxes, np.int64))
    return "sha256:" + _hex(hashlib.sha256(_json(list(b.shape)) + b.tobytes()))


def loader_identity(loader: Any, epoch: int) -> dict[str, Any]:
    """The state entries of a :class:`fastload.Loader` that :func:`check_resume` compares besides its settings:
    ``drop_last``, ``masking``, ``mask_device`` (masks are drawn by a generator on the batch's device, and a CUDA
    generator draws other masks than the CPU's), ``store_fingerprint`` (once per loader) and ``plan`` (the digest
    of ``epoch``'s placements; the last epoch's is kept, so a state taken every few steps does not redraw it)."""
    cache = loader.__dict__.setdefault("_resume_cache", {})
    if "store" not in cache:
        cache["store"] = store_fingerprint(loader.multi if loader.multi is not None else loader.store, loader.config)
    if cache.get("plan", (None,))[0] != epoch:
        cache["plan"] = (epoch, plan_digest(loader.epoch_boxes(epoch)))
    masking = getattr(loader, "masking", None)
    return {"drop_last": bool(loader.loader_config.drop_last),
            "masking": None if masking is None else masking.to_dict(),
            "mask_device": None if masking is None else loader.device.type,
            "store_fingerprint": cache["store"], "plan": cache["plan"][1]}


def _flat(d: Any, prefix: str) -> dict[str, Any]:
    if isinstance(d, Mapping):
        out: dict[str, Any] = {}
        for k, v in d.items():
            out.update(_flat(v, f"{prefix}.{k}" if prefix else str(k)))
        return out if out or not prefix else {prefix: {}}
    return {prefix: d}


def differences(saved: Mapping[str, Any], mine: Mapping[str, Any]) -> list[tuple[str, Any, Any]]:
    """``(dotted key, saved value, this value)`` of every leaf that differs (a missing one is ``<missing>``)."""
    a, b = _flat(saved, ""), _flat(mine, "")
    out = []
    for key in sorted(set(a) | set(b)):
        va, vb = a.get(key, _MISSING), b.get(key, _MISSING)
        if va != vb:
            out.append((key, va, vb))
    return out


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


def _old_norm(saved: Any, mine: Any) -> tuple[Any, bool]:
    """``mine`` without the local parts the saved fingerprint (taken before they were recorded) lacks, and whether
    any was taken away."""
    if isinstance(saved, Mapping) and isinstance(mine, Mapping):
        pairs = {k: _old_norm(saved.get(k), v) for k, v in mine.items()}
        return {k: v for k, (v, _) in pairs.items()}, any(c for _, c in pairs.values())
    if isinstance(saved, str) and isinstance(mine, str) and "_" in mine and "_" not in saved:
        return mine.split("_", 1)[0], True
    return mine, False


def _note(key: str, va: Any, vb: Any, saved: Mapping[str, Any], by_norm: bool, by_store: bool) -> str:
    if key.startswith("norm_fingerprint"):
        if isinstance(va, str) and isinstance(vb, str) and "_" in va and va.split("_")[0] == vb.split("_")[0]:
            return (" (the normalisation store's local, per grid point, coefficients differ from the saved run's: "
                    "their stored chunks or array metadata)")
        return " (the normalisation store now holds other coefficients than the saved run's)"
    if key.startswith("store_fingerprint"):
        return (" (the data store now has another time axis, grid, levels, dtype, fill or missing-value markers, or "
                "array shape than the saved run's)")
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
        return (" (the saved state records no fingerprint of the data stores, so each stream's store must be at the "
                "same path)" if "store_fingerprint" not in saved else
                " (this stream's store cannot be fingerprinted, so its path must match)")
    return ""


def check_resume(saved: Mapping[str, Any], mine: Mapping[str, Any], keys: tuple[str, ...]) -> None:
    """Raise a :class:`ConfigError` naming every setting in ``keys`` (and below) where ``saved`` and ``mine`` differ.

    Also compared: ``drop_last``, ``masking``, ``mask_device``, ``store_fingerprint`` and ``plan`` where both states have them (a
    state saved before they existed does not); the plan (which follows from the rest) only when nothing else
    differs, so that a changed seed is named as the seed. When both states carry a known ``norm_fingerprint`` the
    normalisation store's paths in ``sampling`` are not compared (the fingerprints are); when both carry a known
    ``store_fingerprint`` the streams' store paths are not (the fingerprints are). A saved normalisation fingerprint
    without a local part (taken before it existed) is compared with this one's global part (logged).
    """
    a = {k: saved.get(k, _MISSING) for k in keys}
    b = {k: mine[k] for k in keys}
    for k in _OPTIONAL:
        if k in saved and k in mine and k != "plan":
            a[k], b[k] = saved[k], mine[k]
    by_norm = _known(saved.get("norm_fingerprint")) and _known(mine.get("norm_fingerprint"))
    by_store = _known(saved.get("store_fingerprint")) and _known(mine.get("store_fingerprint"))
    for by, key in ((by_norm, "norm_path"), (by_store, "path")):
        if by:
            if isinstance(a.get("sampling"), Mapping):
                a["sampling"] = _without(a["sampling"], key, top=key == "norm_path")
            if isinstance(b.get("sampling"), Mapping):
                b["sampling"] = _without(b["sampling"], key, top=key == "norm_path")
    if by_norm:
        a["norm_fingerprint"] = saved["norm_fingerprint"]
        b["norm_fingerprint"], old = _old_norm(saved["norm_fingerprint"], mine["norm_fingerprint"])
        if old:
            log.warning("fastload: load_state_dict: the saved state's normalisation fingerprint predates the local "
                        "(per grid point) coefficients: only the global coefficients and attributes are compared")
    diffs = differences(a, b)
    if not diffs and "plan" in saved and "plan" in mine:  # the plan follows from the rest: named only on its own
        diffs = differences({"plan": saved["plan"]}, {"plan": mine["plan"]})
    if not diffs:
        return
    parts = [f"the saved {key} {_show(va)}, this loader's {_show(vb)}{_note(key, va, vb, saved, by_norm, by_store)}"
             for key, va, vb in diffs]
    raise ConfigError(f"load_state_dict: the saved state differs from this loader in {len(parts)} setting(s): "
                      + "; ".join(parts) + "; resume needs the same settings")
