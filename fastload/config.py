"""Typed, validated configuration: what to sample (:class:`SamplingConfig`) and how to load it (:class:`LoaderConfig`).

Configs are frozen dataclasses validated in ``__post_init__``; an impossible value raises
:class:`~fastload.errors.ConfigError` naming the setting and what was expected. They load from TOML (or YAML
when PyYAML is installed) with :meth:`SamplingConfig.from_file`, round-trip through ``to_dict()``, and take
dotted overrides (``loader.batch_size=8``) through :func:`apply_overrides` (defined in
:mod:`fastload._overrides`, re-exported here).

A sampling file in AtmoRep's terms::

    batch_size = 16
    time_step = 1
    [fields.temperature]
    levels = [96, 105, 114, 123, 137]
    num_tokens = [12, 6, 12]
    token_size = [3, 9, 9]
    normalization = "local"      # or "global", or "none" for raw values

Every field tiles the same physical box: ``num_tokens[i] * token_size[i]`` is the same for all fields.
"""

from __future__ import annotations

import dataclasses
import math
import numbers
import os
import sys
import warnings
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, Literal

from ._overrides import apply_overrides
from ._time_range import check_time_range_form
from .errors import ConfigError

__all__ = [
    "FieldConfig",
    "StreamConfig",
    "SamplingConfig",
    "LoaderConfig",
    "apply_overrides",
    "NORMALIZATIONS",
    "TRANSFORMS",
    "CENTERS",
    "OUT_DTYPES",
]

NORMALIZATIONS = ("local", "global", "none")
TRANSFORMS = (None, "log1p")
CENTERS = ("uniform", "coslat")
OUT_DTYPES = ("float32", "bfloat16", "float16")
TIME_RULES = ("inside", "nearest", "previous")


def _triple(name: str, value: Any) -> tuple[int, int, int]:
    if isinstance(value, (str, bytes)) or not isinstance(value, Sequence) or len(value) != 3:
        raise ConfigError(f"{name}: expected three integers (time, lat, lon), got {value!r}")
    out = []
    for v in value:
        if isinstance(v, bool) or not isinstance(v, (int,)) and not (isinstance(v, float) and v.is_integer()):
            raise ConfigError(f"{name}: expected three integers (time, lat, lon), got {value!r}")
        if int(v) < 1:
            raise ConfigError(f"{name}: every entry must be >= 1, got {value!r}")
        out.append(int(v))
    return (out[0], out[1], out[2])


def _choice(name: str, value: Any, allowed: Sequence[Any]) -> Any:
    if value not in allowed:
        raise ConfigError(f"{name}: expected one of {list(allowed)!r}, got {value!r}")
    return value


class _Config:
    """Shared behaviour: ``to_dict`` / ``from_dict`` with unknown-key and type checks."""

    def to_dict(self) -> dict[str, Any]:
        def conv(v: Any) -> Any:
            if dataclasses.is_dataclass(v):
                return v.to_dict()
            if isinstance(v, tuple):
                return [conv(x) for x in v]
            return v

        return {f.name: conv(getattr(self, f.name)) for f in dataclasses.fields(self)}  # type: ignore[arg-type]

    @classmethod
    def _check_keys(cls, d: Mapping[str, Any], where: str) -> None:
        names = {f.name for f in dataclasses.fields(cls)}  # type: ignore[arg-type]
        unknown = sorted(set(d) - names)
        if unknown:
            raise ConfigError(f"{where}: unknown setting(s) {unknown}; known: {sorted(names)}")


