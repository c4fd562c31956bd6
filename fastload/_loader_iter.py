"""One pass over an epoch of a :class:`fastload.loader.Loader`: the :class:`Batch` it hands out, the step a worker
thread runs, and the iterator that waits for each batch and moves it to the device.

Why this exists apart from ``loader.py``: the Loader owns set-up, epochs, resume state and the lifetime of its
backend and ring; this module is what happens between ``iter(loader)`` and the end of the pass::

    worker thread (_work): wait for the first batch -> ring slot k -> backend.read into it -> boxes, metadata
    main thread (_EpochIterator.__next__): next(pump) -> H2D copy on a side stream, event -> Batch (-> masks)

Masks (when the loader masks) are drawn where the batch's tensors are: on an accelerator by the main thread after
the copy (kernels queued on the compute stream, no host sync), on the CPU by the worker thread from its ring slot,
so that the CPU's masking overlaps the training step instead of adding to the consumer's wait. Both draw from the
same ``(seed, rank, step)`` generator, so which thread draws them changes no mask.

Every batch of the epoch is handed out, also one whose samples were all skipped (``on_bad_chunk="skip"``): with 0
samples (see :class:`Batch`), so that the ranks of a distributed run take the same number of steps.

Stopping an iteration (:func:`_shutdown`) sets its stop event and closes its pump, waiting at most the stop grace
(``_STOP_GRACE_S``; :mod:`fastload.loader` waits by it too and reads it from here at each call, so a test that
shortens it sets it here only). ``Batch`` and ``Loader`` are imported from :mod:`fastload.loader`.
"""

from __future__ import annotations

import dataclasses
import functools
import threading
import time
import weakref
from collections.abc import Iterator
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from ._nvtx import range as nvtx_range
from ._ring import BatchRing
from .errors import LoaderClosedError
from .pump import Pump, PumpClosedError
from .reader import IOStats

if TYPE_CHECKING:
    from .loader import Loader

_STOP_GRACE_S = 5.0  # how long stopping an iteration waits for its reads to notice; a read stuck longer (a hung
# store request) keeps the backend, and the next iteration gets a fresh one (see Loader._stop_iteration)
_GRACE = object()  # "the stop grace": the default wait of an iteration's stop


