"""Synthetic ERA5-like stores, deterministic by seed: the built-in dataset of ``fastload profile`` and of the tests.

Why this exists: a loader has to be measured and tested on data shaped like the real thing (grid sizes, levels,
chunking, compressibility) without downloading terabytes. The fields (:mod:`fastload._synth_fields`) have a
latitude profile, level dependence, diurnal and seasonal cycles, smooth large-scale structure, spatially
correlated small-scale noise and temporal autocorrelation; precipitation is >= 0 and skewed. They are written
lazily, one time block of one variable at a time (memory bounded by that block), through
:class:`fastload.write.StoreWriter`, so an interrupted run leaves no store behind.

Run::

    fastload synth /tmp/tiny.zarr --preset tiny                    # ~10 MB, about a second
    fastload synth /data/era5.zarr --preset era5-025 --zarr-format 3 --shard 24,1,256,256
    python -m fastload.synth OUT --layout atmorep                  # AtmoRep's (time, field, level, lat, lon)

From Python: :func:`synthesize` writes a store; :func:`default_dataset` returns the cached default dataset.
"""

from __future__ import annotations

import argparse
import dataclasses
import logging
import os
import sys
import time
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from ._progress import Progress
from ._synth_fields import LEVEL_FIELDS, STATIC_FIELDS, SURFACE_FIELDS, FieldModel, field_attrs
from ._write_temps import live_writer_of
from .errors import ConfigError, StoreError
from .write import CODECS, DEFAULT_CHUNKS, DEFAULT_CODEC, StoreWriter, parse_ints

log = logging.getLogger("fastload")

__all__ = ["SynthConfig", "PRESETS", "LAYOUTS", "SYNTH_VERSION", "synthesize", "default_dataset", "main"]

SYNTH_VERSION = 2
"""Bumped whenever the generated values change; part of the cache key of :func:`default_dataset`."""
LAYOUTS = ("per-variable", "atmorep")
MODEL_LEVELS = (96, 105, 114, 123, 137)  # AtmoRep's ERA5 model levels


@dataclasses.dataclass(frozen=True, kw_only=True, slots=True)
class SynthConfig:
    """What a synthetic dataset contains."""

    name: str = "custom"
    """Preset name (recorded in the store's attributes)."""
    resolution: float
    """Grid spacing in degrees; the grid is global, ERA5-style: latitudes 90..-90, longitudes 0..360-d."""
    hours: int
    """Length of the record in hours."""
    step_hours: int = 1
    """Hours between time steps."""
    start: str = "2021-01-01T00:00"
    """First time stamp (ISO 8601)."""
    levels: tuple[float, ...] = MODEL_LEVELS
    """Level values of the fields on levels."""
    level_type: str = "model"
    """``model`` (ERA5 L137 numbers) or ``pressure`` (hPa)."""
    level_fields: tuple[str, ...] = tuple(LEVEL_FIELDS)
    """Fields on levels (names from :data:`fastload._synth_fields.LEVEL_FIELDS`)."""
    surface_fields: tuple[str, ...] = tuple(SURFACE_FIELDS)
    """Fields without levels."""
    static_fields: tuple[str, ...] = tuple(STATIC_FIELDS)
    """Fields without time (per-variable layout only: the AtmoRep layout has no place for them)."""
    chunks: tuple[int, int, int, int] = DEFAULT_CHUNKS
    """Default chunking (time, level, latitude, longitude) of the per-variable layout."""
    lat_descending: bool = True
    """Latitudes north to south, as ERA5 stores them."""

    def __post_init__(self) -> None:
        def check(ok: bool, what: str) -> None:
            if not ok:
                raise ConfigError(f"synth config {self.name!r}: {what}")

        check(0.05 <= self.resolution <= 30 and (180 / self.resolution) % 1 < 1e-6, "resolution must divide 180 degrees")
        check(isinstance(self.hours, int) and self.hours >= 1, f"hours must be an integer >= 1, got {self.hours!r}")
        check(isinstance(self.step_hours, int) and 1 <= self.step_hours <= self.hours, "step_hours must be in 1..hours")
        check(self.level_type in ("model", "pressure"), f"level_type must be model or pressure, got {self.level_type!r}")
        check(len(self.levels) > 0 and len(set(self.levels)) == len(self.levels), "levels must be distinct, non-empty")
        for group, known in ((self.level_fields, LEVEL_FIELDS), (self.surface_fields, SURFACE_FIELDS),
                             (self.static_fields, STATIC_FIELDS)):  # fmt: skip
            unknown = sorted(set(group) - set(known))
            check(not unknown, f"unknown fields {unknown}; known: {sorted(known)}")
        check(bool(self.level_fields or self.surface_fields), "needs at least one field with a time axis")
        try:
            np.datetime64(self.start, "s")
        except ValueError:
            raise ConfigError(f"synth config {self.name!r}: start {self.start!r} is not an ISO date") from None

    @property
    def latitude(self) -> np.ndarray:
        ny = int(round(180 / self.resolution)) + 1
        lat = np.linspace(-90.0, 90.0, ny)
        return lat[::-1].copy() if self.lat_descending else lat

    @property
    def longitude(self) -> np.ndarray:
        return np.arange(int(round(360 / self.resolution))) * self.resolution

    @property
    def times(self) -> np.ndarray:
        n = self.hours // self.step_hours
        return np.datetime64(self.start, "ns") + np.arange(n) * np.timedelta64(self.step_hours, "h")

    @property
    def nbytes(self) -> int:
        """Uncompressed size of the data arrays (float32)."""
        nt, npt = self.times.size, self.latitude.size * self.longitude.size
        return 4 * npt * (nt * (len(self.level_fields) * len(self.levels) + len(self.surface_fields))
                          + len(self.static_fields))  # fmt: skip


