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

Example::

    cfg = fastload.SamplingConfig.from_file("multi.toml")     # [streams.era5], [streams.ocean], [streams.fesom]
    out = fastload.streams.extract_streams(cfg, np.array([[10, 3, 30]]))
    out["thetao"].data.shape, out["thetao"].meta.t_steps, out["temp"].meta.valid
"""

from __future__ import annotations

import dataclasses
import os
import threading
import time as _time
from collections.abc import Mapping
from typing import Any

import numpy as np

from ._stream_norm import StreamCoefficients
from ._stream_space import CurvilinearMapper, LatLonMapper, ReferenceRegions
from ._stream_time import align, cadence, describe_period, sample_times, servable
from .config import SamplingConfig
from .errors import ConfigError
from .extract import read_plan
from .sampling.geometry import GridExtent, random_boxes
from .sampling.mesh import MeshPointSampler, point_layouts
from .sampling.neighborhood import allocate_outputs
from .sampling.points import BoxPointSampler, PointTokenMeta
from .sampling.tokenizer import TokenMeta, build_tokenizer

__all__ = ["MultiStream", "Placement", "StreamExtracted", "StreamCoefficients", "ChunkingWarning", "extract_streams",
           "PointTokenMeta"]


class ChunkingWarning(UserWarning):
    """A stream's chunking makes one sample decode most of its record (with a recommended chunking)."""


@dataclasses.dataclass(frozen=True, slots=True, eq=False)
class Placement:
    """One batch's samples mapped into every stream."""

    boxes: np.ndarray
    """``(S, 3)`` reference boxes ``(t0, y0, x0)``."""
    times: np.ndarray
    """``(S, T)`` datetime64[ns] time points of each sample."""
    window: np.ndarray
    """``(S, 2)`` datetime64[ns] ``[start, end)``: the first time point to one cadence after the last."""
    regions: np.ndarray
    """``(S, 4)`` ``[lat_first, lat_last, lon_first, width]`` (degrees) of each sample."""
    t_steps: dict[str, np.ndarray]
    """Stream -> ``(S, T)`` the stream's time index of each time point."""
    where: dict[str, np.ndarray]
    """Stream -> its placement: reference boxes, ``(S, 2)`` index-box starts, or ``(S, 4)`` regions (mesh)."""
    served: dict[str, np.ndarray]
    """Stream -> ``(S,)`` whether the stream serves each sample (time and space)."""


@dataclasses.dataclass(frozen=True, slots=True, eq=False)
class StreamExtracted:
    """One field's samples from :func:`extract_streams`."""

    data: Any
    """``(B, L, nt, nlat, nlon, tt, tlat, tlon)`` (point fields: the last two axes are the token's point slots)."""
    meta: TokenMeta
    """Token metadata (:class:`PointTokenMeta` for every stream but the reference)."""
    stream: str


class _Counters:
    """Per-stream I/O totals (thread-safe)."""

    __slots__ = ("lock", "values")

    def __init__(self, names: list[str]):
        self.lock = threading.Lock()
        self.values = {n: dict(fetches=0, bytes_stored=0, fetch_s=0.0, decodes=0, bytes_decoded=0, decode_s=0.0)
                       for n in names}

    def add(self, stream: str, **kw: float) -> None:
        with self.lock:
            v = self.values[stream]
            for k, x in kw.items():
                v[k] += x


class _Stream:
    """One stream: its store, its share of the config, and how samples map into it."""

    def __init__(self, name: str, spec: Any, store: Any, config: SamplingConfig, kind: str):
        self.name, self.spec, self.store, self.config, self.kind = name, spec, store, config, kind
        self.rule = spec.time_rule
        self.has_time = any(store.fields[f.name].has_time for f in config.fields)
        self.time = store.time if self.has_time else None
        self.tokenizer: Any = None
        self.sampler: Any = None
        self.mapper: Any = None
        self.months: np.ndarray | None = None
        self.layouts: dict[str, Any] = {}

    @property
    def arrays(self) -> list[str]:
        return sorted({lay.array for lay in self.layouts.values()})

    def key(self, array: str) -> str:
        return f"{self.name}/{array}"


