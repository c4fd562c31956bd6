"""Batches for latent rollout training: the whole globe's tiles at an initial time and the targets of each step.

Why this exists: a Forecaster trains on *global* states, not on random neighbourhoods. One sample is an initial
store time ``t0``; its inputs are every tile of the overlapping global tiling (:mod:`fastload.sampling.tiles`) at
``t0`` (``input_window`` consecutive windows, ``lead`` apart), and its targets are the same tiles ``k * lead`` time
steps after the last input window, ``k = 1 .. steps``, cut to the ``readout_time_tokens`` the forecaster decodes.
Everything is read through :func:`fastload.extract` (the loader's own plan -> read -> gather path, normalised as
the sampling config says), a batch at a time on worker threads, at most ``prefetch`` batches ahead
(:class:`fastload.pump.Pump`). On a curvilinear grid that stores one place at several indices (NEMO/ORCA halo
columns and north fold) every tile value is the store's value (``mask_copies=False``): tiles and the stitch work
in index space and the Forecaster takes no slot mask, so the copies hold their genuine, duplicated values.

The epoch plan depends only on ``(seed, epoch)``: a permutation of every valid initial time (those whose inputs
and targets all lie inside the record, or inside ``t_range``, and whose every time point lies on the axis' regular
step, so no window crosses a gap and each lead is exact: :meth:`RolloutLoader._regular_t0`), cut to
``samples_per_epoch``; rank ``r`` of ``w`` takes positions ``r, r + w, ...`` (disjoint across ranks, the same
count on every rank). :meth:`RolloutLoader.
state_dict` / :meth:`~RolloutLoader.load_state_dict` resume at exactly the next batch, as the
:class:`~fastload.Loader` does, and each :class:`RolloutBatch` carries :class:`~fastload.reader.IOStats` so the
profiling step timer and reports treat it like a loader batch. The reads themselves (:func:`extract_windows`,
the counting store, pinning) are :mod:`fastload._rollout_extract`; :func:`extract_windows` is re-exported here, as
is :class:`RolloutBatch` (the batch and its layouts: :mod:`fastload._rollout_batch`).

Example::

    from fastload.rollout_data import RolloutConfig, RolloutLoader
    with RolloutLoader("era5.zarr", "sampling.toml", RolloutConfig(steps=2, overlap=(1, 1))) as data:
        for batch in data:
            windows, targets = batch.model_inputs("cuda")   # the Forecaster's batch layout
"""

from __future__ import annotations

import dataclasses
import logging
import threading
import time
import weakref
from collections.abc import Iterator, Mapping, Sequence
from typing import Any

import numpy as np
import torch

from ._device import default_device
from ._rollout_batch import RolloutBatch
from ._rollout_extract import _CountingStore, _pinned, extract_windows
from ._stream_time import _td, first_irregular, median_step, regular_windows
from ._time_range import time_range_indices
from .config import LoaderConfig, SamplingConfig, _Config
from .errors import ConfigError, LoaderClosedError
from .extract import _normalizer, extract, warm_gather
from .pump import Pump
from .reader import await_kernel_warmup, start_kernel_warmup
from .sampling.tiles import GlobalTiles, global_tiles

__all__ = ["RolloutConfig", "RolloutBatch", "RolloutLoader", "extract_windows"]

_STATE_VERSION = 1

log = logging.getLogger("fastload")


def default_lead(config: SamplingConfig) -> int:
    """The lead of an unset :attr:`RolloutConfig.lead`: ``box_t * time_step`` store steps, the inputs' cadence."""
    return config.box[0] * config.time_step


def legacy_lead(rollout: Mapping[str, Any] | None, sampling: Mapping[str, Any] | SamplingConfig) -> int:
    """The lead a state or checkpoint saved without a recorded ``lead`` ran with: its ``rollout.lead``, else the
    default of that code, the window's ``time_span`` (see :attr:`RolloutConfig.lead`)."""
    lead = (rollout or {}).get("lead")
    if lead is not None:
        return int(lead)
    cfg = sampling if isinstance(sampling, SamplingConfig) else SamplingConfig.from_dict(sampling)
    return cfg.time_span


