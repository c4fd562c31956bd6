"""``fastload.Loader``: batches of token tensors from a zarr store, prefetched, cached, on the device.

Why this exists: it is the one object a training loop iterates. It ties the parts together::

    epoch plan (seed, epoch, rank, world size)        fastload.plan
      -> worker threads/processes: fetch -> decode -> cache -> gather into ring slot k     fastload.reader
      -> the worker thread: H2D copy and masks on a side stream, event (GPU); masks (CPU)  fastload._loader_iter
      -> bounded prefetch (pump), errors re-raised here                                   fastload.pump
      -> main thread: next batch in order, the current stream waits on its event -> Batch fastload._loader_iter

Use it directly::

    with fastload.Loader("era5.zarr", "sampling.toml", batch_size=16, workers=2) as loader:
        for epoch in range(10):
            loader.set_epoch(epoch)
            for batch in loader:
                x = batch["temperature"]          # (B, L, nt, nlat, nlon, tt, tlat, tlon) on the device

or through :class:`LoaderDataset` where a ``torch.utils.data.DataLoader`` is expected.

Several datasets at once (a config with ``[streams.NAME]`` tables: e.g. ERA5, an ocean model, a FESOM mesh): one
loader, one plan, one cache budget and one prefetch ring serve every stream (:class:`fastload.streams.MultiStream`
is the store and the tokenizer; thread mode)::

    with fastload.Loader(None, "multi.toml", batch_size=16) as loader:     # or {"ocean": store, ...}
        for batch in loader:
            batch["thetao"], batch.meta["temp"]["valid"]  # mesh tokens and their padding mask (B, nlat, nlon, K)
            batch.stats.streams["ocean"].bytes_decoded    # per-stream I/O counters

Normalisation coefficients are loaded at the start of each epoch for the calendar months its samples use.

Buffer ownership: on a GPU each batch's tensors are fresh device tensors (the compute stream waits on the copy's
event; nothing on the host synchronises). On the CPU the tensors are zero-copy views of a ring buffer; the ring
never overwrites a buffer that is still referenced (see :mod:`fastload._ring`), so a batch stays valid for as long
as it is kept. Iterating again, ``set_epoch``, ``load_state_dict`` and ``close`` stop the work in flight.

Epochs: ``iter(loader)`` continues where the last iteration stopped (after ``load_state_dict``: exactly the next
batch); an epoch iterated to the end advances the epoch by one, so a plain ``for batch in loader`` per epoch
draws new samples even without ``set_epoch``.

Ranks: ``rank``/``world_size`` when given, else torch.distributed's when initialised, else the environment's
``RANK``/``WORLD_SIZE`` (torchrun sets them before ``init_process_group``), else 0 of 1. The epoch's
``samples_per_epoch`` samples come in windows of ``samples_per_window``, dealt round-robin to the ranks, so
rank counts differ by up to ``samples_per_window``; every rank makes the same number of batches (DDP steps
together): as many as the rank with fewest samples makes, full ones only with ``drop_last`` (the default), else
rounded up (each rank's last batch then partial, and of different sizes on different ranks). The samples beyond
that are not read: with ``world_size > 1`` the loader logs one WARNING (rank 0) with their number and a
``samples_per_epoch`` that reads them all (a multiple of ``world_size x lcm(samples_per_window, batch_size)``):
e.g. 1024 samples on 48 ranks in batches of 8 read 768 (2 batches of each rank's 21 or 22) with ``drop_last``.
An explicit plan (``boxes=``) is each rank's own: :meth:`Loader.check_ranks`, called on every rank, compares the
ranks' batch counts (a ``ConfigError`` naming every rank's count, not a hang at the epoch's end). It is not done at
construction: a loader only some ranks build (rank 0's validation loader) must not wait for the others.
"""

from __future__ import annotations

import dataclasses
import logging
import threading
import time
import weakref
from collections.abc import Iterator, Mapping
from typing import Any, NoReturn

import numpy as np
import torch
import torch.utils.data