@dataclasses.dataclass(frozen=True, kw_only=True, slots=True)
class FieldConfig(_Config):
    """One field to sample, in AtmoRep's terms."""

    name: str
    """Field name as in the store (the array name, or the entry of the AtmoRep ``fields`` attribute)."""
    levels: tuple[float, ...] | None = None
    """Level values as in the store's level coordinate; ``None`` for a field without a level axis."""
    num_tokens: tuple[int, int, int]
    """Tokens per sample along (time, lat, lon)."""
    token_size: tuple[int, int, int]
    """Grid points per token along (time, lat, lon)."""
    normalization: Literal["local", "global", "none"] = "local"
    """``local``: monthly mean/std per grid point; ``global``: monthly mean/std per level; ``none``: raw."""
    transform: Literal["log1p"] | None = None
    """Applied to raw values before normalisation (e.g. ``log1p`` for precipitation)."""
    stream: str | None = None
    """Which stream (store) of a multi-stream config holds the field; ``None`` for single-store configs."""

    def __post_init__(self) -> None:
        if not isinstance(self.name, str) or not self.name:
            raise ConfigError(f"field name: expected a non-empty string, got {self.name!r}")
        where = f"fields.{self.name}"
        object.__setattr__(self, "num_tokens", _triple(f"{where}.num_tokens", self.num_tokens))
        object.__setattr__(self, "token_size", _triple(f"{where}.token_size", self.token_size))
        _choice(f"{where}.normalization", self.normalization, NORMALIZATIONS)
        _choice(f"{where}.transform", self.transform, TRANSFORMS)
        if self.levels is not None:
            if isinstance(self.levels, (str, bytes)) or not isinstance(self.levels, Sequence):
                raise ConfigError(f"{where}.levels: expected a list of level values, got {self.levels!r}")
            if len(self.levels) == 0:
                raise ConfigError(f"{where}.levels: empty list; omit 'levels' for a field without levels")
            levels = []
            for v in self.levels:
                if isinstance(v, bool) or not isinstance(v, (int, float)):
                    raise ConfigError(f"{where}.levels: expected numbers, got {v!r}")
                levels.append(v)
            if len(set(levels)) != len(levels):
                raise ConfigError(f"{where}.levels: duplicate level in {levels}")
            object.__setattr__(self, "levels", tuple(levels))

    @property
    def box(self) -> tuple[int, int, int]:
        """Grid points (time steps, lat, lon) covered by one sample of this field."""
        return tuple(n * s for n, s in zip(self.num_tokens, self.token_size))  # type: ignore[return-value]

    @property
    def num_levels(self) -> int:
        return 1 if self.levels is None else len(self.levels)

    @property
    def sample_shape(self) -> tuple[int, ...]:
        """Shape of one sample: ``(levels, nt, nlat, nlon, tt, tlat, tlon)``."""
        return (self.num_levels, *self.num_tokens, *self.token_size)

    @classmethod
    def from_dict(cls, name: str, d: Mapping[str, Any]) -> FieldConfig:
        cls._check_keys({**d, "name": name}, f"fields.{name}")
        for key in ("num_tokens", "token_size"):
            if key not in d:
                raise ConfigError(f"fields.{name}: missing required setting {key!r}")
        kw = dict(d)
        kw.pop("name", None)
        return cls(name=name, **kw)


@dataclasses.dataclass(frozen=True, kw_only=True, slots=True)
class StreamConfig(_Config):
    """One store of a multi-stream config."""

    name: str
    """Name the fields refer to with ``stream = ...``."""
    path: str
    """Path or URL of the store."""
    time_rule: Literal["inside", "nearest", "previous"] = "inside"
    """How the sample's window maps to this stream's time axis: the steps inside it, or the nearest/previous
    (tolerances and gaps: :mod:`fastload._stream_time`)."""
    norm_path: str | None = None
    """Normalisation coefficient store of this stream (``fastload stats``)."""

    def __post_init__(self) -> None:
        if not isinstance(self.name, str) or not self.name:
            raise ConfigError(f"streams: every stream needs a non-empty name, got {self.name!r}")
        if not isinstance(self.path, str) or not self.path:
            raise ConfigError(f"streams.{self.name}.path: expected a path or URL, got {self.path!r}")
        _choice(f"streams.{self.name}.time_rule", self.time_rule, TIME_RULES)
        if self.norm_path is not None and (not isinstance(self.norm_path, str) or not self.norm_path):
            raise ConfigError(f"streams.{self.name}.norm_path: expected a path or URL, got {self.norm_path!r}")

    @classmethod
    def from_dict(cls, name: str, d: Mapping[str, Any]) -> StreamConfig:
        if not isinstance(d, Mapping):
            raise ConfigError(f"streams.{name}: expected a table of settings (path = ...), got {d!r}")
        cls._check_keys({**d, "name": name}, f"streams.{name}")
        if "path" not in d:
            raise ConfigError(f"streams.{name}: missing required setting 'path' (the store's path or URL)")
        kw = dict(d)
        kw.pop("name", None)
        return cls(name=name, **kw)