@dataclasses.dataclass(slots=True, eq=False, repr=False)
class Batch:
    """One batch: token tensors per field, their metadata, the sample boxes and the I/O counters (``repr``: shapes,
    dtypes, devices and a one-line stats summary, no values).

    A batch can hold **0 samples** (``len(batch) == 0``): with ``on_bad_chunk="skip"``, when every sample of it
    needed a bad chunk. It is handed out all the same, so that every rank takes exactly ``len(loader)`` batches per
    epoch and the collectives of a distributed step stay in step. Its tensors have a leading 0: ``fields``
    ``(0, L, nt, nlat, nlon, tt, tlat, tlon)``, ``boxes`` ``(0, 3)``, every ``meta`` tensor but ``level``
    ``(0, ...)``, ``masks`` ``(0, L, nt, nlat, nlon)`` (all False) and ``sources`` (when the loader masks);
    ``stats.skipped`` counts the samples dropped and ``index`` is its place in the epoch as for any batch.

    What a training step should do with one: not compute a mean loss over it (NaN) and not update on it alone. In
    one process, skip the step. Under DistributedDataParallel, still run the forward through the DDP module and
    backward a zero loss connected to every trainable parameter (``sum(p.sum() * 0 for p in params)``, not the
    model on 0 samples): the gradient all-reduce then runs on every rank. DDP averages the ranks' gradients, so an
    empty (or partly skipped) rank would shrink the step: weight each rank's mean loss by its sample count ``n``
    and scale the averaged gradients by ``world_size / N`` (``N``: all ranks' samples) before clipping and the
    optimizer, so every sample weighs the same; skip the optimizer on every rank when ``N == 0``. ``profiling.steps.SampleCounter`` does this for
    ``fastload train`` (one host all-reduce of the counts per step, only under DDP with ``on_bad_chunk="skip"``)."""

    fields: dict[str, Any]
    """Field -> ``(B, L, nt, nlat, nlon, tt, tlat, tlon)`` tensor (the configured ``out_dtype``, on the device)."""
    meta: dict[str, dict[str, Any]]
    """Field -> per-token metadata tensors: ``t_index``, ``time`` (ns since 1970), ``hour``, ``day_of_year``
    ``(B, nt)``; ``lat``, ``lon`` ``(B, nlat, nlon)``; ``level`` ``(L,)``. Point-sampled fields (a mesh, and every
    stream but the first of a multi-stream config) add ``valid`` ``(B, nlat, nlon, K)`` bool (False: a padding
    slot, value 0), ``points``, ``point_lat``, ``point_lon`` ``(B, nlat, nlon, K)``, ``count`` ``(B, nlat, nlon)``
    and ``t_steps`` ``(B, nt * tt)`` (the stream's time index of every time point); ``K = tlat * tlon``. A
    curvilinear store that repeats places (NEMO/ORCA halo columns, north fold) adds ``valid`` alone (False: a copy
    of a place already in the sample, value 0)."""
    boxes: Any
    """``(B, 3)`` int64 CPU tensor of the samples' ``(t0, y0, x0)`` store indices."""
    index: int
    """Batch index in the epoch (this rank's)."""
    epoch: int
    stats: IOStats
    """I/O counters of this batch (``stats.streams``: per stream, for multi-stream configs)."""
    masks: dict[str, Any] | None = None
    """Field -> ``(B, L, nt, nlat, nlon)`` bool, True where a token is masked (when the loader masks)."""
    sources: dict[str, Any] | None = None
    """Field -> masked model input (when the loader masks); ``fields`` stay the unaltered targets."""

    def __getitem__(self, field: str) -> Any:
        return self.fields[field]

    def __contains__(self, field: object) -> bool:
        return field in self.fields

    def __iter__(self) -> Iterator[str]:
        """The field names (as a dict's keys): ``for name in batch``, ``"t2m" in batch``."""
        return iter(self.fields)

    def __len__(self) -> int:
        return int(self.boxes.shape[0])

    def __repr__(self) -> str:
        """A few lines, no values: each field's shape, dtype and device (and mask), the metadata keys, the stats."""
        w = max((len(k) for k in self.fields), default=0)
        lines = [f"Batch(index={self.index}, epoch={self.epoch}, samples={len(self)}, fields={len(self.fields)}"]
        for name, x in self.fields.items():
            masked = f"  masks {_describe(self.masks[name])}" if self.masks and name in self.masks else ""
            lines.append(f"  {name:<{w}}  {_describe(x)}{masked}")
        if self.meta:  # keys every field has, then what some fields add (point slots)
            keys = [list(m) for m in self.meta.values()]
            common = [k for k in keys[0] if all(k in ks for ks in keys)]
            extra: dict[tuple, list[str]] = {}
            for name, ks in zip(self.meta, keys):
                more = tuple(k for k in ks if k not in common)
                if more:
                    extra.setdefault(more, []).append(name)
            lines.append("  meta: " + ", ".join(common) + "".join(f"; {', '.join(n)} + {', '.join(k)}"
                                                                   for k, n in extra.items()))
        lines.append(f"  stats: {self.stats!r})")
        return "\n".join(lines)


def _describe(x: Any) -> str:
    """``(shape) dtype device`` of a tensor or array, without its values."""
    dev = getattr(x, "device", None)
    dtype = str(x.dtype).removeprefix("torch.")
    return f"{tuple(x.shape)} {dtype} {dev if dev is not None else 'numpy'}"


