"""What a saved loader state must share with the loader resuming it: :func:`check_resume` and
:func:`norm_fingerprint`, used by :class:`fastload.Loader` and :class:`fastload.rollout_data.RolloutLoader`.

Why this exists: a resumed run must draw the same samples and normalise them the same way, so ``load_state_dict``
compares the saved settings with its own. Comparing the sampling config whole refused a job whose normalisation
store had only moved (another scratch directory, a node-local copy: ``norm_path`` is an absolute path), and its
error printed two ~900-character dicts without saying which key differed. Here the comparison names each differing
setting (dotted: ``sampling.fields.t2m.normalization``) with its saved and current value, and the normalisation
store is compared by what it holds: a fingerprint of the coefficients of the normalised fields (their recorded
attributes and global mean and std per month and level, the std floors), not by its path. A state saved before
fingerprints existed still compares the path, as it always did.

Quick look::

    python -c "from fastload._resume import differences; print(differences({'a': {'b': 1}}, {'a': {'b': 2}}))"
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping
from typing import Any

import numpy as np

from .errors import ConfigError

__all__ = ["norm_fingerprint", "check_resume", "differences"]

NO_NORMALISATION = "none"
"""The fingerprint of a config without normalised fields (no coefficient is read, so no store matters)."""
_PROVENANCE = ("source", "created")  # where and when the statistics were computed: not what they are
_MISSING = object()


def norm_fingerprint(norm: Any, config: Any) -> str | None:
    """A digest of the coefficients ``norm`` gives the normalised fields of ``config``.

    It covers, per normalised field: the attributes ``fastload stats`` recorded (levels, grid, transform, months
    present, value counts per month, ...; not ``source``, a path), the global mean and guarded std of every month
    present and level, and the normaliser's std floors. These are what the :class:`~fastload.norm.Normalizer`
    reads anyway (attributes at the check, the ``(12, L)`` global arrays at the first epoch), so it costs one small
    read per field. The local (per grid point) arrays are not read (gigabytes on a fine grid): two stores written
    by the same statistics pass agree in all of the above, and a store recomputed over other data differs in its
    counts and global coefficients.

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
        h.update(json.dumps([name, attrs], sort_keys=True, default=str).encode())
        months = list(norm.months_present(name))
        if months:
            for a in norm.coefficients(name, "global", None, months):  # (M, L, 1, 1) float32 each
                h.update(np.ascontiguousarray(a).tobytes())
    return "sha256:" + h.hexdigest()[:32]


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


def _norm_paths(sampling: Mapping[str, Any]) -> dict[str, Any]:
    """The sampling dict without its normalisation store paths (top level and each stream's)."""
    out = {k: v for k, v in sampling.items() if k != "norm_path"}
    streams = out.get("streams")
    if isinstance(streams, Mapping):
        out["streams"] = {n: {k: v for k, v in s.items() if k != "norm_path"} if isinstance(s, Mapping) else s
                          for n, s in streams.items()}
    return out


def _known(fp: Any) -> bool:
    """A fingerprint that stands for the coefficients (None: could not be computed)."""
    if isinstance(fp, Mapping):
        return all(v is not None for v in fp.values())
    return fp is not None


def check_resume(saved: Mapping[str, Any], mine: Mapping[str, Any], keys: tuple[str, ...]) -> None:
    """Raise a :class:`ConfigError` naming every setting in ``keys`` (and below) where ``saved`` and ``mine`` differ.

    When both states carry a known ``norm_fingerprint`` the normalisation store's paths in ``sampling`` are not
    compared (the fingerprints are); a state without one (saved before fingerprints) compares the paths.
    """
    a = {k: saved.get(k, _MISSING) for k in keys}
    b = {k: mine[k] for k in keys}
    by_content = _known(saved.get("norm_fingerprint")) and _known(mine.get("norm_fingerprint"))
    if by_content:
        if isinstance(a.get("sampling"), Mapping):
            a["sampling"] = _norm_paths(a["sampling"])
        b["sampling"] = _norm_paths(b["sampling"])
        a["norm_fingerprint"], b["norm_fingerprint"] = saved["norm_fingerprint"], mine["norm_fingerprint"]
    diffs = differences(a, b)
    if not diffs:
        return
    parts = []
    for key, va, vb in diffs:
        note = ""
        if key.startswith("norm_fingerprint"):
            note = " (the normalisation store now holds other coefficients than the saved run's)"
        elif key.endswith("norm_path") and not by_content:
            note = (" (the saved state records no fingerprint of the coefficients, so the normalisation store must"
                    " be at the same path)" if "norm_fingerprint" not in saved else
                    " (this normaliser's coefficients cannot be fingerprinted, so its path must match)")
        parts.append(f"the saved {key} {_show(va)}, this loader's {_show(vb)}{note}")
    raise ConfigError(f"load_state_dict: the saved state differs from this loader in {len(parts)} setting(s): "
                      + "; ".join(parts) + "; resume needs the same settings")
