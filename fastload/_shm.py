"""Shared-memory buffers of the process mode: nameless (a memfd, or a file unlinked at once) and mapped without
holding a file descriptor.

Why this exists: the loader's ring buffers (:mod:`fastload._ring`) live in shared memory that the worker processes
of :mod:`fastload._procs` write batches into. Each buffer is known only by the loader's open descriptor and the
mappings, so no exit, crash or kill of any process leaves it behind, and a mapping holds no descriptor, so a
consumer that keeps many batches does not run into ``ulimit -n``. The loader pins its mappings for asynchronous
copies with CUDA host registration (``_register``; undone when the last view goes). Names are re-exported from
:mod:`fastload._procs`.
"""

from __future__ import annotations

import ctypes
import mmap
import os
import secrets
import tempfile
import weakref
from typing import Any

import numpy as np

__all__ = ["SHM_DIR", "Segment", "map_shared"]

SHM_DIR = "/dev/shm" if os.path.isdir("/dev/shm") else tempfile.gettempdir()


def _libc() -> Any:
    """The C library with ``mmap``/``munmap`` typed for :func:`map_shared` (None where there is none: Windows)."""
    if os.name != "posix":
        return None
    libc = ctypes.CDLL(None, use_errno=True)
    libc.mmap.restype = ctypes.c_void_p
    libc.mmap.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int, ctypes.c_int, ctypes.c_int, ctypes.c_long]
    libc.munmap.restype = ctypes.c_int
    libc.munmap.argtypes = [ctypes.c_void_p, ctypes.c_size_t]
    return libc


_LIBC = _libc()


def map_shared(fd: int, nbytes: int) -> np.ndarray:
    """Map the first ``nbytes`` of ``fd`` read-write and shared, as a uint8 array that holds no file descriptor.

    Why not :class:`mmap.mmap`: before Python 3.13 (``trackfd``) it keeps a duplicate of the descriptor open for
    as long as the mapping lives, so every batch buffer a consumer keeps held one descriptor, and keeping about a
    thousand batches (a validation set held in memory) ran into the ``ulimit -n`` of 1024 ("Too many open files").
    Here the mapping is made with the C library's ``mmap`` and undone by ``munmap`` when the array's buffer object
    is collected, after the array and every view of it. ``fd`` may be closed as soon as this returns.
    """
    if nbytes <= 0:
        raise ValueError(f"shared-memory buffer: expected a positive size, got {nbytes} bytes")
    size = os.fstat(fd).st_size
    if size < nbytes:  # a page past the file's end would kill the process (SIGBUS) when touched
        raise ValueError(f"shared-memory buffer: the descriptor holds {size} bytes, expected at least {nbytes}")
    if _LIBC is None:  # Windows: no descriptor-free mapping in the standard library
        return np.frombuffer(mmap.mmap(fd, nbytes), dtype=np.uint8)
    addr = _LIBC.mmap(None, nbytes, mmap.PROT_READ | mmap.PROT_WRITE, mmap.MAP_SHARED, fd, 0)
    if addr is None or addr == ctypes.c_void_p(-1).value:  # MAP_FAILED
        err = ctypes.get_errno()
        raise OSError(err, f"mmap of a {nbytes}-byte shared-memory buffer failed: {os.strerror(err)}")
    buf = (ctypes.c_uint8 * nbytes).from_address(addr)
    # not at interpreter exit: a daemon thread may still touch the memory then, and the exit unmaps it anyway
    weakref.finalize(buf, _LIBC.munmap, addr, nbytes).atexit = False
    return np.frombuffer(buf, dtype=np.uint8)


class Segment:
    """A shared-memory buffer mapped into this process.

    :meth:`create` makes a memfd (or a file in ``SHM_DIR`` whose name it removes at once): the memory is known
    only by the open descriptor the loader keeps (``fd``) and by the mappings, so no kill of any process can leave
    it behind. Workers get the descriptor over their pipe (:func:`multiprocessing.reduction.send_handle`) and map
    it with :meth:`from_fd`."""

    def __init__(self, name: str, fd: int, nbytes: int, keep_fd: bool):
        self.name = name
        try:
            self.array = map_shared(fd, nbytes)  # the mapping lives while this array or views of it do
        except BaseException:
            os.close(fd)
            raise
        self.fd: int | None = fd if keep_fd else None
        if not keep_fd:
            os.close(fd)
        self.nbytes = nbytes
        self.mapped_by: set[int] = set()  # workers that were sent the descriptor
        self.registered = False

    @classmethod
    def create(cls, nbytes: int) -> Segment:
        name = f"fastload-{os.getpid()}-{secrets.token_hex(6)}"
        if hasattr(os, "memfd_create"):  # Linux: shared memory that never has a name in any directory
            fd = os.memfd_create(name, os.MFD_CLOEXEC)
        else:
            path = os.path.join(SHM_DIR, name)
            fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_EXCL, 0o600)
            os.unlink(path)  # nameless from here on: freed when the last descriptor and mapping go
        try:
            os.ftruncate(fd, nbytes)
        except BaseException:
            os.close(fd)
            raise
        return cls(name, fd, nbytes, keep_fd=True)

    @classmethod
    def from_fd(cls, name: str, fd: int, nbytes: int) -> Segment:
        return cls(name, fd, nbytes, keep_fd=False)

    def close_fd(self) -> None:
        """Close the descriptor (the mapping lives on while this object or views of its array do)."""
        if self.fd is not None:
            os.close(self.fd)
            self.fd = None


# -- CUDA host registration of the buffers (pinned for asynchronous copies; the loader's side) --------------------
def _register(seg: Segment) -> None:
    """Pin a segment for asynchronous host-to-device copies (CUDA host registration)."""
    import torch

    ptr = seg.array.ctypes.data
    err = torch.cuda.cudart().cudaHostRegister(ptr, seg.nbytes, 0)
    if int(err) != 0:
        raise RuntimeError(f"cudaHostRegister of a shared-memory batch buffer failed ({err})")
    seg.registered = True


def _unregister(seg: Segment) -> None:
    _unregister_ptr(seg.array.ctypes.data)
    seg.registered = False


def _unregister_quietly(ptr: int) -> None:
    try:
        _unregister_ptr(ptr)
    except Exception:  # noqa: BLE001 - at interpreter exit CUDA may already be shut down
        pass


def _unregister_ptr(ptr: int) -> None:
    """Undo :func:`_register` of the buffer at ``ptr``."""
    import torch

    torch.cuda.cudart().cudaHostUnregister(ptr)