from . import _loader_iter
from ._loader_close import _close_after, _close_all, _doing
from ._loader_iter import Batch, _EpochIterator
from ._ranks import _check_explicit_counts, _equal_batches, _rank_counts, _rank_world, _warn_dropped
from ._ring import BatchRing, FieldSpec
from ._time_range import loader_time_range
from .config import LoaderConfig
from .errors import ConfigError, LoaderClosedError
from .extract import _resolve_config, _resolve_store
from .reader import IOStats
from .sampling.geometry import GridExtent, random_boxes

__all__ = ["Loader", "Batch", "LoaderDataset"]

_STATE_VERSION = 1
log = logging.getLogger("fastload")


class _State:
    """Position shared by the loader and its current iterator."""

    __slots__ = ("epoch", "batch")

    def __init__(self, epoch: int, batch: int):
        self.epoch = epoch
        self.batch = batch


class Loader:
    """Prefetching, chunk-aware, multi-worker loader of AtmoRep-style batches (see the module notes).

    Parameters
    ----------
    store : str, path-like, Store, mapping or None
        The data store (opened with :func:`fastload.open_store` when a path). A multi-stream config (one with
        ``[streams.NAME]`` tables) takes ``None`` (every stream's ``path``) or a mapping stream name -> Store or
        path (streams left out use their ``path``).
    config : SamplingConfig or path
        What a sample is (fields, levels, token geometry, normalisation; streams).
    loader : LoaderConfig, optional
        Loader settings; keyword arguments below override single settings.
    normalizer : fastload.norm.Normalizer or path, optional
        Coefficients of normalised fields (default: ``config.norm_path``); for a multi-stream config a mapping
        stream name -> Normalizer or path (default: each stream's ``norm_path``, else the config's). Only the
        calendar months an epoch's samples use are loaded, at the start of the epoch.
    masking : fastload.MaskingConfig, mapping or str, optional
        Mask each batch (``Batch.masks``, ``Batch.sources``), seeded by (seed, rank, step), by the worker that read
        it: on a GPU after its copy, on the copy's side stream (no host sync), on the CPU from its ring slot (either
        way overlapping the step). A MaskingConfig, a
        mapping of its fields (``{"strategy": "forecast", "forecast_tokens": 2}``) or a strategy name (``"BERT"``,
        ``"forecast"``, ``"temporal_interpolation"``, ``"identity"``: that strategy's defaults).
    boxes : array or callable, optional
        An explicit plan instead of random placement: ``(N, 3)`` ``(t0, y0, x0)`` rows (every epoch the same), or
        ``boxes(epoch) -> (N, 3)`` (the same N every epoch). These are *this rank's* samples, not a plan the loader
        splits: with several ranks each rank passes its own (e.g. ``plan[rank::world_size]``), batched as on one
        rank (``drop_last`` as set). Every rank must then make the same number of batches: call
        :meth:`check_ranks` on every rank of the initialised process group (one all_gather; a ``ConfigError``
        naming each rank's samples and batches). Construction does not check it (a loader only some ranks build,
        such as rank 0's validation loader, would wait for ever for the others). ``samples_per_epoch``,
        ``samples_per_window`` and the seed's placement are unused. Multi-stream: boxes on the first stream's grid,
        each served by every stream.
    jit : bool, optional
        ``False`` runs the NumPy reference kernels.
    epoch : int
        First epoch.
    **settings
        Any :class:`~fastload.config.LoaderConfig` setting (``batch_size``, ``workers``, ``prefetch``,
        ``cache_bytes``, ``device``, ``pin_memory``, ``seed``, ``rank``, ``world_size``, ``mode``, ...).

    Notes
    -----
    Multi-stream configs are served by one plan, one cache budget and one prefetch ring over all streams
    (:class:`fastload.streams.MultiStream` is the store and the tokenizer; chunk keys are ``"stream/array"``);
    ``Batch.stats.streams`` holds per-stream counters and point-sampled fields carry ``valid`` (padding) masks
    in their metadata. They are read with ``mode="thread"``. A mesh store on its own is sampled on a virtual
    lat-lon placement grid (:class:`fastload.sampling.mesh.MeshTokenizer`).
    """

    def __init__(self, store: Any, config: Any, loader: LoaderConfig | None = None, *, normalizer: Any = None,
                 masking: Any = None, boxes: Any = None, jit: bool | None = None, epoch: int = 0, **settings: Any):
        names = {f.name for f in dataclasses.fields(LoaderConfig)}
        unknown = sorted(set(settings) - names)
        if unknown:
            raise ConfigError(f"Loader: unknown setting(s) {unknown}; known: {sorted(names)}")
        self.loader_config = dataclasses.replace(loader or LoaderConfig(), **settings)
        cfg = self.loader_config
        self.config = _resolve_config(config)
        self.batch_size = int(cfg.batch_size or self.config.batch_size)
        self.rank, self.world_size = _rank_world(cfg)
        self.device = self._device(cfg.device)
        from .sampling.masking import as_masking_config, make_masks, mask_generator

        self.masking = as_masking_config(masking)  # checked here, not at the first batch
        if self.masking is not None:  # masks fit every field's tokens (forecast_tokens < nt, synced shapes)
            make_masks(self.masking, {f.name: (1, f.num_levels, *f.num_tokens) for f in self.config.fields},
                       mask_generator(0, 0, 0))
        self.multi: Any = None
        """The :class:`fastload.streams.MultiStream` of a multi-stream config (also ``store`` and ``tokenizer``)."""
        if self.config.streams:
            useful = self._open_streams(store, normalizer, jit)
        else:
            useful = self._open_store(store, normalizer)
        self._t_range = loader_time_range(self, boxes)  # store time indices [start, stop) or None
        self._coef_key: Any = None
        self.coefficient_months: Any = None
        """Calendar months (0-11) of the normalisation coefficients loaded for the current epoch (multi-stream: per
        stream); None before the first epoch starts or without normalised fields."""
        pin = bool(cfg.pin_memory) if cfg.pin_memory is not None else self.device.type == "cuda"
        self._pin = pin and self.device.type == "cuda"
        from ._backend import LoadSpec

        self._spec = LoadSpec(batch_size=self.batch_size, drop_last=cfg.drop_last, prefetch=cfg.prefetch,
                              workers=cfg.workers, cache_bytes=cfg.cache_bytes, fetch_concurrency=cfg.fetch_concurrency,
                              retries=cfg.retries, on_bad_chunk=cfg.on_bad_chunk, months=None,
                              useful_bytes_per_sample=useful, jit=jit, pin=self._pin,
                              read_ahead_bytes=cfg.read_ahead_bytes, read_timeout_s=cfg.read_timeout_s,
                              worker_start_timeout_s=cfg.worker_start_timeout_s)
        self._explicit = boxes
        bs = self.batch_size
        if boxes is not None:  # this rank's own plan: its batches as on one rank, the same count on every rank
            n = self._samples = int(self._explicit_boxes(int(epoch)).shape[0])
            self._samples_epoch = int(epoch)  # the epoch whose plan set the count (named when another differs)
            self._n_batches = n // bs if cfg.drop_last else -(-n // bs)
        else:
            counts = _rank_counts(cfg.samples_per_epoch, cfg.samples_per_window, self.world_size)
            self._n_batches, used = _equal_batches(counts, bs, cfg.drop_last)
            # drop_last: every rank keeps the smallest count (its partial batch is dropped by the plan), as before
            n = self._samples = min(counts) if cfg.drop_last else used[self.rank]
            if self.world_size > 1 and self.rank == 0 and 0 < sum(used) < cfg.samples_per_epoch:
                _warn_dropped(cfg, counts, used, bs, self._n_batches)
        if self._n_batches == 0:  # a loader that yields nothing would pass silently through every training loop
            got = (f"the explicit plan has {n} samples" if boxes is not None else
                   f"samples_per_epoch={cfg.samples_per_epoch} in windows of samples_per_window="
                   f"{cfg.samples_per_window} dealt to world_size={self.world_size} rank(s) gives {min(counts)} samples to "
                   f"{'the rank with fewest' if self.world_size > 1 else 'the rank'}")
            raise ConfigError(f"Loader: no batch per epoch: {got}, and batch_size={bs} with drop_last="
                              f"{cfg.drop_last}; give more samples or a smaller batch_size")
        self._specs = self._field_specs()
        self._backend: Any = None
        self._ring: BatchRing | None = None
        self._state = _State(int(epoch), 0)
        self._iter_ref: Any = None
        self._threads: tuple[threading.Thread, ...] = ()  # the pump threads of the last iteration
        self._closed = False
        self.stats = IOStats()
        """Counters summed over every batch handed out (``stats.streams``: per stream, for multi-stream configs)."""
        self._copy_stream: Any = None
        self._finalizer = weakref.finalize(self, _close_all, [None])

    # -- set-up ---------------------------------------------------------------------------------------------------
    @staticmethod
    def _device(device: str | None) -> Any:
        if device is None:
            from ._device import default_device

            return default_device()
        expected = f"loader.device: expected 'cuda', 'cuda:N', a CUDA device index N or 'cpu', got {device!r}"
        if isinstance(device, int) and not isinstance(device, bool) and device >= 0:
            device = f"cuda:{device}"  # torch.device(N) is cuda:N (DDP code passes its local rank)
        if not isinstance(device, (str, torch.device)) or str(device).split(":")[0] not in ("cuda", "cpu"):
            raise ConfigError(expected)  # before torch.device, whose own error lists every device type torch knows
        try:
            d = torch.device(device)
        except RuntimeError:  # 'cuda:x'
            raise ConfigError(expected) from None
        if d.type == "cuda" and not torch.cuda.is_available():
            raise ConfigError(f"loader.device = {device!r} but CUDA is not available on this machine")
        return d

    def _open_store(self, store: Any, normalizer: Any) -> int:
        """One store: open and check it, its tokenizer, placement extent, normaliser; returns useful bytes/sample."""
        from ._backend import make_tokenizer

        if isinstance(store, Mapping) or store is None:
            raise ConfigError("Loader: a config without streams reads one store: pass its path or an open Store")
        self.store = _resolve_store(store)
        self.store.check(self.config)
        self.tokenizer = make_tokenizer(self.store, self.config)
        self._log_missing_markers()
        # a mesh store is placed on its tokenizer's virtual lat-lon grid, not on its node axis
        self.extent = getattr(self.tokenizer, "extent", None) or GridExtent.from_store(self.store)
        self._norm = self._normalizer(normalizer)
        return sum(f.num_levels * int(np.prod(f.box))
                   * self.store.arrays[self.tokenizer.layouts[f.name].array].dtype.itemsize for f in self.config.fields)

    def _log_missing_markers(self) -> None:
        """Log the fields whose store declares non-NaN missing values (a ``_FillValue``, ``missing_value`` or
        non-zero zarr v2 fill value), as the layouts hold them, one line per store (per stream of a multi-stream
        config): the gather writes those values as NaN, as ``fastload stats`` leaves them out."""
        if self.multi is None:
            parts = [(self.store, self.tokenizer.layouts, "")]
        else:
            parts = [(st.store, st.layouts, f" (stream {st.name!r})") for st in self.multi.streams]
        for store, layouts, stream in parts:
            found = {name: lay.missing.astype(store.arrays[lay.array].dtype).tolist()  # as stored: -999, not -999.0
                     for name, lay in layouts.items() if len(lay.missing)}
            if found:
                log.info("fastload: declared missing values masked as NaN in %s%s: %s", store.path, stream, found)

    def _open_streams(self, stores: Any, normalizer: Any, jit: bool | None) -> int:
        """A multi-stream config: open every stream (MultiStream); returns useful bytes per sample."""
        from .streams import MultiStream

        if self.loader_config.mode == "process":
            raise ConfigError("loader.mode = 'process': multi-stream configs are read with mode = 'thread' (one "
                              "cache and one reader serve all streams)")
        if stores is not None and not isinstance(stores, Mapping):
            raise ConfigError(f"Loader: the config has streams {[s.name for s in self.config.streams]}; pass "
                              f"store=None (the streams' paths) or a mapping stream -> Store or path, got "
                              f"{type(stores).__name__}")
        if normalizer is not None and not isinstance(normalizer, Mapping):
            raise ConfigError("Loader: for a multi-stream config pass normalizer= as a mapping stream -> "
                              "Normalizer or path (or set streams.NAME.norm_path)")
        self.multi = MultiStream(self.config, stores=stores, normalizers=normalizer, jit=jit)
        self.store = self.tokenizer = self.multi
        self._log_missing_markers()
        self.extent = None
        self._norm = None
        if any(f.normalization != "none" for f in self.config.fields):
            self.multi.check_coefficients()
            self._norm = self.multi
        return int(self.multi.useful_bytes_per_sample)

    def _normalizer(self, normalizer: Any) -> Any:
        """The Normalizer of a single store's normalised fields, checked against the store (no coefficient is read:
        each epoch loads the months it uses, :meth:`_epoch_coefficients`)."""
        normed = [f for f in self.config.fields if f.normalization != "none"]
        if not normed:
            return None
        from .extract import _normalizer

        norm = _normalizer(normalizer, self.config)
        if norm is None:
            raise ConfigError(f"fields {[f.name for f in normed]} normalise but no coefficients were given: set "
                              f"norm_path in the sampling config or pass normalizer=")
        norm.check(self.store, self.config)  # levels, grid, and coefficients for every month of the record
        if self.store.time is None:
            raise ConfigError("monthly normalisation needs a time axis, but the store has none")
        return norm

    def _epoch_coefficients(self, boxes: np.ndarray) -> None:
        """Load the normalisation coefficients of the calendar months ``boxes`` use (only those; kept while the next
        epoch uses the same months) and hand them to the backend."""
        if self._norm is None:
            return
        if self.multi is not None:
            months: Any = self.multi.months_used(boxes) if boxes.shape[0] else {}
            key: Any = tuple((k, tuple(v.tolist())) for k, v in sorted(months.items()))
        else:
            months = self.tokenizer.month_table(boxes)[0] if boxes.shape[0] else np.zeros(0, np.int64)
            key = tuple(months.tolist())
        if key == self._coef_key:
            return
        if self.multi is not None:
            coefficients = self.multi.coefficients(months)  # carries its months per stream
            self._backend.set_coefficients(coefficients, None)
            months = dict(coefficients.months)
        else:
            coefficients = {f.name: self._norm.coefficients(f.name, f.normalization, f.levels, months.tolist())
                            for f in self.config.fields if f.normalization != "none"}
            self._backend.set_coefficients(coefficients, months)
        self._coef_key, self.coefficient_months = key, months

    def _field_specs(self) -> list[FieldSpec]:
        tdt = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}[self.config.out_dtype]
        npdt = np.float32 if self.config.out_dtype == "float32" else np.uint16
        return [FieldSpec(f.name, (self.batch_size, *f.sample_shape), npdt, tdt) for f in self.config.fields]

    def _ensure_backend(self) -> None:
        if self._backend is not None:
            return
        cfg = self.loader_config
        if self.multi is not None:
            from ._stream_backend import StreamBackend

            self._backend = StreamBackend(self.multi, self._spec, None)
        elif cfg.mode == "process":
            from ._procs import ProcessBackend

            self._backend = ProcessBackend(self.store, self.config, self._spec, self._specs, coefficients=None,
                                           tokenizer=self.tokenizer)
        else:
            from ._backend import ThreadBackend

            self._backend = ThreadBackend(self.store, self.tokenizer, self.config, self._spec, None)
        self._coef_key = None  # a new backend has no coefficients yet
        self._ring = BatchRing(self._specs, cfg.prefetch + 2, self._backend.alloc,
                               getattr(self._backend, "retire", None))
        self._finalizer.detach()
        self._finalizer = weakref.finalize(self, _close_all, [self._backend, self._ring])

    # -- epochs ---------------------------------------------------------------------------------------------------
    def check_ranks(self) -> None:
        """Check that every rank's explicit plan (``boxes=``) makes the same number of batches; call it on every rank
        of the process group (it is one small all_gather), e.g. right after building the loaders. Raises
        :class:`~fastload.errors.ConfigError` naming each rank's count when they differ: a DDP loop would otherwise
        end the epoch on different steps (the next collective fails or hangs). Nothing to check for random placement
        (equal by construction), one rank, or no initialised process group."""
        if self._explicit is not None:
            _check_explicit_counts(self._samples, self._n_batches, self.world_size, self.batch_size,
                                   self.loader_config.drop_last)

    def _explicit_boxes(self, epoch: int) -> np.ndarray:
        b = self._explicit(epoch) if callable(self._explicit) else self._explicit
        b = self.tokenizer.check_boxes(b)
        if hasattr(self, "_samples") and b.shape[0] != self._samples:
            raise ConfigError(f"boxes({epoch}) gave {b.shape[0]} samples but boxes({self._samples_epoch}) gave "
                              f"{self._samples} (the plan of epoch {self._samples_epoch}, when the loader was built); "
                              f"every epoch of an explicit plan needs the same number")
        return b

    def epoch_boxes(self, epoch: int) -> np.ndarray:
        """This rank's ``(n, 3)`` sample placements of ``epoch``, in batch order."""
        if self._explicit is not None:
            return self._explicit_boxes(epoch)
        cfg = self.loader_config
        if self.multi is not None:
            boxes = self.multi.random_boxes(cfg.samples_per_epoch, seed=cfg.seed, epoch=int(epoch), rank=self.rank,
                                            world_size=self.world_size, samples_per_window=cfg.samples_per_window,
                                            t_range=self._t_range)
            return boxes[: self._samples]
        lat = None
        if self.config.centers == "coslat":  # a mesh places on its tokenizer's rows, not on its nodes
            lat = getattr(self.tokenizer, "lat", None)
            lat = self.store.grid.lat if lat is None else lat
        boxes = random_boxes(cfg.samples_per_epoch, self.extent, self.config.box, seed=cfg.seed, epoch=int(epoch),
                             time_step=self.config.time_step, rank=self.rank, world_size=self.world_size,
                             samples_per_window=cfg.samples_per_window, centers=self.config.centers, lat=lat,
                             t_range=self._t_range)
        return boxes[: self._samples]

    def __len__(self) -> int:
        return self._n_batches

    @property
    def time_indices(self) -> tuple[int, int] | None:
        """``loader.time_range`` as store time indices ``[start, stop)`` (the first stream's); None without one."""
        return self._t_range

    @property
    def epoch(self) -> int:
        return self._state.epoch

    def set_epoch(self, epoch: int) -> None:
        """Start ``epoch`` from its first batch at the next iteration (stops work in flight)."""
        if isinstance(epoch, bool) or not isinstance(epoch, (int, np.integer)) or epoch < 0:
            raise ConfigError(f"set_epoch: expected an integer >= 0, got {epoch!r}")
        self._stop_iteration(_loader_iter._STOP_GRACE_S)
        self._state.epoch, self._state.batch = int(epoch), 0

    def state_dict(self) -> dict[str, Any]:
        """Where the loader stands: the next batch :func:`iter` will hand out, and what must match on resume
        (``norm_fingerprint``: the normalisation coefficients' digest, :func:`fastload._resume.norm_fingerprint`;
        ``norm_local``: the digests of the local coefficients of each field and month read so far,
        :func:`fastload._resume.local_digests`; ...)."""
        from ._resume import loader_identity

        cfg = self.loader_config
        return {"version": _STATE_VERSION, "epoch": self._state.epoch, "batch": self._state.batch,
                "seed": cfg.seed, "rank": self.rank, "world_size": self.world_size, "batch_size": self.batch_size,
                "samples_per_epoch": cfg.samples_per_epoch, "samples_per_window": cfg.samples_per_window,
                "sampling": self.config.to_dict(), "norm_fingerprint": self._norm_fingerprint(),
                "time_indices": None if self._t_range is None else list(self._t_range),  # loader.time_range
                **loader_identity(self, self._state.epoch)}  # norm_local, drop_last, masking, store_fingerprint, plan...

    def _norm_fingerprint(self) -> Any:
        """Digest of the normalisation coefficients (per stream for a multi-stream config), computed once."""
        if not hasattr(self, "_fingerprint"):
            from ._resume import NO_NORMALISATION, norm_fingerprint

            if self.multi is None:
                self._fingerprint: Any = norm_fingerprint(self._norm, self.config)
            elif self._norm is None:
                self._fingerprint = NO_NORMALISATION
            else:
                from ._stream_norm import normalizers

                self._fingerprint = {st.name: norm_fingerprint(norm, st.config)
                                     for st, _, norm in normalizers(self.multi)}
        return self._fingerprint

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        """Resume at ``state``: the next batch is exactly the one after the last batch handed out then.

        Refused (``ConfigError`` naming each differing setting, saved and current value) unless the seed, rank,
        world size, batch size, samples per epoch and window and the sampling config match, and the normalisation
        coefficients are the same: compared by content (``norm_fingerprint``; the local coefficients of each field
        and month the saved run read, ``norm_local``, read here for the comparison), so a normalisation store that
        moved (``norm_path``) resumes; a state saved without a fingerprint needs the same path, as before. Also compared
        (:func:`fastload._resume.check_resume`; a state saved without them: not): ``drop_last``,
        ``loader.time_range`` (as the store time indices it gave, ``time_indices``), the masking and
        the device type its masks are drawn on, the data stores by what decides the samples (``store_fingerprint``:
        time axis, grid, levels, ...; not their paths) and the saved epoch's sample placements (``plan``)."""
        from ._resume import check_resume, loader_identity, loader_local_digests, state_position

        if state.get("version") != _STATE_VERSION:
            raise ConfigError(f"load_state_dict: unknown state version {state.get('version')!r}")
        epoch, batch = state_position(state)
        mine = {**self.state_dict(), **loader_identity(self, epoch)}  # the saved epoch's plan
        if isinstance(state.get("norm_local"), Mapping):  # the months the saved run read, read here
            mine["norm_local"] = loader_local_digests(self, state["norm_local"])
        check_resume(state, mine, ("seed", "rank", "world_size", "batch_size", "samples_per_epoch",
                                   "samples_per_window", "sampling"),
                     self.multi if self.multi is not None else self.store)
        state_position(state, len(self))
        self._stop_iteration(_loader_iter._STOP_GRACE_S)
        self._state.epoch, self._state.batch = epoch, batch

    # -- iteration ------------------------------------------------------------------------------------------------
    def __iter__(self) -> Iterator[Batch]:
        if self._closed:
            raise LoaderClosedError("this loader is closed")
        self._stop_iteration(_loader_iter._STOP_GRACE_S)
        self._ensure_backend()
        if self._state.batch >= len(self):  # a finished epoch: go on with the next one
            self._state.epoch, self._state.batch = self._state.epoch + 1, 0
        it = _EpochIterator(self)
        self._iter_ref = weakref.ref(it)
        self._threads = it._pump.threads
        return it

    def _stop_iteration(self, grace: float | None) -> None:
        """Stop the current iteration, waiting at most ``grace`` seconds for its reads (None: no limit)."""
        it = self._iter_ref() if self._iter_ref is not None else None
        if it is not None:
            it._close(grace)
        self._iter_ref = None
        stuck = [t for t in self._threads if t.is_alive()]  # (the pump waited `grace` for them)
        self._threads = ()
        if stuck and self._backend is not None:
            self._retire_backend(stuck, grace)

    def _retire_backend(self, stuck: list[threading.Thread], grace: float | None) -> None:
        """A read of the stopped iteration is still inside the backend (a hung store request): the next iteration
        must not reset its cache under it nor hand its ring slot to another batch, so it gets a fresh backend and
        ring; the old ones are closed at once on a daemon thread (:func:`_close_after`), which does not wait for a
        read that never returns. The warning names what each thread is doing (:func:`_doing`: a store request,
        a decode, a Numba compile, ...), read from its stack."""
        log.warning("fastload: %d read(s) of the stopped iteration still running after %.1f s, left running as "
                    "daemon threads: %s; %s", len(stuck), grace or 0.0, "; ".join(_doing(t) for t in stuck),
                    "the loader's cache and ring are closed" if self._closed else
                    "the next iteration starts with a fresh cache and ring, and the old ones are closed")
        old = [self._backend, self._ring]
        self._backend = self._ring = None
        self._finalizer.detach()
        self._finalizer = weakref.finalize(self, _close_all, [None])
        threading.Thread(target=_close_after, args=(stuck, old), name="fastload-loader-retire", daemon=True).start()

    def close(self, timeout: float | None = 10.0) -> None:
        """Stop all work, join threads and worker processes, free shared memory (idempotent).

        Parameters
        ----------
        timeout : float, optional
            Seconds to wait in all (None: no limit): half of it (at most 5 s) for the iteration's reads to stop, the
            rest for the reader's I/O threads. A thread still in a store request then (a store that does not
            answer) is left running as a daemon thread, named in a logged warning; it writes into no batch or cache
            slot anyone uses. Process mode: the worker processes are stopped within their own bound instead (asked
            to stop, then terminated, then killed).
        """
        if self._closed:
            return
        self._closed = True
        deadline = None if timeout is None else time.monotonic() + timeout
        self._stop_iteration(None if timeout is None else min(_loader_iter._STOP_GRACE_S, timeout / 2))
        info = self._finalizer.detach()
        if info is not None:
            _, fn, args, _ = info
            fn(*args, timeout=None if deadline is None else max(0.0, deadline - time.monotonic()))

    def __enter__(self) -> Loader:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        cfg = self.loader_config
        return (f"Loader({self.store.path!r}, fields={list(self.config.field_names)}, batch_size={self.batch_size}, "
                f"batches={len(self)}, workers={cfg.workers} {'processes' if cfg.mode == 'process' else 'threads'}, "
                f"device={self.device}, rank={self.rank}/{self.world_size}"
                + ("" if self._t_range is None else f", time indices [{self._t_range[0]}, {self._t_range[1]})") + ")")


