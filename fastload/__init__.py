"""fastload: feed AtmoRep-style weather transformers from zarr stores as fast as the hardware allows.

Public API (see README.md): :func:`open_store`, :class:`SamplingConfig`, :class:`LoaderConfig`,
:func:`extract`, :class:`Loader`, and the error tree in :mod:`fastload.errors`.
"""

from __future__ import annotations

from .config import FieldConfig, LoaderConfig, SamplingConfig, StreamConfig, apply_overrides
from .errors import (
    ChunkReadError,
    CodecError,
    ConfigError,
    FastloadError,
    LoaderClosedError,
    SchemaError,
    StoreError,
    StoreNotFoundError,
)

__all__ = [
    "FieldConfig",
    "LoaderConfig",
    "SamplingConfig",
    "StreamConfig",
    "apply_overrides",
    "ChunkReadError",
    "CodecError",
    "ConfigError",
    "FastloadError",
    "LoaderClosedError",
    "SchemaError",
    "StoreError",
    "StoreNotFoundError",
]

__version__ = "0.1.0"