PRESETS: dict[str, SynthConfig] = {
    "tiny": SynthConfig(
        name="tiny", resolution=3.0, hours=48, level_fields=("temperature", "velocity_u"),
        surface_fields=("t2m", "total_precip"), static_fields=("orography",), chunks=(6, 1, 32, 64),
    ),  # 61 x 120 grid, ~17 MB raw; tiles of 32 x 64 leave partial edge chunks on purpose
    "small": SynthConfig(
        name="small", resolution=2.0, hours=72,
        level_fields=("temperature", "specific_humidity", "velocity_u", "velocity_v"),
    ),  # 91 x 180, ~110 MB raw
    "era5-1deg": SynthConfig(name="era5-1deg", resolution=1.0, hours=120),  # 181 x 360, ~1 GB raw
    "era5-025": SynthConfig(name="era5-025", resolution=0.25, hours=48),  # 721 x 1440, ~6.6 GB raw
}  # fmt: skip


def _resolve(preset: str | SynthConfig, hours: int | None) -> SynthConfig:
    if isinstance(preset, SynthConfig):
        cfg = preset
    elif preset in PRESETS:
        cfg = PRESETS[preset]
    else:
        raise ConfigError(f"preset: expected one of {list(PRESETS)}, got {preset!r}")
    return cfg if hours is None else dataclasses.replace(cfg, hours=hours)


