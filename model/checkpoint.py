"""Checkpoints: per-field component state (to assemble Multiformers from single-field runs) and exact resume.

Why: AtmoRep trains single-field models first and couples them later, so a checkpoint keeps each field's
``embed``, ``encoder``, ``decoder`` and ``tail`` state apart; :func:`assemble_multiformer` builds a coupled model
from several single-field checkpoints (the coupling heads, absent there, keep their zero-initialised output, so the
assembled model starts out predicting exactly what the single-field models predict). For exact resume a
checkpoint also holds the optimizer state, the step and the RNG states, written to a temporary file and renamed
when complete (a crash never leaves a half-written checkpoint under the real name); the file and then its directory
are fsynced, and the file gets the mode the umask gives (0o644 under the usual 022), as any file ``open`` creates.

The temporary, ``.<name>.tmp-<host>-<pid>-<start>-w<n>`` beside the checkpoint, names its writer: a save killed by
SIGKILL (the OOM killer, a preempted job) runs no cleanup and leaves it, full size, so the next save of the same
checkpoint removes it, once its writer is provably gone on this host (:func:`_remove_stale_temporaries`). The
writer's name and liveness rules are those of ``fastload/_write_temps.py`` for stores (``model`` may not import
``fastload``, so the few functions they need are repeated here).

File layout (``torch.save`` of a dict, loadable with ``weights_only=True``)::

    {"format": 1, "kind": "multiformer" | "module", "config": {...}, "multiformer_config": {...} (Forecaster),
     "components": {field: {"embed": sd, "encoder": sd, "decoder": sd, "tail": sd}}   # multiformer
     "state": sd,                                                                     # any other module
     "optimizer": sd | None, "step": int, "extra": dict, "rng": {"torch": ..., "cuda": [...]}}
"""

from __future__ import annotations

import errno
import hashlib
import itertools
import logging
import os
import re
import socket
import stat
import warnings
import zipfile
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from torch import nn

from .multiformer import Multiformer, MultiformerConfig

__all__ = ["save_checkpoint", "load_checkpoint", "read_checkpoint", "check_checkpoint_file",
           "assemble_multiformer", "split_components", "COMPONENTS"]

FORMAT = 1
COMPONENTS = ("embed", "encoder", "decoder", "tail")
_SPEC_MUST_MATCH = ("levels", "num_tokens", "token_size", "embed_dim", "num_heads")


def _split_key(key: str) -> tuple[str, str, str]:
    """``encoder.layers.3.temperature.attn.qkv.weight`` -> (``temperature``, ``encoder``, ``layers.3.attn.qkv.weight``)."""
    parts = key.split(".")
    if parts[0] in ("embed", "tail"):
        return parts[1], parts[0], ".".join(parts[2:])
    if parts[0] in ("encoder", "decoder") and parts[1] == "layers":
        return parts[3], parts[0], ".".join(["layers", parts[2], *parts[4:]])
    raise ValueError(f"checkpoint: state key {key!r} belongs to no field component")


def _join_key(field: str, component: str, rest: str) -> str:
    if component in ("embed", "tail"):
        return f"{component}.{field}.{rest}"
    parts = rest.split(".")
    return ".".join([component, "layers", parts[1], field, *parts[2:]])


def _is_new_coupling(component: str, key: str, saved_coupled: Any) -> bool:
    """Whether ``key`` is a coupling head (``layers.<i>.cross.<g>.*``) to a field the saved run did not couple to."""
    parts = key.split(".")
    return component == "encoder" and len(parts) > 4 and parts[2] == "cross" and parts[3] not in saved_coupled


def split_components(model: Multiformer) -> dict[str, dict[str, dict[str, torch.Tensor]]]:
    """``{field: {component: state_dict}}`` of a Multiformer (tensors detached, not copied)."""
    out: dict[str, dict[str, dict[str, torch.Tensor]]] = {}
    for key, value in model.state_dict().items():
        field, comp, rest = _split_key(key)
        out.setdefault(field, {c: {} for c in COMPONENTS})[comp][rest] = value
    return out


