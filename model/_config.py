"""Shared plumbing for the model's typed configs: the error they raise and dict round-trips.

``model/`` must not import ``fastload`` (see ``tests/test_layering.py``), so it cannot raise
``fastload.errors.ConfigError``. :class:`ModelConfigError` is its stand-in: a ``ValueError`` whose message names the
setting and what was expected, exactly as ``ConfigError`` is. Callers that catch ``ValueError`` catch both.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Mapping
from typing import Any

__all__ = ["ModelConfigError", "ConfigBase", "positive_int", "check_fraction"]


class ModelConfigError(ValueError):
    """A model setting is missing, of the wrong type, or impossible (the message names the setting)."""


def positive_int(name: str, value: Any, minimum: int = 1) -> int:
    """Return ``value`` as an int, raising :class:`ModelConfigError` unless it is an integer ``>= minimum``."""
    if isinstance(value, bool) or not isinstance(value, int):
        raise ModelConfigError(f"{name}: expected an integer >= {minimum}, got {value!r}")
    if value < minimum:
        raise ModelConfigError(f"{name}: expected an integer >= {minimum}, got {value}")
    return value


def check_fraction(name: str, value: Any, *, low: float = 0.0, high: float = float("inf")) -> float:
    """Return ``value`` as a finite float in ``[low, high]``, else raise :class:`ModelConfigError`.

    Infinity is refused even where ``high`` is unbounded (an infinite weight or MLP ratio only fails later, in
    arithmetic that names no setting), as is an integer too large for a float."""
    try:
        v = float(value) if isinstance(value, (int, float)) and not isinstance(value, bool) else math.nan
    except OverflowError:  # an int beyond float's range
        v = math.inf
    if not (math.isfinite(v) and low <= v <= high):
        want = f"a finite number >= {low}" if math.isinf(high) else f"a finite number in [{low}, {high}]"
        raise ModelConfigError(f"{name}: expected {want}, got {value!r}")
    return v


class ConfigBase:
    """``to_dict`` / ``from_dict`` for frozen dataclass configs (tuples become lists and back)."""

    __slots__ = ()

    def to_dict(self) -> dict[str, Any]:
        """A plain, JSON-ready dict of the settings (nested configs become dicts)."""

        def conv(v: Any) -> Any:
            if dataclasses.is_dataclass(v):
                return v.to_dict()  # type: ignore[union-attr]
            if isinstance(v, tuple):
                return [conv(x) for x in v]
            return v

        return {f.name: conv(getattr(self, f.name)) for f in dataclasses.fields(self)}  # type: ignore[arg-type]

    @classmethod
    def check_keys(cls, d: Mapping[str, Any], where: str) -> None:
        """Raise :class:`ModelConfigError` naming any key of ``d`` that is not a setting of ``cls``."""
        names = {f.name for f in dataclasses.fields(cls)}  # type: ignore[arg-type]
        unknown = sorted(set(d) - names)
        if unknown:
            raise ModelConfigError(f"{where}: unknown setting(s) {unknown}; known: {sorted(names)}")