class LoaderDataset(torch.utils.data.IterableDataset):
    """A ``torch.utils.data.IterableDataset`` over a :class:`Loader` (use ``DataLoader(ds, batch_size=None)``).

    The loader does its own batching, prefetching and workers: give the DataLoader ``batch_size=None`` and
    ``num_workers=0``. Items are :class:`Batch` objects; ``len()`` is the loader's. A DataLoader left at its default
    ``batch_size=1`` (or given any batch size) would stack whole batches into a batch of batches: its first batch
    raises a ``ConfigError`` that says to pass ``batch_size=None`` (set the batch size on the Loader), where torch's
    default collate would raise its generic ``TypeError``; num_workers > 0 raises one when iteration starts.
    """

    def __init__(self, loader: Loader):
        super().__init__()
        self.loader = loader

    def __iter__(self) -> Iterator[Batch]:
        info = torch.utils.data.get_worker_info()
        if info is not None:
            raise ConfigError("LoaderDataset: the Loader has its own workers; use DataLoader(..., num_workers=0)")
        return iter(self.loader)

    def __len__(self) -> int:
        return len(self.loader)


def _refuse_collate(batch: list[Batch], *, collate_fn_map=None) -> NoReturn:
    """``default_collate`` of a list of :class:`Batch`: a DataLoader with a batch size over :class:`LoaderDataset`.

    Registered in torch's ``default_collate_fn_map`` (torch's documented way to extend ``default_collate``; the key is
    our own type, so nothing else collates differently). Stacking whole batches has no meaning a user would want (the
    DataLoader's batch size would not be the batch size), so it is refused with the fix rather than done.
    """
    raise ConfigError(
        f"LoaderDataset: the DataLoader tried to stack {len(batch)} fastload Batch object(s), each already a batch "
        f"(the first of {len(batch[0])} samples: the Loader batches); pass DataLoader(LoaderDataset(loader), "
        "batch_size=None) and set the batch size on the Loader (torch's DataLoader defaults to batch_size=1)"
    )


torch.utils.data._utils.collate.default_collate_fn_map[Batch] = _refuse_collate