def _differences(now: Any, saved: Any, prefix: str = "") -> list[str]:
    """Dotted names of the settings that differ, with both values (``fields.t.levels: saved [...], model [...]``);
    fields are named by their name where both list the same names in the same order."""
    if isinstance(now, Mapping) and isinstance(saved, Mapping):
        out = []
        for k in sorted(set(now) | set(saved), key=str):
            if now.get(k) != saved.get(k):
                out += _differences(now.get(k), saved.get(k), f"{prefix}{k}.")
        return out
    named = (isinstance(now, list) and isinstance(saved, list) and len(now) == len(saved)
             and all(isinstance(x, Mapping) and "name" in x for x in [*now, *saved])
             and [x["name"] for x in now] == [x["name"] for x in saved])
    if named:
        out = []
        for a, b in zip(now, saved):
            if a != b:
                out += _differences(a, b, f"{prefix}{a['name']}.")
        return out
    return [f"{prefix.rstrip('.')}: saved {saved!r}, model {now!r}"]


def _rng_state() -> dict[str, Any]:
    cuda = [s for s in torch.cuda.get_rng_state_all()] if torch.cuda.is_available() else []
    return {"torch": torch.get_rng_state(), "cuda": cuda}


def save_checkpoint(
    path: str | os.PathLike[str],
    model: nn.Module,
    optimizer: torch.optim.Optimizer | None = None,
    *,
    step: int = 0,
    extra: Mapping[str, Any] | None = None,
) -> Path:
    """Write ``model`` (and ``optimizer``, ``step``, RNG states, ``extra``) to ``path`` atomically; returns the path."""
    path = Path(path)
    config = getattr(model, "config", None)
    payload: dict[str, Any] = {
        "format": FORMAT,
        "config": config.to_dict() if hasattr(config, "to_dict") else None,
        "optimizer": None if optimizer is None else optimizer.state_dict(),
        "step": int(step),
        "extra": dict(extra or {}),
        "rng": _rng_state(),
    }
    mcfg = getattr(model, "multiformer_config", None)  # a Forecaster: keep what rebuilds its encoder too
    if hasattr(mcfg, "to_dict"):
        payload["multiformer_config"] = mcfg.to_dict()
    if isinstance(model, Multiformer):
        payload["kind"], payload["components"] = "multiformer", split_components(model)
    else:
        payload["kind"], payload["state"] = "module", model.state_dict()
    path.parent.mkdir(parents=True, exist_ok=True)
    _remove_stale_temporaries(path)  # before writing: a killed save's temporary may be what fills the disk
    fd, tmp = _create_temporary(path)
    try:
        with os.fdopen(fd, "wb") as fh:
            torch.save(payload, fh)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    _fsync_directory(path.parent)  # the rename itself survives a crash (else the old file may come back)
    return path


def _create_temporary(path: Path) -> tuple[int, str]:
    """A new file beside ``path`` (a hidden name that names this process: :func:`_temp_prefix`, created
    exclusively) with the mode ``open`` gives: 0o666 less the umask. ``tempfile.mkstemp`` creates 0o600, so a
    checkpoint was unreadable by the group other jobs run as."""
    host, pid, start = _writer_id()
    prefix = _temp_prefix(path)
    for _ in range(100):
        tmp = str(path.parent / f"{prefix}{host}-{pid}-{start}-w{next(_SEQ)}")
        try:
            return os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_BINARY", 0), 0o666), tmp
        except FileExistsError:
            continue
    raise FileExistsError(f"checkpoint: no free temporary name beside {str(path)!r}")


# A writer's temporary and whether its writer is gone: the rules of fastload/_write_temps.py (_host, _proc_start,
# writer_gone, _no_such_pid), repeated because model must not import fastload (tests/test_layering.py).