@dataclasses.dataclass(frozen=True, kw_only=True, slots=True)
class SamplingConfig(_Config):
    """What one sample is: the fields, their levels and token geometry, and how samples are drawn."""

    fields: tuple[FieldConfig, ...]
    """The fields, in order; all tile the same box."""
    batch_size: int = 16
    """Samples per batch."""
    time_step: int = 1
    """Stride along the store's time axis between consecutive time points of a sample."""
    centers: Literal["uniform", "coslat"] = "uniform"
    """Sample centres uniform in latitude (AtmoRep) or area-weighted (cos-lat)."""
    out_dtype: Literal["float32", "bfloat16", "float16"] = "float32"
    """Dtype of the token tensors handed to the model. float16 holds ``|x| <= 65504``: with a raw field
    (``normalization = "none"``) the config warns that large values (a pressure in Pa) would become inf."""
    norm_path: str | None = None
    """Normalisation coefficient store (``fastload stats``); required when a field normalises."""
    streams: tuple[StreamConfig, ...] = ()
    """Several stores sampled together (empty: the single store passed to the loader)."""

    def __post_init__(self) -> None:
        if isinstance(self.fields, Mapping):
            object.__setattr__(self, "fields", tuple(self.fields.values()))
        object.__setattr__(self, "fields", tuple(self.fields))
        object.__setattr__(self, "streams", tuple(self.streams))
        if not self.fields:
            raise ConfigError("fields: a sampling config needs at least one field")
        names = [f.name for f in self.fields]
        if len(set(names)) != len(names):
            raise ConfigError(f"fields: duplicate field names in {names}")
        for key in ("batch_size", "time_step"):
            v = getattr(self, key)
            if isinstance(v, bool) or not isinstance(v, int) or v < 1:
                raise ConfigError(f"{key}: expected an integer >= 1, got {v!r}")
        _choice("centers", self.centers, CENTERS)
        _choice("out_dtype", self.out_dtype, OUT_DTYPES)
        raw = [f.name for f in self.fields if f.normalization == "none"]
        if self.out_dtype == "float16" and raw:
            warnings.warn(f"out_dtype = 'float16' with normalization = 'none' for field(s) {raw}: float16 holds "
                          f"|x| <= 65504 (larger raw values, e.g. a pressure in Pa, become inf) with about 3 "
                          f"significant digits; normalise these fields or use out_dtype = 'bfloat16'",
                          stacklevel=_user_stacklevel())
        boxes = {f.name: f.box for f in self.fields}
        first = self.fields[0]
        for f in self.fields[1:]:
            if f.box != first.box:
                raise ConfigError(
                    f"fields.{f.name}: num_tokens {list(f.num_tokens)} x token_size {list(f.token_size)} covers "
                    f"{list(f.box)} grid points but fields.{first.name} covers {list(first.box)}; "
                    f"all fields must tile the same box (per field: {boxes})"
                )
        stream_names = [s.name for s in self.streams]
        if len(set(stream_names)) != len(stream_names):
            raise ConfigError(f"streams: duplicate stream names in {stream_names}")
        for f in self.fields:
            if self.streams and f.stream not in stream_names:
                raise ConfigError(
                    f"fields.{f.name}.stream: expected one of {stream_names}, got {f.stream!r}"
                )
            if not self.streams and f.stream is not None:
                raise ConfigError(f"fields.{f.name}.stream = {f.stream!r} but the config defines no streams")
        if self.norm_path is not None and (not isinstance(self.norm_path, str) or not self.norm_path):
            raise ConfigError(f"norm_path: expected a path or URL, got {self.norm_path!r}")

    # -- geometry ---------------------------------------------------------------------------------------------
    @property
    def box(self) -> tuple[int, int, int]:
        """Grid points (time steps, lat, lon) of one sample."""
        return self.fields[0].box

    @property
    def time_span(self) -> int:
        """Store time indices spanned by one sample: ``(box_t - 1) * time_step + 1``."""
        return (self.box[0] - 1) * self.time_step + 1

    def field(self, name: str) -> FieldConfig:
        for f in self.fields:
            if f.name == name:
                return f
        raise ConfigError(f"no field {name!r} in this config; fields: {[f.name for f in self.fields]}")

    @property
    def field_names(self) -> tuple[str, ...]:
        return tuple(f.name for f in self.fields)

    # -- (de)serialisation ------------------------------------------------------------------------------------
    def to_dict(self) -> dict[str, Any]:
        d = _Config.to_dict(self)
        d["fields"] = {f.name: {k: v for k, v in f.to_dict().items() if k != "name"} for f in self.fields}
        d["streams"] = {s.name: {k: v for k, v in s.to_dict().items() if k != "name"} for s in self.streams}
        return d

    @classmethod
    def from_dict(cls, d: Mapping[str, Any], *, base: str | os.PathLike[str] | None = None) -> SamplingConfig:
        """From a table of settings (a parsed file); ``base``: the folder relative ``norm_path`` and stream paths are
        taken from (:meth:`from_file`: the file's; None: as given). Built once, so its warnings come once."""
        if not isinstance(d, Mapping):
            raise ConfigError(f"sampling config: expected a table of settings, got {d!r}")
        cls._check_keys(d, "sampling config")
        kw = dict(d)
        if base is not None:
            kw = _resolve_paths(kw, Path(base))
        fields = kw.get("fields")
        if not isinstance(fields, Mapping) or not fields:
            raise ConfigError("fields: expected a table of fields, e.g. [fields.temperature]")
        parsed = []
        for name, fd in fields.items():
            if not isinstance(fd, Mapping):
                raise ConfigError(f"fields.{name}: expected a table of settings, got {fd!r}")
            parsed.append(FieldConfig.from_dict(name, fd))
        kw["fields"] = tuple(parsed)
        streams = kw.get("streams") or {}
        if not isinstance(streams, Mapping):
            raise ConfigError("streams: expected a table of streams, e.g. [streams.era5]")
        kw["streams"] = tuple(StreamConfig.from_dict(n, sd) for n, sd in streams.items())
        return cls(**kw)

    @classmethod
    def from_file(cls, path: str | os.PathLike[str]) -> SamplingConfig:
        """Load a config from a TOML (``.toml``) or YAML (``.yaml``/``.yml``) file."""
        p = Path(path)
        if p.is_dir():
            raise ConfigError(f"sampling config file {str(p)!r} is a directory; expected a .toml or .yaml file")
        if not p.is_file():
            raise ConfigError(f"sampling config file {str(p)!r} does not exist")
        text = p.read_text()
        try:
            if p.suffix in (".yaml", ".yml"):
                try:
                    import yaml  # type: ignore[import-untyped]
                except ImportError as e:
                    raise ConfigError(f"{p}: reading YAML needs PyYAML (pip install pyyaml)") from e
                d = yaml.safe_load(text)
            else:
                import tomllib

                d = tomllib.loads(text)
        except ConfigError:
            raise
        except Exception as e:  # a parse error: name the file
            raise ConfigError(f"{p}: not a valid config file: {e}") from e
        if not isinstance(d, Mapping):
            raise ConfigError(f"{p}: expected a table of settings at the top level")
        try:  # relative stream / normalisation paths are relative to the config file
            return cls.from_dict(d, base=p.parent)
        except ConfigError as e:
            raise ConfigError(f"{p}: {e}") from None

    def to_toml(self) -> str:
        """The config as TOML text that :meth:`from_file` reads back to an equal config."""
        lines: list[str] = []
        d = self.to_dict()
        for k, v in d.items():
            if k in ("fields", "streams") or v is None:
                continue
            lines.append(f"{k} = {_toml_value(v)}")
        for sname, sd in d["streams"].items():
            lines.append(f"\n[streams.{sname}]")
            lines.extend(f"{k} = {_toml_value(v)}" for k, v in sd.items() if v is not None)
        for fname, fd in d["fields"].items():
            lines.append(f"\n[fields.{_toml_key(fname)}]")
            lines.extend(f"{k} = {_toml_value(v)}" for k, v in fd.items() if v is not None)
        return "\n".join(lines) + "\n"