def synthesize(
    out: str | os.PathLike[str],
    preset: str | SynthConfig = "tiny",
    seed: int = 0,
    *,
    zarr_format: int = 2,
    chunks: Sequence[int] | None = None,
    codec: str = DEFAULT_CODEC,
    shards: Sequence[int] | None = None,
    layout: str = "per-variable",
    hours: int | None = None,
    overwrite: bool = False,
    progress: bool | None = None,
) -> Path:
    """Write a synthetic ERA5-like store and return its path.

    Parameters
    ----------
    out : path
        Where the store goes (written to ``<out>.tmp-<host>-<pid>-<start>-w<n>`` first, renamed when complete).
    preset : str or SynthConfig
        One of :data:`PRESETS` (``tiny``, ``small``, ``era5-1deg``, ``era5-025``) or a custom config.
    seed : int
        Same seed, same values (whatever the chunking); a different seed gives different values.
    zarr_format : {2, 3}
    chunks : (time, level, latitude, longitude), optional
        Chunk shape (inner chunks when sharded). Default: the preset's for ``per-variable``; AtmoRep's own for
        ``atmorep`` (8 time steps x all fields x all levels x the whole globe).
    codec : str
        One of :data:`fastload.write.CODECS`.
    shards : (time, level, latitude, longitude), optional
        Zarr v3 shard shape.
    layout : {"per-variable", "atmorep"}
        One array per variable, or AtmoRep's ``data`` (time, field, level, lat, lon) + ``data_sfc``.
    hours : int, optional
        Override the preset's record length.
    overwrite : bool
        Replace an existing store at ``out``.
    progress : bool, optional
        Draw a progress bar (default: when stderr is a terminal).
    """
    cfg = _resolve(preset, hours)
    if layout not in LAYOUTS:
        raise ConfigError(f"layout: expected one of {list(LAYOUTS)}, got {layout!r}")
    if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)) or seed < 0:
        raise ConfigError(f"seed: expected an integer >= 0, got {seed!r}")
    model = FieldModel(lat=cfg.latitude, lon=cfg.longitude, times=cfg.times, levels=np.asarray(cfg.levels),
                       level_type=cfg.level_type, seed=int(seed))  # fmt: skip
    attrs = {
        "title": f"fastload synthetic ERA5-like data, preset {cfg.name}",
        "source": "fastload synth (not real data)",
        "synth_preset": cfg.name,
        "synth_seed": int(seed),
        "synth_version": SYNTH_VERSION,
        "synth_config": {k: v for k, v in dataclasses.asdict(cfg).items()},
    }
    with StoreWriter(out, zarr_format=zarr_format, overwrite=overwrite, attrs=attrs) as w:
        w.set_time(cfg.times)
        w.set_grid(cfg.latitude, cfg.longitude)
        w.set_levels(np.asarray(cfg.levels), level_type=cfg.level_type)
        with Progress(_raw_bytes(cfg, layout), f"synth {cfg.name}", "B", enabled=progress) as bar:
            if layout == "per-variable":
                _write_per_variable(w, cfg, model, chunks or cfg.chunks, codec, shards, bar)
            else:
                _write_atmorep(w, cfg, model, chunks, codec, shards, bar)
    return w.out


def _raw_bytes(cfg: SynthConfig, layout: str) -> int:
    static = 4 * cfg.latitude.size * cfg.longitude.size * len(cfg.static_fields)
    return cfg.nbytes - (static if layout == "atmorep" else 0)


def _write_per_variable(w: StoreWriter, cfg: SynthConfig, model: FieldModel, chunks: Sequence[int], codec: str,
                        shards: Sequence[int] | None, bar: Progress) -> None:  # fmt: skip
    for name in cfg.static_fields:
        w.add_variable(name, ("latitude", "longitude"), chunks=chunks, codec=codec, shards=shards, attrs=field_attrs(name))
        block = model.static(name)
        w.write(name, block, (0, 0))
        bar.update(block.nbytes)
    for name in (*cfg.level_fields, *cfg.surface_fields):
        dims = ("time", "level", "latitude", "longitude") if name in LEVEL_FIELDS else ("time", "latitude", "longitude")
        w.add_variable(name, dims, chunks=chunks, codec=codec, shards=shards, attrs=field_attrs(name))
        bar.set_description(f"synth {cfg.name} {name}")
        gen = model.generator(name)  # the AR state of this variable only: freed before the next one
        for sl in w.time_blocks(name):
            block = gen.block(sl.start, sl.stop)  # (T, [L], ny, nx): the only large allocation
            w.write(name, block, sl.start)
            bar.update(block.nbytes)