log = logging.getLogger("model")
_SEQ = itertools.count(1)  # numbers this process's temporaries (two saves of one checkpoint in two threads)
_WARNED: set[str] = set()  # kept temporaries already named in a warning: each is named once per process
_NAME_MAX = 255  # bytes in a file name (ext4, xfs, tmpfs, NFS, ...)
_WRITER_ROOM = (64 + 1 + 20 + 1 + 32) + (1 + 20) + (1 + 20) + (2 + 20)  # <host>~<ns>~<boot>-<pid>-<start>-w<n>
_OLD_TEMP = re.compile(r"\.(.+)\.[0-9a-f]{12}\.tmp")  # before 2026-11-23: .<name>.<12 hex digits>.tmp, no writer


def _host() -> str:
    """Where this process's pids mean something, as it goes into a temporary's name: the machine's name (characters
    other than ``A-Za-z0-9._-`` as ``_``) and, where ``/proc`` tells, ``~<pid namespace inode>~<boot id>``: the
    namespace tells containers of one machine apart, the boot id (new at each boot) machines of one name and this
    machine before a reboot (``fastload/_write_temps.py``'s ``_host``)."""
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
            text = fh.read().decode("ascii", "replace")
    except (FileNotFoundError, ProcessLookupError):
        if not os.path.isdir("/proc/self"):
            raise OSError("no /proc") from None
        return None
    rest = text[text.rindex(")") + 2:].split()  # the command name may hold spaces and parentheses
    return int(rest[19]), rest[0]  # fields 22 (starttime) and 3 (state) of proc(5)


def _writer_id() -> tuple[str, int, int]:
    """(host, pid, start time in clock ticks since boot, 0 where ``/proc`` does not tell) of this process."""
    try:
        start = _proc_start(os.getpid())
    except (OSError, ValueError, IndexError):
        start = None
    return _host(), os.getpid(), start[0] if start else 0


def _writer_gone(pid: int, start: int) -> bool:
    """True only when process ``pid`` of this host, started at ``start`` (clock ticks since boot; 0: unknown), is
    provably not running: no such process, another process under a reused pid (another start time), or a zombie.
    False when it runs or when that cannot be told."""
    if pid <= 0:
        return False
    try:
        now = _proc_start(pid)
    except (OSError, ValueError, IndexError):  # no /proc: ask the kernel whether the pid exists
        now = None
    if now is None:  # also what hidepid=1/2 says of another user's live process: ask the kernel
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return True
        except OSError:  # EPERM: it exists, under another user
            return False
        return False
    started, state = now
    return state in ("Z", "X") or (start != 0 and started != start)


def _temp_prefix(path: Path) -> str:
    """``.<name>.tmp-``: what the names of ``path``'s temporaries start with, before the writer's
    ``<host>-<pid>-<start>-w<n>`` (at most :data:`_WRITER_ROOM` bytes). A name too long to leave room for that
    within a file name's 255 bytes is cut short and followed by ``~`` and 12 hex digits of its SHA-1, so that the
    prefix stays that checkpoint's (it depends on the name alone: every writer of the checkpoint finds it)."""
    prefix = f".{path.name}.tmp-"
    if len(prefix.encode()) + _WRITER_ROOM <= _NAME_MAX:
        return prefix
    digest = hashlib.sha1(path.name.encode()).hexdigest()[:12]
    keep = _NAME_MAX - _WRITER_ROOM - len(f".~{digest}.tmp-")
    return f".{path.name.encode()[:keep].decode(errors='ignore')}~{digest}.tmp-"


def _whole_checkpoint(p: Path) -> bool:
    """Whether the file ``p`` is a whole ``torch.save`` archive (a zip whose central directory, at its end, lists a
    ``data.pkl``): a save killed before it had written everything left no central directory."""
    try:
        with zipfile.ZipFile(p) as z:
            return any(n.endswith("/data.pkl") or n == "data.pkl" for n in z.namelist())
    except Exception:  # noqa: BLE001 - a truncated file's tail can hold anything: then it is no whole archive
        return False


def _mb(size: int) -> str:
    return f"{size / 1e6:.1f} MB"


