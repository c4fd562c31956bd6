"""Publishing a finished store: nothing half written ever appears at the output path, and no existing data is
replaced by mistake.

Why this exists apart from ``write.py``: :class:`fastload.write.StoreWriter` builds a store under a temporary sibling
path and renames it into place; tools that write without the writer (``fastload stats``, ``_stats_pass``) need the
same checks, rename and Ctrl-C handling:

- :func:`check_output` refuses a URL, an output inside another zarr store, an output at, inside or around a
  source, and (with ``overwrite``) an existing path that is not a zarr store or an empty directory;
- :func:`move_into_place` puts the finished store at the output: exchanged for a store there in one step where
  Linux can (``renameat2``), so that the output is never missing; else renamed in after the old one is renamed
  aside, which is put back if that fails. Ctrl-C waits for the switch; once the new store is in, the write is
  done (Ctrl-C then only stops the deletion of the old store). Just before the switch the store is renamed to
  :func:`ready_path` ``<tmp>.new-<inode>``; the replaced store is deleted as ``<out>.del-<...>``;
- :func:`sigint_deferred` holds Ctrl-C back while a zarr call runs (zarr-python writes on its own thread).

The temporaries themselves (their names, one per writer, what a killed writer left, the guards checked at commit,
the unfinished mark :data:`~fastload._write_temps.UNFINISHED_ATTR`) are :mod:`fastload._write_temps`'s. This module
calls that one through the module (``temps._stable_inodes(...)``), so that a test patching a name there reaches
every caller.

Import these names from :mod:`fastload.write`.
"""

from __future__ import annotations

import contextlib
import ctypes
import errno
import functools
import logging
import os
import platform
import re
import shutil
import signal
import sys
import threading
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

from . import _write_temps as temps
from .errors import ConfigError, StoreError

_STORE_MARKERS = (".zgroup", ".zattrs", ".zarray", ".zmetadata", "zarr.json")  # what makes a folder a zarr store
log = logging.getLogger("fastload")


def _replaceable(out: Path) -> None:
    """Raise :class:`ConfigError` unless the existing ``out`` is a zarr store or an empty directory."""
    if out.is_dir() and (any((out / m).is_file() for m in _STORE_MARKERS) or not any(out.iterdir())):
        return
    kind = "a directory" if out.is_dir() else "a file"
    raise ConfigError(
        f"{out} is {kind} but not a zarr store (no {'/'.join(_STORE_MARKERS)}); overwrite replaces only a "
        "zarr store: remove it yourself or choose another output path"
    )


def _local_source(src: str | os.PathLike[str]) -> Path | None:
    """The local path of a source given as a path or an fsspec URL of the local file system (``file://``,
    ``local://``, ``file:``, the target of a chained URL such as ``simplecache::file://...``, or any protocol
    whose fsspec file system is a ``LocalFileSystem``); None for a remote store."""
    s = os.fspath(src)
    if isinstance(s, bytes):
        s = os.fsdecode(s)
    if "://" not in s and "::" not in s and not s.startswith(("file:", "local:")):
        return Path(s)
    target = s.split("::")[-1]  # a chained URL: the last one names the store the others wrap
    try:
        import fsspec
        from fsspec.implementations.local import LocalFileSystem
    except ImportError:  # no fsspec: only its local protocols can be told
        m = re.match(r"(?:file|local):(?://)?(.*)", target)
        return Path(m.group(1)) if m else None
    protocol, _ = fsspec.core.split_protocol(target)
    if protocol in (None, "file", "local") or target.startswith(("file:", "local:")):
        return Path(LocalFileSystem._strip_protocol(target))
    try:
        fs, path = fsspec.core.url_to_fs(target)
    except Exception:  # an unknown protocol or a file system that cannot be made here: not a local one
        return None
    return Path(path) if isinstance(fs, LocalFileSystem) else None