class _First:
    """The first batch of an iteration is read alone: read-ahead waits until it is done, so it gets every core and
    decode slot (time to first batch on era5-1deg tiles, 2 cores, Numba initialised: 0.60 s instead of 0.68 s)."""

    __slots__ = ("batch", "done")

    def __init__(self, batch: int):
        self.batch = batch
        self.done = threading.Event()

    def wait(self, batch: int, stop: threading.Event) -> None:
        if batch != self.batch:
            while not self.done.wait(0.05) and not stop.is_set():
                pass


def _mask(cfg: Any, ring: BatchRing, seed: int, rank: int, step0: int, batch: int, slot: Any,
          n: int) -> dict[str, Any]:
    """A CPU batch's masks and sources, drawn by its worker from the ring slot's first ``n`` samples (untracked
    views: the sources are new tensors, the slot's memory is only read here, before it is handed out)."""
    from .sampling.masking import mask_batch

    with nvtx_range("mask", category="data", payload=batch):
        return mask_batch(cfg, ring.host_tensors(slot, n), seed=seed, rank=rank, step=step0 + batch)


def _work(backend: Any, ring: BatchRing, tokenizer: Any, boxes: np.ndarray, batch_size: int,
          stop: threading.Event, first: _First, masker: Any, batch: int) -> tuple:
    """One batch on a worker thread (holds no reference to the loader or the iterator)."""
    first.wait(batch, stop)
    try:
        slot = ring.acquire(batch, stop.is_set)
        stats, sel = backend.read(batch, slot.arrays, slot.handle, stop.is_set)
    finally:
        if batch == first.batch:
            first.done.set()  # also when it failed: the error reaches the consumer in order, nothing hangs
    planned = boxes[batch * batch_size:(batch + 1) * batch_size]
    b = planned[sel]
    masked = None if masker is None else masker(batch, slot, int(b.shape[0]))
    return batch, slot, stats, b, tokenizer.meta(b), masked  # every tokenizer takes 0 boxes (a batch all skipped)


def _shutdown(stop: threading.Event, pump: Pump, timeout: Any = _GRACE) -> None:
    stop.set()
    pump.close(timeout=_STOP_GRACE_S if timeout is _GRACE else timeout)