def _remove_stale_temporaries(path: Path) -> list[Path]:
    """Remove the temporaries of checkpoint ``path`` that saves on this host left when they were killed; returns
    the paths removed. Called by :func:`save_checkpoint` before it writes.

    Removed: a temporary (a regular file) whose writer ran on this host (``<host>``, with pid namespace and boot
    id) and is provably gone (:func:`_writer_gone`: no such process, a reused pid, a zombie), unless it is a whole
    checkpoint (its writer was killed between the last byte and the rename: it may be the newest state).

    Kept, each named once per process in one ``UserWarning`` with its size: another live process's temporary (a
    save in progress: do two runs write this checkpoint?), another host's or another pid namespace's or boot's
    (its writer cannot be checked from here: a shared file system), a dead writer's whole checkpoint, one of the
    name an earlier version gave (``.<name>.<12 hex digits>.tmp``, which does not name its writer), and one that
    could not be removed. Never touched: this process's own temporaries, and anything else."""
    prefix = _temp_prefix(path)
    try:
        entries = sorted(path.parent.iterdir())
    except OSError:  # a folder that cannot be listed: nothing to clean, and the save itself still works
        return []
    host, me = _host(), _writer_id()
    removed: list[Path] = []
    kept: list[tuple[Path, int, str]] = []  # (temporary, bytes, why it is kept)
    for p in entries:
        old = _OLD_TEMP.fullmatch(p.name)
        who = re.fullmatch(r"(.+)-([0-9]+)-([0-9]+)-w[0-9]+", p.name[len(prefix):]) \
            if p.name.startswith(prefix) else None  # fmt: skip
        if who is None and (old is None or old.group(1) != path.name):
            continue
        try:
            st = os.lstat(p)
        except FileNotFoundError:  # removed meanwhile (its writer renamed it, another save removed it)
            continue
        if not stat.S_ISREG(st.st_mode):
            continue
        if who is None:
            kept.append((p, st.st_size, "named by an earlier version, which does not say by which process; safe "
                                        "to delete once no save of this checkpoint runs"))
            continue
        h, pid, start = who.group(1), int(who.group(2)), int(who.group(3))
        if h != host:
            if h.split("~")[0] == host.split("~")[0]:
                where = (f"on {h}: this host's name ({host}) but another pid namespace or boot (a restarted "
                         "container, a rebooted machine, another machine of that name)")
            else:
                where = f"on another host ({h})"
            kept.append((p, st.st_size, f"written by process {pid} {where}, whose processes cannot be checked "
                                        "from here; safe to delete once no save of this checkpoint runs there"))
            continue
        if (h, pid, start) == me or not _writer_gone(pid, start):
            if (h, pid, start) != me:
                kept.append((p, st.st_size, f"being written by process {pid}, running on this host (does another "
                                            "run save to the same checkpoint?)"))
            continue
        if _whole_checkpoint(p):
            kept.append((p, st.st_size, f"a whole checkpoint written by process {pid} (gone), killed before it "
                                        f"renamed it to {path.name}: it may be newer than {path.name}; rename it "
                                        "to use it, or delete it"))
            continue
        try:
            p.unlink()
        except FileNotFoundError:
            continue
        except OSError as e:  # another user's file in a shared folder, a read-only mount
            kept.append((p, st.st_size, f"left by process {pid} (gone) but not removable here ({e.strerror})"))
            continue
        log.info("checkpoint %s: removed %s (%s), the temporary of a save by process %d, which was killed",
                 path, p.name, _mb(st.st_size), pid)
        removed.append(p)
    new = [k for k in kept if str(k[0]) not in _WARNED]
    if new:
        _WARNED.update(str(p) for p, _, _ in new)
        total = sum(size for _, size, _ in new)
        warnings.warn(f"checkpoint {str(path)!r}: kept {len(new)} temporary file(s) beside it ({_mb(total)}) "
                      "that this save cannot remove as a killed save's: "
                      + "; ".join(f"{p.name} ({_mb(size)}): {why}" for p, size, why in new),
                      UserWarning, stacklevel=3)
    return removed


