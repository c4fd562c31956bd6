"""fastload: feed AtmoRep-style weather transformers from zarr stores as fast as the hardware allows.

Public API (see README.md): :func:`open_store`, :class:`SamplingConfig`, :class:`LoaderConfig`,
:func:`extract`, :class:`Loader` (and its :class:`MaskingConfig`), and the error tree in :mod:`fastload.errors`.
"""

from __future__ import annotations

from .config import FieldConfig, LoaderConfig, SamplingConfig, StreamConfig, apply_overrides
from .errors import (
    ChunkReadError,
    ChunkTimeoutError,
    CodecError,
    ConfigError,
    FastloadError,
    LoaderClosedError,
    SchemaError,
    StoreError,
    StoreNotFoundError,
    WorkerError,
)

# `extract` is bound eagerly: a lazy name would be shadowed by the submodule `fastload.extract` as soon as anything
# imported it (the import system sets the package attribute to the module). It costs ~0.15 s and imports no numba.
from .extract import extract  # noqa: E402

# Heavy names (numcodecs, numba, torch) load on first use, so `fastload --help` and config parsing stay instant.
_LAZY = {
    "open_store": "fastload.store",
    "Store": "fastload.store",
    "Loader": "fastload.loader",
    "Batch": "fastload.loader",
    "LoaderDataset": "fastload.loader",
    "Normalizer": "fastload.norm",
    "MaskingConfig": "fastload.sampling.masking",
    "MultiStream": "fastload.streams",
    "extract_streams": "fastload.streams",
}


def __getattr__(name: str):
    if name in _LAZY:
        import importlib

        value = getattr(importlib.import_module(_LAZY[name]), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module 'fastload' has no attribute {name!r}")


def __dir__():
    return sorted(set(globals()) | set(_LAZY))


__all__ = [
    "open_store",
    "Store",
    "extract",
    "Loader",
    "Batch",
    "LoaderDataset",
    "Normalizer",
    "MaskingConfig",
    "MultiStream",
    "extract_streams",
    "FieldConfig",
    "LoaderConfig",
    "SamplingConfig",
    "StreamConfig",
    "apply_overrides",
    "ChunkReadError",
    "ChunkTimeoutError",
    "CodecError",
    "ConfigError",
    "FastloadError",
    "LoaderClosedError",
    "SchemaError",
    "StoreError",
    "StoreNotFoundError",
    "WorkerError",
]

__version__ = "0.1.0"
