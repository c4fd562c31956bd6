"""Roofs measured in the same run as the loaders: memcpy, raw chunk-file reads, raw read+decode of the chunks needed.

Why this exists: a loader's samples/s means little alone; beside the rate at which this machine can merely copy
memory, read the chunk files, and read+decode exactly the chunks the samples need, it says how much is left on
the table. The roofs use no loader code: chunk bytes come from plain ``os.pread`` of the chunk files (or of a
shard's byte range) and are decoded with numcodecs (:mod:`profiling.chunkmap`), on a pool of ``workers`` threads
(numcodecs releases the GIL while it decodes). The page-cache state of the store's files is measured with
``mincore`` and can be dropped with ``posix_fadvise(DONTNEED)`` for cold-cache scenarios. What the machine gave a
measurement (this process's CPU, the rest of the machine's, the hypervisor's steal) comes from :func:`cpu_sample`
and :func:`cpu_share`: on a shared machine a rate means little without it.

Run alone for a quick look at a store::

    python -m profiling.roofs STORE
"""

from __future__ import annotations

import contextlib
import ctypes
import ctypes.util
import mmap
import os
import platform
import sys
import threading
import time
from collections.abc import Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import numpy as np

from .chunkmap import ArrayChunks

__all__ = [
    "memcpy_gbps",
    "read_roof",
    "read_decode_roof",
    "store_files",
    "resident_fraction",
    "drop_page_cache",
    "machine_info",
    "cpu_sample",
    "cpu_share",
]

Task = tuple[str, tuple[int, ...]]