@dataclasses.dataclass(frozen=True, kw_only=True, slots=True)
class RolloutConfig(_Config):
    """What one rollout sample is: tiling, lead, steps, windows; and how many initial times go in a batch."""

    steps: int = 1
    """Rollout steps, i.e. targets per sample."""
    lead: int | None = None
    """Store time steps per rollout step; None: ``box_t * time_step`` (:func:`default_lead`), so the targets
    continue the inputs' cadence (``time_step`` 6, ``box_t`` 3: inputs at steps 0, 6, 12 after ``t0``, step 1's
    targets at 18, 24, 30). Code before this default (a state or checkpoint without a recorded ``lead``) used the
    window's ``time_span`` = ``(box_t - 1) * time_step + 1`` (13 there, off the cadence when ``time_step`` > 1): such
    a state resumes only with that lead set explicitly, which its refusal names, and ``fastload rollout`` keeps it
    for such a checkpoint."""
    input_window: int = 1
    """Consecutive input windows (``lead`` apart) per sample: the Forecaster's ``input_window``."""
    readout_time_tokens: int = 1
    """Time tokens per target tile (the Forecaster's ``readout_time_tokens``)."""
    overlap: tuple[int, int] = (1, 1)
    """Least overlap of neighbouring tiles in tokens (rows, columns) of the first field."""
    neighbors: int = 4
    """Neighbours listed per tile (``TileGeometry.neighbors`` is ``(T, neighbors)``)."""
    batch_size: int = 1
    """Initial times per batch (each is a whole globe of tiles)."""
    t_range: tuple[int, int] | None = None
    """Use only store time indices in ``[start, stop)`` (inputs and targets), e.g. the training years. The loader
    setting ``loader.time_range`` (dates or indices, as :class:`fastload.Loader` takes it) sets the same range."""

    def __post_init__(self) -> None:
        def integer(key: str, v: Any, lo: int) -> None:
            if isinstance(v, bool) or not isinstance(v, (int, np.integer)) or v < lo:
                raise ConfigError(f"rollout.{key}: expected an integer >= {lo}, got {v!r}")

        for key in ("steps", "input_window", "readout_time_tokens", "batch_size"):
            integer(key, getattr(self, key), 1)
        integer("neighbors", self.neighbors, 0)
        if self.lead is not None:
            integer("lead", self.lead, 1)
        for key, n in (("overlap", 2), ("t_range", 2)):
            v = getattr(self, key)
            if v is None and key == "t_range":
                continue
            if isinstance(v, (str, bytes)) or not isinstance(v, Sequence) or len(v) != n:
                raise ConfigError(f"rollout.{key}: expected two integers, got {v!r}")
            for x in v:
                integer(key, x, 0)
            object.__setattr__(self, key, tuple(int(x) for x in v))
        if self.t_range is not None and self.t_range[1] <= self.t_range[0]:
            raise ConfigError(f"rollout.t_range: expected start < stop, got {list(self.t_range)}")

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> RolloutConfig:
        cls._check_keys(d, "rollout")
        return cls(**d)


def _target_configs(config: SamplingConfig, nt_out: int) -> list[SamplingConfig]:
    """The sampling config cut to ``nt_out`` time tokens, one config per group of fields with equal boxes."""
    groups: dict[int, list[Any]] = {}
    for f in config.fields:
        if nt_out > f.num_tokens[0]:
            raise ConfigError(f"rollout.readout_time_tokens = {nt_out} > fields.{f.name}.num_tokens[0] = "
                              f"{f.num_tokens[0]}")
        g = dataclasses.replace(f, num_tokens=(nt_out, *f.num_tokens[1:]))
        groups.setdefault(g.box[0], []).append(g)
    return [dataclasses.replace(config, fields=tuple(fs)) for fs in groups.values()]


