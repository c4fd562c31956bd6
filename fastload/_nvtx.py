"""NVTX ranges for fastload, the model loop and the loader: one domain, fixed categories, free when off.

Why this module exists: Nsight Systems can only attribute time to what the program labels. Every part of the
project (the loader's stages in worker threads, the training loop's phases, model submodules through
``profiling.nvtx.apply_nvtx``) labels its work through this one leaf module, so all ranges land in the domain
``"fastload"`` with one of a fixed set of categories, and range *names are constants* (``"forward"``,
``"decode"``); the step or batch number travels as the NVTX payload. ``nsys stats --report nvtx_sum`` groups
ranges by name, so constant names give one row per phase instead of one row per step.

Profiling is off unless ``FASTLOAD_NVTX=1`` is set in the environment or :func:`enable` is called. While off,
:func:`range` returns one shared no-op context manager: no allocation, no ``nvtx`` import, no torch import.
While on but with no NVTX tool attached (not running under ``nsys``), the ``nvtx`` package hands out a dummy
domain and the calls cost a few hundred nanoseconds. Nothing here needs CUDA: ``nsys --trace=nvtx`` records
host ranges on a machine without a GPU too.

How to run it::

    FASTLOAD_NVTX=1 nsys profile --trace=cuda,nvtx python -m profiling.loop profile ...

or in code::

    from fastload import _nvtx
    _nvtx.enable()
    with _nvtx.range("decode", payload=batch_index):
        ...

Ranges are push/pop ranges of the calling thread (balanced by the context manager, also on exceptions);
:func:`start` / :func:`end` give start/end ranges that need not nest (used for whole steps).
"""

from __future__ import annotations

import os
import threading
from typing import Any

from .errors import ConfigError

__all__ = [
    "DOMAIN",
    "CATEGORIES",
    "ENV_VAR",
    "enable",
    "disable",
    "is_enabled",
    "tool_attached",
    "set_step",
    "current_step",
    "range",
    "start",
    "end",
    "mark",
]

DOMAIN = "fastload"
"""The one NVTX domain of the project; ``nsys`` shows ranges as ``fastload:<name>``."""

CATEGORIES = ("data", "h2d", "forward", "backward", "optimizer", "io", "plan", "fetch", "decode", "gather")
"""Categories of the domain, in a fixed order (their NVTX category ids are 1, 2, ...)."""

ENV_VAR = "FASTLOAD_NVTX"
"""``FASTLOAD_NVTX=1`` turns ranges on at import time."""

# A range name that is also a category gets that category by default; phase names map to their category.
_DEFAULT_CATEGORY = {c: c for c in CATEGORIES}
_DEFAULT_CATEGORY.update({"data_wait": "data", "step": None})

_enabled = False
_domain: Any = None  # nvtx.Domain, or the nvtx package's dummy domain when no tool is attached
_dummy = True  # True when _domain is the dummy domain: ranges cost nothing
_category_ids: dict[str, int] = {}
_step = 0
_local = threading.local()  # per thread: {(name, category): EventAttributes}, payload set just before use
_generation = 0  # bumped when the domain changes, so threads drop attributes of the old domain


class _NullRange:
    """The shared no-op context manager handed out while profiling is off."""

    __slots__ = ()

    def __enter__(self) -> None:
        return None

    def __exit__(self, *exc: object) -> bool:
        return False


_NULL = _NullRange()


class _Range:
    """A push/pop range of the calling thread; pops on exit, also when the body raises."""

    __slots__ = ("_attrs", "_payload")

    def __init__(self, attrs: Any, payload: int | float):
        self._attrs = attrs
        self._payload = payload

    def __enter__(self) -> None:
        self._attrs.payload = self._payload  # the attributes are this thread's, shared by same-named ranges
        _domain.push_range(self._attrs)

    def __exit__(self, *exc: object) -> bool:
        _domain.pop_range()
        return False


def enable(on: bool = True) -> bool:
    """Turn NVTX ranges on (or off with ``on=False``); return whether they were on before.

    The first call imports the ``nvtx`` package and registers the domain and its category names. When no NVTX
    tool is attached, the package's dummy domain is kept and ranges stay no-ops (see :func:`tool_attached`).
    """
    global _enabled, _domain, _dummy, _generation
    before = _enabled
    if on and _domain is None:
        try:
            import nvtx
            from nvtx._lib import DummyDomain
        except ImportError as e:  # nvtx is a declared dependency; say what is missing
            raise ConfigError(f"{ENV_VAR}=1 / enable(): NVTX ranges need the 'nvtx' package ({e})") from e
        domain = nvtx.get_domain(DOMAIN)
        _dummy = isinstance(domain, DummyDomain)
        if not _dummy:
            for c in CATEGORIES:
                _category_ids[c] = domain.get_category_id(c)
        _domain = domain
        _generation += 1
    _enabled = bool(on)
    return before


