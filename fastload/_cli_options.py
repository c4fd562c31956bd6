"""Command-line options more than one ``fastload`` tool takes, defined and parsed in one place.

Why this module exists: ``fastload inspect`` and ``fastload stats`` both open a store that may be remote, and both
take its fsspec options as repeatable ``--storage-option KEY=VALUE`` flags and ``--backend``; one definition keeps the flags, their
help and its error message the same in every tool.
"""

from __future__ import annotations

import argparse
from collections.abc import Sequence

from .errors import ConfigError

__all__ = ["add_backend_option", "add_storage_option", "parse_storage_options"]


def add_storage_option(parser: argparse.ArgumentParser, store: str = "store") -> None:
    """Add the repeatable ``--storage-option KEY=VALUE`` flag (``args.storage_option``, a list of strings).

    Parameters
    ----------
    parser : argparse.ArgumentParser
    store : str
        What the options are for, in the help text ("store", "data store").
    """
    parser.add_argument(
        "--storage-option",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help=f"fsspec (or, with --backend obstore, obstore) storage option for a remote {store} (repeatable)",
    )


def add_backend_option(parser: argparse.ArgumentParser) -> None:
    """Add ``--backend {auto,fsspec,obstore}`` (``args.backend``): how a store's bytes are read
    (:func:`fastload.store.open_store`)."""
    from .store import BACKENDS

    parser.add_argument(
        "--backend",
        choices=BACKENDS,
        default="auto",
        help="how to read the store: auto (plain file reads for a path, fsspec for a URL), fsspec, or obstore "
        '(Rust object-store client; pip install "fastload[obstore]")',
    )


def parse_storage_options(items: Sequence[str]) -> dict[str, str] | None:
    """``["KEY=VALUE", ...]`` -> ``{KEY: VALUE}`` (keys and values stripped), or None when there are none.

    Raises
    ------
    ConfigError
        An item without ``=``, or with an empty key.
    """
    out: dict[str, str] = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key.strip():
            raise ConfigError(f"--storage-option: expected KEY=VALUE, got {item!r}")
        out[key.strip()] = value.strip()
    return out or None
