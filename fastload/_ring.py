"""The ring of reused host batch buffers, and the hand-over of a filled buffer to the consumer.

Why this exists: allocating (and pinning) a batch buffer per batch costs more than filling it, so the loader
allocates ``prefetch + 2`` buffers up front and reuses them (ffcv's ring): while the consumer holds batch ``i``,
workers fill ``i + 1 .. i + prefetch``, and one more slot covers the batch the training step is still using.
Batch ``j`` lives in slot ``j % n_slots``.

A slot is reused only when its last tenant is certainly done with it:

- **GPU**: the worker that filled the slot copies it to the device on a side stream and records a CUDA event
  (the consumer's stream waits on the batch's event, with no host sync). A worker about to refill the slot polls
  the copy's event from its own thread (``event.query()``), so no thread blocks on the copy.
- **CPU** (no device copy): the consumer gets zero-copy tensor views of the slot. The ring keeps weak references
  to their storages; a slot whose tensors are still referenced (the caller kept a batch) is not overwritten:
  the worker gives it a fresh buffer instead and the old one lives on with the caller's tensors. Batches are
  therefore valid for as long as they are referenced, with no copy in the common case (a training loop drops
  each batch before drawing the one after next).

Buffers come from an allocator (``alloc(nbytes) -> (uint8 array, handle)``): pinned torch memory in thread mode,
shared-memory segments in process mode (:mod:`fastload._procs`). Fields are 64-byte-aligned views into one
buffer per slot.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np

__all__ = ["FieldSpec", "BatchRing", "RingSlot", "torch_alloc"]

_ALIGN = 64


class FieldSpec:
    """One field of a batch buffer: name, per-batch shape, kernel dtype (float32/uint16), torch dtype."""

    __slots__ = ("name", "shape", "np_dtype", "torch_dtype")

    def __init__(self, name: str, shape: Sequence[int], np_dtype: Any, torch_dtype: Any):
        self.name = name
        self.shape = tuple(int(v) for v in shape)
        self.np_dtype = np.dtype(np_dtype)
        self.torch_dtype = torch_dtype

    @property
    def nbytes(self) -> int:
        return int(np.prod(self.shape)) * self.np_dtype.itemsize


def _layout(specs: Sequence[FieldSpec]) -> tuple[list[int], int]:
    offsets, off = [], 0
    for s in specs:
        offsets.append(off)
        off += -(-s.nbytes // _ALIGN) * _ALIGN
    return offsets, max(off, _ALIGN)


def torch_alloc(pin: bool) -> Callable[[int], tuple[np.ndarray, Any]]:
    """Allocator of (optionally pinned) host memory through torch; the handle is the owning tensor."""

    def alloc(nbytes: int) -> tuple[np.ndarray, Any]:
        import torch

        if not pin:  # NumPy asks for transparent huge pages: the first write of a buffer faults ~6x less
            a = np.empty(nbytes, dtype=np.uint8)
            return a, torch.from_numpy(a)
        t = torch.empty(nbytes, dtype=torch.uint8, pin_memory=True)
        return t.numpy(), t

    return alloc


class RingSlot:
    """One batch buffer: ``arrays[field]`` (what the kernels write), its allocation handle, its reuse guards."""

    __slots__ = ("index", "raw", "handle", "arrays", "event", "refs", "generation")

    def __init__(self, index: int):
        self.index = index
        self.raw: np.ndarray | None = None
        self.handle: Any = None
        self.arrays: dict[str, np.ndarray] = {}
        self.event: Any = None  # CUDA event of the last device copy out of this slot
        self.refs: list[Any] = []  # storage weak refs of tensors handed out of this slot (CPU)
        self.generation = 0  # bumped on every (re)allocation


class BatchRing:
    """``n_slots`` reusable batch buffers for the fields ``specs``.

    Parameters
    ----------
    specs : sequence of FieldSpec
        Fields and their full-batch shapes.
    n_slots : int
        Buffers in the ring (the loader uses ``prefetch + 2``).
    alloc : callable
        ``alloc(nbytes) -> (uint8 numpy array, handle)``; the handle keeps the memory alive.
    retire : callable, optional
        ``retire(handle)``: called when a buffer is replaced because the consumer still holds it (the allocator
        drops what it keeps of it; the consumer's tensors keep the memory alive).
    """

    def __init__(self, specs: Sequence[FieldSpec], n_slots: int, alloc: Callable[[int], tuple[np.ndarray, Any]],
                 retire: Callable[[Any], object] | None = None):
        self.specs = list(specs)
        self.offsets, self.nbytes = _layout(self.specs)
        self.alloc = alloc
        self.retire = retire
        self.slots = [RingSlot(i) for i in range(int(n_slots))]
        self.reallocations = 0
        self._lock = threading.Lock()
        for s in self.slots:
            self._allocate(s)

    def _allocate(self, slot: RingSlot) -> None:
        raw, handle = self.alloc(self.nbytes)
        slot.raw, slot.handle = raw, handle
        slot.arrays = {
            sp.name: raw[off:off + sp.nbytes].view(sp.np_dtype).reshape(sp.shape)
            for sp, off in zip(self.specs, self.offsets)
        }
        slot.refs = []
        slot.event = None
        slot.generation += 1

    def acquire(self, batch: int, should_stop: Callable[[], bool] | None = None, poll: float = 0.0005) -> RingSlot:
        """The slot for ``batch``, once its previous tenant is done with it (called from a worker thread)."""
        slot = self.slots[batch % len(self.slots)]
        ev = slot.event
        if ev is not None:
            while not ev.query():  # the device copy out of this slot is still running
                if should_stop is not None and should_stop():
                    raise InterruptedError("stopped while waiting for a ring slot's device copy")
                time.sleep(poll)
            slot.event = None
        if slot.refs:
            if any(not r.expired() for r in slot.refs):  # the consumer still holds tensors of this buffer
                with self._lock:
                    self.reallocations += 1
                old = slot.handle
                self._allocate(slot)
                if self.retire is not None:
                    self.retire(old)
            slot.refs = []
        return slot

    def hand_out(self, slot: RingSlot, n: int) -> dict[str, Any]:
        """Zero-copy CPU tensors of the first ``n`` samples of each field, tracked for reuse (see module notes)."""
        import torch
        from torch.multiprocessing.reductions import StorageWeakRef

        out = {}
        for sp in self.specs:
            t = torch.from_numpy(slot.arrays[sp.name][:n])  # a new storage per hand-out, weakly tracked
            slot.refs.append(StorageWeakRef(t.untyped_storage()))
            out[sp.name] = t if t.dtype == sp.torch_dtype else t.view(sp.torch_dtype)
        return out

    def host_tensors(self, slot: RingSlot, n: int) -> dict[str, Any]:
        """Tensor views of the first ``n`` samples, for the device copy (not handed to the consumer)."""
        import torch

        out = {}
        for sp in self.specs:
            t = torch.from_numpy(slot.arrays[sp.name][:n])
            out[sp.name] = t if t.dtype == sp.torch_dtype else t.view(sp.torch_dtype)
        return out

    def wait_copies(self) -> None:
        """Wait for the device copies out of the slots still running (before their memory is freed or un-pinned).
        A CUDA that has already shut down (interpreter exit) has no copy left to wait for."""
        for s in self.slots:
            ev = s.event
            if ev is not None:
                try:
                    ev.synchronize()
                except RuntimeError:  # CUDA torn down at interpreter exit
                    pass

    def close(self) -> None:
        """Drop the ring's references to its buffers (memory is freed when no handed-out tensor remains)."""
        for s in self.slots:
            s.raw = None
            s.handle = None
            s.arrays = {}
            s.event = None
            s.refs = []