class _EpochIterator(Iterator[Batch]):
    """One pass over (the rest of) an epoch; closing it stops the pump."""

    def __init__(self, loader: Loader):
        # the iterator keeps its loader (and so the backend and ring its workers use) alive: `for b in Loader(...)`
        # must not close them under it; the loader references the iterator only weakly, so an abandoned iterator is
        # still collected (its finalizer stops the pump), and the loader after it
        self._loader = loader
        self._state = loader._state
        self.epoch = loader._state.epoch
        start = loader._state.batch
        self._boxes = loader.epoch_boxes(self.epoch)
        backend, ring = loader._backend, loader._ring
        loader._epoch_coefficients(self._boxes)
        backend.start(self._boxes, start)
        self._ring = ring
        self._device = loader.device
        self._masking = loader.masking
        self._seed, self._rank, self._n = loader.loader_config.seed, loader.rank, len(loader)
        self._totals = loader.stats
        self._stop = threading.Event()
        self._exhausted = False
        masker = None
        if self._masking is not None and self._device.type == "cpu":  # masks drawn by the workers (module notes)
            masker = functools.partial(_mask, self._masking, ring, self._seed, self._rank, self.epoch * self._n)
        work = _bind(backend, ring, loader.tokenizer, self._boxes, loader.batch_size, self._stop, _First(start),
                     masker)
        cfg = loader.loader_config
        workers = cfg.workers
        self._pump: Pump = Pump(range(start, len(loader)), work, depth=cfg.prefetch, workers=workers,
                                name="fastload-loader")
        self._finalizer = weakref.finalize(self, _shutdown, self._stop, self._pump)
        self._copy_stream = None
        if self._device.type == "cuda":
            if loader._copy_stream is None:
                loader._copy_stream = torch.cuda.Stream(self._device)
            self._copy_stream = loader._copy_stream

    def __next__(self) -> Batch:
        if self._exhausted:
            raise StopIteration
        if not self._finalizer.alive:
            raise LoaderClosedError("this iteration was stopped (close, set_epoch, load_state_dict or a new iter)")
        t0 = time.perf_counter()
        with nvtx_range("wait", category="data", payload=self._state.batch):
            try:
                batch, slot, stats, boxes, meta, masked = next(self._pump)
            except StopIteration:
                self._finish()
                raise
            except PumpClosedError:  # another thread stopped this iteration while this one waited for its batch
                raise LoaderClosedError("this iteration was stopped while waiting for its batch (close, set_epoch, "
                                        "load_state_dict or a new iter on another thread)") from None
        stats.wait_s = time.perf_counter() - t0
        self._state.batch = batch + 1
        # a batch whose every sample was skipped (on_bad_chunk="skip") is handed out too, with 0 samples: every rank
        # takes len(loader) batches per epoch, so the collectives of a distributed step stay in step (see Batch)
        out = self._hand_out(batch, slot, stats, boxes, meta, int(boxes.shape[0]), masked)
        self._totals.add(stats)
        return out

    def _hand_out(self, batch: int, slot: Any, stats: IOStats, boxes: np.ndarray, meta: Any, n: int,
                  masked: dict[str, Any] | None) -> Batch:
        t0 = time.perf_counter()
        meta_t = {f: m.to_torch() for f, m in meta.items()}
        if self._copy_stream is None:  # CPU: zero-copy views of the ring slot
            fields = self._ring.hand_out(slot, n)
        else:
            with nvtx_range("copy", category="h2d", payload=batch):
                host = self._ring.host_tensors(slot, n)
                stream = self._copy_stream
                with torch.cuda.stream(stream):
                    fields = {k: v.to(self._device, non_blocking=True) for k, v in host.items()}
                    meta_t = {f: {k: v.pin_memory().to(self._device, non_blocking=True) for k, v in m.items()}
                              for f, m in meta_t.items()}
                    event = torch.cuda.Event()
                    event.record(stream)
                compute = torch.cuda.current_stream(self._device)
                compute.wait_event(event)  # the compute stream waits; the host does not
                for t in [*fields.values(), *(v for m in meta_t.values() for v in m.values())]:
                    t.record_stream(compute)
                slot.event = event  # the ring reuses this slot only after the copy completed
        stats.copy_s = time.perf_counter() - t0
        out = Batch(fields=fields, meta=meta_t, boxes=torch.from_numpy(np.ascontiguousarray(boxes)), index=batch,
                    epoch=self.epoch, stats=stats)
        if self._masking is not None:  # (0 samples too: empty masks and sources)
            if masked is None:  # an accelerator's batch: drawn here, after the copy (the CPU's: by the worker)
                from .sampling.masking import mask_batch

                masked = mask_batch(self._masking, fields, seed=self._seed, rank=self._rank,
                                    step=self.epoch * self._n + batch)
            out.masks = {k: v.mask for k, v in masked.items()}
            out.sources = {k: v.source for k, v in masked.items()}
        return out

    def _finish(self) -> None:
        self._exhausted = True
        if self._state.batch >= self._n:
            self._state.epoch, self._state.batch = self.epoch + 1, 0
        self.close()

    def close(self) -> None:
        """Stop the work in flight of this iteration and join its threads, waiting at most 5 s (idempotent)."""
        self._finalizer()

    def _close(self, timeout: float | None) -> None:
        """:meth:`close`, waiting at most ``timeout`` seconds for the threads (None: no limit)."""
        info = self._finalizer.detach()
        if info is not None:
            _, fn, args, _ = info
            fn(*args, timeout=timeout)


def _bind(backend: Any, ring: BatchRing, tokenizer: Any, boxes: np.ndarray, batch_size: int,
          stop: threading.Event, first: _First, masker: Any) -> Any:
    return functools.partial(_work, backend, ring, tokenizer, boxes, batch_size, stop, first, masker)
