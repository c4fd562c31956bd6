"""``fastload.extract(store, config, boxes)``: token tensors of chosen boxes, through the loader's own gather path.

Why this exists: inference, evaluation and tests need the samples at given places, not random ones, and they must
be bit-identical to what the loader feeds the model. So this runs exactly the loader's steps, in one thread and
without a cache: the tokenizer plans the unique chunks of the batch (:func:`fastload.sampling.plan_batch`), each
is read and decoded once into a slot arena (``store.read_chunk(..., out=slot)``), the slot tables are filled, the
normalisation coefficients of the batch's months are taken from the :class:`~fastload.norm.Normalizer`, and the
gather kernel writes the token layout. The forecaster's global tiling extracts
:func:`fastload.sampling.tile_grid` boxes the same way.

Example::

    import fastload, numpy as np
    store = fastload.open_store("era5.zarr")
    cfg = fastload.SamplingConfig.from_file("sampling.toml")
    out = fastload.extract(store, cfg, np.array([[0, 100, 1400]]))
    out["temperature"].data.shape        # (1, L, nt, nlat, nlon, tt, tlat, tlon)
    out["temperature"].meta.lat          # (1, nlat, nlon) token centre latitudes
"""

from __future__ import annotations

import dataclasses
import os
from typing import Any

import numpy as np

from .config import SamplingConfig
from .errors import ConfigError
from .sampling.neighborhood import allocate_outputs
from .sampling.tokenizer import TokenMeta

__all__ = ["extract", "Extracted"]


@dataclasses.dataclass(frozen=True, slots=True, eq=False)
class Extracted:
    """One field's samples."""

    data: Any
    """``(B, L, nt, nlat, nlon, tt, tlat, tlon)``: float32; for ``out_dtype`` bfloat16/float16 a torch tensor of
    that dtype, or with NumPy the uint16 bit patterns (``.view(np.float16)`` reads float16 bits)."""
    meta: TokenMeta
    """Per-token time, centre latitude/longitude and level (a mesh store adds its point slots, their ``valid``
    padding mask and node counts: :class:`~fastload.sampling.points.PointTokenMeta`; a curvilinear grid with
    copies, unless ``mask_copies=False``, adds ``valid``: :class:`~fastload.sampling.tokenizer.SlotTokenMeta`)."""


def _resolve_store(store: Any) -> Any:
    """An open store as it is; a path or URL opened with :func:`fastload.open_store` (extract's and the Loader's)."""
    if hasattr(store, "chunk_bytes") and hasattr(store, "arrays"):
        return store
    from .store import open_store

    return open_store(store)


def _resolve_config(config: Any) -> SamplingConfig:
    """A SamplingConfig as it is; the path of a TOML/YAML file read with :meth:`SamplingConfig.from_file`."""
    if isinstance(config, SamplingConfig):
        return config
    if isinstance(config, (str, os.PathLike)):
        return SamplingConfig.from_file(config)
    raise ConfigError(f"config: expected a SamplingConfig or the path of a TOML/YAML file, got {type(config)}")


def _normalizer(norm: Any, config: Any) -> Any:
    if norm is not None and not isinstance(norm, (str, bytes)) and hasattr(norm, "coefficients"):
        return norm
    path = norm if norm is not None else config.norm_path
    if path is None:
        return None
    from .norm import Normalizer

    return Normalizer(path)


def read_plan(source: Any, plan: Any) -> tuple[dict[str, np.ndarray], Any]:
    """Decode every chunk a plan needs, in order, into one arena per array; no cache, no threads.

    ``source`` is a store or a :class:`fastload.streams.MultiStream` (``arrays[key].chunks``/``dtype`` and
    ``read_chunk(key, chunk, out=)``); ``plan`` a batch plan (``chunks``: key -> ``(U, ndim)`` chunk indices, and
    ``slot_tables``). Returns the slots (key -> ``(U, chunk elements)``, chunk ``u`` in row ``u``) and the plan's
    slot tables for that layout, as the gather kernels take them.
    """
    slots: dict[str, np.ndarray] = {}
    for key, chunks in plan.chunks.items():
        info = source.arrays[key]
        arena = np.empty((chunks.shape[0], int(np.prod(info.chunks))), dtype=info.dtype)
        for u, chunk in enumerate(chunks.tolist()):
            source.read_chunk(key, tuple(chunk), out=arena[u])
        slots[key] = arena
    return slots, plan.slot_tables({k: np.arange(c.shape[0]) for k, c in plan.chunks.items()})