def _resolve_paths(d: dict[str, Any], base: Path) -> dict[str, Any]:
    """``d`` (a sampling table) with relative local paths (``norm_path``, streams' ``path``/``norm_path``) from
    ``base``; URLs, absolute paths and what is not a string (for the validation) stay as they are."""
    def rel(v: Any) -> Any:
        if not isinstance(v, str) or not v or "://" in v or os.path.isabs(v):
            return v
        return str((base / v).resolve())

    out = dict(d)
    if "norm_path" in out:
        out["norm_path"] = rel(out["norm_path"])
    streams = out.get("streams")
    if isinstance(streams, Mapping):
        out["streams"] = {n: {**sd, **{k: rel(sd[k]) for k in ("path", "norm_path") if k in sd}}
                          if isinstance(sd, Mapping) else sd for n, sd in streams.items()}
    return out


_LIBRARY_MODULES = ("fastload", "profiling", "dataclasses")


def _user_stacklevel() -> int:
    """``warnings.warn``'s stacklevel (for its caller) of the first frame outside fastload, profiling and dataclasses
    (whose generated ``__init__`` has this module's globals): the user's line that made the config, by constructor,
    ``from_dict``, ``from_file``, ``replace`` or :func:`apply_overrides` (3.12's ``skip_file_prefixes``)."""
    frame, level = sys._getframe(1), 1
    while frame.f_back is not None and frame.f_globals.get("__name__", "").partition(".")[0] in _LIBRARY_MODULES:
        frame, level = frame.f_back, level + 1
    return level


