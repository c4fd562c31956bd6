"""Several datasets in one batch: the streams of a sampling config, sampled at one place and one time window.

Why this exists: users train on ERA5 together with an ocean model's output or mesh data, each with its own grid,
levels and time step; the time axis and the sphere are what they share. :class:`MultiStream` opens every stream
of a :class:`~fastload.config.SamplingConfig` with ``streams`` and makes a sample mean the same region and period
in all of them:

- the **first stream is the reference**: a regular lat-lon store whose index box ``(t0, y0, x0)`` places the
  sample on its own steps (its ``time_rule`` stays ``inside``; its structured tokens are exactly what
  :func:`fastload.extract` gives for it alone);
- **time**: the reference's time points are mapped onto every other stream's axis by that stream's ``time_rule``
  (:mod:`fastload._stream_time`); windows a stream cannot serve are never drawn, and asking for one is an error;
- **space**: the box's region is found in every other stream (:mod:`fastload._stream_space`): an index box of
  the same ``H x W`` points on lat-lon and curvilinear grids, token cells filled with binned nodes on meshes
  (:mod:`fastload.sampling.mesh`); a stream whose grid does not meet the region is an error;
- non-reference fields are gathered as point lists (:mod:`fastload.sampling.points`), so any time mapping
  (repeated or irregular indices) and any grid share one kernel; their metadata (:class:`PointTokenMeta`) carries
  the stream's time index of every point, the rule, token centres, point coordinates and a validity mask.

The object is at once the *store* and the *tokenizer* the reader drives (chunk keys are ``"stream/array"``), so one
plan, one cache budget and one prefetch ring serve all streams (:class:`fastload._stream_backend.StreamBackend`;
``fastload.Loader(None, config)`` builds both, with per-stream counters in ``Batch.stats.streams``).
Bad input fails at construction: streams with no common period, grids that miss the sampled region, meshes with
invalid or duplicate nodes (at open); a stream whose chunking makes every sample read most of its record warns
(:class:`ChunkingWarning`) with a recommended chunking.

Where the parts live: this module is the object the reader drives (and :func:`extract_streams`);
:mod:`fastload._stream_open` opens and checks one stream and gives it its tokenizer or sampler,
:mod:`fastload._stream_place` decides which windows and places every stream serves and maps a batch into each
(:class:`Placement`), :mod:`fastload._stream_norm` the per-stream coefficients, :mod:`fastload._stream_chunks` the
cache bounds and the chunking warning, :mod:`fastload._stream_backend` the loader backend.

Example::

    import fastload, numpy as np
    cfg = fastload.SamplingConfig.from_file("multi.toml")     # [streams.era5], [streams.ocean], [streams.fesom]
    out = fastload.extract_streams(cfg, np.array([[10, 3, 30]]))
    out["thetao"].data.shape, out["thetao"].meta.t_steps, out["temp"].meta.valid
"""

from __future__ import annotations

import dataclasses
import os
import time as _time
from collections.abc import Mapping
from typing import Any

import numpy as np

from . import _stream_place as _place
from ._stream_norm import StreamCoefficients
from ._stream_open import Counters, Stream, build_stream, open_stream_store
from ._stream_place import Placement
from ._stream_time import cadence
from .config import SamplingConfig
from .errors import ConfigError
from .extract import _READ_TIMEOUT_S, read_plan
from .sampling.neighborhood import allocate_outputs
from .sampling.points import PointTokenMeta
from .sampling.tokenizer import TokenMeta
from .store import stored_nbytes

__all__ = ["MultiStream", "Placement", "StreamExtracted", "StreamCoefficients", "ChunkingWarning", "extract_streams",
           "PointTokenMeta"]


class ChunkingWarning(UserWarning):
    """A stream's chunking makes one sample decode most of its record (with a recommended chunking)."""


@dataclasses.dataclass(frozen=True, slots=True, eq=False)
class StreamExtracted:
    """One field's samples from :func:`extract_streams`."""

    data: Any
    """``(B, L, nt, nlat, nlon, tt, tlat, tlon)`` (point fields: the last two axes are the token's point slots)."""
    meta: TokenMeta
    """Token metadata (:class:`PointTokenMeta` for every stream but the reference)."""
    stream: str