def extract(store: Any, config: Any, boxes: Any, *, norm: Any = None, jit: bool | None = None,
            as_torch: bool = False, mask_copies: bool = True) -> dict[str, Extracted]:
    """Samples of ``config``'s fields at the given boxes, normalised as the config says.

    Parameters
    ----------
    store : fastload.store.Store, str or path-like
        From :func:`fastload.open_store`, or a store path or URL (opened here, as the Loader does).
    config : SamplingConfig or path
        A config, or the path of a TOML/YAML file (:meth:`SamplingConfig.from_file`). Fields (levels, token geometry, normalisation, transform), ``time_step``, ``out_dtype``. A config with
        ``streams`` must be narrowed to the fields of this store first.
    boxes : array_like of int, shape (B, 3)
        ``(t0, y0, x0)`` store indices of each sample's first time step, row and column (on a mesh store: rows and
        columns of the tokenizer's placement grid, as the Loader's boxes). No boxes (``(0, 3)``) give empty
        results: batch axis 0, metadata of the same shapes, after the same checks of the config.
    norm : Normalizer or path, optional
        Coefficients for fields that normalise; default ``config.norm_path``.
    jit : bool, optional
        ``False`` runs the NumPy reference kernels (default: Numba unless ``FASTLOAD_NO_JIT=1``).
    as_torch : bool
        Return torch tensors instead of NumPy arrays.
    mask_copies : bool
        On a curvilinear grid that stores one place at several indices (NEMO/ORCA halo columns, north fold): make
        the slots that repeat a place already in the sample padding (value 0, ``meta.valid`` False), as the Loader
        does (default). False reads them as stored, with plain :class:`TokenMeta` (the forecaster's global tiles,
        which have no slot mask). No effect on other grids.

    Returns
    -------
    dict
        Field name -> :class:`Extracted` (``data`` and ``meta``).

    Raises
    ------
    ConfigError
        A field, level or box that does not fit the store, or normalisation without coefficients.
    ChunkReadError
        A chunk that cannot be read or decoded.
    """
    config = _resolve_config(config)
    if config.streams:
        raise ConfigError("extract reads one store: pass a config without streams (only this store's fields)")
    from ._backend import make_tokenizer

    store = _resolve_store(store)
    store.check(config)
    tok = make_tokenizer(store, config)  # the Loader's own choice: a mesh store gets its point tokenizer
    if not mask_copies and hasattr(tok, "mask_copies"):
        tok.mask_copies = False  # a curvilinear tokenizer: copies keep the store's values
    b = tok.check_boxes(boxes)
    normalizer = None
    if any(f.normalization != "none" for f in config.fields):
        normalizer = _normalizer(norm, config)
        if normalizer is None:
            names = [f.name for f in config.fields if f.normalization != "none"]
            raise ConfigError(f"fields {names} normalise but no coefficients were given: set norm_path in the "
                              f"config or pass norm= (a fastload.norm.Normalizer or its path)")
        normalizer.check(store, config)

    outs = allocate_outputs(config, b.shape[0], torch=as_torch)
    if b.shape[0]:  # no boxes: nothing to read, and no months to take coefficients for
        plan = tok.plan(b)
        slots, tables = read_plan(store, plan)
        coefficients = None
        month_of = None
        if normalizer is not None:
            months, month_of = tok.month_table(b)
            coefficients = {
                f.name: normalizer.coefficients(f.name, f.normalization, f.levels, months.tolist())
                for f in config.fields if f.normalization != "none"
            }
        tok.gather(slots, tables, b, outs, coefficients=coefficients, month_of=month_of, jit=jit)
    meta = tok.meta(b)
    return {f.name: Extracted(outs[f.name], meta[f.name]) for f in config.fields}