def check_output(
    out: str | os.PathLike[str], *, overwrite: bool, sources: Sequence[str | os.PathLike[str]] = ()
) -> Path:
    """Check that a store may be written at ``out`` without losing data; returns ``out`` made absolute.

    Raises :class:`ConfigError` for a URL, for an ``out`` inside another zarr store, when a local path of
    ``sources`` (the stores or files the output is made from; a ``file://`` or other fsspec URL of the local file
    system counts as its path) is ``out``, inside it or contains it, and, with ``overwrite``, when an existing ``out`` is not a
    zarr store (a plain file, or a folder without zarr metadata: replacing it would delete unrelated data); an
    empty directory may be replaced. Raises :class:`StoreError` when ``out`` exists and ``overwrite`` is false.
    """
    if "://" in str(out):
        raise ConfigError(f"out: writing is to local paths only, got {str(out)!r}")
    path = Path(out).absolute()
    real = path.resolve()
    for src in sources:
        local = _local_source(src)
        if local is None:  # a remote store (s3://, gs://, ...): not on this machine's file system, so not at out
            continue
        s = local.resolve()
        if s == real or real in s.parents or s in real.parents:
            raise ConfigError(
                f"out: {path} is, holds or lies inside the source {str(src)!r}; write the output elsewhere"
            )
    _check_not_inside_store(path, real)
    if path.exists() or path.is_symlink():
        if not overwrite:
            raise StoreError(f"{path} already exists; pass overwrite=True (--overwrite) to replace it")
        _replaceable(path)
    _check_name_length(path)
    return path


def _check_not_inside_store(path: Path, real: Path) -> None:
    """Refuse an output inside another zarr store (a folder above it holds zarr metadata): the new store would
    become a member of that one, and with ``overwrite`` it replaced one of its arrays (``convert a.nc
    era.zarr/t2m --overwrite`` left ``era.zarr``'s t2m all fill value, read as NaN by fastload and xarray alike)."""
    for parent in dict.fromkeys([*path.parents, *real.parents]):  # as given and with links resolved
        marker = next((m for m in _STORE_MARKERS if (parent / m).is_file()), None)
        if marker is not None:
            raise ConfigError(
                f"out: {path} lies inside the zarr store {parent} (it has {marker}); writing there would add to or "
                "replace part of that store: write the output outside it"
            )


def _check_name_length(path: Path) -> None:
    """Refuse, before any work, an output name too long for the longest name the writer gives its store on the way
    (``<out>.tmp-<writer>.new-<inode>``): that rename came only at the end and failed there (ENAMETOOLONG)."""
    longest = ready_path(temps.temp_path(path, seq=10**9), 2**64 - 1).name
    try:
        limit = os.pathconf(path.parent if path.parent.exists() else Path.cwd(), "PC_NAME_MAX")
    except (OSError, ValueError):
        limit = 255
    if len(os.fsencode(longest)) > limit:
        raise ConfigError(
            f"out: the name {path.name!r} ({len(os.fsencode(path.name))} bytes) is too long: the writer builds the "
            f"store beside it under names up to {len(os.fsencode(longest)) - len(os.fsencode(path.name))} bytes "
            f"longer, and this file system allows {limit}; use a name of at most "
            f"{limit - (len(os.fsencode(longest)) - len(os.fsencode(path.name)))} bytes"
        )


RENAME_EXCHANGE = 2
"""``renameat2`` flag (``<linux/fs.h>``): swap two existing directory entries in one step."""
_AT_FDCWD = -100
_SYS_RENAMEAT2 = {("x86_64", 8): 316, ("aarch64", 8): 276}
"""``renameat2``'s system call number by (machine, pointer size): only 64-bit processes of these two, whose numbers
are fixed (``arch/x86/entry/syscalls/syscall_64.tbl``; ``include/uapi/asm-generic/unistd.h``). A 32-bit process on
a 64-bit kernel (i386, x32, arm) numbers its calls otherwise: it gets no system call and the two renames."""
_NO_EXCHANGE = frozenset({errno.EINVAL, errno.ENOSYS, errno.EOPNOTSUPP, errno.ENOTSUP, errno.EPERM})
"""What a kernel or file system without ``RENAME_EXCHANGE`` answers (before Linux 3.15, some network and FUSE
file systems), and a seccomp filter's usual answer to a system call it does not allow (EPERM; a real permission
problem fails the renames as well, and is reported there): take the two renames."""


