"""The writer's safety machinery: nothing half written ever appears at the output path, and no existing data is
replaced by mistake.

Why this exists apart from ``write.py``: :class:`fastload.write.StoreWriter` builds a store under a temporary sibling
path and renames it into place; tools that write without the writer (``fastload stats``, ``_stats_pass``) need the
same checks, rename and Ctrl-C handling:

- :func:`check_output` refuses a URL, an output at, inside or around a source, and (with ``overwrite``) an
  existing path that is not a zarr store or an empty directory;
- :func:`move_into_place` renames the finished store to the output, putting a replaced store back if that fails;
- :func:`sigint_deferred` holds Ctrl-C back while a zarr call runs (zarr-python writes on its own thread).

Import these names from :mod:`fastload.write`.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import sys
import threading
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

from .errors import ConfigError, StoreError

_STORE_MARKERS = (".zgroup", ".zattrs", ".zarray", ".zmetadata", "zarr.json")  # what makes a folder a zarr store


def _replaceable(out: Path) -> None:
    """Raise :class:`ConfigError` unless the existing ``out`` is a zarr store or an empty directory."""
    if out.is_dir() and (any((out / m).is_file() for m in _STORE_MARKERS) or not any(out.iterdir())):
        return
    kind = "a directory" if out.is_dir() else "a file"
    raise ConfigError(
        f"{out} is {kind} but not a zarr store (no {'/'.join(_STORE_MARKERS)}); overwrite replaces only a "
        "zarr store: remove it yourself or choose another output path"
    )


def check_output(
    out: str | os.PathLike[str], *, overwrite: bool, sources: Sequence[str | os.PathLike[str]] = ()
) -> Path:
    """Check that a store may be written at ``out`` without losing data; returns ``out`` made absolute.

    Raises :class:`ConfigError` for a URL, when a local path of ``sources`` (the stores or files the output is
    made from) is ``out``, inside it or contains it, and, with ``overwrite``, when an existing ``out`` is not a
    zarr store (a plain file, or a folder without zarr metadata: replacing it would delete unrelated data); an
    empty directory may be replaced. Raises :class:`StoreError` when ``out`` exists and ``overwrite`` is false.
    """
    if "://" in str(out):
        raise ConfigError(f"out: writing is to local paths only, got {str(out)!r}")
    path = Path(out).absolute()
    real = path.resolve()
    for src in sources:
        if "://" in str(src):
            continue
        s = Path(src).resolve()
        if s == real or real in s.parents or s in real.parents:
            raise ConfigError(
                f"out: {path} is, holds or lies inside the source {str(src)!r}; write the output elsewhere"
            )
    if path.exists() or path.is_symlink():
        if not overwrite:
            raise StoreError(f"{path} already exists; pass overwrite=True (--overwrite) to replace it")
        _replaceable(path)
    return path


def move_into_place(tmp: str | os.PathLike[str], out: str | os.PathLike[str], *, overwrite: bool) -> Path:
    """Rename the finished store ``tmp`` to ``out``; returns ``out``.

    An existing ``out`` (replaced only with ``overwrite``, and only if it is a zarr store: :func:`check_output`)
    is renamed aside first, deleted once the new store is in place, and renamed back if that fails, so a crash
    or a failed rename never loses both. Raises :class:`StoreError` when the rename fails.
    """
    tmp, out = Path(tmp), Path(out)
    old = None
    if out.exists() or out.is_symlink():
        if not overwrite:
            raise StoreError(f"{out} already exists; pass overwrite=True (--overwrite) to replace it")
        _replaceable(out)  # it may have appeared since the output was checked
        old = out.with_name(f"{out.name}.old-{os.getpid()}")
        os.rename(out, old)
    try:
        os.rename(tmp, out)
    except OSError as e:
        if old is not None:  # put the store we replace back where it was
            os.rename(old, out)
        raise StoreError(f"{out}: cannot move the finished store into place: {e}") from e
    if old is not None:
        shutil.rmtree(old) if old.is_dir() and not old.is_symlink() else old.unlink()
    return out


@contextlib.contextmanager
def sigint_deferred() -> Iterator[None]:
    """Hold Ctrl-C (SIGINT) back while the block runs, then deliver it to the handler that was installed.

    zarr-python runs every read and write on its own event-loop thread and the calling thread only waits; a
    ``KeyboardInterrupt`` ends that wait but not the writes, which then land after the caller has cleaned up.
    Wrapping each zarr call makes it finish first. A second Ctrl-C during the block is delivered at once (a write
    that hangs can still be stopped; what it writes later may then outlive the cleanup). Only the main thread
    receives signals and may set a handler; elsewhere this does nothing.
    """
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    received: list[int] = []
    previous = signal.getsignal(signal.SIGINT)
    previous = signal.default_int_handler if previous is None else previous

    def hold(signum: int, frame: Any) -> None:
        received.append(signum)
        if len(received) == 1:
            print("fastload: finishing the block being written (Ctrl-C again to stop at once)", file=sys.stderr,
                  flush=True)
            return
        signal.signal(signal.SIGINT, previous)  # the second: the previous handler, now
        signal.raise_signal(signal.SIGINT)

    signal.signal(signal.SIGINT, hold)
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, previous)
        if len(received) == 1:
            signal.raise_signal(signal.SIGINT)  # the previous handler runs now (default: KeyboardInterrupt)