class RolloutLoader:
    """Prefetching source of :class:`RolloutBatch` es for Forecaster training (see the module notes).

    Parameters
    ----------
    store : str, path-like or Store
        The data store (a latlon or curvilinear grid with a time axis).
    config : SamplingConfig or path
        Fields, levels, token geometry and normalisation of every tile.
    rollout : RolloutConfig, optional
        Steps, lead, windows, tiling overlap, neighbours, batch size.
    loader : LoaderConfig, optional
        Used settings (``mode`` must be ``"thread"``, ``on_bad_chunk`` ``"raise"``): ``workers``, ``prefetch``,
        ``seed``, ``rank``, ``world_size``, ``read_timeout_s`` (each store request of an extract),
        ``samples_per_epoch`` (an upper bound: an epoch is at most every valid initial time once; split equally between
        the ranks, the remainder unread, with a WARNING on rank 0), ``drop_last`` (honoured with several ranks too:
        their counts are equal), ``pin_memory`` and ``device`` (pinned host tensors when it is a GPU). ``batch_size``
        is ``rollout.batch_size``.
    normalizer : Normalizer or path, optional
        Coefficients of normalised fields (default ``config.norm_path``).
    jit : bool, optional
        ``False`` runs the NumPy reference kernels.
    epoch : int
        First epoch.
    """

    def __init__(self, store: Any, config: Any, rollout: RolloutConfig | None = None,
                 loader: LoaderConfig | None = None, *, normalizer: Any = None, jit: bool | None = None,
                 epoch: int = 0):
        from ._ranks import _rank_world, _warn_rollout_unread
        from .loader import _resolve_config, _resolve_store

        self.store = _resolve_store(store)
        self.config = _resolve_config(config)
        self.rollout = rollout or RolloutConfig()
        self.loader_config = loader or LoaderConfig()
        if self.config.streams:
            raise ConfigError("the rollout loader reads one store: pass a sampling config without streams")
        if self.loader_config.mode != "thread":
            raise ConfigError(f"loader.mode = {self.loader_config.mode!r}: the rollout loader reads with threads only "
                              "(its tiles are extracted in the calling process); leave loader.mode = 'thread'")
        if self.loader_config.on_bad_chunk != "raise":
            raise ConfigError(f"loader.on_bad_chunk = {self.loader_config.on_bad_chunk!r}: the rollout loader raises "
                              "on a bad chunk (it skips no sample); leave loader.on_bad_chunk = 'raise'")
        self.store.check(self.config)
        r, cfg = self.rollout, self.loader_config
        if self.store.time is None:
            raise ConfigError(f"store {self.store.path!r} has no time axis: a rollout needs times to step through")
        self._target_configs = _target_configs(self.config, r.readout_time_tokens)
        self.tiles: GlobalTiles = global_tiles(self.store, self.config, overlap=r.overlap, neighbors=r.neighbors,
                                               time_tokens=r.readout_time_tokens)
        self.lead = int(r.lead if r.lead is not None else default_lead(self.config))
        self.times = np.asarray(self.store.time).astype("datetime64[ns]")
        self.t_bounds = self._t_bounds()
        self.valid_t0 = self._regular_t0()
        """``(N,)`` int64: every valid initial time in ``t_bounds``, ascending (those on the regular step)."""
        self.normalizer = None
        if any(f.normalization != "none" for f in self.config.fields):
            self.normalizer = _normalizer(normalizer, self.config)
            if self.normalizer is None:
                raise ConfigError(f"fields {[f.name for f in self.config.fields if f.normalization != 'none']} "
                                  "normalise but no coefficients were given: set norm_path or pass normalizer=")
            self.normalizer.check(self.store, self.config)
        self.jit = jit
        self.rank, self.world_size = _rank_world(cfg, "RolloutLoader")
        self.device = torch.device(cfg.device) if cfg.device else default_device()
        pin = cfg.pin_memory if cfg.pin_memory is not None else self.device.type == "cuda"
        self._pin = bool(pin) and torch.cuda.is_available()
        n_valid = int(self.valid_t0.size)
        self._samples = min(n_valid, cfg.samples_per_epoch) // self.world_size
        bs = r.batch_size
        # every rank has the same count, so a partial last batch (drop_last=False) keeps the ranks' steps equal
        self._n_batches = self._samples // bs if cfg.drop_last else -(-self._samples // bs)
        if self.world_size > 1 and self.rank == 0 and self._n_batches:
            _warn_rollout_unread(min(n_valid, cfg.samples_per_epoch), self.world_size, self._samples, bs, cfg.drop_last)
        if self._n_batches == 0:
            raise ConfigError(f"rollout: an epoch gives each of {self.world_size} rank(s) {self._samples} initial "
                              f"time(s) ({n_valid} valid in the store), fewer than rollout.batch_size = {bs}")
        self._levelled = tuple(f.name for f in self.config.fields if f.levels is not None)
        self._useful = {c.fields[0].box: sum(self._useful_bytes(f) for f in c.fields)
                        for c in (self.config, *self._target_configs)}
        self._epoch, self._batch = int(epoch), 0
        self._it: _Iteration | None = None
        self._closed = False
        self._pumps: list[Pump] = []  # the current iteration's pump, closed by close() or on garbage collection
        self._warm: threading.Thread | None = None  # the gather kernels' warm-up (_start_warm), no daemon
        self._finalizer = weakref.finalize(self, _close_pumps, self._pumps)

    # -- plan ---------------------------------------------------------------------------------------------------
    def _t_bounds(self) -> tuple[int, int]:
        """Smallest and largest valid initial time (store indices)."""
        r, nt = self.rollout, int(self.times.shape[0])
        span_in = self.config.time_span
        span_out = max(c.time_span for c in self._target_configs)
        last = self._sample_span()
        lo, hi = 0, nt
        t_range = r.t_range
        if self.loader_config.time_range is not None:  # the loader's setting (dates or indices), as Loader takes it
            given = self.loader_config.time_range
            t_range = time_range_indices(given, self.times, nt, 1, str(self.store.path))
            if r.t_range is not None and tuple(r.t_range) != t_range:
                raise ConfigError(f"loader.time_range = {list(given)!r} (time indices {list(t_range)}) and "
                                  f"rollout.t_range = {list(r.t_range)} differ; give one of them")
        self._t_range = None if t_range is None else (int(t_range[0]), int(t_range[1]))
        if t_range is not None:  # refused past the axis, not clamped (a typo in the years would roll out others)
            lo, hi = t_range
            if hi > nt:
                raise ConfigError(f"rollout.t_range: {list(t_range)} ends past the store's time axis: expected "
                                  f"0 <= start < stop <= {nt} (the store's {nt} time steps)")
        if hi - lo < last:
            raise ConfigError(
                f"rollout: a sample spans {last} time steps ({r.input_window} input window(s) of {span_in}, "
                f"{r.steps} step(s) of lead {self.lead}, targets of {span_out}) but the store"
                f"{' range ' + str(list(t_range)) if t_range else ''} has only {hi - lo}")
        return lo, hi - last

    def _regular_t0(self) -> np.ndarray:
        """The initial times in ``t_bounds`` whose whole sample lies on the time axis' regular step.

        A sample's time points are its input windows at ``t0 + j * lead`` (``j < input_window``) and its targets
        at ``t0 + (input_window - 1 + k) * lead`` (``k = 1 .. steps``), each window ``box[0]`` points
        ``time_step`` apart. It is valid when every window passes the rule :func:`fastload.extract` applies
        (:func:`~fastload._stream_time.regular_windows` with the window's points and ``time_step``) and the
        window starts, ``lead`` apart, pass it too: then no window crosses a gap and each lead is exact.
        """
        r, ts, (lo, hi) = self.rollout, self.config.time_step, self.t_bounds
        cand = np.arange(lo, hi + 1, dtype=np.int64)
        checks = [(0, r.input_window + r.steps, self.lead)]  # window starts: inputs, then targets, lead apart
        checks += [(j * self.lead, self.config.box[0], ts) for j in range(r.input_window)]
        checks += [((r.input_window - 1 + k) * self.lead, c.box[0], ts)
                   for c in self._target_configs for k in range(1, r.steps + 1)]
        ok, cache = np.ones(cand.size, bool), {}
        for offset, n_points, step in checks:
            key = (int(n_points), int(step))
            if key not in cache:
                cache[key] = regular_windows(self.times, *key)  # (NT - span + 1,), per window start
            ok &= cache[key][cand + offset]
        if not ok.any():
            raise ConfigError(f"store {self.store.path!r}: no initial time has its whole rollout sample on the "
                              f"time axis' regular step: {self._describe_sample()}, from initial times {lo}..{hi}; "
                              f"{self._first_gap(lo, hi)}")
        return cand[ok]

    def _describe_sample(self) -> str:
        r = self.rollout
        boxes = sorted({c.box[0] for c in self._target_configs})
        return (f"{r.input_window} input window(s) of {self.config.box[0]} point(s) (time_step "
                f"{self.config.time_step}) and {r.steps} target(s) of {'/'.join(map(str, boxes))} point(s), "
                f"lead {self.lead} apart, {self._sample_span()} time indices in all")

    def _sample_span(self) -> int:
        """Store time indices one sample spans, first input point to last target point."""
        r = self.rollout
        span_out = max(c.time_span for c in self._target_configs)
        return max((r.input_window - 1) * self.lead + self.config.time_span,
                   (r.input_window - 1 + r.steps) * self.lead + span_out)

    def _first_gap(self, lo: int, hi: int) -> str:
        t = self.times
        end = min(t.size, hi + self._sample_span())
        i = first_irregular(t[lo:end])
        step = median_step(t)
        if i is None or step is None:  # not a plain gap (the rule tolerates some steps): say what it expects
            return f"the axis' median step is {'unknown' if step is None else _td(step)}"
        a = lo + i
        return (f"the first gap is {np.datetime_as_string(t[a], 'm')} -> {np.datetime_as_string(t[a + 1], 'm')} "
                f"(time indices {a} -> {a + 1}), {_td(t[a + 1] - t[a])} where the axis steps every {_td(step)}")

    def _useful_bytes(self, f: Any) -> int:
        info = self.store.arrays[self.store.fields[f.name].array]
        return f.num_levels * int(np.prod(f.box)) * info.dtype.itemsize

    def epoch_times(self, epoch: int) -> np.ndarray:
        """This rank's initial times of ``epoch`` (store indices), in batch order."""
        cfg = self.loader_config
        valid = self.valid_t0  # on a regular axis every t0 in t_bounds: the draw is lo + the permutation
        rng = np.random.Generator(np.random.PCG64(np.random.SeedSequence([int(cfg.seed), int(epoch)])))
        order = valid[rng.permutation(valid.size)[: min(valid.size, cfg.samples_per_epoch)]]
        return np.ascontiguousarray(order[self.rank::self.world_size][: self._samples], dtype=np.int64)

    def __len__(self) -> int:
        return self._n_batches

    @property
    def time_indices(self) -> tuple[int, int] | None:
        """``loader.time_range`` as store time indices ``[start, stop)`` (or ``rollout.t_range``); None without."""
        return self._t_range

    @property
    def epoch(self) -> int:
        return self._epoch

    # -- one batch (worker thread) ------------------------------------------------------------------------------
    def load_batch(self, epoch: int, index: int) -> RolloutBatch:
        """Read batch ``index`` of ``epoch`` (what the workers run; also usable directly, without prefetch)."""
        r, bs = self.rollout, self.rollout.batch_size
        t0 = self.epoch_times(epoch)[index * bs:(index + 1) * bs]  # (B,)
        b, n_tiles = int(t0.shape[0]), self.tiles.num_tiles
        start = time.perf_counter()
        counting = _CountingStore(self.store)
        fields, meta, in_boxes = extract_windows(counting, self.config, self.tiles, t0, input_window=r.input_window,
                                                 lead=self.lead, norm=self.normalizer, jit=self.jit, pin=self._pin,
                                                 read_timeout_s=self.loader_config.read_timeout_s)
        t_last = t0 + (r.input_window - 1) * self.lead
        out_boxes = self.tiles.boxes(t_last[:, None] + np.arange(1, r.steps + 1) * self.lead).reshape(-1, 3)
        targets: list[dict[str, Any]] = [{} for _ in range(r.steps)]
        for c in self._target_configs:
            for name, ex in extract(counting, c, out_boxes, norm=self.normalizer, jit=self.jit, as_torch=True,
                                    mask_copies=False, read_timeout_s=self.loader_config.read_timeout_s).items():
                data = _pinned(ex.data.reshape(b, r.steps, n_tiles, *ex.data.shape[1:]), self._pin)
                for k in range(r.steps):
                    targets[k][name] = data[:, k]  # (B, T, L, nt_out, nlat, nlon, tt, tlat, tlon)
        stats = counting.stats
        stats.gather_s = max(0.0, time.perf_counter() - start - stats.fetch_s - stats.decode_s)
        stats.batches, stats.samples = 1, b
        stats.bytes_useful = b * n_tiles * (r.input_window * self._useful[self.config.box] + r.steps * sum(
            self._useful[c.box] for c in self._target_configs))
        hours = (self.times[t_last + self.lead] - self.times[t_last]) / np.timedelta64(1, "h")
        return RolloutBatch(fields=fields, meta=meta, targets=targets, boxes=torch.from_numpy(in_boxes),
                            t0=torch.from_numpy(t0.copy()), lead_hours=torch.from_numpy(hours.astype(np.float32)),
                            index=int(index), epoch=int(epoch), stats=stats, levelled=self._levelled)

    def _start_warm(self) -> None:
        """Compile the gather kernels a batch calls (every config's: inputs and targets) on a thread that is no
        daemon, as the Loader's reader does (:func:`fastload.reader.start_kernel_warmup`); the pump's workers, daemon
        threads, wait for it before a batch (:class:`_Work`), so they never compile (a compile still running on a
        daemon thread at the process's exit aborts it). Once per loader."""
        if self._warm is None:
            self._warm = start_kernel_warmup(self._warm_kernels, (), "fastload-rollout_warm")

    def _warm_kernels(self) -> None:
        for c in (self.config, *self._target_configs):
            try:  # extract's own calls (extract_windows' and the targets'): as_torch, copies unmasked
                warm_gather(self.store, c, norm=self.normalizer, jit=self.jit, as_torch=True, mask_copies=False)
            except Exception as e:  # noqa: BLE001 - only a head start: the first real batch raises any problem
                log.debug("fastload: rollout kernel warm-up skipped: %s: %s", type(e).__name__, e)

    # -- iteration and resume -----------------------------------------------------------------------------------
    def __iter__(self) -> Iterator[RolloutBatch]:
        if self._closed:
            raise LoaderClosedError("this rollout loader is closed")
        self._stop()
        if self._batch >= len(self):
            self._epoch, self._batch = self._epoch + 1, 0
        self._start_warm()
        self._it = _Iteration(self)
        self._pumps.append(self._it._pump)
        return self._it

    def _stop(self) -> None:
        if self._it is not None:
            self._it.close()
            self._it = None
        _close_pumps(self._pumps)

    def set_epoch(self, epoch: int) -> None:
        """Start ``epoch`` from its first batch at the next iteration (stops work in flight)."""
        if isinstance(epoch, bool) or not isinstance(epoch, (int, np.integer)) or epoch < 0:
            raise ConfigError(f"set_epoch: expected an integer >= 0, got {epoch!r}")
        self._stop()
        self._epoch, self._batch = int(epoch), 0

    def state_dict(self) -> dict[str, Any]:
        """The next batch :func:`iter` hands out, and the settings that must match on resume (``norm_fingerprint``:
        the normalisation coefficients' digest, :func:`fastload._resume.norm_fingerprint`; ``store_fingerprint``:
        the data store's, :func:`fastload._resume.store_fingerprint`; ``norm_local``: the digests of the local
        coefficients of each field and month read so far, :func:`fastload._resume.local_digests`; ``plan``: the
        epoch's initial times)."""
        return {**self._state(self._epoch), "batch": self._batch}

    def _state(self, epoch: int, local_keys: Any = None) -> dict[str, Any]:
        from ._resume import local_digests, norm_fingerprint, plan_digest, store_fingerprint

        cfg = self.loader_config
        if not hasattr(self, "_fingerprint"):
            self._fingerprint = norm_fingerprint(self.normalizer, self.config)
            self._store_fingerprint = store_fingerprint(self.store, self.config)
        return {"version": _STATE_VERSION, "kind": "rollout", "epoch": epoch,
                "seed": cfg.seed, "rank": self.rank, "world_size": self.world_size,
                "samples_per_epoch": cfg.samples_per_epoch, "rollout": self.rollout.to_dict(), "lead": self.lead,
                "sampling": self.config.to_dict(), "norm_fingerprint": self._fingerprint,
                "store_fingerprint": self._store_fingerprint, "plan": plan_digest(self.epoch_times(epoch)),
                "norm_local": local_digests(self.normalizer, self.config, local_keys)}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        """Resume at ``state``: the next batch is the one after the last batch handed out when it was taken.

        Refused (``ConfigError`` naming each differing setting) as :meth:`fastload.Loader.load_state_dict` is: the
        normalisation and data stores are compared by their fingerprints, not their paths (an older state: the
        normalisation store's path, and no data store or plan)."""
        from ._resume import check_resume, state_position

        if state.get("version") != _STATE_VERSION or state.get("kind") != "rollout":
            raise ConfigError(f"load_state_dict: not a rollout loader state (version {state.get('version')!r}, "
                              f"kind {state.get('kind')!r})")
        epoch, batch = state_position(state)
        if "lead" not in state:  # saved before the lead was recorded: it ran with that code's default
            saved_lead = legacy_lead(state.get("rollout"), state.get("sampling") or self.config)
            if saved_lead != self.lead:
                raise ConfigError(
                    f"load_state_dict: this state was saved with lead {saved_lead} (the default before it became "
                    f"box_t * time_step), this loader's is {self.lead}; to resume as trained set the lead: "
                    f"RolloutConfig(lead={saved_lead}) (fastload train: --set forecast.lead={saved_lead})")
            state = {**state, "lead": saved_lead}
        saved_local = state.get("norm_local")  # the months the saved run read, read here
        mine = self._state(epoch, saved_local if isinstance(saved_local, Mapping) else None)  # the saved epoch's plan
        # the lead is compared as run (an explicit lead equal to the default's is the same run), not as configured
        saved, mine = ({**st, "rollout": {k: v for k, v in st["rollout"].items() if k != "lead"}}
                       if isinstance(st.get("rollout"), Mapping) else st for st in (state, mine))
        check_resume(saved, mine, ("seed", "rank", "world_size", "samples_per_epoch", "rollout", "sampling", "lead"),
                     self.store)
        state_position(state, len(self))
        self._stop()
        self._epoch, self._batch = epoch, batch

    def close(self) -> None:
        """Stop the work in flight and join the threads (idempotent)."""
        self._closed = True
        self._stop()

    def __enter__(self) -> RolloutLoader:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        r = self.rollout
        return (f"RolloutLoader({self.store.path!r}, fields={list(self.config.field_names)}, "
                f"tiles={self.tiles.num_tiles}, steps={r.steps}, lead={self.lead}, batch_size={r.batch_size}, "
                f"batches={len(self)}, workers={self.loader_config.workers}, rank={self.rank}/{self.world_size})")