@functools.cache
def _renameat2() -> tuple[Callable[[bytes, bytes, int], int], str] | None:
    """(``renameat2(AT_FDCWD, old, AT_FDCWD, new, flags)``, what calls it) on Linux: glibc's wrapper (2.28 and
    later), else ``syscall(2)`` where :data:`_SYS_RENAMEAT2` knows the number; None elsewhere. The call returns 0,
    or -1 with the error in ``ctypes.get_errno()``."""
    if not sys.platform.startswith("linux"):
        return None
    try:
        libc = ctypes.CDLL(None, use_errno=True)  # the symbols the interpreter is linked with: libc among them
    except OSError:
        return None
    fn = getattr(libc, "renameat2", None)
    if fn is not None:
        fn.argtypes = [ctypes.c_int, ctypes.c_char_p, ctypes.c_int, ctypes.c_char_p, ctypes.c_uint]
        fn.restype = ctypes.c_int
        return (lambda old, new, flags: fn(_AT_FDCWD, old, _AT_FDCWD, new, flags)), "renameat2"
    nr = _SYS_RENAMEAT2.get((platform.machine(), ctypes.sizeof(ctypes.c_void_p)))
    syscall = getattr(libc, "syscall", None)
    if nr is None or syscall is None:
        return None
    syscall.restype = ctypes.c_long  # variadic: every argument a full register (long or pointer)
    syscall.argtypes = [ctypes.c_long, ctypes.c_long, ctypes.c_char_p, ctypes.c_long, ctypes.c_char_p, ctypes.c_long]
    return (lambda old, new, flags: syscall(nr, _AT_FDCWD, old, _AT_FDCWD, new, flags)), f"syscall {nr}"


def _exchange(tmp: Path, out: Path) -> bool:
    """Swap the directory entries ``tmp`` and ``out`` in one step (``renameat2`` with :data:`RENAME_EXCHANGE`):
    ``out`` names the new store and ``tmp`` the old one, and at no moment is ``out`` missing. Returns False, having
    changed nothing, where the system or file system cannot (:data:`_NO_EXCHANGE`); raises OSError on any other
    failure (nothing changed either)."""
    call = _renameat2()
    if call is None:
        log.debug("%s: no renameat2 here (%s): the two renames", out, sys.platform)
        return False
    fn, how = call
    if fn(os.fsencode(tmp), os.fsencode(out), RENAME_EXCHANGE) == 0:
        log.debug("%s: the new store exchanged for the old one in one step (%s RENAME_EXCHANGE)", out, how)
        return True
    err = ctypes.get_errno()
    if err in _NO_EXCHANGE:
        log.debug("%s: %s RENAME_EXCHANGE: %s: the two renames", out, how, os.strerror(err))
        return False
    raise OSError(err, os.strerror(err), str(tmp), None, str(out))


def ready_path(tmp: str | os.PathLike[str], inode: int) -> Path:
    """``<tmp>.new-<inode>``: the name a finished store (directory inode ``inode``) has while it is switched with
    the output. Before the switch that name holds the new store (same inode); after an exchange, the replaced one
    (another inode): :func:`~fastload._write_temps.remove_stale_temporaries` tells the two apart."""
    tmp = Path(tmp)
    return tmp.with_name(f"{tmp.name}.new-{inode}")