def _fsync_directory(directory: Path) -> None:
    """Flush a directory's entries (a rename into it) to disk; nothing where directories cannot be opened or
    synced (Windows; some network file systems refuse with EINVAL)."""
    try:
        fd = os.open(directory, os.O_RDONLY | getattr(os, "O_DIRECTORY", 0))
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError as e:
        if e.errno not in (errno.EINVAL, errno.ENOTSUP, errno.EBADF):
            raise
    finally:
        os.close(fd)


def check_checkpoint_file(path: str | os.PathLike[str], what: str = "checkpoint") -> Path:
    """Check cheaply that ``path`` can be a checkpoint :func:`save_checkpoint` wrote, without loading it: a file
    that is a whole zip archive of ``torch.save``'s layout (its central directory, at the end, is all that is read:
    a truncated copy has none). Run before any work starts, so that a wrong path fails at once; the payload's
    layout is checked when it is read (:func:`read_checkpoint`).

    ``what`` names the setting the path came from (``--checkpoint``, ``--resume``,
    ``forecast.multiformer_checkpoint``) at the head of every message. No file there (or a folder) raises
    ``FileNotFoundError``; a file of another kind ``ValueError``, naming the file and what was expected.
    """
    path = Path(path)
    if path.is_dir():
        raise FileNotFoundError(f"{what}: {str(path)!r} is a folder; expected a checkpoint file (e.g. "
                                f"{str(path / 'last.pt')!r}, written by fastload train)")
    if not path.is_file():
        raise FileNotFoundError(f"{what}: no file {str(path)!r}")
    try:
        with zipfile.ZipFile(path) as z:
            pickled = any(n.endswith("/data.pkl") or n == "data.pkl" for n in z.namelist())
    except zipfile.BadZipFile:
        pickled = None
    if not pickled:
        kind = "a zip archive without torch.save's data.pkl" if pickled is False else \
            "not a whole zip archive, which torch.save writes (a truncated copy has lost its end)"
        raise ValueError(f"{what} {str(path)!r}: not a checkpoint file ({path.stat().st_size} bytes, {kind}); "
                         f"expected a .pt file written by fastload train (save_checkpoint), whole")
    return path


def read_checkpoint(path: str | os.PathLike[str], what: str = "checkpoint") -> dict[str, Any]:
    """The payload dict of a checkpoint :func:`save_checkpoint` wrote (tensors on the CPU), read with
    ``weights_only=True``; every loader of a checkpoint reads it through here.

    ``what`` names the setting the path came from (``--checkpoint``, ``--resume``,
    ``forecast.multiformer_checkpoint``) at the head of every message. No file there (or a folder) raises
    ``FileNotFoundError``; a file ``torch.load`` cannot read (a TOML file, a truncated ``.pt``, a pickle of other
    objects) or a payload of another layout raises ``ValueError`` naming the file and what was expected (torch's
    own errors were ``IndexError: pop from empty list``, ``RuntimeError: PytorchStreamReader failed ...``).
    """
    path = check_checkpoint_file(path, what)
    try:
        payload = torch.load(path, map_location="cpu", weights_only=True)
    except OSError:  # unreadable (permissions, I/O): the builtin's message names the file
        raise
    except Exception as e:  # torch.load of a foreign or damaged file raises almost anything (IndexError, ...)
        first = str(e).splitlines()[0] if str(e) else ""
        raise ValueError(f"{what} {str(path)!r}: not a checkpoint file (torch.load cannot read it: "
                         f"{type(e).__name__}: {first}); expected a .pt file written by fastload train "
                         f"(save_checkpoint), whole") from None
    if not isinstance(payload, dict) or payload.get("format") != FORMAT:
        found = f"format {payload.get('format')!r}" if isinstance(payload, dict) else f"a {type(payload).__name__}"
        raise ValueError(f"{what} {str(path)!r}: not a model checkpoint of format {FORMAT} (a torch file holding "
                         f"{found}); expected a .pt file written by fastload train (save_checkpoint)")
    return payload