def _close_pumps(pumps: list[Pump]) -> None:
    while pumps:
        pumps.pop().close()


class _Work:
    """``work(index)`` of the pump: holds the loader weakly, so an abandoned loader is collected (and closed). It
    waits for the loader's kernel warm-up first (the pump's threads are daemons: they must not compile), or raises
    ``InterruptedError`` once ``stopped`` is set (the iteration closed)."""

    def __init__(self, owner: weakref.ref, epoch: int):
        self.owner, self.epoch = owner, epoch
        self.stopped = threading.Event()

    def __call__(self, index: int) -> RolloutBatch:
        loader = self.owner()
        if loader is None:
            raise LoaderClosedError("the rollout loader was garbage-collected")
        await_kernel_warmup(loader._warm, self.stopped.is_set)
        return loader.load_batch(self.epoch, index)


class _Iteration(Iterator[RolloutBatch]):
    """One pass over (the rest of) an epoch on a pump; closing it stops the pump."""

    def __init__(self, loader: RolloutLoader):
        self._owner = weakref.ref(loader)
        self.epoch, start, n = loader._epoch, loader._batch, len(loader)
        cfg = loader.loader_config
        self._work = _Work(self._owner, self.epoch)
        self._pump: Pump = Pump(range(start, n), self._work, depth=cfg.prefetch,
                                workers=cfg.workers, name="fastload-rollout")
        self._done = False

    def __next__(self) -> RolloutBatch:
        if self._done:
            raise StopIteration
        if self._pump.closed:
            raise LoaderClosedError("this iteration was stopped (close, set_epoch, load_state_dict or a new iter)")
        t0 = time.perf_counter()
        try:
            batch = next(self._pump)
        except StopIteration:
            self._done = True
            owner = self._owner()
            if owner is not None and owner._batch >= len(owner):
                owner._epoch, owner._batch = self.epoch + 1, 0
            self._pump.close()
            raise
        batch.stats.wait_s = time.perf_counter() - t0
        owner = self._owner()
        if owner is not None:
            owner._batch = batch.index + 1
        return batch

    def close(self) -> None:
        self._work.stopped.set()
        self._pump.close()