def _switch(tmp: Path, out: Path, ino: int) -> Path | None:
    """Put the finished store ``tmp`` (inode ``ino``) at the existing ``out``, by way of :func:`ready_path`; returns
    where the replaced store now is (``<out>.del-<writer>``, or where it stays if that rename fails), None if it
    was a link, unlinked. On any failure or interrupt before the new store is at ``out``, ``out`` is put back as
    it was and the new store back at ``tmp``; an OSError is raised as :class:`StoreError`."""
    new, old = ready_path(tmp, ino), temps.temp_path(out, "old")
    step = "ready"
    try:
        os.rename(tmp, new)
        step = "exchange"
        if _exchange(new, out):
            replaced = new  # the old store, at the name the new one had
        else:
            step = "aside"
            os.rename(out, old)
            step = "in"
            os.rename(new, out)
            replaced = old
    except BaseException as e:  # Ctrl-C too (a second one; the first waits): put both stores back where they were
        if temps._inode(out) == ino:
            raise  # the new store got in (a second Ctrl-C just after): move_into_place says so
        with contextlib.suppress(OSError):
            if not (out.exists() or out.is_symlink()) and (old.exists() or old.is_symlink()):
                os.rename(old, out)
        with contextlib.suppress(OSError):
            if temps._inode(new) == ino:
                os.rename(new, tmp)
        if not isinstance(e, OSError):
            raise
        where = f"; the new store is at {new}" if temps._inode(new) == ino else ""
        if not (out.exists() or out.is_symlink()):
            where += f"; the store that was at {out.name} is at {old}"
        if step == "exchange":
            raise StoreError(f"{out}: cannot exchange the finished store {tmp.name} for the one there: {e}") from e
        if step == "aside":
            raise StoreError(f"{out}: cannot move the store there aside to {old.name}: {e}{where}") from e
        raise StoreError(f"{out}: cannot move the finished store into place: {e}{where}") from e
    if replaced.is_symlink() or not replaced.is_dir():
        with contextlib.suppress(OSError):
            replaced.unlink()  # a link to a store: the link goes, what it points to stays
            return None
        return replaced
    doomed = temps.temp_path(out, "del")
    try:
        os.rename(replaced, doomed)  # named as being deleted: never to be renamed back (remove_stale_temporaries)
    except OSError:
        return replaced  # an .old- or .new- of ours: the next writer tells what it is
    return doomed


def _delete(replaced: Path, out: Path) -> None:
    """Delete ``replaced``, the store that was at ``out`` (now at ``<out>.del-<writer>``, say). A failure is logged,
    not raised: the new store is in place, and the next writer of ``out`` removes what is left. So is Ctrl-C, which
    stops the deletion (a large store takes minutes) and leaves the rest to that writer."""
    try:
        shutil.rmtree(replaced)
    except OSError as e:
        log.warning("%s: the new store is in place, but the one it replaced, now at %s, could not be deleted (%s); "
                    "the first writer of %s after this process removes it", out, replaced, e, out.name)  # fmt: skip
    except KeyboardInterrupt:
        _interrupted_after(out, replaced)


def _interrupted_after(out: Path, replaced: Path | None) -> None:
    """Say that Ctrl-C came once the new store was at ``out``: the write is done; what is left of the old store
    stays at ``replaced`` (None: nothing), for the next writer of ``out`` to remove."""
    left = "" if replaced is None else (f"; what is left of the store it replaced, at {replaced}, is removed by the "
                                        f"first writer of {out.name} after this process (or delete it)")  # fmt: skip
    log.warning("%s: interrupted once the new store was in place: %s holds the new, complete store%s", out,
                out.name, left)  # fmt: skip