def load_checkpoint(
    path: str | os.PathLike[str],
    model: nn.Module,
    optimizer: torch.optim.Optimizer | None = None,
    *,
    restore_rng: bool = True,
) -> dict[str, Any]:
    """Load a checkpoint written by :func:`save_checkpoint` into ``model`` (and ``optimizer``), exactly.

    The model's config must equal the saved one, and a Forecaster's ``multiformer_config`` too (its encoder's
    levels, loss weights and ``coupled`` order: coupling heads listed in another order would take each other's
    optimizer state, which is loaded by position); a difference raises ``ValueError`` naming the settings. The
    optimizer's own settings (betas, eps, weight decay, ...) are kept over the saved ones, with a warning naming
    those that differ (a resumed run's ``--set optim.*`` wins); its learning rate is restored as saved (schedule
    state). The CUDA RNG states are restored onto the GPUs there are now, as many as fit (a warning when the count
    differs). Returns
    ``{"step": int, "extra": dict}``.
    """
    payload = read_checkpoint(path)
    for key in ("config", "multiformer_config"):  # a Forecaster's encoder config too (levels, coupled order, ...)
        now, saved = getattr(model, key, None), payload.get(key)
        if hasattr(now, "to_dict") and saved is not None and now.to_dict() != saved:
            diff = _differences(now.to_dict(), saved)
            raise ValueError(f"checkpoint {str(path)!r}: {key} differs from the model's in {diff}")
    if payload["kind"] == "multiformer":
        state = {_join_key(f, c, k): v for f, comps in payload["components"].items()
                 for c, sd in comps.items() for k, v in sd.items()}  # fmt: skip
    else:
        state = payload["state"]
    if optimizer is not None:  # checked before anything is loaded, so a refused resume changes nothing
        if payload["optimizer"] is None:
            raise ValueError(f"checkpoint {str(path)!r}: holds no optimizer state")
        saved_n = [len(g["params"]) for g in payload["optimizer"]["param_groups"]]
        now_n = [len(g["params"]) for g in optimizer.param_groups]
        if saved_n != now_n:
            raise ValueError(
                f"checkpoint {str(path)!r}: its optimizer state covers {sum(saved_n)} parameter tensor(s) (groups "
                f"{saved_n}), the optimizer has {sum(now_n)} ({now_n}): the model gained or lost parameters since the "
                "run was saved (runs saved before 2026-11-22 lack the embedding's missing-value indicator, one per "
                "field). Its weights still load without the optimizer: load_checkpoint(path, model)")
    model.load_state_dict(state, strict=True)
    if optimizer is not None:
        _load_optimizer(optimizer, payload["optimizer"], path)
    if restore_rng:
        torch.set_rng_state(payload["rng"]["torch"])
        if payload["rng"]["cuda"] and torch.cuda.is_available():
            _restore_cuda_rng(payload["rng"]["cuda"], path)
    return {"step": payload["step"], "extra": payload["extra"]}


_SCHEDULE_KEYS = ("params", "lr", "initial_lr")
"""Param-group entries restored as saved: the parameters, and the learning rate a schedule drives (torch's chainable
schedulers compute the next one from it; ``fastload train`` sets it from its config every step anyway)."""


def _load_optimizer(optimizer: torch.optim.Optimizer, saved: dict[str, Any], path: Any) -> None:
    """Load the saved optimizer state, keeping the optimizer's own settings (betas, eps, weight decay, ...): they are
    what the resuming run asked for (``--set optim.weight_decay=...``), so they win over the saved ones, with a
    warning naming each that changed. The learning rate (``_SCHEDULE_KEYS``) is restored as saved."""
    mine = [{k: v for k, v in g.items() if k not in _SCHEDULE_KEYS} for g in optimizer.param_groups]
    def plain(v: Any) -> Any:
        return tuple(v) if isinstance(v, list) else v

    changed = sorted({f"{k}: saved {sg[k]!r}, now {v!r}" for sg, m in zip(saved["param_groups"], mine)
                      for k, v in m.items() if k in sg and plain(sg[k]) != plain(v)})
    optimizer.load_state_dict(saved)
    for g, m in zip(optimizer.param_groups, mine):
        g.update(m)
    if changed:
        warnings.warn(f"checkpoint {str(path)!r}: the optimizer's settings differ from the saved run's; the current "
                      f"ones are kept (the saved state is loaded): {'; '.join(changed)}", UserWarning, stacklevel=3)


