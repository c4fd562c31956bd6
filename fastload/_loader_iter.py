"""One pass over an epoch of a :class:`fastload.loader.Loader`: the :class:`Batch` it hands out, the step a worker
thread runs, and the iterator that waits for each batch and moves it to the device.

Why this exists apart from ``loader.py``: the Loader owns set-up, epochs, resume state and the lifetime of its
backend and ring; this module is what happens between ``iter(loader)`` and the end of the pass::

    worker thread (_work): wait for the first batch -> ring slot k -> backend.read into it -> boxes, metadata
        -> on a GPU: H2D copy on the side stream, masks there, event (_to_device); on the CPU: masks
    main thread (_EpochIterator.__next__): next(pump) -> the compute stream waits on the event -> Batch

Everything after the read is done by the worker thread, not by the consumer: the device copy and the masks (when
the loader masks) are drawn where the batch's tensors are, on the GPU's side stream (kernels queued there, no host
sync) or on the CPU from the ring slot. The consumer's ``next()`` only takes the next batch in order and, on a GPU,
makes its current stream wait on the batch's event. A training step whose host work paces the GPU (small models:
kernel launches) would otherwise leave the GPU idle for the whole hand-out: 10.6-11.7 ms of ``small_h100``'s
195-206 ms step on an H100 when the consumer copied and masked (benches/RESULTS.md 20). Masks draw from the same
``(seed, rank, step)`` generator whichever thread draws them, so moving them changes no mask. Device memory: a GPU
loader holds up to ``prefetch`` batches copied (or being copied) ahead of the one handed out, each with its masked
sources and masks when the loader masks, besides the batch the caller holds and the one the GPU may still be
finishing: up to ``prefetch + 2`` batches' tensors at once.

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
from .reader import IOStats, warn_given_up

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
          n: int, meta: dict[str, Any]) -> tuple[None, dict[str, Any], dict[str, Any], None]:
    """A CPU batch's masks and sources, drawn by its worker from the ring slot's first ``n`` samples (untracked
    views: the sources are new tensors, the slot's memory is only read here, before it is handed out)."""
    from .sampling.masking import mask_batch

    with nvtx_range("mask", category="data", payload=batch):
        masked = mask_batch(cfg, ring.host_tensors(slot, n), seed=seed, rank=rank, step=step0 + batch)
    return None, meta, masked, None


def _to_device(device: Any, stream: Any, cfg: Any, ring: BatchRing, seed: int, rank: int, step0: int, batch: int,
               slot: Any, n: int, meta: dict[str, Any]) -> tuple[dict, dict, dict | None, Any]:
    """A GPU batch, by its worker: the slot's first ``n`` samples and the metadata copied to ``device`` on the
    side ``stream``, then the masks drawn there when ``cfg`` (masking) is given. Returns (fields, meta, masked,
    event recorded after all of it); the ring reuses the slot once the copy's own event has completed."""
    with torch.cuda.device(device), nvtx_range("copy", category="h2d", payload=batch):
        host = ring.host_tensors(slot, n)
        meta_t = {f: m.to_torch() for f, m in meta.items()}
        with torch.cuda.stream(stream):
            fields = {k: v.to(device, non_blocking=True) for k, v in host.items()}
            meta_t = {f: {k: v.pin_memory().to(device, non_blocking=True) for k, v in m.items()}
                      for f, m in meta_t.items()}
            copied = torch.cuda.Event()
            copied.record(stream)
            slot.event = copied  # the ring reuses this slot only after the copy completed
            masked = None
            if cfg is not None:  # (0 samples too: empty masks and sources)
                from .sampling.masking import mask_batch

                with nvtx_range("mask", category="data", payload=batch):
                    masked = mask_batch(cfg, fields, seed=seed, rank=rank, step=step0 + batch)
            ready = torch.cuda.Event()
            ready.record(stream)
    return fields, meta_t, masked, ready


def _work(backend: Any, ring: BatchRing, tokenizer: Any, boxes: np.ndarray, batch_size: int,
          stop: threading.Event, first: _First, finish: Any, batch: int) -> tuple:
    """One batch on a worker thread (holds no reference to the loader or the iterator): read it, then
    ``finish`` it (:func:`_to_device` or :func:`_mask`, when given)."""
    first.wait(batch, stop)
    try:
        slot = ring.acquire(batch, stop.is_set)
        stats, sel = backend.read(batch, slot.arrays, slot.handle, stop.is_set)
    finally:
        if batch == first.batch:
            first.done.set()  # also when it failed: the error reaches the consumer in order, nothing hangs
    planned = boxes[batch * batch_size:(batch + 1) * batch_size]
    b = planned[sel]
    meta = tokenizer.meta(b)  # every tokenizer takes 0 boxes (a batch all skipped)
    if stop.is_set():  # the iteration was stopped: no copy or masks for a batch nobody will take
        raise InterruptedError("stopped before the batch's device copy or masks")
    if finish is None:
        return batch, slot, stats, b, None, meta, None, None
    t0 = time.perf_counter()
    fields, meta, masked, event = finish(batch, slot, int(b.shape[0]), meta)
    if event is not None:
        stats.copy_s = time.perf_counter() - t0
    return batch, slot, stats, b, fields, meta, masked, event


def _settle_read_ahead(backend: Any, stats: IOStats, epoch: int, stop: threading.Event) -> None:
    """Count in ``stats`` (the epoch's last batch) the stored bytes of the read-ahead requests still in flight when
    the epoch's reads ended (:meth:`fastload.reader.ChunkReader.settle_ahead`: each waited for at most the read
    timeout from its start; none still queued is made). Without this they counted in the next epoch's first batch,
    or nowhere once the loader closed. A request unanswered by then is given up and named in a warning: no batch
    needs its chunks (every step of the epoch has read its own), so it fails nothing. Thread backends (a process
    backend has no ``reader`` here: each worker process settles its own reader with its last batch of the epoch,
    :mod:`fastload._proc_worker`). It waits on the consumer's thread but stops waiting as soon as the iteration is
    stopped (``stop``: close, set_epoch, load_state_dict or a new iter on another thread), counting nothing then
    (the caller raises :class:`LoaderClosedError`; those bytes count in the next batch the reader reads)."""
    reader = getattr(backend, "reader", None)
    if reader is None:
        return
    _, late = reader.settle_ahead(stats, stop.is_set)
    if stop.is_set():
        return
    warn_given_up(late, reader.read_timeout, f"epoch {epoch}")


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
        self._backend = backend
        self._ring = ring
        self._device = loader.device
        self._masking = loader.masking
        self._seed, self._rank, self._n = loader.loader_config.seed, loader.rank, len(loader)
        self._totals = loader.stats
        self._stop = threading.Event()
        self._exhausted = False
        finish = None  # what the workers do after the read (module notes)
        step0 = self.epoch * self._n
        if self._device.type == "cuda":
            if loader._copy_stream is None:
                loader._copy_stream = torch.cuda.Stream(self._device)
            stream = loader._copy_stream  # its device ("cuda" resolved when the loader first iterated) is the
            self._stream_device = stream.device  # batches': the consumer's stream of that device waits on them
            finish = functools.partial(_to_device, stream.device, stream, self._masking, ring,
                                       self._seed, self._rank, step0)
        elif self._masking is not None:
            finish = functools.partial(_mask, self._masking, ring, self._seed, self._rank, step0)
        work = _bind(backend, ring, loader.tokenizer, self._boxes, loader.batch_size, self._stop, _First(start),
                     finish)
        cfg = loader.loader_config
        workers = cfg.workers
        self._pump: Pump = Pump(range(start, len(loader)), work, depth=cfg.prefetch, workers=workers,
                                name="fastload-loader")
        self._finalizer = weakref.finalize(self, _shutdown, self._stop, self._pump)

    def __next__(self) -> Batch:
        if self._exhausted:
            raise StopIteration
        if not self._finalizer.alive:
            raise LoaderClosedError("this iteration was stopped (close, set_epoch, load_state_dict or a new iter)")
        t0 = time.perf_counter()
        with nvtx_range("wait", category="data", payload=self._state.batch):
            try:
                batch, slot, stats, boxes, fields, meta, masked, event = next(self._pump)
            except StopIteration:
                self._finish()
                raise
            except PumpClosedError:  # another thread stopped this iteration while this one waited for its batch
                raise LoaderClosedError("this iteration was stopped while waiting for its batch (close, set_epoch, "
                                        "load_state_dict or a new iter on another thread)") from None
            if batch + 1 == self._n:  # the epoch's last batch (in order: every read of the epoch has returned)
                _settle_read_ahead(self._backend, stats, self.epoch, self._stop)
                if self._stop.is_set():  # stopped meanwhile: its state and ring are no longer this iteration's
                    raise LoaderClosedError("this iteration was stopped while its last batch waited for the "
                                            "read-ahead to settle (close, set_epoch, load_state_dict or a new iter "
                                            "on another thread)")
        stats.wait_s = time.perf_counter() - t0
        self._state.batch = batch + 1
        # a batch whose every sample was skipped (on_bad_chunk="skip") is handed out too, with 0 samples: every rank
        # takes len(loader) batches per epoch, so the collectives of a distributed step stay in step (see Batch)
        out = self._hand_out(batch, slot, stats, boxes, fields, meta, masked, event)
        self._totals.add(stats)
        return out

    def _hand_out(self, batch: int, slot: Any, stats: IOStats, boxes: np.ndarray, fields: dict | None,
                  meta: Any, masked: dict[str, Any] | None, event: Any) -> Batch:
        if event is None:  # CPU: zero-copy views of the ring slot (the masks, if any, drawn by the worker)
            fields = self._ring.hand_out(slot, int(boxes.shape[0]))
            meta = {f: m.to_torch() for f, m in meta.items()}
        else:  # GPU: copied (and masked) by the worker on the side stream
            compute = torch.cuda.current_stream(self._stream_device)
            compute.wait_event(event)  # the compute stream waits; the host does not
            held = [*fields.values(), *(v for m in meta.values() for v in m.values())]
            if masked is not None:
                held += [t for mf in masked.values() for t in (mf.mask, mf.source)]
            for t in held:  # made on the side stream, used on this one: not reused before this one is done
                t.record_stream(compute)
        out = Batch(fields=fields, meta=meta, boxes=torch.from_numpy(np.ascontiguousarray(boxes)), index=batch,
                    epoch=self.epoch, stats=stats)
        if masked is not None:
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
          stop: threading.Event, first: _First, finish: Any) -> Any:
    return functools.partial(_work, backend, ring, tokenizer, boxes, batch_size, stop, first, finish)