def _toml_key(k: str) -> str:
    return k if k.replace("_", "").replace("-", "").isalnum() else f'"{k}"'


def _toml_value(v: Any) -> str:
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, str):
        return '"' + v.replace("\\", "\\\\").replace('"', '\\"') + '"'
    if isinstance(v, (list, tuple)):
        return "[" + ", ".join(_toml_value(x) for x in v) + "]"
    if isinstance(v, float) and v.is_integer():
        return repr(int(v)) if abs(v) < 2**53 else repr(v)
    return repr(v)


@dataclasses.dataclass(frozen=True, kw_only=True, slots=True)
class LoaderConfig(_Config):
    """How batches are produced: workers, prefetch depth, cache, placement of the epoch's samples."""

    batch_size: int | None = None
    """Samples per batch; ``None`` takes the sampling config's ``batch_size``."""
    samples_per_epoch: int = 1024
    """Samples drawn per epoch (over all ranks)."""
    workers: int = 2
    """Threads (or processes) that read, decode and gather."""
    mode: Literal["thread", "process"] = "thread"
    """Worker kind: threads (decode and kernels release the GIL) or processes with shared-memory buffers."""
    prefetch: int = 2
    """Batches prepared ahead of the consumer (the ring holds ``prefetch + 2`` batch buffers). On a GPU the batches
    ahead are already on the device, copied and masked by the workers: with the one the caller holds and the one
    the GPU may still be finishing, up to ``prefetch + 2`` batches (each with its masked sources and masks when the
    loader masks) take device memory at once; lower it where that memory is short."""
    cache_bytes: int = 512 * 2**20
    """Byte budget of the decoded-chunk cache."""
    fetch_concurrency: int = 16
    """Raw chunk requests in flight (matters for remote stores)."""
    read_ahead_bytes: int | None = None
    """Remote stores: bytes of the next steps' stored chunks fetched ahead (hides request latency once the cache
    is full); ``None``: ``min(96 MB, cache_bytes / 2)``; 0: off. Split between processes in process mode."""
    device: str | None = None
    """``"cuda"``, ``"cuda:1"``, ``"cpu"``, or ``None``: the GPU when there is one, else the CPU."""
    pin_memory: bool | None = None
    """Pin the host batch buffers; ``None``: when the device is a GPU."""
    seed: int = 0
    """Seed of the sample placement and masks (with epoch and rank)."""
    rank: int | None = None
    """This process's rank; ``None``: from torch.distributed when initialised, else from the environment's ``RANK``
    and ``WORLD_SIZE`` when both are set (torchrun sets them), else 0."""
    world_size: int | None = None
    """Number of ranks; ``None``: from torch.distributed when initialised, else the environment's ``WORLD_SIZE``
    (with ``RANK``), else 1."""
    samples_per_window: int = 1
    """Samples drawn per time window (AtmoRep's amortisation); 1 keeps samples independent."""
    time_range: tuple[str, str] | tuple[int, int] | None = None
    """The part of the time axis random windows are drawn from, e.g. the training years: two dates/times (ISO
    strings, UTC: ``["1979-01-01", "2016-01-01"]``, start included, stop excluded) or two store time indices
    ``[start, stop)``; every time point of a sample lies in it. ``None``: the whole axis. Refused when it reaches
    more than one time step beyond the axis or is shorter than one sample's window (:mod:`fastload._time_range`).
    Not with an explicit plan (``boxes``)."""
    on_bad_chunk: Literal["raise", "skip"] = "raise"
    """A corrupt chunk raises (default) or its samples are skipped and counted. A batch that loses every sample is
    still handed out, with 0 samples (see :class:`fastload.Batch`), so every rank takes ``len(loader)`` batches."""
    retries: int = 3
    """Retries of a transient read error (an ``OSError`` other than a missing file or a permission error), with
    exponential backoff (0.05 s, doubling), all within ``read_timeout_s`` of the first attempt: a retry whose backoff
    would end past it is not made. While the store is failing (a read failed after its retries and none has
    succeeded since) reads get one try each, and a fetch task (up to 32 chunks, requested one after another) stops
    once it has run ``read_timeout_s``: its other chunks fail unread."""
    read_timeout_s: float | None = 300.0
    """Seconds a storage request may take, counted from its first attempt and *including its retries and their
    backoff* (so a step waits at most about this long for a request, whatever ``retries`` is; per attempt it could
    have waited (retries + 1) x this), before the step waiting for it gives up: its chunks fail with a
    ``ChunkTimeoutError`` (a ``ChunkReadError``) naming them, the wait and, when it was retried, the attempts made
    and the last failure (raised, or skipped with ``on_bad_chunk="skip"``, with a warning); the request is left
    running on its I/O thread, and a later step needing the chunks fetches them again. A request still waiting for
    an I/O thread counts from when it was queued or a thread last started or finished a job, whichever is later (a
    busy but answering store fails nothing). Reads of a local store count too (a hung network mount), also those
    straight into a cache slot. ``None``: wait for ever. A remote request carries up to 32 chunks: raise it for
    large chunks over a slow link. Thread and process mode (each worker process's reader).

    It bounds *one request*, not a batch: a fetch task makes up to 32 requests one after another (a local store:
    one per chunk; a remote one: one per group, then one per chunk if the group fails), each bounded on its own;
    while the store is failing (see ``retries``) a task stops once it has run this long. A direct read given up
    keeps its cache slot out of use until it returns; a step that cannot get slots because of such slots waits for
    them at most this long too, then fails with a ``ChunkTimeoutError`` naming the hung read (``skip``: the step's
    samples are dropped). In process mode the start of each worker process counts as well: every storage request
    it makes to open the store (metadata reads: ``.zarray``/``zarr.json``, coordinates) may take at most this long,
    else the iteration fails with a ``WorkerError`` naming the worker, the request and this setting (the worker is
    stopped; the next iteration starts a new one). A cold network mount or object store slower than this to open
    needs a larger value."""
    worker_start_timeout_s: float | None = 300.0
    """Process mode: seconds a starting worker process may go without a word outside its storage requests (those
    are bounded by ``read_timeout_s``): from its spawn to its first message (starting Python, importing the main
    script and fastload), then between the messages of its start (unpickling its settings, opening the store,
    building its cache), until it has opened the store. Past it the iteration fails with a ``WorkerError`` naming
    the worker, what it was doing and this setting; the stuck workers are killed and the next iteration starts new
    ones. Raise it where starting a process is slow (Python and its packages on a cold network filesystem).
    ``None``: wait for ever (Ctrl-C still ends the wait)."""
    drop_last: bool = True
    """Drop the last incomplete batch of an epoch. With several ranks every rank still takes the same number of
    batches: ``True`` drops what does not fill them on every rank (counted in a warning), ``False`` keeps it, so a
    rank's last batch may be smaller than another's."""

    def __post_init__(self) -> None:
        def positive(key: str, minimum: int = 1) -> None:
            v = getattr(self, key)
            if isinstance(v, bool) or not isinstance(v, int) or v < minimum:
                raise ConfigError(f"loader.{key}: expected an integer >= {minimum}, got {v!r}")

        if self.batch_size is not None:
            positive("batch_size")
        positive("samples_per_epoch")
        positive("workers")
        positive("prefetch")
        positive("cache_bytes", 0)
        positive("fetch_concurrency")
        if self.read_ahead_bytes is not None:
            positive("read_ahead_bytes", 0)
        positive("samples_per_window")
        positive("retries", 0)
        object.__setattr__(self, "time_range", check_time_range_form(self.time_range))
        t = self.read_timeout_s
        if t is not None and (isinstance(t, bool) or not isinstance(t, (int, float)) or not math.isfinite(t)
                              or t <= 0):
            raise ConfigError(f"loader.read_timeout_s: expected a number of seconds > 0 or None, got {t!r}")
        t = self.worker_start_timeout_s
        if t is not None and (isinstance(t, bool) or not isinstance(t, (int, float)) or not math.isfinite(t)
                              or t <= 0):
            raise ConfigError(f"loader.worker_start_timeout_s: expected a number of seconds > 0 or None, got {t!r}")
        positive("seed", 0)
        _choice("loader.mode", self.mode, ("thread", "process"))
        _choice("loader.on_bad_chunk", self.on_bad_chunk, ("raise", "skip"))
        for key in ("pin_memory", "drop_last"):
            v = getattr(self, key)
            if not (isinstance(v, bool) or v is None and key == "pin_memory"):
                allowed = "true or false" + (" (or None: when the device is a GPU)" if key == "pin_memory" else "")
                raise ConfigError(f"loader.{key}: expected {allowed}, got {v!r}")
        if self.rank is not None or self.world_size is not None:
            if self.rank is None or self.world_size is None:
                raise ConfigError("loader.rank and loader.world_size go together; give both or neither")
            for key, minimum in (("rank", 0), ("world_size", 1)):
                v = getattr(self, key)
                if isinstance(v, bool) or not isinstance(v, numbers.Integral) or v < minimum:
                    raise ConfigError(f"loader.{key}: expected an integer >= {minimum}, got {v!r}")
            if not (0 <= self.rank < self.world_size):
                raise ConfigError(f"loader.rank: expected 0 <= rank < world_size={self.world_size}, got {self.rank}")

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> LoaderConfig:
        if not isinstance(d, Mapping):
            raise ConfigError(f"loader: expected a table of settings, got {d!r}")
        cls._check_keys(d, "loader")
        return cls(**d)