def _restore_cuda_rng(states: list[torch.Tensor], path: Any) -> None:
    """Restore the saved per-GPU RNG states onto the GPUs there are now: as many as fit, with a warning when the
    counts differ (resuming with fewer visible GPUs raised IndexError in ``set_rng_state_all``)."""
    n = torch.cuda.device_count()
    if len(states) != n:
        warnings.warn(f"checkpoint {str(path)!r}: saved the RNG states of {len(states)} GPU(s), this process sees {n}: "
                      f"restored those of GPUs 0..{min(n, len(states)) - 1}"
                      + (f", the other {n - len(states)} keep theirs" if n > len(states) else
                         f", the other {len(states) - n} are dropped")
                      + " (CUDA random draws, e.g. dropout or masks drawn on the GPU, then differ from the saved run's)",
                      UserWarning, stacklevel=3)
    for i, state in enumerate(states[:n]):
        torch.cuda.set_rng_state(state, i)


def assemble_multiformer(
    config: MultiformerConfig, sources: Mapping[str, str | os.PathLike[str]], *, strict: bool = True
) -> Multiformer:
    """Build a Multiformer for ``config`` with each field's components taken from a checkpoint.

    Parameters
    ----------
    config : MultiformerConfig
        The model to build (e.g. several fields, coupled).
    sources : mapping
        Field name -> checkpoint path holding that field (a single-field or multi-field run).
    strict : bool
        Every field of ``config`` must have a source. Coupling heads to fields the source run did not couple to
        keep their initialisation (zero output); a run saved before the embedding's missing-value indicator
        existed loads it at zero (missing values read as 0, as that run was trained); any other missing or surplus
        parameter is an error.
    """
    model = Multiformer(config)
    missing = [f for f in config.field_names if f not in sources]
    if strict and missing:
        raise ValueError(f"assemble_multiformer: no checkpoint for field(s) {missing}")
    own = split_components(model)
    state: dict[str, torch.Tensor] = {}
    for field, path in sources.items():
        spec = config.field(field)
        payload = read_checkpoint(path)
        if payload.get("kind") != "multiformer" or field not in payload["components"]:
            raise ValueError(f"checkpoint {str(path)!r}: holds no Multiformer field {field!r}")
        saved = next(f for f in payload["config"]["fields"] if f["name"] == field)
        for key in _SPEC_MUST_MATCH:
            want = getattr(spec, key)
            have = tuple(saved[key]) if isinstance(want, tuple) else saved[key]
            if have != want:
                raise ValueError(
                    f"checkpoint {str(path)!r}: fields.{field}.{key} is {have}, the model wants {want}"
                )
        for comp in COMPONENTS:
            theirs, mine = payload["components"][field][comp], own[field][comp]
            for k, v in theirs.items():
                if k not in mine:
                    raise ValueError(
                        f"checkpoint {str(path)!r}: {field}.{comp}.{k} has no place in the model"
                    )
                if v.shape != mine[k].shape:
                    raise ValueError(
                        f"checkpoint {str(path)!r}: {field}.{comp}.{k} has shape {tuple(v.shape)}, "
                        f"the model wants {tuple(mine[k].shape)}"
                    )
                state[_join_key(field, comp, k)] = v
            for k in mine:
                if k not in theirs and not _is_new_coupling(comp, k, saved.get("coupled", ())) and not (
                    comp == "embed" and k == "missing.weight" and "token.weight" in theirs
                ):  # a run from before the missing-value indicator: loaded at zero (FieldEmbedding)
                    raise ValueError(f"checkpoint {str(path)!r}: {field}.{comp}.{k} is missing")
    model.load_state_dict(state, strict=False)
    return model