def _write_atmorep(w: StoreWriter, cfg: SynthConfig, model: FieldModel, chunks: Sequence[int] | None,
                   codec: str, shards: Sequence[int] | None, bar: Progress) -> None:  # fmt: skip
    nt, nl, ny, nx = cfg.times.size, len(cfg.levels), cfg.latitude.size, cfg.longitude.size
    t, lev, y, x = (8, nl, ny, nx) if chunks is None else chunks
    levels = [float(v) for v in cfg.levels]
    w.group.attrs.update({"fastload_layout": "atmorep", "fields": list(cfg.level_fields),
                          "sfc_fields": list(cfg.surface_fields), "levels": levels, "level_type": cfg.level_type})
    arrays = []
    for arr, dim, names in (("data", "field", cfg.level_fields), ("data_sfc", "sfc_field", cfg.surface_fields)):
        if not names:
            continue
        lvl = (nl,) if arr == "data" else ()
        dims = ("time", dim, *(("level",) if arr == "data" else ()), "latitude", "longitude")
        per_dim = (t, len(names), *((lev,) if arr == "data" else ()), y, x)
        shard = None
        if shards is not None:
            st, sl_, sy, sx = shards
            shard = (st, len(names), *((sl_,) if arr == "data" else ()), sy, sx)
        attrs = {"fields": list(names), "units": {n: field_attrs(n)["units"] for n in names},
                 "long_names": {n: field_attrs(n)["long_name"] for n in names}}  # fmt: skip
        if arr == "data":
            attrs.update({"levels": levels, "level_type": cfg.level_type})
        w.add_variable(arr, dims, shape=(nt, len(names), *lvl, ny, nx), chunks=per_dim, codec=codec, shards=shard,
                       attrs=attrs)  # fmt: skip
        arrays.append((arr, [model.generator(n) for n in names]))
    for sl in w.time_blocks(arrays[0][0]):
        for arr, gens in arrays:  # one chunk holds every field: the block of all fields is in memory at once
            block = np.stack([g.block(sl.start, sl.stop) for g in gens], axis=1)  # (T, F, [L], ny, nx)
            w.write(arr, block, sl.start)
            bar.update(block.nbytes)


_POLL_S = 0.2
"""How often :func:`default_dataset` looks whether another process's writer has put the dataset in place."""


def _pause() -> None:
    """One wait of :func:`default_dataset` for another writer (tests replace it)."""
    time.sleep(_POLL_S)


def default_dataset(cache_dir: str | os.PathLike[str] | None = None, preset: str = "tiny", seed: int = 0,
                    *, zarr_format: int = 2, progress: bool | None = False, wait_s: float = 3600.0) -> Path:  # fmt: skip
    """Path of the built-in synthetic dataset, written once into a cache directory and reused.

    The directory is ``cache_dir``, else ``$FASTLOAD_CACHE``, else ``~/.cache/fastload``; the store's name keys
    preset, seed, zarr format and :data:`SYNTH_VERSION`, so a change of generator never reuses stale data. Two
    processes creating it at once both succeed: the store writer refuses a second writer of an output a live
    writer on this host is writing (:class:`~fastload.write.StoreWriter`), so the second waits, up to ``wait_s``
    seconds, for the first one's store to appear and returns it; if that writer stops without putting it there
    (killed, failed), the second writes it itself. A :class:`~fastload.errors.StoreError` naming the dataset and
    the other writer's temporary store when ``wait_s`` passes first.
    """
    if isinstance(wait_s, bool) or not isinstance(wait_s, (int, float)) or not wait_s >= 0:
        raise ConfigError(f"default_dataset: wait_s must be a number of seconds >= 0, got {wait_s!r}")
    root = Path(cache_dir or os.environ.get("FASTLOAD_CACHE") or Path.home() / ".cache" / "fastload").expanduser()
    path = root / f"synth-{preset}-seed{seed}-zarr{zarr_format}-v{SYNTH_VERSION}.zarr"
    if path.exists():
        return path
    try:  # before anything is written: a file in the folder's place is named with the setting it came from
        root.mkdir(parents=True, exist_ok=True)
    except OSError as e:  # FileExistsError (a file there), NotADirectoryError (under a file), PermissionError
        source = ("data.cache_dir" if cache_dir else "FASTLOAD_CACHE" if os.environ.get("FASTLOAD_CACHE")
                  else "the default cache folder (set FASTLOAD_CACHE)")
        why = "a file is in its place" if isinstance(e, FileExistsError) else e.strerror or str(e)
        raise ConfigError(f"{source} = {str(root)!r}: cannot be the folder of the built-in dataset ({why}); "
                          f"expected a folder (an existing one or one to create)") from None
    deadline = time.monotonic() + wait_s
    while True:
        try:
            return synthesize(path, preset, seed, zarr_format=zarr_format, progress=progress)
        except StoreError:
            if path.exists():  # another process finished first
                return path
            other = live_writer_of(path)
            if other is None:  # no other writer to wait for: the error is this one's
                raise
        log.info("%s: another process is writing it (%s); waiting for it", path, other)
        while not path.exists() and other is not None:  # until it is there, or its writer is gone (then write it)
            if time.monotonic() > deadline:
                raise StoreError(f"{path}: waited {wait_s:g} s for another writer of the built-in dataset (its "
                                 f"unfinished store is {other}) to finish; it is still writing. Wait for it or stop "
                                 "it (its temporary is then removed), or use another cache folder "
                                 "(FASTLOAD_CACHE, data.cache_dir)")  # fmt: skip
            _pause()
            other = live_writer_of(path)
        if path.exists():
            return path


