"""Dotted command-line overrides of a config dataclass: ``loader.batch_size=8``, ``fields.temperature.levels=[96]``.

Why this exists: the CLI and the presets take a preset config and a few ``--set KEY=VALUE`` strings;
:func:`apply_overrides` parses each value into the setting's declared type (``int | None``, a ``Literal``, a tuple,
...), finds it in the nested config by its dotted key (the entries of ``fields`` / ``streams`` by their name), and
rebuilds each config once with all its overrides, so its ``__post_init__`` validates the result. It works on any
frozen config dataclass, not only those of :mod:`fastload.config`, which re-exports it. Example::

    from fastload.config import LoaderConfig, apply_overrides
    cfg = apply_overrides(LoaderConfig(), ["batch_size=8", "mode=process"], prefix="loader.")
"""

from __future__ import annotations

import dataclasses
import math
import types
import typing
from collections.abc import Sequence
from typing import Any, Literal

from .errors import ConfigError

__all__ = ["apply_overrides"]


def _coerce(value: str, typ: Any, key: str) -> Any:
    """Parse an override string into the declared type of the setting ``key``."""
    origin = typing.get_origin(typ)
    args = typing.get_args(typ)
    if origin in (typing.Union, types.UnionType):
        if value.lower() in ("none", "null") and type(None) in args:
            return None
        if value.strip().startswith("["):  # a bracketed list: integers before strings (time_range=[0,8760])
            args = tuple(sorted(args, key=lambda a: typing.get_args(a)[:1] == (str,)))
        for a in args:
            if a is type(None):
                continue
            try:
                return _coerce(value, a, key)
            except ConfigError:
                continue
        raise ConfigError(f"{key}: cannot read {value!r} as {typ}")
    if origin is Literal:
        for a in args:
            if str(a) == value:
                return a
        raise ConfigError(f"{key}: expected one of {list(args)!r}, got {value!r}")
    if typ is bool:
        if value.lower() in ("1", "true", "yes", "on"):
            return True
        if value.lower() in ("0", "false", "no", "off"):
            return False
        raise ConfigError(f"{key}: expected true or false, got {value!r}")
    if typ is int:
        try:
            f = float(value)
        except ValueError:
            raise ConfigError(f"{key}: expected an integer, got {value!r}") from None
        if not math.isfinite(f) or not f.is_integer():
            raise ConfigError(f"{key}: expected an integer, got {value!r}")
        return int(value) if value.lstrip("-").isdigit() else int(f)
    if typ is float:
        try:
            return float(value)
        except ValueError:
            raise ConfigError(f"{key}: expected a number, got {value!r}") from None
    if typ is str:
        return value
    if origin is tuple:
        parts = [p for p in value.strip("[]()").split(",") if p.strip()]
        inner = args[0] if args else str
        return tuple(_coerce(p.strip(), inner, key) for p in parts)
    raise ConfigError(f"{key}: settings of type {typ} cannot be overridden from the command line")


def apply_overrides(config: Any, overrides: Sequence[str], *, prefix: str = "") -> Any:
    """Return a copy of a (nested) config dataclass with ``a.b=value`` overrides applied.

    A field's (stream's) settings go by its name: ``fields.temperature.normalization=global``. Each config is rebuilt
    once with all its overrides, so settings that must agree (every field's box) change together. Unknown keys or
    field names, wrong types and what the config's validation refuses raise :class:`ConfigError`. ``prefix`` names
    the config in messages (``loader.``).
    """
    tree: dict[str, Any] = {}
    for item in overrides:
        if "=" not in item:
            raise ConfigError(f"override {item!r}: expected KEY=VALUE, e.g. loader.batch_size=8")
        key, value = (p.strip() for p in item.split("=", 1))
        node, path = tree, key.split(".")
        for part in path[:-1]:
            node = node.setdefault(part, {})
            if not isinstance(node, dict):
                raise ConfigError(f"{prefix}{key}: conflicts with the override of {node[1]} (a value)")
        if isinstance(node.get(path[-1]), dict):
            raise ConfigError(f"{prefix}{key}: conflicts with the override of {_full(node[path[-1]])}")
        node[path[-1]] = (value, prefix + key)
    return _override(config, tree) if tree else config


def _full(node: Any) -> str:
    """The full key of the first override in a tree node (for messages)."""
    while isinstance(node, dict):
        node = next(iter(node.values()))
    return node[1]


def _override(config: Any, tree: dict[str, Any]) -> Any:
    if not dataclasses.is_dataclass(config):
        raise ConfigError(f"{_full(tree)}: not a setting (its parent is not a config section)")
    hints = typing.get_type_hints(type(config))
    changes = {}
    for head, node in tree.items():
        if head not in hints:
            known = sorted(f.name for f in dataclasses.fields(config))
            raise ConfigError(f"{_full(node)}: unknown setting {head!r}; known here: {known}")
        current, item = getattr(config, head), typing.get_args(hints[head])[:1]
        if typing.get_origin(hints[head]) is tuple and item and dataclasses.is_dataclass(item[0]) \
                and "name" in {f.name for f in dataclasses.fields(item[0])}:
            changes[head] = _override_named(current, node, head)  # fields / streams: a tuple named by name
        elif isinstance(node, dict):
            changes[head] = _override(current, node)
        elif dataclasses.is_dataclass(current):
            raise ConfigError(f"{node[1]}: is a section, not a value; set one of its settings")
        else:
            changes[head] = _coerce(node[0], hints[head], node[1])
    return dataclasses.replace(config, **changes)


def _override_named(items: tuple[Any, ...], tree: Any, head: str) -> tuple[Any, ...]:
    """``fields.<name>.<setting>`` (or ``streams.``): the entries of a tuple of named configs, by name."""
    kind = head.removesuffix("s")
    names = [x.name for x in items]
    example = f"{head}.{names[0] if names else 'NAME'}.<setting>=VALUE"
    if not isinstance(tree, dict):
        raise ConfigError(f"{tree[1]}: is a table of {head}, not a value; set one {kind}'s setting: {example}")
    out = list(items)
    for name, node in tree.items():
        if name not in names:
            raise ConfigError(f"{_full(node)}: no {kind} {name!r} in this config; {head}: {names}")
        if not isinstance(node, dict):
            raise ConfigError(f"{node[1]}: is a {kind}, not a value; set one of its settings: {head}.{name}.<setting>"
                              f"=VALUE")
        if "name" in node:
            raise ConfigError(f"{_full(node['name'])}: a {kind}'s name is its table's key and is not overridden")
        out[names.index(name)] = _override(items[names.index(name)], node)
    return tuple(out)
