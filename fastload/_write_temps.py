"""A writer's temporaries and their guards: where a store is built before it is published
(:mod:`fastload._write_atomic`), which writer it is, whether that writer is gone, and whether at commit it is still
that writer's.

Why this exists apart from ``_write_atomic.py``: publishing (checking the output, the rename or exchange, Ctrl-C)
needs of a temporary only its name, its inode and whether the file system keeps inode numbers; this module is the
rest of a temporary's life, shared by :class:`fastload.write.StoreWriter` and the tools that write without it
(``fastload stats``, ``_stats_pass``):

- :func:`temp_path` names a writer's temporary ``<out>.tmp-<host>-<pid>-<start>[-w<n>]`` (:func:`make_temporary`
  creates one per writer; :func:`check_temporary` checks at commit that it is still that writer's) (and, just
  before the switch, :func:`~fastload._write_atomic.ready_path` ``<tmp>.new-<inode>``; the replaced store is
  deleted as ``<out>.del-<...>``) and :func:`remove_stale_temporaries` removes what a writer that is provably gone
  left. SIGKILL (the OOM killer, a preempted job) runs no cleanup, so its temporary stays; the next writer of the
  same output removes it, but only one written on its own host (``<host>``, with the pid namespace and boot id: a
  shared file system is seen by writers on other nodes and in other containers, whose processes it cannot check;
  one of the same host name in another namespace or boot is kept with a warning) by a process that no longer runs:
  no ``/proc/<pid>`` and ``kill(pid, 0)`` finds none (``hidepid`` hides other users' live processes from
  ``/proc``), a process started at another time than ``<start>`` (the pid was reused), or a zombie. A live
  writer's temporary is never touched, nor a finished store that never got to the output (it may be the only copy
  of the newest data); :func:`live_writer_of` finds a live writer's temporary of the same output;
- :func:`check_temporary` refuses at commit a temporary removed or replaced while it was written, by three guards
  (what each catches is said there): the writer's token in :data:`UNFINISHED_ATTR`, the marker file
  :data:`WRITER_MARKER` (removed before the store is published) and, on file systems known to keep inode numbers
  (:func:`_stable_inodes`, from ``/proc/self/mountinfo``), the directory's inode; :func:`check_marker` checks the
  marker alone, for ``fastload stats`` (which has no :class:`~fastload.write.StoreWriter`);
- :data:`UNFINISHED_ATTR`, a root attribute the writer sets when it creates the temporary store and deletes just
  before the rename, marks an unfinished store; :func:`unfinished_message` says so for a reader that opens one.

Tests patch names in this module (:func:`_read_mountinfo`, :func:`_proc_start`); :mod:`fastload._write_atomic`
calls :func:`temp_path`, :func:`_inode` and :func:`_stable_inodes` through the module (``temps._stable_inodes``),
so one patch here reaches every caller.

Import these names from :mod:`fastload.write`.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime
import errno
import itertools
import json
import logging
import os
import re
import shutil
import socket
import sys
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from .errors import FastloadError, StoreError

UNFINISHED_ATTR = "fastload_unfinished"
"""Root attribute of a store being written (see :func:`unfinished_message`); removed just before the rename."""
log = logging.getLogger("fastload")



def _host() -> str:
    """Where this process's pids mean something, as it goes into a temporary's name: the machine's name (characters
    other than ``A-Za-z0-9._-`` as ``_``) and, where ``/proc`` tells, ``~<pid namespace inode>~<boot id>``.

    The pid namespace tells containers of one machine apart (they may share a host name and a file system, but a pid
    of one is not the other's to check); it does not tell machines apart: every process outside a container is in
    the initial pid namespace, whose inode is the same on every Linux machine. The boot id
    (``/proc/sys/kernel/random/boot_id``, 32 hex digits, new at each boot, not namespaced) does: two machines of the
    same name on NFS, or this machine before a reboot, get another id."""
    host = re.sub(r"[^A-Za-z0-9._-]", "_", socket.gethostname()) or "localhost"
    try:
        ns = str(os.stat("/proc/self/ns/pid").st_ino)
    except OSError:
        ns = ""
    try:
        with open("/proc/sys/kernel/random/boot_id") as fh:
            boot = re.sub(r"[^0-9a-f]", "", fh.read().lower())
    except OSError:
        boot = ""
    return f"{host}~{ns}~{boot}" if ns or boot else host


def _proc_start(pid: int) -> tuple[int, str] | None:
    """(start time in clock ticks since boot, state letter) of process ``pid`` from ``/proc/<pid>/stat``; None
    when there is no such process. Raises OSError when ``/proc`` cannot tell (not Linux, no permission)."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as fh:
            stat = fh.read().decode("ascii", "replace")
    except (FileNotFoundError, ProcessLookupError):
        if not os.path.isdir("/proc/self"):
            raise OSError("no /proc") from None
        return None
    rest = stat[stat.rindex(")") + 2:].split()  # the command name may hold spaces and parentheses
    return int(rest[19]), rest[0]  # fields 22 (starttime) and 3 (state) of proc(5)


def writer_id() -> tuple[str, int, int]:
    """(host, pid, start time in clock ticks since boot, 0 where ``/proc`` does not tell) of this process."""
    try:
        start = _proc_start(os.getpid())
    except (OSError, ValueError, IndexError):
        start = None
    return _host(), os.getpid(), start[0] if start else 0


def temp_path(out: str | os.PathLike[str], kind: str = "tmp", seq: int | None = None) -> Path:
    """Where this process builds the store for ``out``: ``<out>.<kind>-<host>-<pid>-<start>``, a sibling of ``out``
    (the rename stays on one file system) that names its writer (:func:`remove_stale_temporaries`); with ``seq``,
    ``...-<start>-w<seq>``: one of several writers of ``out`` in this process (:func:`make_temporary`)."""
    out = Path(out)
    host, pid, start = writer_id()
    return out.with_name(f"{out.name}.{kind}-{host}-{pid}-{start}" + ("" if seq is None else f"-w{seq}"))


_SEQ = itertools.count(1)  # numbers this process's writers (make_temporary)
_HELD: set[str] = set()  # the temporaries this process's writers hold: made, not yet published or removed
_HELD_LOCK = threading.Lock()


def release_temporary(tmp: str | os.PathLike[str]) -> None:
    """Say that this process no longer writes the temporary ``tmp`` (:func:`make_temporary`): published, removed,
    or its writer dropped. A temporary of this process that no writer holds is no live writer's
    (:func:`live_writer_of`)."""
    with _HELD_LOCK:
        _HELD.discard(os.fspath(tmp))


def drop_temporary(tmp: str | os.PathLike[str]) -> None:
    """Release and remove the temporary of a writer dropped unfinished (its finalizer: a notebook's writer whose
    write raised and that was never aborted)."""
    release_temporary(tmp)
    shutil.rmtree(tmp, ignore_errors=True)


def make_temporary(out: str | os.PathLike[str]) -> Path:
    """Create, empty, the temporary directory of a new writer of ``out`` and return it: :func:`temp_path` with a
    number no other writer of this process used (two writers of one output in one process shared one temporary:
    the second deleted the first's, and the first then published an empty store). A name that exists is never
    deleted nor reused: the next number is tried."""
    out = Path(out)
    while True:
        tmp = temp_path(out, seq=next(_SEQ))
        with writing(tmp, out, "the temporary store's folder"):  # a full disk: named, not a traceback
            out.parent.mkdir(parents=True, exist_ok=True)
            try:
                os.mkdir(tmp)
            except FileExistsError:
                continue
        with _HELD_LOCK:
            _HELD.add(os.fspath(tmp))
        return tmp


def _parse(suffix: str) -> tuple[str, int, int] | None:
    """(host, pid, start) from the ``<host>-<pid>-<start>`` (or ``...-w<seq>``, :func:`make_temporary`) of a
    temporary's name, or None (another name)."""
    m = re.fullmatch(r"(.+)-([0-9]+)-([0-9]+)(?:-w[0-9]+)?", suffix)
    return None if m is None else (m.group(1), int(m.group(2)), int(m.group(3)))


def writer_gone(pid: int, start: int) -> bool:
    """True only when process ``pid`` of this host, started at ``start`` (clock ticks since boot; 0: unknown), is
    provably not running: no such process, another process started at another time under a reused pid, or a
    zombie (dead, not yet reaped). False when it runs or when that cannot be told."""
    if pid <= 0:
        return False
    try:
        now = _proc_start(pid)
    except (OSError, ValueError, IndexError):  # no /proc: ask the kernel whether the pid exists
        return _no_such_pid(pid)
    if now is None:  # no /proc/<pid>, which hidepid=1/2 also says of another user's live process: ask the kernel
        return _no_such_pid(pid)
    started, state = now
    return state in ("Z", "X") or (start != 0 and started != start)


def _no_such_pid(pid: int) -> bool:
    """True only when the kernel says there is no process ``pid`` (``kill(pid, 0)``: ESRCH); EPERM is a process of
    another user, alive."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    except OSError:  # EPERM: it exists, under another user
        return False
    return False


def _leftover(out: Path, p: Path) -> tuple[str, str, int | None] | None:
    """(kind, ``<host>-<pid>-<start>`` part, inode) of a writer's leftover ``p`` beside ``out``, None for another
    name. Kinds: ``tmp`` (a store being written), ``new`` (:func:`~fastload._write_atomic.ready_path`, with the
    inode it records), ``old`` (the store that was at ``out``, moved aside by the two renames) and ``del`` (the
    replaced store, being deleted)."""
    kind = next((k for k in ("tmp", "old", "del") if p.name.startswith(f"{out.name}.{k}-")), None)
    if kind is None:
        return None
    rest = p.name[len(out.name) + len(kind) + 2:]
    m = re.fullmatch(r"(.+)\.new-([0-9]+)", rest) if kind == "tmp" else None
    return ("new", m.group(1), int(m.group(2))) if m else (kind, rest, None)


def _what(kind: str, p: Path, ino: int | None, out: Path) -> str:
    """What the leftover ``p`` of kind ``kind`` (:func:`_leftover`) holds, for a log message."""
    if kind == "new" and _inode(p) == ino:
        return f"a finished store its writer was putting at {out.name} (it did not get there if the writer is gone)"
    if kind == "new":
        return f"the store that was at {out.name}, exchanged for its writer's new one, to be deleted"
    if kind == "old":
        return f"the store that was at {out.name}, moved aside (if {out.name} is missing, rename it back)"
    if kind == "del":
        return f"what is left of the store that was at {out.name}, replaced and being deleted (not to be restored)"
    return "a store being written (or finished, not yet moved in)"


def remove_stale_temporaries(out: str | os.PathLike[str]) -> list[Path]:
    """Remove what writers of ``out`` on this host left when they were killed; returns the paths removed.

    Only what a writer whose ``<host>`` is this host left, and only once that writer is gone (:func:`writer_gone`):

    - ``<out>.tmp-<writer>`` not yet finished (:data:`UNFINISHED_ATTR`, or no :data:`FINISHED_EVIDENCE`: a group
      whose attributes were never written): removed. A finished one (:func:`_complete`; the writer was killed
      between finishing and moving it in) is kept with a warning: it may be the only copy of the newest data;
    - ``<out>.tmp-<writer>.new-<inode>`` (:func:`~fastload._write_atomic.ready_path`): kept with a warning when it
      is still the directory of that inode (the new store; its writer was killed before the switch); removed when
      it holds another one and
      ``out`` holds that inode (the store an exchange took from ``out``; its writer was killed before deleting it);
      kept with a warning when neither holds that inode (``out`` replaced since, or inodes that change on rename);
    - ``<out>.del-<writer>``, a replaced store being deleted: removed, whatever ``out`` holds;
    - ``<out>.old-<writer>``, the store that was at ``out``, moved aside by the two renames: removed when ``out``
      exists, kept with a warning (rename it back) when ``out`` is missing.

    Kept and named in the log: a temporary of an earlier fastload (``<out>.tmp-<pid>``, which does not name its
    host), one of this host name in another pid namespace or boot (:func:`_host`: a container restarted after the
    OOM killer, a reboot), whose writer cannot be checked from here (warning), and another host's (info). Never
    touched: a live writer's, anything else.
    """
    out = Path(out)
    if not out.parent.is_dir():
        return []
    host = _host()
    removed = []
    for p in sorted(out.parent.iterdir()):
        left = _leftover(out, p)
        if left is None or not (p.is_dir() or p.is_symlink()) or (left[0] == "tmp" and p.is_symlink()):
            continue
        kind, rest, ino = left
        who = _parse(rest)
        if who is None:
            if kind == "tmp" and rest.isdigit():
                log.warning("%s: an unfinished store left by an interrupted writer of an earlier fastload (its name "
                            "does not say on which host); delete it once no writer of %s runs", p, out)  # fmt: skip
            continue
        h, pid, start = who
        if h != host:
            if h.split("~")[0] == host.split("~")[0]:  # same host name; another container, boot or machine
                log.warning("%s: %s, left by writer %d on %s: the same host name as this one (%s) but another pid "
                            "namespace or boot (a restarted container, a rebooted machine, another machine of that "
                            "name), whose processes cannot be checked from here, so it is kept; it is safe to delete "
                            "once no writer of %s runs", p, _what(kind, p, ino, out), pid, h, host, out)  # fmt: skip
            else:
                log.info("%s: %s, left by writer %d on another host (%s), whose processes cannot be checked from "
                         "here, so it is kept; it is safe to delete once no writer of %s runs", p,
                         _what(kind, p, ino, out), pid, h, out)  # fmt: skip
            continue
        if not writer_gone(pid, start):
            continue
        out_there = out.exists() or out.is_symlink()
        if (kind == "new" and _inode(p) == ino) or (kind == "tmp" and _complete(p)):
            now = (f"{out.name} holds another store (older or newer: compare them). To use this one, move that one "
                   f"away and rename this one to {out.name}" if out_there else
                   f"{out.name} is missing. Rename it to {out.name} to use it")  # fmt: skip
            log.warning("%s: a finished store left by writer %d (gone), killed before it put it at %s; %s; or delete "
                        "it", p, pid, out.name, now)  # fmt: skip
            continue
        if kind == "old" and not out_there:
            log.warning("%s: the store that was at %s, moved aside by writer %d (gone), which was killed before it "
                        "put its new store there; rename it back to %s", p, out, pid, out.name)  # fmt: skip
            continue
        if kind == "new" and _inode(out) != ino:  # neither name holds the writer's new store
            log.warning("%s: a store left by writer %d (gone) at the name its new store had just before the switch, "
                        "but not that store (inode %d), while %s does not hold it either (replaced since, or a file "
                        "system whose inodes change on rename): it cannot tell which store this is, so it is kept; "
                        "compare it with %s, then delete it", p, pid, ino, out.name, out.name)  # fmt: skip
            continue
        if p.is_symlink():
            with contextlib.suppress(OSError):
                p.unlink()  # the link that was at out: what it points to stays
        else:
            shutil.rmtree(p, ignore_errors=True)
        if p.exists() or p.is_symlink():
            log.warning("%s: could not remove all of this debris of writer %d (gone)", p, pid)
            continue
        why = {"tmp": "an unfinished store",
               "new": f"the store that was at {out.name}, exchanged for the writer's new one, which stopped "
                      "(killed or interrupted) before deleting it",
               "old": f"the store that was at {out.name}, moved aside for the writer's new one ({out.name} holds a "
                      "store again)",
               "del": f"what was left of the store that was at {out.name}, replaced by the writer's new one, which "
                      "stopped (killed or interrupted) before it had deleted it"}[kind]  # fmt: skip
        log.warning("removed %s: %s, left by writer %d on %s, which is no longer running", p, why, pid, h)
        removed.append(p)
    return removed


def root_attrs(store: Path) -> dict[str, Any] | None:
    """The root attributes of the zarr store in the folder ``store``, as its metadata on disk holds them
    (``zarr.json``, or ``.zgroup``/``.zarray`` and its ``.zattrs`` if any); None when there is no such metadata or
    it cannot be read."""
    try:
        if (store / "zarr.json").is_file():
            attrs = json.loads((store / "zarr.json").read_text()).get("attributes", {})
        elif (store / ".zgroup").is_file() or (store / ".zarray").is_file():
            attrs = json.loads((store / ".zattrs").read_text()) if (store / ".zattrs").is_file() else {}
        else:
            return None
    except (OSError, ValueError, AttributeError):  # unreadable, not JSON, not an object
        return None
    return attrs if isinstance(attrs, dict) else None


FINISHED_EVIDENCE = ("fastload_layout", "fastload_norm")
"""Root attributes a fastload writer sets in the same write as :data:`UNFINISHED_ATTR` (the store writer's layout,
``fastload stats``' format version) and keeps when it deletes that mark: root attributes with one of them and
without the mark are a store its writer finished."""


def _complete(store: Path) -> bool:
    """True when the folder ``store`` holds a zarr store's root metadata whose attributes hold one of
    :data:`FINISHED_EVIDENCE` and lack :data:`UNFINISHED_ATTR`: a finished store, not a writer's unfinished one.
    False when there is none or it cannot be read (an empty folder, one a deletion had emptied of its metadata:
    nothing there to keep), and when the attributes hold neither: a writer killed between zarr's ``.zgroup`` and
    its ``.zattrs`` left a group with no attributes, which is no finished store (nothing was written in it)."""
    attrs = root_attrs(store)
    return attrs is not None and UNFINISHED_ATTR not in attrs and any(k in attrs for k in FINISHED_EVIDENCE)


def _settle_zarr(timeout: float = 60.0) -> None:
    """Wait (at most ``timeout`` seconds) for the writes zarr-python still has in flight on its event loop. When one
    chunk write of a block fails (a full disk), zarr raises at once while the block's other writes go on in their
    threads; a clean-up that removed the temporary before they ended saw them recreate files in it (a full tmpfs
    left the temporary behind). Does nothing where zarr has no loop yet, or on that loop's own thread."""
    sync = sys.modules.get("zarr.core.sync")
    loop = getattr(sync, "loop", [None])[0]
    if sync is None or loop is None or threading.current_thread() is getattr(sync, "iothread", [None])[0]:
        return

    async def drain() -> None:
        me = asyncio.current_task()
        pending = [t for t in asyncio.all_tasks() if t is not me]
        if pending:
            await asyncio.wait(pending, timeout=timeout)

    try:
        sync.sync(drain(), loop=loop)
    except Exception as e:  # a closed loop: nothing is in flight there
        log.debug("zarr's writes in flight could not be waited for: %s", e)


@contextlib.contextmanager
def writing(tmp: str | os.PathLike[str], out: str | os.PathLike[str], what: str) -> Iterator[None]:
    """Raise an OSError of the block (a full disk: ENOSPC; a quota: EDQUOT; an I/O error) as a
    :class:`StoreError` naming the output, ``what`` was being written (a variable, a coordinate, the metadata), the
    temporary store ``tmp`` and the error: the tools print a :class:`~fastload.errors.FastloadError` as one line and
    exit 2. Whoever owns ``tmp`` still removes it (an abort, the writer's clean-up)."""
    try:
        yield
    except OSError as e:
        if isinstance(e, FastloadError):  # a ChunkReadError is an OSError already named
            raise
        _settle_zarr()  # before the temporary is removed: the block's other writes must not recreate files there
        code = errno.errorcode.get(e.errno, "") if e.errno else ""
        why = f"{e.strerror or e}" + (f" [{code}]" if code else "") + (f" ({e.filename})" if e.filename else "")
        raise StoreError(f"{out}: cannot write {what} into the temporary store {tmp}: {why}; nothing was put at "
                         f"{Path(out).name}: write it again once that is fixed") from e  # fmt: skip


_STABLE_INODE_FS = frozenset({
    "ext2", "ext3", "ext4", "xfs", "btrfs", "zfs", "f2fs", "jfs", "reiserfs", "bcachefs", "tmpfs", "ramfs",
    "nfs", "nfs4", "lustre", "gpfs", "ceph", "apfs", "hfs", "hfsplus", "ntfs3",
})
"""File systems (``/proc/self/mountinfo`` types) whose inode numbers stay with a file for its life: there a
directory with another inode is another directory. Not in it: FUSE file systems (``fuse``, ``fuse.sshfs``,
``fuse.gcsfuse``, ...), which without ``use_ino`` number a file afresh each time the kernel looks it up again, and
any type not known here (9p, cifs, virtiofs), and ``overlay``, whose directory inode numbers are not persistent
across layers on different file systems without ``xino`` (``Documentation/filesystems/overlayfs.rst``): their inode
numbers prove nothing (the token and :data:`WRITER_MARKER` still guard there)."""


def _read_mountinfo() -> str | None:
    """The text of ``/proc/self/mountinfo``; None where there is none (not Linux) or it cannot be read."""
    try:
        with open("/proc/self/mountinfo", encoding="utf-8", errors="surrogateescape") as fh:
            return fh.read()
    except OSError:
        return None


def _fs_type(path: str | os.PathLike[str]) -> str | None:
    """The type of the file system holding ``path``; None where that cannot be told (no ``/proc/self/mountinfo``).

    Among the mounts whose mount point is ``path`` or above it, the one listed last: ``/proc/self/mountinfo`` lists
    mounts in the order they were mounted, and a later mount at or above a deeper one hides it (the longest mount
    point, taken before, could be such a hidden one). Where ``path`` exists, the mounts whose device
    (``major:minor``, field 3) is its ``st_dev`` are preferred, when there are any (a btrfs subvolume below a mount
    point has a device of its own, which no line lists)."""
    text = _read_mountinfo()
    if text is None:
        return None
    p = os.path.realpath(os.path.abspath(os.fspath(path)))
    try:
        st = os.stat(p)
        dev: str | None = f"{os.major(st.st_dev)}:{os.minor(st.st_dev)}"
    except (OSError, AttributeError):  # no such path yet; no os.major (Windows)
        dev = None
    covering: list[tuple[str, str]] = []  # (major:minor, type) in mount order
    for line in text.splitlines():
        fields = line.split(" ")
        if len(fields) < 7 or "-" not in fields[6:]:
            continue
        point = re.sub(r"\\([0-7]{3})", lambda m: chr(int(m.group(1), 8)), fields[4])  # \040: a space, ...
        sep = fields.index("-", 6)
        if sep + 1 >= len(fields):
            continue
        if p == point or p.startswith(point.rstrip("/") + "/"):
            covering.append((fields[2], fields[sep + 1]))
    same = [t for d, t in covering if d == dev]
    return (same or [t for _, t in covering] or [None])[-1]


def _stable_inodes(path: str | os.PathLike[str]) -> bool:
    """Whether the file system holding ``path`` is known to keep inode numbers (:data:`_STABLE_INODE_FS`)."""
    return _fs_type(path) in _STABLE_INODE_FS


def _inode(path: Path) -> int | None:
    """The inode number of the entry ``path`` (a link's own), None when there is none: a store keeps it when it
    is renamed, so it tells which store a name holds."""
    try:
        return os.lstat(path).st_ino
    except OSError:
        return None


WRITER_MARKER = ".fastload-writer"
"""A file inside a :class:`~fastload.write.StoreWriter`'s (or ``fastload stats``') temporary holding its token
(:func:`write_marker`): zarr never writes it, so a temporary removed and remade by zarr has none. Removed at commit
before the store is published (:func:`remove_marker`): no published store holds it. A reader that lists an
unfinished temporary's members (xarray without consolidated metadata) gets zarr's warning that the object
``.fastload-writer`` is not part of the hierarchy; zarr takes it for no array or group."""


def write_marker(tmp: Path, token: str) -> None:
    """Write :data:`WRITER_MARKER` holding ``token`` inside the writer's new temporary ``tmp``."""
    (Path(tmp) / WRITER_MARKER).write_text(token, encoding="utf-8")


def remove_marker(tmp: Path) -> None:
    """Remove :data:`WRITER_MARKER` from the temporary ``tmp`` (at commit, once :func:`check_temporary` passed):
    the store published holds no file that is not zarr's."""
    with contextlib.suppress(FileNotFoundError):
        (Path(tmp) / WRITER_MARKER).unlink()


def _marker(tmp: Path) -> str | None:
    """The token in ``tmp``'s :data:`WRITER_MARKER`, None when there is none or it cannot be read."""
    try:
        return (Path(tmp) / WRITER_MARKER).read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError):
        return None


def _marker_problem(tmp: Path, token: str) -> str | None:
    """What is wrong with ``tmp``'s :data:`WRITER_MARKER` for the writer of ``token``; None when it holds it."""
    marker = _marker(tmp)
    if marker is None:
        return f"it has no {WRITER_MARKER} (the directory was remade)"
    return None if marker == token else f"its {WRITER_MARKER} holds {marker!r}, not this writer's {token!r}"


def _refuse(tmp: Path, out: Path, found: str) -> StoreError:
    return StoreError(f"{out}: the writer's temporary {tmp} was removed or replaced while it was being written "
                      f"({found}); refusing to publish it at {out.name} (was it deleted, or written by another "
                      "writer?): write the store again")  # fmt: skip


def check_marker(tmp: str | os.PathLike[str], token: str, out: str | os.PathLike[str]) -> None:
    """Raise :class:`StoreError` unless the temporary ``tmp`` still holds :data:`WRITER_MARKER` with ``token``
    (:func:`write_marker`): for writers without :func:`check_temporary`'s root attribute check (``fastload
    stats``). A temporary removed while it was written, remade by zarr's later writes, has none."""
    tmp, out = Path(tmp), Path(out)
    found = "it is gone" if _inode(tmp) is None else _marker_problem(tmp, token)
    if found is not None:
        raise _refuse(tmp, out, found)


def check_temporary(tmp: Path, inode: int, token: str, out: Path) -> None:
    """Raise :class:`StoreError` unless ``tmp`` is still the temporary its writer created: a directory whose root
    attributes hold :data:`UNFINISHED_ATTR` ``token``, that holds :data:`WRITER_MARKER` with ``token`` and, on a
    file system known to keep inode numbers (:func:`_stable_inodes`), is the directory of ``inode``.

    What each guard protects against:

    - the root attribute ``token`` (unique to the writer): the temporary removed while it was written (a
      clean-up, another writer) and remade by zarr's next chunk write, without metadata; another writer's store
      moved to the name (it holds its own token);
    - the marker file: the temporary removed and then remade by this writer's own later metadata writes
      (``set_grid``, ``add_variable`` rewrite the root attributes, token included), with what was written before
      gone. zarr never writes the marker, so the remade directory has none, on any file system and wherever the
      file system's type cannot be told (no ``/proc/self/mountinfo``: macOS, a chroot);
    - the inode, an extra guard for the same case where a new inode number means a new directory (ext4, xfs,
      tmpfs, ...: :data:`_STABLE_INODE_FS`): say, the marker copied in by hand. It is not checked elsewhere: FUSE
      file systems renumber the same directory (the kernel forgets it and looks it up again), which refused the
      commit of a writer whose token matched."""
    now = _inode(tmp)
    if now is None:
        found = "it is gone"
    else:
        attrs = root_attrs(tmp)
        found = ("it holds no zarr metadata" if attrs is None else
                 f"its {UNFINISHED_ATTR} is {attrs.get(UNFINISHED_ATTR)!r}, not this writer's {token!r}"
                 if attrs.get(UNFINISHED_ATTR) != token else _marker_problem(tmp, token))  # fmt: skip
        if found is None and now != inode:
            if _stable_inodes(tmp):
                found = (f"it is the directory of inode {now}, created as {inode}, on a {_fs_type(tmp)} file "
                         "system, whose inode numbers do not change")  # fmt: skip
            else:
                log.debug("%s: directory inode %d, created as %d, on a file system not known to keep inode numbers "
                          "(%s): this writer's token and marker decide", tmp, now, inode, _fs_type(tmp))  # fmt: skip
    if found is not None:
        raise _refuse(tmp, out, found)


def _provably_running(pid: int, start: int) -> bool:
    """True only when ``/proc`` shows process ``pid`` running and started at ``start`` (known, non-zero): no pid
    reuse can pass for it. Where that cannot be told (no ``/proc``: macOS, Windows; a hidden pid), False."""
    if start == 0:
        return False
    try:
        now = _proc_start(pid)
    except (OSError, ValueError, IndexError):
        return False
    return now is not None and now[1] not in ("Z", "X") and now[0] == start


def live_writer_of(out: Path) -> Path | None:
    """A temporary of ``out`` that a live writer on this host is writing (:data:`UNFINISHED_ATTR` in its root
    attributes); None when there is none. A temporary of this process counts only while one of its writers holds
    it (:func:`make_temporary`; one whose write raised and that was dropped does not); another process's only when
    ``/proc`` shows that very process running (:func:`_provably_running`). Where that cannot be told (no
    ``/proc``, pid reuse possible) it is logged, not counted: a crashed writer's temporary must not block its
    output for good."""
    if not out.parent.is_dir():
        return None
    host = _host()
    me, my_start = os.getpid(), writer_id()[2]
    for p in sorted(out.parent.iterdir()):
        left = _leftover(out, p)
        if left is None or left[0] != "tmp" or p.is_symlink() or not p.is_dir():
            continue
        who = _parse(left[1])
        if who is None or who[0] != host or writer_gone(who[1], who[2]):
            continue
        attrs = root_attrs(p)
        if attrs is None or UNFINISHED_ATTR not in attrs:
            continue
        if (who[1], who[2]) == (me, my_start):
            with _HELD_LOCK:
                held = os.fspath(p) in _HELD
            if held:
                return p
        elif _provably_running(who[1], who[2]):
            return p
        else:
            log.warning("%s: may be a live writer's unfinished store (process %d cannot be checked here); writing "
                        "%s all the same", p, who[1], out.name)  # fmt: skip
    return None


def unfinished_message(path: str | os.PathLike[str], attrs: Any) -> str | None:
    """Why the store at ``path`` (root attributes ``attrs``) must not be read, or None when it is a finished one.

    A store whose root attributes hold :data:`UNFINISHED_ATTR` is a writer's temporary: still being written, or
    left by a writer that was killed (SIGKILL, OOM, preemption); its missing chunks read as fill values (NaN).
    """
    if not hasattr(attrs, "get") or attrs.get(UNFINISHED_ATTR) is None:
        return None
    return (f"{path}: an unfinished store ({UNFINISHED_ATTR}: {attrs.get(UNFINISHED_ATTR)}): a writer's temporary, "
            "still being written or left by a writer that was killed; its unwritten chunks would read as fill values. "
            "Read the finished store it is renamed to; delete this one if its writer is gone (the next writer of "
            "the same output does)")  # fmt: skip


def unfinished_attr(out: Path) -> str:
    """The value of :data:`UNFINISHED_ATTR` for a store this process builds for ``out``."""
    host, pid, _ = writer_id()
    when = datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")
    return f"written by process {pid} on {host} since {when}; renamed to {out.name} when complete"