def _dir_size(path: Path) -> int:
    return sum(f.stat().st_size for f in path.rglob("*") if f.is_file())


def main(argv: Sequence[str] | None = None) -> int:
    """``fastload synth OUT [--preset ...]``: write a synthetic store and print what was written."""
    lines = [f"  {n:<10} {c.latitude.size}x{c.longitude.size} grid ({c.resolution} deg), {c.hours} h, "
             f"{len(c.level_fields)} fields x {len(c.levels)} levels + {len(c.surface_fields)} surface, "
             f"{c.nbytes / 1e6:,.0f} MB raw" for n, c in PRESETS.items()]  # fmt: skip
    p = argparse.ArgumentParser(
        prog="fastload synth",
        description="Write a synthetic ERA5-like zarr store (deterministic by seed) that xarray opens as it is.",
        epilog="presets:\n" + "\n".join(lines) + "\n\nlevel fields: " + ", ".join(LEVEL_FIELDS)
        + "\nsurface fields: " + ", ".join(SURFACE_FIELDS) + "\nstatic fields: " + ", ".join(STATIC_FIELDS),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("out", help="path of the store to create (must not exist unless --overwrite)")
    p.add_argument("--preset", default="tiny", choices=list(PRESETS), help="dataset size (default: tiny)")
    p.add_argument("--seed", type=int, default=0, help="random seed (default 0); same seed, same values")
    p.add_argument("--zarr-format", type=int, default=2, choices=(2, 3), help="zarr format (default 2)")
    p.add_argument("--chunks", metavar="T,L,Y,X", help="chunk shape (time, level, lat, lon); inner chunks with "
                   f"--shard (default: the preset's, e.g. {','.join(map(str, DEFAULT_CHUNKS))}; AtmoRep's for atmorep)")
    p.add_argument("--codec", default=DEFAULT_CODEC, choices=CODECS, help=f"compression (default {DEFAULT_CODEC})")
    p.add_argument("--shard", metavar="T,L,Y,X", help="zarr v3 shard shape, a multiple of the chunks")
    p.add_argument("--layout", default="per-variable", choices=LAYOUTS,
                   help="one array per variable (xarray style, default) or AtmoRep's data/data_sfc arrays")
    p.add_argument("--hours", type=int, help="override the preset's record length in hours")
    p.add_argument("--overwrite", action="store_true", help="replace an existing store at OUT")
    p.add_argument("-q", "--quiet", action="store_true", help="no progress bar")
    a = p.parse_args(argv)
    chunks = parse_ints(a.chunks, 4, "--chunks") if a.chunks else None
    shards = parse_ints(a.shard, 4, "--shard") if a.shard else None
    t0 = time.perf_counter()
    path = synthesize(a.out, a.preset, a.seed, zarr_format=a.zarr_format, chunks=chunks, codec=a.codec,
                      shards=shards, layout=a.layout, hours=a.hours, overwrite=a.overwrite,
                      progress=False if a.quiet else None)  # fmt: skip
    raw, stored = _raw_bytes(_resolve(a.preset, a.hours), a.layout), _dir_size(path)
    print(f"wrote {path}: {raw / 1e6:,.1f} MB raw, {stored / 1e6:,.1f} MB stored (ratio {raw / max(stored, 1):.2f}), "
          f"{time.perf_counter() - t0:.1f} s")  # fmt: skip
    return 0


if __name__ == "__main__":
    sys.exit(main())
