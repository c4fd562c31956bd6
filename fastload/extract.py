"""``fastload.extract(store, config, boxes)``: token tensors of chosen boxes, through the loader's own gather path.

Why this exists: inference, evaluation and tests need the samples at given places, not random ones, and they must
be bit-identical to what the loader feeds the model. So this runs exactly the loader's steps, without a cache: the
tokenizer plans the unique chunks of the batch (:func:`fastload.sampling.plan_batch`), each is read once (a few
requests ahead, on a thread of their own, each bounded by ``read_timeout_s`` as the loader's are) and decoded on
the calling thread into a slot arena (``store.decode(..., out=slot)``), the slot tables are filled, the
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
import math
import os
import time
from collections import deque
from concurrent.futures import Future
from concurrent.futures import TimeoutError as FutureTimeout
from typing import Any

import numpy as np

from ._io_pool import _IOPool
from .config import LoaderConfig, SamplingConfig
from .errors import ChunkTimeoutError, ConfigError
from .sampling.neighborhood import allocate_outputs
from .sampling.tokenizer import TokenMeta
from .store._shard import checked_under

__all__ = ["extract", "Extracted"]

_READ_TIMEOUT_S = next(f.default for f in dataclasses.fields(LoaderConfig) if f.name == "read_timeout_s")
_AHEAD = 2  # groups of store requests in flight ahead of the decodes
_GROUP = 1024  # most chunks per group ...
_GROUP_BYTES = 8 * 2**20  # ... and decoded bytes (a group's raw bytes are held until it is decoded)


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


def read_plan(source: Any, plan: Any, *, read_timeout_s: float | None = _READ_TIMEOUT_S
              ) -> tuple[dict[str, np.ndarray], Any]:
    """Decode every chunk a plan needs, in order, into one arena per array; no cache.

    ``source`` is a store or a :class:`fastload.streams.MultiStream` (``arrays[key].chunks``/``dtype``,
    ``chunk_bytes(key, chunk)`` and ``decode(key, raw, chunk, out=)``); ``plan`` a batch plan (``chunks``: key ->
    ``(U, ndim)`` chunk indices, and ``slot_tables``). Returns the slots (key -> ``(U, chunk elements)``, chunk
    ``u`` in row ``u``) and the plan's slot tables for that layout, as the gather kernels take them.

    Store requests run on an I/O thread of their own, a few ahead of the decodes, which run on the calling thread
    (numcodecs' Blosc uses its own threads only there); each request may go unanswered at most ``read_timeout_s``
    seconds (None: for ever), as in the loader, else :class:`~fastload.errors.ChunkTimeoutError` names the store,
    the chunk, its file and the fields that need it, and the request is left running on its (daemon) thread.
    """
    slots: dict[str, np.ndarray] = {}
    for key, chunks in plan.chunks.items():
        info = source.arrays[key]
        slots[key] = np.empty((chunks.shape[0], int(np.prod(info.chunks))), dtype=info.dtype)
    jobs = [(key, tuple(c), slots[key][u]) for key, chunks in plan.chunks.items()
            for u, c in enumerate(chunks.tolist())]
    token = object()  # each local shard's cached index is checked (a stat) once per call, not once per chunk
    if read_timeout_s is None or not jobs:  # no bound: every read on this thread, as it was
        with checked_under(token):
            for key, chunk, out in jobs:
                source.decode(key, source.chunk_bytes(key, chunk), chunk, out)
    else:
        _read_bounded(source, plan, jobs, read_timeout_s, token)
    return slots, plan.slot_tables({k: np.arange(c.shape[0]) for k, c in plan.chunks.items()})


class _Request:
    """The store request a group job of :func:`_read_bounded` is in: ``(began, key, chunk)`` (``time.monotonic()``
    when it started; None while the job is queued), replaced as a whole (one assignment: read whole by the waiter)."""

    __slots__ = ("now", "cancelled")

    def __init__(self) -> None:
        self.now: tuple[float | None, str, tuple[int, ...]] = (None, "", ())
        self.cancelled = False  # set by the waiter when it gives up: the group makes no further request


def _request_group(req: _Request, source: Any, group: list[tuple[str, tuple[int, ...]]],
                   token: Any = None) -> list[Any]:
    """The raw bytes of a group's chunks, requested one after another; a failed request ends the group with its
    exception in its place (raised when the waiter decodes that far, after the chunks before it). ``token``: the
    call's shard check token (:func:`fastload.store._shard.checked_under`)."""
    out: list[Any] = []
    with checked_under(token):
        _request_each(req, source, group, out)
    return out


def _request_each(req: _Request, source: Any, group: list[tuple[str, tuple[int, ...]]], out: list[Any]) -> None:
    for key, chunk in group:
        if req.cancelled:  # the waiter gave up (a request of this group went unanswered, or it failed): stop
            break
        req.now = (time.monotonic(), key, chunk)
        try:
            out.append(source.chunk_bytes(key, chunk))
        except Exception as e:  # noqa: BLE001 - raised on the waiting thread, in its turn
            out.append(e)
            break


def _read_bounded(source: Any, plan: Any, jobs: list[tuple[str, tuple[int, ...], np.ndarray]],
                  limit: float, token: Any = None) -> None:
    """:func:`read_plan`'s reads with a read timeout: the requests on one I/O thread, in groups of up to ``_GROUP``
    chunks or ``_GROUP_BYTES`` decoded bytes (a hand-over per group: a Future per chunk made extract 2.3x slower on
    4x4-point chunks), ``_AHEAD`` groups in flight; the decodes here, in order."""
    nbytes = max(1, max(int(np.prod(source.arrays[k].chunks)) * np.dtype(source.arrays[k].dtype).itemsize
                        for k, _, _ in jobs))
    size = max(1, min(_GROUP, _GROUP_BYTES // nbytes))
    groups = [jobs[i:i + size] for i in range(0, len(jobs), size)]
    pool = _IOPool(1, "fastload-extract")
    ahead: deque[tuple[Future, _Request]] = deque()
    done = False
    cur: _Request | None = None  # the request of the group being waited for
    try:
        for g, group in enumerate(groups):
            while len(ahead) < _AHEAD and g + len(ahead) < len(groups):
                req = _Request()
                todo = [(k, c) for k, c, _ in groups[g + len(ahead)]]
                ahead.append((pool.submit(_request_group, req, source, todo, token), req))
            fut, cur = ahead.popleft()
            queued = time.monotonic()  # (the group before it has returned: this one starts at once)
            while True:
                now = cur.now
                left = (queued if now[0] is None else now[0]) + limit - time.monotonic()
                try:
                    raws = fut.result(timeout=max(0.0, left))
                    break
                except FutureTimeout:  # (the builtin TimeoutError in 3.11)
                    if fut.done() or cur.now is not now:  # it answered, or went on to its next request
                        continue
                    # its thread is left in the request (it ends when that returns); the groups queued behind it
                    began, key, chunk = now  # never start, and it makes no further request (cancelled below)
                    if began is None:  # (never started: named by the group's first chunk)
                        key, chunk = group[0][0], group[0][1]
                    raise _timeout(source, plan, key, chunk, time.monotonic() - (began or queued), limit) from None
            for (key, chunk, out), raw in zip(group, raws):
                if isinstance(raw, Exception):
                    raise raw
                source.decode(key, raw, chunk, out)
        done = True
    finally:
        for fut, req in ahead:
            req.cancelled = True
            fut.cancel()
        if cur is not None and not done:
            cur.cancelled = True
        # done: nothing is queued or runs, the thread ends at once; otherwise (a request given up, another error,
        # Ctrl-C) nothing waits for the request in flight: its thread only returns raw bytes, never writes into
        # the caller's arrays, and makes no further request (cancelled); it ends when that request returns
        pool.close(None if done else 0.0)


def _timeout(source: Any, plan: Any, key: str, chunk: tuple[int, ...], waited: float,
             limit: float) -> ChunkTimeoutError:
    """The error of a request left unanswered: the store, the chunk's file, the fields that need it, the setting."""
    inner, array = source, key
    if hasattr(source, "by_name"):  # a MultiStream: key "stream/array", and its stream's store names the files
        name, _, array = key.partition("/")
        inner = getattr(source.by_name.get(name), "store", source)
    path = None
    try:
        path = inner.source.describe(inner.arrays[array].key(chunk))
    except Exception:  # noqa: BLE001 - a name only
        pass
    fields = sorted(f for f, a in getattr(plan, "arrays", {}).items() if a == key)
    store = getattr(inner, "path", None)
    return ChunkTimeoutError(key, chunk, f"no answer from the store{f' {store!r}' if store else ''} after "
                                         f"{waited:.3g} s (extract's read_timeout_s = {limit:g}; None waits for ever)"
                                         f"{f', reading field(s) {fields}' if fields else ''}; the request is left "
                                         f"running", path)


def extract(store: Any, config: Any, boxes: Any, *, norm: Any = None, jit: bool | None = None,
            as_torch: bool = False, mask_copies: bool = True,
            read_timeout_s: float | None = _READ_TIMEOUT_S) -> dict[str, Extracted]:
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
    read_timeout_s : float or None
        Seconds one store request may go unanswered (a hung network mount or object store), as the Loader's
        ``loader.read_timeout_s`` (same default, 300): past it :class:`~fastload.errors.ChunkTimeoutError` names
        the store, the chunk, its file and the fields that need it, and the request is left running on a daemon
        thread. The requests run on a thread of their own, a few ahead of the decodes (which stay on the calling
        thread). None: wait for ever, every read on the calling thread.

    Returns
    -------
    dict
        Field name -> :class:`Extracted` (``data`` and ``meta``).

    Raises
    ------
    ConfigError
        A field, level or box that does not fit the store, or normalisation without coefficients: for the field,
        or for a month a box reads (only the boxes' months need them, not the whole record's; the first box that
        needs a missing month is named).
    ChunkReadError
        A chunk that cannot be read or decoded.
    ChunkTimeoutError
        A store request unanswered for ``read_timeout_s`` (a ``ChunkReadError``).
    """
    t = read_timeout_s
    if t is not None and (isinstance(t, bool) or not isinstance(t, (int, float)) or not math.isfinite(t) or t <= 0):
        raise ConfigError(f"extract: read_timeout_s: expected a number of seconds > 0 or None, got {t!r}")
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
        # the months the boxes read (every time step of each), not the whole record: coefficients for January
        # serve boxes in January of a store that also holds February (the Loader checks the whole record)
        steps = b[:, :1] + np.arange(config.box[0], dtype=np.int64) * config.time_step  # (B, nt * tt)
        normalizer.check(store, config, time_steps=steps)

    outs = allocate_outputs(config, b.shape[0], torch=as_torch)
    if b.shape[0]:  # no boxes: nothing to read, and no months to take coefficients for
        plan = tok.plan(b)
        slots, tables = read_plan(store, plan, read_timeout_s=read_timeout_s)
        _gather(tok, config, b, slots, tables, outs, normalizer, jit)
    meta = tok.meta(b)
    return {f.name: Extracted(outs[f.name], meta[f.name]) for f in config.fields}


def _gather(tok: Any, config: SamplingConfig, b: np.ndarray, slots: dict[str, np.ndarray], tables: Any,
            outs: dict[str, Any], normalizer: Any, jit: bool | None) -> None:
    coefficients = None
    month_of = None
    if normalizer is not None:
        months, month_of = tok.month_table(b)
        coefficients = {
            f.name: normalizer.coefficients(f.name, f.normalization, f.levels, months.tolist())
            for f in config.fields if f.normalization != "none"
        }
    tok.gather(slots, tables, b, outs, coefficients=coefficients, month_of=month_of, jit=jit)


def warm_gather(store: Any, config: SamplingConfig, *, norm: Any = None, jit: bool | None = None,
                as_torch: bool = False, mask_copies: bool = True) -> None:
    """Compile (or load from the JIT cache) the gather kernels :func:`extract` calls with these arguments: its own
    tokenizer, plan and gather on zero boxes (reading nothing). For a warm-up thread that is no daemon
    (:func:`fastload.reader.start_kernel_warmup`), so that worker threads that wait for it never compile; the
    rollout loader's. Nothing with the NumPy kernels. Errors propagate (the caller's warm-up is only a head start)."""
    from ._backend import make_tokenizer
    from .sampling.neighborhood import use_jit

    if not use_jit(jit, config):
        return
    store = _resolve_store(store)
    tok = make_tokenizer(store, config)
    if not mask_copies and hasattr(tok, "mask_copies"):
        tok.mask_copies = False
    b = tok.check_boxes(np.zeros((0, 3), np.int64))
    normalizer = _normalizer(norm, config) if any(f.normalization != "none" for f in config.fields) else None
    plan = tok.plan(b)  # (no chunks: read_plan's arenas and tables, with nothing to read)
    slots = {k: np.empty((0, int(np.prod(store.arrays[k].chunks))), store.arrays[k].dtype) for k in plan.chunks}
    tables = plan.slot_tables({k: np.arange(c.shape[0]) for k, c in plan.chunks.items()})
    _gather(tok, config, b, slots, tables, allocate_outputs(config, 0, torch=as_torch), normalizer, jit)