class MultiStream:
    """All streams of a multi-stream sampling config, opened, checked and aligned (see the module notes).

    Parameters
    ----------
    config : SamplingConfig or path
        A config with ``streams``; the first stream is the reference (a regular lat-lon store).
    stores : mapping, optional
        Stream name -> an open :class:`~fastload.store.Store` or a path, instead of the stream's ``path``.
    storage_options : mapping, optional
        fsspec (or obstore) options for stream URLs.
    backend : {"auto", "fsspec", "obstore"}
        How stream paths and URLs are read (:func:`fastload.store.open_store`); stores given open keep theirs.
    normalizers : mapping, optional
        Stream name -> :class:`~fastload.norm.Normalizer` or path (default: the stream's ``norm_path``, else the
        config's ``norm_path``).
    jit : bool, optional
        ``False`` runs the NumPy reference kernels everywhere.
    warn_chunking : bool
        Warn (:class:`ChunkingWarning`) about streams chunked so that one sample decodes most of the record.

    Raises
    ------
    ConfigError
        No streams, a stream without fields, a field or level a store lacks, a reference stream that is not a
        regular lat-lon grid, no period all streams serve, a stream whose grid misses the sampled region.
    """

    def __init__(self, config: Any, *, stores: Mapping[str, Any] | None = None, storage_options: Any = None,
                 normalizers: Mapping[str, Any] | None = None, jit: bool | None = None, warn_chunking: bool = True,
                 backend: str = "auto"):
        cfg = SamplingConfig.from_file(config) if isinstance(config, (str, os.PathLike)) else config
        if not isinstance(cfg, SamplingConfig) or not cfg.streams:
            raise ConfigError("MultiStream needs a sampling config with streams ([streams.NAME] tables); for one "
                              "store use fastload.extract or fastload.Loader")
        self.config, self.jit = cfg, jit
        names = [s.name for s in cfg.streams]
        given = dict(stores or {})
        if set(given) - set(names):
            raise ConfigError(f"stores: unknown stream(s) {sorted(set(given) - set(names))}; streams: {names}")
        self.streams: list[Stream] = []
        for i, spec in enumerate(cfg.streams):
            fields = tuple(dataclasses.replace(f, stream=None) for f in cfg.fields if f.stream == spec.name)
            if not fields:
                raise ConfigError(f"streams.{spec.name}: no field names this stream (set stream = {spec.name!r} on "
                                  f"its fields)")
            store = open_stream_store(given.get(spec.name, spec.path), storage_options, backend)
            sub = SamplingConfig(fields=fields, batch_size=cfg.batch_size, time_step=cfg.time_step,
                                 centers=cfg.centers, out_dtype=cfg.out_dtype,
                                 norm_path=spec.norm_path or cfg.norm_path)
            kind = "reference" if i == 0 else ("mesh" if store.grid.kind == "mesh" else "box")
            ref_grid = self.streams[0].store.grid if i else None  # other streams follow its row order
            self.streams.append(build_stream(Stream(spec.name, spec, store, sub, kind), jit, ref_grid))
        self.reference = ref = self.streams[0]
        self.by_name = {s.name: s for s in self.streams}
        if ref.store.time is None or len(ref.store.time) < 2:
            raise ConfigError(f"streams.{ref.name}: the first stream sets each sample's time window and needs a time "
                              "axis of at least two steps")
        self.time = ref.store.time
        self.grid = ref.store.grid
        self.path = tuple(s.store.path for s in self.streams)
        self.box = cfg.box
        self.cadence = cadence(self.time, cfg.time_step)
        _place.time_setup(self)  # valid_t0: the reference window starts every stream serves (random boxes draw them)
        _place.space_setup(self)  # regions; refuses a stream that serves no place
        self.arrays = {s.key(a): s.store.arrays[a] for s in self.streams for a in s.arrays}
        self.counters = Counters(names)
        self._normalizers = dict(normalizers or {})
        self._norm_objects: dict[str, Any] = {}
        from ._stream_chunks import chunk_bounds
        from ._stream_chunks import warn_chunking as _warn

        self.bounds = chunk_bounds(self)
        if warn_chunking:
            _warn(self, stacklevel=3)

    # -- placement (:mod:`fastload._stream_place`) -------------------------------------------------------------------
    @property
    def space_ok(self) -> np.ndarray:
        """``(NY - H + 1, positions along x)`` bool: box starts ``(y0, x0)`` every stream serves (computed on first
        use: it maps every place of the reference grid into every stream, seconds on a 0.25-degree grid)."""
        return _place.space_ok(self)

    def check_boxes(self, boxes: Any) -> np.ndarray:
        """Validated reference boxes (``ConfigError`` naming the first a stream cannot serve)."""
        return self.place(boxes).boxes

    def place(self, boxes: Any, *, check: bool = True) -> Placement:
        """Map reference boxes into every stream (``check``: raise unless every stream serves every box)."""
        return _place.place(self, boxes, check=check)

    def random_boxes(self, n: int, *, seed: int, epoch: int, rank: int = 0, world_size: int = 1,
                     samples_per_window: int = 1, centers: str | None = None,
                     t_range: tuple[int, int] | None = None) -> np.ndarray:
        """This rank's share of an epoch of ``n`` reference boxes that every stream serves.

        Same contract as :func:`fastload.sampling.geometry.random_boxes` (deterministic from ``(seed, epoch)``,
        ranks disjoint and together the epoch, ``samples_per_window`` consecutive samples share a window), with
        window starts drawn from :attr:`valid_t0`. Places are drawn exactly as there when every stream serves every
        drawn box; otherwise (a regional stream) the epoch is drawn uniformly, or by cos(latitude of the box centre),
        among the places :attr:`space_ok` allows. ``t_range``: only windows inside the first stream's time indices
        ``[start, stop)``.
        """
        return _place.random_boxes(self, n, seed=seed, epoch=epoch, rank=rank, world_size=world_size,
                                   samples_per_window=samples_per_window, centers=centers, t_range=t_range)

    # -- the tokenizer interface the reader drives --------------------------------------------------------------
    @property
    def layouts(self) -> dict[str, Any]:
        """Field -> layout, with ``array`` the prefixed key (``"stream/array"``)."""
        return {f: dataclasses.replace(lay, array=s.key(lay.array)) for s in self.streams for f, lay in s.layouts.items()}

    def plan(self, boxes: np.ndarray) -> Any:
        """Unique chunks (keys ``"stream/array"``) and per-field tables of a batch, over all streams."""
        from .sampling.chunks import BatchPlan

        pl = self.place(boxes)
        chunks: dict[str, np.ndarray] = {}
        tables: dict[str, np.ndarray] = {}
        arrays: dict[str, str] = {}
        for st in self.streams:
            if st.kind == "reference":
                p = st.tokenizer.plan(pl.boxes)
            else:
                p = st.sampler.plan(pl.where[st.name], pl.t_steps[st.name], pl.boxes, jit=self.jit)
            chunks.update({st.key(a): c for a, c in p.chunks.items()})
            tables.update(p.tables)
            arrays.update({f: st.key(a) for f, a in p.arrays.items()})
        return BatchPlan(boxes=pl.boxes, chunks=chunks, tables=tables, arrays=arrays)

    def gather(self, slots: Mapping[str, np.ndarray], tables: Mapping[str, np.ndarray], boxes: np.ndarray,
               outs: Mapping[str, Any], *, coefficients: Mapping[str, tuple[np.ndarray, np.ndarray]] | None = None,
               month_of: np.ndarray | None = None, samples: slice | None = None, jit: bool | None = None,
               seconds: dict[str, float] | None = None) -> None:
        """Write every field of ``boxes[samples]`` into ``outs[field][samples]``.

        ``coefficients`` must come from :meth:`coefficients` (its months per stream); ``month_of`` is ignored:
        each stream's months are taken from its own time steps. ``seconds``, when given, receives each stream's
        gather wall time (added to what is there).
        """
        sl = samples if samples is not None else slice(None)
        b = np.asarray(boxes, np.int64)[sl]
        pl = self.place(b, check=False)
        jit = self.jit if jit is None else jit
        months = getattr(coefficients, "months", None)
        for st in self.streams:
            t0 = _time.perf_counter()
            names = [f.name for f in st.config.fields]
            sub_slots = {a: slots[st.key(a)] for a in st.arrays if st.key(a) in slots}
            sub_tables = {f: tables[f][sl] for f in names}
            sub_outs = {f: outs[f][sl] for f in names}
            coef = None if coefficients is None else {f: coefficients[f] for f in names if f in coefficients}
            mo = self._month_of(st, pl, None if months is None else months.get(st.name)) if coef else None
            if st.kind == "reference":
                st.tokenizer.gather(sub_slots, sub_tables, pl.boxes, sub_outs, coefficients=coef, month_of=mo, jit=jit)
            else:
                st.sampler.gather(pl.where[st.name], pl.t_steps[st.name], sub_slots, sub_tables, sub_outs,
                                  coefficients=coef, month_of=mo, jit=jit)
            if seconds is not None:
                seconds[st.name] = seconds.get(st.name, 0.0) + _time.perf_counter() - t0

    def meta(self, boxes: np.ndarray) -> dict[str, TokenMeta]:
        """Per-field token metadata (reference: :class:`TokenMeta`; other streams: :class:`PointTokenMeta`)."""
        pl = self.place(boxes, check=False)
        out: dict[str, TokenMeta] = {}
        for st in self.streams:
            if st.kind == "reference":
                out.update(st.tokenizer.meta(pl.boxes))
            else:
                out.update(st.sampler.meta(pl.where[st.name], pl.t_steps[st.name], time_rule=st.rule, jit=self.jit))
        return out

    def month_table(self, boxes: np.ndarray, months: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
        """The reference's month table (what the reader asks for; :meth:`gather` computes every stream's own)."""
        return self.reference.tokenizer.month_table(boxes, months)

    def _month_of(self, st: Stream, pl: Placement, months: np.ndarray | None = None) -> np.ndarray:
        from ._stream_norm import month_of

        return month_of(st, pl, months)

    def check_coefficients(self) -> None:
        """Open and check every stream's normaliser (levels, grid, every month of the stream's record) without
        loading coefficients (``ConfigError`` naming the stream or field)."""
        from ._stream_norm import normalizers

        normalizers(self)

    def months_used(self, boxes: Any) -> dict[str, np.ndarray]:
        """Stream -> the sorted calendar months (0-11) the time points of ``boxes`` map to on its axis (time only:
        no spatial mapping, so an epoch of boxes is cheap)."""
        from ._stream_norm import months_used

        return months_used(self, boxes)

    def coefficients(self, months: Mapping[str, Any] | None = None) -> StreamCoefficients:
        """Normalisation coefficients of every normalised field, each stream's for the months of its record (or
        ``months[stream]``, e.g. from :meth:`months_used`).

        The result maps field -> ``(mean, std)`` and carries the months of each stream (``.months``), which
        :meth:`gather` uses; without ``months`` the streams also remember them (for callers that pass plain
        dicts).
        """
        from ._stream_norm import coefficients

        return coefficients(self, months)

    # -- the store interface the reader drives ------------------------------------------------------------------
    def _split(self, key: str) -> tuple[Stream, str]:
        name, _, array = key.partition("/")
        st = self.by_name.get(name)
        if st is None or key not in self.arrays:
            raise KeyError(f"no array {key!r} in the streams; arrays: {list(self.arrays)}")
        return st, array

    @property
    def source(self) -> Any:
        """A byte source for the reader's local-or-remote choice: the first remote stream's, else the reference's."""
        from .store import LocalSource

        for st in self.streams:
            if not isinstance(st.store.source, LocalSource):
                return st.store.source
        return self.reference.store.source

    def chunk_bytes(self, key: str, chunk: Any) -> bytes | None:
        st, array = self._split(key)
        t0 = _time.perf_counter()
        raw = st.store.chunk_bytes(array, chunk)
        self.counters.add(st.name, fetches=1, bytes_stored=stored_nbytes(raw),
                          fetch_s=_time.perf_counter() - t0)
        return raw

    def chunk_bytes_many(self, key: str, chunks: Any) -> list[bytes | None]:
        st, array = self._split(key)
        t0 = _time.perf_counter()
        raws = st.store.chunk_bytes_many(array, chunks)
        self.counters.add(st.name, fetches=len(raws), bytes_stored=sum(stored_nbytes(r) for r in raws),
                          fetch_s=_time.perf_counter() - t0)
        return raws

    def decode(self, key: str, raw: Any, chunk: Any, out: np.ndarray | None = None) -> np.ndarray:
        st, array = self._split(key)
        t0 = _time.perf_counter()
        got = st.store.decode(array, raw, chunk, out)
        self.counters.add(st.name, decodes=1, bytes_decoded=got.nbytes, decode_s=_time.perf_counter() - t0)
        return got

    def read_chunk(self, key: str, chunk: Any, out: np.ndarray | None = None) -> np.ndarray:
        return self.decode(key, self.chunk_bytes(key, chunk), chunk, out)

    def check(self, config: Any = None, *, stream: str | None = None) -> None:
        """Checked at construction; kept for the store interface."""

    def stream_counters(self) -> dict[str, dict[str, float]]:
        """Per-stream I/O totals since construction: fetches, bytes stored, fetch seconds, decodes, bytes decoded,
        decode seconds (summed over threads)."""
        with self.counters.lock:
            return {k: dict(v) for k, v in self.counters.values.items()}

    def cache_layout(self, budget: int, workers: int) -> Any:
        """Cache arenas for all streams from one byte budget (:func:`fastload._stream_chunks.cache_layout`)."""
        from ._stream_chunks import cache_layout

        return cache_layout(self, budget, workers)

    @property
    def useful_bytes_by_stream(self) -> dict[str, int]:
        """Stream -> source bytes one sample's slots hold (point fields count every slot, padding included)."""
        out = {}
        for st in self.streams:
            out[st.name] = sum(f.num_levels * int(np.prod(f.box)) * st.store.arrays[st.layouts[f.name].array].dtype.itemsize
                               for f in st.config.fields)
        return out

    @property
    def useful_bytes_per_sample(self) -> int:
        """Source bytes one sample's slots hold, over all streams."""
        return sum(self.useful_bytes_by_stream.values())

    def __repr__(self) -> str:
        parts = ", ".join(f"{s.name}={s.store.grid.kind}/{s.rule}" for s in self.streams)
        return f"MultiStream({parts}; {self.valid_t0.size} servable windows, box {list(self.box)})"


def extract_streams(config: Any, boxes: Any, *, stores: Mapping[str, Any] | None = None,
                    normalizers: Mapping[str, Any] | None = None, jit: bool | None = None,
                    as_torch: bool = False, read_timeout_s: float | None = _READ_TIMEOUT_S
                    ) -> dict[str, StreamExtracted]:
    """Samples of every field of a multi-stream config at the given reference boxes, through the loader's path.

    Parameters
    ----------
    config : SamplingConfig, path or MultiStream
        A config with streams (opened with :class:`MultiStream`), or an open :class:`MultiStream`.
    boxes : array_like of int, shape (B, 3)
        ``(t0, y0, x0)`` on the first stream's grid; every stream must serve each box.
    stores, normalizers
        As for :class:`MultiStream`.
    jit : bool, optional
        ``False`` runs the NumPy reference kernels.
    as_torch : bool
        Torch tensors instead of NumPy arrays.
    read_timeout_s : float or None
        Bound on each store request, as for :func:`fastload.extract` (None: wait for ever).

    Returns
    -------
    dict
        Field -> :class:`StreamExtracted`.
    """
    ms = config if isinstance(config, MultiStream) else MultiStream(config, stores=stores, normalizers=normalizers,
                                                                     jit=jit)
    plan = ms.plan(boxes)
    b = plan.boxes
    slots, tables = read_plan(ms, plan, read_timeout_s=read_timeout_s)
    coefficients = ms.coefficients() if any(f.normalization != "none" for f in ms.config.fields) else None
    outs = allocate_outputs(ms.config, b.shape[0], torch=as_torch)
    ms.gather(slots, tables, b, outs, coefficients=coefficients, jit=jit)
    meta = ms.meta(b)
    stream_of = {f.name: f.stream for f in ms.config.fields}
    return {f.name: StreamExtracted(outs[f.name], meta[f.name], stream_of[f.name]) for f in ms.config.fields}