def move_into_place(
    tmp: str | os.PathLike[str], out: str | os.PathLike[str], *, overwrite: bool, inode: int | None = None
) -> Path:
    """Rename the finished store ``tmp`` to ``out``; returns ``out``.

    An existing ``out`` (replaced only with ``overwrite``, and only if it is a zarr store: :func:`check_output`) is
    exchanged for the new store in one step where Linux and the file system can (``renameat2`` with
    ``RENAME_EXCHANGE``): a reader of ``out`` always finds the old store or the new one, never nothing, and a
    process killed at any moment leaves one of them there. Elsewhere (not Linux, a file system or seccomp filter
    answering EINVAL, ENOSYS, EOPNOTSUPP or EPERM) the old store is renamed aside to ``<out>.old-<writer>`` and the
    new one in; for the moment between the two renames ``out`` is missing, and the old store is renamed back if
    the second rename fails. A debug log says which way was taken. Just before, the new store is renamed to
    :func:`ready_path`, whose name records its inode: a writer killed before the switch leaves a finished store
    there that :func:`~fastload._write_temps.remove_stale_temporaries` keeps, one killed after it the old store,
    which it removes.

    The switch runs with Ctrl-C held back (:func:`sigint_deferred`). Once the new store is at ``out`` the write
    is done: the old store, renamed to ``<out>.del-<writer>``, is deleted, and Ctrl-C (or a failure) only stops
    that deletion, with a log warning; the next writer removes the rest. Raises :class:`StoreError` when the store
    cannot be moved into place (then ``out`` is as it was and ``tmp`` holds the new store), and KeyboardInterrupt
    for Ctrl-C before the switch (likewise). With ``inode``, ``tmp`` must still be the directory of that inode (the
    one its writer created: :func:`~fastload._write_temps.check_temporary`) where the file system is known to keep
    inode numbers.
    """
    tmp, out = Path(tmp), Path(out)
    there = out.exists() or out.is_symlink()
    if there and not overwrite:
        raise StoreError(f"{out} already exists; pass overwrite=True (--overwrite) to replace it")
    if there:
        _replaceable(out)  # it may have appeared since the output was checked
    ino = temps._inode(tmp)
    if ino is None:
        raise StoreError(f"{out}: the finished store {tmp} is missing")
    if inode is not None and ino != inode and temps._stable_inodes(tmp):  # elsewhere the number proves nothing
        raise StoreError(f"{out}: the finished store {tmp} was replaced (directory inode {ino}, created as {inode}); "
                         f"refusing to publish it")  # fmt: skip
    replaced = None
    try:
        with sigint_deferred(f"putting the new store in place at {out}"):  # Ctrl-C acts once that is done
            if not there:
                try:
                    os.rename(tmp, out)
                except OSError as e:
                    raise StoreError(f"{out}: cannot move the finished store into place: {e}") from e
            else:
                replaced = _switch(tmp, out, ino)
    except KeyboardInterrupt:
        if temps._inode(out) != ino:
            raise  # before the switch: nothing changed
        if replaced is None and there:  # a second Ctrl-C between the switch and the rename to .del-
            replaced = next((p for p in (ready_path(tmp, ino), temps.temp_path(out, "old"),
                                         temps.temp_path(out, "del"))
                             if p.exists() or p.is_symlink()), None)  # fmt: skip
        _interrupted_after(out, replaced)
        return out
    if replaced is not None:
        _delete(replaced, out)
    return out


@contextlib.contextmanager
def sigint_deferred(what: str = "the block being written") -> Iterator[None]:
    """Hold Ctrl-C (SIGINT) back while the block runs, then deliver it to the handler that was installed; ``what``
    the block does goes into the line printed at the first Ctrl-C.

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
    if previous is signal.SIG_IGN:  # (nohup, a script's background job): Ctrl-C is ignored anyway, say nothing
        yield
        return
    previous = signal.default_int_handler if previous is None else previous

    def hold(signum: int, frame: Any) -> None:
        received.append(signum)
        if len(received) == 1:
            print(f"fastload: finishing {what} (Ctrl-C again to stop at once)", file=sys.stderr, flush=True)
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