def disable() -> bool:
    """Turn NVTX ranges off; return whether they were on before."""
    return enable(False)


def is_enabled() -> bool:
    """Whether ranges are being emitted (they may still be no-ops when no tool is attached)."""
    return _enabled


def tool_attached() -> bool:
    """Whether an NVTX tool (Nsight Systems) receives the ranges; False until :func:`enable` was called."""
    return _domain is not None and not _dummy


def set_step(step: int) -> None:
    """Set the step number that ranges carry as payload when they are given none (the training loop's step)."""
    global _step
    _step = int(step)


def current_step() -> int:
    """The step number set by :func:`set_step` (0 before the first call)."""
    return _step


def _category(name: str, category: str | None) -> str | None:
    if category is None:
        return _DEFAULT_CATEGORY.get(name)
    if category not in _category_ids and category not in CATEGORIES:
        raise ConfigError(f"NVTX range {name!r}: unknown category {category!r}; expected one of {list(CATEGORIES)}")
    return category


def _attributes(name: str, category: str | None) -> Any:
    """This thread's reusable event attributes for (name, category): built once, payload set per use."""
    if getattr(_local, "generation", -1) != _generation:
        _local.attrs = {}
        _local.generation = _generation
    cache = _local.attrs
    key = (name, category)
    attrs = cache.get(key)
    if attrs is None:
        cat_id = _category_ids.get(category) if category is not None else None
        attrs = cache[key] = _domain.get_event_attributes(message=name, category=cat_id)
    return attrs


def _with_payload(attrs: Any, payload: int | float | None) -> Any:
    attrs.payload = _step if payload is None else payload
    return attrs


def range(name: str, category: str | None = None, payload: int | float | None = None) -> Any:  # noqa: A001
    """A context manager that labels its body as an NVTX push/pop range ``name`` of the calling thread.

    Parameters
    ----------
    name : str
        A constant name (``"forward"``, ``"decode"``); put varying numbers in ``payload``, not in the name.
    category : str, optional
        One of :data:`CATEGORIES`; by default the name's own category when it is one (``"data_wait"`` ->
        ``"data"``), else none.
    payload : int or float, optional
        Number shown with the range (a batch index); by default the step set with :func:`set_step`.

    Returns
    -------
    context manager
        A shared no-op object while profiling is off.

    Raises
    ------
    ConfigError
        If ``category`` is not one of :data:`CATEGORIES` (checked only while on).
    """
    if not _enabled:
        return _NULL
    category = _category(name, category)
    if _dummy:
        return _NULL
    return _Range(_attributes(name, category), _step if payload is None else payload)


def start(name: str, category: str | None = None, payload: int | float | None = None) -> int:
    """Start a start/end range (need not nest, may end on another thread); return its id for :func:`end`.

    Returns 0 while off or with no tool attached; :func:`end` ignores 0.
    """
    if not _enabled:
        return 0
    category = _category(name, category)
    if _dummy:
        return 0
    return int(_domain.start_range(_with_payload(_attributes(name, category), payload)))


def end(range_id: int) -> None:
    """End a range started with :func:`start` (0 is ignored)."""
    if range_id and _domain is not None and not _dummy:
        _domain.end_range(range_id)


def mark(name: str, category: str | None = None, payload: int | float | None = None) -> None:
    """An instantaneous NVTX marker (e.g. a cache eviction); no-op while off."""
    if not _enabled:
        return
    category = _category(name, category)
    if _dummy:
        return
    _domain.mark(_with_payload(_attributes(name, category), payload))


def _reset_for_tests(domain: Any = None) -> None:
    """Forget the domain (tests substitute a recording domain); profiling ends up off."""
    global _enabled, _domain, _dummy, _generation
    _enabled = False
    _domain = domain
    _dummy = domain is None
    _generation += 1
    _category_ids.clear()
    if domain is not None:
        for c in CATEGORIES:
            _category_ids[c] = domain.get_category_id(c)


if os.environ.get(ENV_VAR, "").strip().lower() in ("1", "true", "yes", "on"):
    enable()