def _open(where: Any, storage_options: Any) -> Any:
    if hasattr(where, "chunk_bytes") and hasattr(where, "fields"):
        return where
    from .store import open_store

    return open_store(where, storage_options=storage_options)


def _check_point_fields(st: _Stream, box: tuple[int, int, int]) -> None:
    g = st.store.grid
    for f in st.config.fields:
        info = st.store.fields.get(f.name)
        if info is None:
            raise ConfigError(f"fields.{f.name}: not in stream {st.name!r} ({st.store.path}); it has "
                              f"{list(st.store.fields)}")
        packed = sorted(k for k in ("scale_factor", "add_offset") if k in info.attrs)
        if packed:
            raise ConfigError(f"fields.{f.name}: stored packed (attributes {packed}) in stream {st.name!r}; convert "
                              "the store to floats first (fastload convert)")
        if g.kind != "mesh" and (box[1] > g.ny or box[2] > g.nx):
            raise ConfigError(f"fields.{f.name}: the sample box spans {box[1]} x {box[2]} grid points but stream "
                              f"{st.name!r} has a {g.ny} x {g.nx} grid")


class MultiStream:
    """All streams of a multi-stream sampling config, opened, checked and aligned (see the module notes).

    Parameters
    ----------
    config : SamplingConfig or path
        A config with ``streams``; the first stream is the reference (a regular lat-lon store).
    stores : mapping, optional
        Stream name -> an open :class:`~fastload.store.Store` or a path, instead of the stream's ``path``.
    storage_options : mapping, optional
        fsspec options for stream URLs.
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
                 normalizers: Mapping[str, Any] | None = None, jit: bool | None = None, warn_chunking: bool = True):
        cfg = SamplingConfig.from_file(config) if isinstance(config, (str, os.PathLike)) else config
        if not isinstance(cfg, SamplingConfig) or not cfg.streams:
            raise ConfigError("MultiStream needs a sampling config with streams ([streams.NAME] tables); for one "
                              "store use fastload.extract or fastload.Loader")
        self.config, self.jit = cfg, jit
        names = [s.name for s in cfg.streams]
        given = dict(stores or {})
        if set(given) - set(names):
            raise ConfigError(f"stores: unknown stream(s) {sorted(set(given) - set(names))}; streams: {names}")
        self.streams: list[_Stream] = []
        for i, spec in enumerate(cfg.streams):
            fields = tuple(dataclasses.replace(f, stream=None) for f in cfg.fields if f.stream == spec.name)
            if not fields:
                raise ConfigError(f"streams.{spec.name}: no field names this stream (set stream = {spec.name!r} on "
                                  f"its fields)")
            store = _open(given.get(spec.name, spec.path), storage_options)
            sub = SamplingConfig(fields=fields, batch_size=cfg.batch_size, time_step=cfg.time_step,
                                 centers=cfg.centers, out_dtype=cfg.out_dtype,
                                 norm_path=spec.norm_path or cfg.norm_path)
            kind = "reference" if i == 0 else ("mesh" if store.grid.kind == "mesh" else "box")
            self.streams.append(self._build(_Stream(spec.name, spec, store, sub, kind)))
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
        self._time_setup()
        self._space_setup()
        self.arrays = {s.key(a): s.store.arrays[a] for s in self.streams for a in s.arrays}
        self.counters = _Counters(names)
        self._normalizers = dict(normalizers or {})
        self._norm_objects: dict[str, Any] = {}
        from ._stream_chunks import chunk_bounds
        from ._stream_chunks import warn_chunking as _warn

        self.bounds = chunk_bounds(self)
        if warn_chunking:
            _warn(self, stacklevel=3)

    # -- set-up ---------------------------------------------------------------------------------------------------
    def _build(self, st: _Stream) -> _Stream:
        if st.kind == "reference":
            if st.rule != "inside":
                raise ConfigError(f"streams.{st.name}.time_rule = {st.rule!r}: the first stream sets each sample's "
                                  "window on its own steps; leave its time_rule at 'inside'")
            ReferenceRegions(st.store.grid, st.config.box)  # refuses a non-lat-lon reference
            st.store.check(st.config)
            st.tokenizer = build_tokenizer(st.store, st.config)
            st.layouts = dict(st.tokenizer.layouts)
            return st
        _check_point_fields(st, st.config.box)
        st.layouts = point_layouts(st.store, st.config)
        _, H, W = st.config.box
        if st.kind == "mesh":
            st.sampler = MeshPointSampler(st.config, st.layouts, st.time, st.store.grid)
        else:
            st.sampler = BoxPointSampler(st.config, st.layouts, st.time, st.store.grid)
            mapper = LatLonMapper if st.store.grid.kind == "latlon" else CurvilinearMapper
            st.mapper = mapper(st.store.grid, H, W) if mapper is LatLonMapper else mapper(st.store.grid, H, W,
                                                                                          jit=self.jit)
        return st

    def _time_setup(self) -> None:
        T = self.box[0]
        others = [(s.name, s.time, s.rule) for s in self.streams[1:]]
        ok, per, spread = servable(self.time, T, self.config.time_step, others)
        self.time_spread = {s.name: (spread.get(s.name, 1) if s.has_time else 1) for s in self.streams}
        self.time_spread[self.reference.name] = (T - 1) * self.config.time_step + 1
        if not ok.any():
            lone = [n for n, m in per.items() if not m.any()]
            periods = "; ".join(f"{s.name!r} ({s.rule}): {describe_period(s.time)}" for s in self.streams)
            who = f"stream(s) {lone} serve no window" if lone else "no window is served by all streams at once"
            raise ConfigError(
                f"streams: the time axes have no common period: {who} of {T} points x time_step "
                f"{self.config.time_step} of the first stream {self.reference.name!r}. Periods: {periods}")
        self._t_ok = ok
        self._t_per = per
        self.valid_t0 = np.flatnonzero(ok).astype(np.int64)
        """Reference window starts every stream serves (the ones random placement draws from)."""

    def _space_setup(self) -> None:
        """Check that every stream serves some place of the reference grid (a lattice of places first, then, for a
        stream serving none of those, every place)."""
        self.regions = ReferenceRegions(self.grid, self.box)
        self._space_full: np.ndarray | None = None
        ny, H = self.grid.ny, self.box[1]
        ys = np.unique(np.linspace(0, ny - H, min(ny - H + 1, 64)).round().astype(np.int64))
        xs = np.unique(np.linspace(0, self._n_x - 1, min(self._n_x, 64)).round().astype(np.int64))
        yy, xx = np.meshgrid(ys, xs, indexing="ij")
        reg = self.regions.regions(np.stack([np.zeros(yy.size, np.int64), yy.ravel(), xx.ravel()], axis=1))
        for st in self.streams[1:]:
            if self._space_ok(st, reg).any() or self._space_mask(st).any():
                continue
            g = st.store.grid
            lat = np.asarray(g.lat)
            raise ConfigError(
                f"streams.{st.name}: its {g.kind} grid ({st.store.path}; latitudes {lat.min():.2f} .. "
                f"{lat.max():.2f}) does not overlap the region sampled by the first stream {self.reference.name!r}"
                f" (latitudes {self.regions.yedge.min():.2f} .. {self.regions.yedge.max():.2f}, longitudes "
                f"{self.regions.xedge[0] % 360:.2f} .. {self.regions.xedge[-1] % 360:.2f})")

    @property
    def _n_x(self) -> int:
        return int(self.grid.nx) if self.grid.periodic_x else int(self.grid.nx) - self.box[2] + 1

    def _space_mask(self, st: _Stream) -> np.ndarray:
        """``(NY - H + 1, positions along x)`` bool: the box starts ``st`` serves (every place computed)."""
        yy, xx = np.meshgrid(np.arange(self.grid.ny - self.box[1] + 1), np.arange(self._n_x), indexing="ij")
        cand = np.stack([np.zeros(yy.size, np.int64), yy.ravel(), xx.ravel()], axis=1)
        return self._space_ok(st, self.regions.regions(cand)).reshape(yy.shape)

    @property
    def space_ok(self) -> np.ndarray:
        """``(NY - H + 1, positions along x)`` bool: box starts ``(y0, x0)`` every stream serves (computed on first
        use: it maps every place of the reference grid into every stream, seconds on a 0.25-degree grid)."""
        if self._space_full is None:
            ok = np.ones((self.grid.ny - self.box[1] + 1, self._n_x), bool)
            for st in self.streams[1:]:
                ok &= self._space_mask(st)
            self._space_full = ok
        return self._space_full

    def _space_ok(self, st: _Stream, regions: np.ndarray) -> np.ndarray:
        if st.kind == "mesh":
            return st.sampler.index.overlaps(regions)
        return st.mapper.starts(regions)[1]

    # -- placement ------------------------------------------------------------------------------------------------
    def check_boxes(self, boxes: Any) -> np.ndarray:
        """Validated reference boxes (``ConfigError`` naming the first a stream cannot serve)."""
        return self.place(boxes).boxes

    def place(self, boxes: Any, *, check: bool = True) -> Placement:
        """Map reference boxes into every stream (``check``: raise unless every stream serves every box)."""
        b = self.reference.tokenizer.check_boxes(boxes)
        T, dt = self.box[0], self.config.time_step
        times = sample_times(self.time, b[:, 0], T, dt)
        regions = self.regions.regions(b)
        t_ok = self._t_ok[np.minimum(b[:, 0], self._t_ok.size - 1)] & (b[:, 0] < self._t_ok.size)
        t_steps = {self.reference.name: b[:, 0:1] + np.arange(T, dtype=np.int64) * dt}
        where: dict[str, np.ndarray] = {self.reference.name: b}
        served = {self.reference.name: np.ones(b.shape[0], bool)}
        for st in self.streams[1:]:
            idx, ok_t = align(st.time, times, st.rule, self.cadence)
            if st.kind == "mesh":
                w, ok_s = regions, st.sampler.index.overlaps(regions)
            else:
                w, ok_s = st.mapper.starts(regions)
            t_steps[st.name], where[st.name], served[st.name] = idx, w, ok_t & ok_s
            if check:
                self._raise_unserved(st, b, times, regions, ok_t, ok_s)
        if check and not t_ok.all():
            i = int(np.argmin(t_ok))
            raise ConfigError(f"boxes[{i}]: the window from {times[i, 0]} is not served by every stream (windows "
                              f"all streams serve: {self.valid_t0.size} of {self._t_ok.size})")
        window = np.stack([times[:, 0], times[:, -1] + self.cadence], axis=1)
        return Placement(b, times, window, regions, t_steps, where, served)

    def _raise_unserved(self, st: _Stream, b: np.ndarray, times: np.ndarray, regions: np.ndarray, ok_t: np.ndarray,
                        ok_s: np.ndarray) -> None:
        if not ok_t.all():
            i = int(np.argmin(ok_t))
            raise ConfigError(f"boxes[{i}] {b[i].tolist()}: stream {st.name!r} cannot serve the window "
                              f"{times[i, 0]} .. {times[i, -1]} by time_rule {st.rule!r}; its record is "
                              f"{describe_period(st.time)}")
        if not ok_s.all():
            i = int(np.argmin(ok_s))
            la0, la1, lo0, w = regions[i]
            raise ConfigError(f"boxes[{i}] {b[i].tolist()}: the region latitudes {la0:.2f} .. {la1:.2f}, longitudes "
                              f"{lo0:.2f} .. {(lo0 + w) % 360:.2f} does not overlap the grid of stream {st.name!r} "
                              f"({st.store.path})")

    def random_boxes(self, n: int, *, seed: int, epoch: int, rank: int = 0, world_size: int = 1,
                     samples_per_window: int = 1, centers: str | None = None) -> np.ndarray:
        """This rank's share of an epoch of ``n`` reference boxes that every stream serves.

        Same contract as :func:`fastload.sampling.geometry.random_boxes` (deterministic from ``(seed, epoch)``,
        ranks disjoint and together the epoch, ``samples_per_window`` consecutive samples share a window), with
        window starts drawn from :attr:`valid_t0`. Places are drawn exactly as there when every stream serves every
        drawn box; otherwise (a regional stream) the epoch is drawn uniformly, or by cos(latitude of the box centre),
        among the places :attr:`space_ok` allows.
        """
        centers = centers or self.config.centers
        _, H, W = self.box
        spw = int(samples_per_window)
        if isinstance(n, bool) or not isinstance(n, (int, np.integer)) or n < 0 or spw < 1:
            raise ConfigError(f"random_boxes: n must be an integer >= 0 and samples_per_window >= 1, got {n}, {spw}")
        if not 0 <= rank < world_size:
            raise ConfigError(f"random_boxes: rank must satisfy 0 <= rank < world_size={world_size}, got {rank}")
        if self._space_full is None or self._space_full.all():  # draw as one store does; keep it if all is served
            ext = GridExtent(nt=int(self.valid_t0.size), ny=int(self.grid.ny), nx=int(self.grid.nx),
                             periodic_x=bool(self.grid.periodic_x))
            out = random_boxes(n, ext, (1, H, W), seed=seed, epoch=epoch, samples_per_window=spw, centers=centers,
                               lat=self.grid.lat if centers == "coslat" else None)
            out[:, 0] = self.valid_t0[out[:, 0]]
            reg = self.regions.regions(out)
            if all(self._space_ok(st, reg).all() for st in self.streams[1:]):
                win = np.arange(out.shape[0]) // spw
                return np.ascontiguousarray(out[win % int(world_size) == int(rank)])
        rng = np.random.Generator(np.random.PCG64(np.random.SeedSequence([int(seed), int(epoch)])))
        pos = np.flatnonzero(self.space_ok.ravel())
        y0, x0 = np.divmod(pos, self.space_ok.shape[1])
        p = None
        if centers == "coslat":
            lat = np.asarray(self.grid.lat, np.float64)
            p = np.clip(np.cos(np.deg2rad((lat[y0] + lat[y0 + H - 1]) / 2.0)), 0.0, None)
            p = p / p.sum() if p.sum() > 0 else None
        t0 = self.valid_t0[rng.integers(0, self.valid_t0.size, size=-(-n // spw))]
        pick = rng.choice(pos.size, size=n, p=p)
        win = np.arange(n) // spw
        out = np.stack([t0[win], y0[pick], x0[pick]], axis=1).astype(np.int64)
        return np.ascontiguousarray(out[win % int(world_size) == int(rank)])

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

    def _month_of(self, st: _Stream, pl: Placement, months: np.ndarray | None = None) -> np.ndarray:
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
    def _split(self, key: str) -> tuple[_Stream, str]:
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
        self.counters.add(st.name, fetches=1, bytes_stored=0 if raw is None else len(raw),
                          fetch_s=_time.perf_counter() - t0)
        return raw

    def chunk_bytes_many(self, key: str, chunks: Any) -> list[bytes | None]:
        st, array = self._split(key)
        t0 = _time.perf_counter()
        raws = st.store.chunk_bytes_many(array, chunks)
        self.counters.add(st.name, fetches=len(raws), bytes_stored=sum(0 if r is None else len(r) for r in raws),
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
                    as_torch: bool = False) -> dict[str, StreamExtracted]:
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

    Returns
    -------
    dict
        Field -> :class:`StreamExtracted`.
    """
    ms = config if isinstance(config, MultiStream) else MultiStream(config, stores=stores, normalizers=normalizers,
                                                                     jit=jit)
    plan = ms.plan(boxes)
    b = plan.boxes
    slots, tables = read_plan(ms, plan)
    coefficients = ms.coefficients() if any(f.normalization != "none" for f in ms.config.fields) else None
    outs = allocate_outputs(ms.config, b.shape[0], torch=as_torch)
    ms.gather(slots, tables, b, outs, coefficients=coefficients, jit=jit)
    meta = ms.meta(b)
    stream_of = {f.name: f.stream for f in ms.config.fields}
    return {f.name: StreamExtracted(outs[f.name], meta[f.name], stream_of[f.name]) for f in ms.config.fields}