def memcpy_gbps(nbytes: int = 256 * 2**20, repeats: int = 5) -> float:
    """Best-of-``repeats`` one-thread ``np.copyto`` rate in GB/s (bytes copied per second)."""
    src = np.ones(nbytes // 8, dtype=np.float64)
    dst = np.empty_like(src)
    np.copyto(dst, src)  # fault the pages in
    best = float("inf")
    for _ in range(repeats):
        t = time.perf_counter()
        np.copyto(dst, src)
        best = min(best, time.perf_counter() - t)
    return src.nbytes / best / 1e9


def _pool_run(fn, items: Sequence[Any], workers: int) -> list[Any]:
    if workers <= 1:
        return [fn(i) for i in items]
    with ThreadPoolExecutor(max_workers=workers, thread_name_prefix="roof") as pool:
        return list(pool.map(fn, items, chunksize=max(1, len(items) // (8 * workers))))


def read_roof(maps: dict[str, ArrayChunks], tasks: Sequence[Task], workers: int) -> dict[str, float]:
    """Read the stored bytes of each ``(array, chunk)`` once with ``workers`` threads.

    Returns ``{"seconds", "stored_bytes", "stored_gbps", "chunks"}``; missing chunks count zero bytes.
    """
    unique = sorted(set(tasks))

    def one(task: Task) -> int:
        raw = maps[task[0]].read_raw(task[1])
        return 0 if raw is None else len(raw)

    t = time.perf_counter()
    sizes = _pool_run(one, unique, workers)
    dt = time.perf_counter() - t
    nbytes = float(sum(sizes))
    return {"seconds": dt, "stored_bytes": nbytes, "stored_gbps": nbytes / dt / 1e9 if dt else 0.0,
            "chunks": float(len(unique))}  # fmt: skip


def read_decode_roof(
    maps: dict[str, ArrayChunks], batches: Sequence[Sequence[Task]], workers: int
) -> dict[str, float]:
    """Read and decode, batch after batch, each chunk a batch needs once, with ``workers`` threads.

    This is the ideal chunk-aware loader with no cache between batches and no gather: its time bounds what a
    Python loader that decodes whole chunks with numcodecs can reach. Chunk locations (file, offset, size; shard
    indexes) are looked up before the clock starts; timed are the open/pread/close of each chunk and its decode
    into a reused per-thread buffer. Returns ``{"seconds", "stored_bytes", "decoded_bytes", "decoded_gbps",
    "stored_gbps", "chunks"}``.
    """
    flat = [t for b in batches for t in sorted(set(b))]
    jobs = []
    for array, chunk in flat:
        loc = maps[array].location(chunk)
        if loc is not None:
            jobs.append((maps[array], *loc))
    local = threading.local()

    def one(job: tuple[ArrayChunks, str, int, int]) -> None:
        geom, path, offset, nbytes = job
        buf = getattr(local, "buf", None)
        if buf is None or buf.nbytes < geom.chunk_nbytes:
            buf = local.buf = np.empty(max(geom.chunk_nbytes for geom in maps.values()), np.uint8)
        fd = os.open(path, os.O_RDONLY)
        try:
            raw = os.pread(fd, nbytes, offset)
        finally:
            os.close(fd)
        geom.decode_into(raw, buf[: geom.chunk_nbytes])

    t = time.perf_counter()
    _pool_run(one, jobs, workers)
    dt = time.perf_counter() - t
    stored = float(sum(j[3] for j in jobs))
    decoded = float(sum(j[0].chunk_nbytes for j in jobs))
    return {
        "seconds": dt,
        "stored_bytes": stored,
        "decoded_bytes": decoded,
        "decoded_gbps": decoded / dt / 1e9 if dt else 0.0,
        "stored_gbps": stored / dt / 1e9 if dt else 0.0,
        "chunks": float(len(flat)),
    }


def _machine_ticks() -> tuple[float, float] | None:
    """Seconds of CPU the whole machine has spent busy (user, nice, system, irq, softirq) and stolen by the
    hypervisor since boot, from ``/proc/stat``; None where there is no such file."""
    try:
        with open("/proc/stat") as fh:
            v = [int(x) for x in fh.readline().split()[1:9]]
    except (OSError, ValueError):
        return None
    hz = os.sysconf("SC_CLK_TCK")
    user, nice, system, _idle, _iowait, irq, softirq, steal = v
    return (user + nice + system + irq + softirq) / hz, steal / hz


def cpu_sample() -> tuple[float, float, float, tuple[float, float] | None]:
    """Now: ``(time.perf_counter(), this process's user s, its system s, machine (busy s, steal s) or None)``.

    Two samples give :func:`cpu_share`. The process's times cover all its threads, also those that have ended.
    """
    import resource

    ru = resource.getrusage(resource.RUSAGE_SELF)
    return time.perf_counter(), ru.ru_utime, ru.ru_stime, _machine_ticks()


def cpu_share(before: tuple, after: tuple, min_wall: float = 0.1) -> dict[str, float | None]:
    """What the machine gave this process between two :func:`cpu_sample`\\ s, in cores (CPU seconds per second).

    ``ours_cores`` (user + system), ``sys_cores``; ``others_cores``: busy time of everything else on the machine
    (other processes, the kernel's own threads), and ``steal_cores``: time the hypervisor gave the virtual CPUs
    to others (None without ``/proc/stat``, or over a window shorter than ``min_wall`` seconds). ``/proc/stat``
    counts in ticks (10 ms at 100 Hz), so over a window of 0.25 s the machine's figures are good to about 0.1 core.
    A rate measured while ``others_cores`` was near a whole core had about one core of two: that, not the loader,
    halves it."""
    wall = max(after[0] - before[0], 1e-9)
    user, system = after[1] - before[1], after[2] - before[2]
    out: dict[str, float | None] = {"wall_s": wall, "ours_cores": (user + system) / wall, "sys_cores": system / wall,
                                    "others_cores": None, "steal_cores": None}
    if before[3] is not None and after[3] is not None and wall >= min_wall:
        out["others_cores"] = max(0.0, (after[3][0] - before[3][0]) - (user + system)) / wall
        out["steal_cores"] = (after[3][1] - before[3][1]) / wall
    return out


def store_files(path: str) -> list[str]:
    """Every regular file under a local store folder."""
    out = []
    for d, _, names in os.walk(path):
        out.extend(os.path.join(d, n) for n in names)
    return sorted(out)


_libc: Any = None


def _mincore_lib() -> Any:
    global _libc
    if _libc is None:
        lib = ctypes.CDLL(ctypes.util.find_library("c"), use_errno=True)
        lib.mmap.restype = ctypes.c_void_p
        lib.mmap.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int, ctypes.c_int, ctypes.c_int,
                             ctypes.c_long]  # fmt: skip
        lib.munmap.argtypes = [ctypes.c_void_p, ctypes.c_size_t]
        lib.mincore.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_void_p]
        _libc = lib
    return _libc


def _read_only_fds(files: Sequence[str]) -> Iterator[int]:
    """A read-only descriptor of each file that opens (the others are skipped), closed when the caller moves on."""
    for path in files:
        try:
            fd = os.open(path, os.O_RDONLY)
        except OSError:
            continue
        try:
            yield fd
        finally:
            os.close(fd)


def resident_fraction(files: Sequence[str]) -> float | None:
    """Fraction of the files' pages in the page cache (``mincore``), by bytes; None where it cannot be told."""
    if not sys.platform.startswith("linux"):
        return None
    lib = _mincore_lib()
    page = mmap.PAGESIZE
    total = resident = 0
    with contextlib.closing(_read_only_fds(files)) as fds:
        for fd in fds:
            size = os.fstat(fd).st_size
            if size == 0:
                continue
            addr = lib.mmap(None, size, mmap.PROT_READ, mmap.MAP_SHARED, fd, 0)
            if addr in (None, ctypes.c_void_p(-1).value):
                return None
            try:
                npages = (size + page - 1) // page
                vec = (ctypes.c_ubyte * npages)()
                if lib.mincore(ctypes.c_void_p(addr), size, vec) != 0:
                    return None
                resident += int(np.count_nonzero(np.frombuffer(vec, np.uint8) & 1)) * page
                total += npages * page
            finally:
                lib.munmap(ctypes.c_void_p(addr), size)
    return resident / total if total else None


def drop_page_cache(files: Sequence[str]) -> int:
    """Ask the kernel to drop the files' clean pages (``posix_fadvise(DONTNEED)``); returns files advised."""
    n = 0
    for fd in _read_only_fds(files):
        os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
        n += 1
    return n


def _filesystem(path: str) -> str | None:
    best, fs = "", None
    try:
        with open("/proc/mounts") as fh:
            for line in fh:
                parts = line.split()
                if len(parts) >= 3 and os.path.abspath(path).startswith(parts[1]) and len(parts[1]) > len(best):
                    best, fs = parts[1], f"{parts[2]} on {parts[1]} ({parts[0]})"
    except OSError:
        return None
    return fs


def machine_info(store_path: str | None = None) -> dict[str, Any]:
    """What the figures were measured on: CPU, cores, memory, OS, Python and library versions, filesystem."""
    import importlib.metadata as md

    import psutil

    cpu = platform.processor() or ""
    try:
        with open("/proc/cpuinfo") as fh:
            for line in fh:
                if line.startswith("model name"):
                    cpu = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    versions = {}
    for pkg in ("numpy", "torch", "zarr", "numcodecs", "numba", "tensorstore", "xarray", "xbatcher", "dask",
                "zarrs", "fastload"):  # fmt: skip
        try:
            versions[pkg] = md.version(pkg)
        except md.PackageNotFoundError:
            versions[pkg] = None
    info: dict[str, Any] = {
        "cpu": cpu,
        "cores_logical": os.cpu_count(),
        "cores_usable": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count(),
        "memory_gb": round(psutil.virtual_memory().total / 2**30, 1),
        "os": platform.platform(),
        "python": platform.python_version(),
        "versions": versions,
    }
    try:
        import torch

        info["gpu"] = torch.cuda.get_device_name(0) if torch.cuda.is_available() else None
    except ImportError:
        info["gpu"] = None
    if store_path is not None:
        info["store_filesystem"] = _filesystem(store_path)
    return info


def main(argv: Sequence[str] | None = None) -> int:
    """Print memcpy, the store's page-cache residency, and its raw read rate of every chunk file."""
    import argparse

    p = argparse.ArgumentParser(prog="python -m profiling.roofs", description=main.__doc__)
    p.add_argument("store", help="local store folder")
    p.add_argument("--workers", type=int, default=2)
    a = p.parse_args(argv)
    files = store_files(a.store)
    print(f"memcpy one thread:   {memcpy_gbps():6.1f} GB/s")
    frac = resident_fraction(files)
    print(f"page cache resident: {'?' if frac is None else f'{100 * frac:.0f}%'} of {len(files)} files")

    def read(path: str) -> int:
        with open(path, "rb") as fh:
            return len(fh.read())

    t = time.perf_counter()
    nbytes = sum(_pool_run(read, files, a.workers))
    dt = time.perf_counter() - t
    print(f"raw file reads:      {nbytes / dt / 1e9:6.2f} GB/s ({nbytes / 1e6:.1f} MB, {a.workers} threads)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
