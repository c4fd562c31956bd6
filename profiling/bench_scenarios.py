"""What the bench runs on: the default sampling config for a store, the sample plan, and store variants.

Why this exists: ``fastload bench STORE`` must work with no other input (AtmoRep's geometry fitted to the store),
compare loaders on *the same samples* (one plan drawn up front, handed to every loader), and run the standard
scenarios (AtmoRep chunks, tile chunks, the recommended chunking; zarr v2/v3, sharded; codecs) from one store.

Store variants are named by ``+``-joined parts, each optional: a chunking (``atmorep``: 8 h x all fields x all
levels x the globe, AtmoRep's own; ``tiles``: the writer's default tiles; ``recommended``: what
:func:`fastload.inspect.recommend_chunks` picks for the config), a format (``v2``, ``v3``), ``sharded``, and a
codec (``blosc-lz4``, ``blosc-zstd``, ``zstd``, ``lz4``, ``gzip``, ``none``, or ``auto``: what ``fastload rechunk
--codec auto`` picks, measured on the source); ``as-is`` is the store itself. A
synthetic store (``fastload synth``, which records its preset and seed) is regenerated with the same values in
the variant's layout; other stores need ``fastload rechunk``.

Plans (``--plan``): ``random`` (independent samples), ``window`` (AtmoRep's: all samples of a batch share one
time window), ``aligned`` (box starts on chunk boundaries), ``disjoint`` (chunk-aligned boxes of which no two share
a chunk: nothing overlaps, so caching cannot help; few samples fit in a small store).
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Sequence
from typing import Any

import numpy as np

from fastload._zarr_location import zarr_location
from fastload.config import FieldConfig, SamplingConfig
from fastload.errors import ConfigError

__all__ = ["Variant", "fit_config", "draw_batches", "prepare_store", "PLANS", "ATMOREP_TOKENS", "ATMOREP_TOKEN_SIZE"]

ATMOREP_TOKENS = (12, 6, 12)
ATMOREP_TOKEN_SIZE = (3, 9, 9)
PLANS = ("random", "window", "aligned", "disjoint")
CHUNKINGS = ("atmorep", "tiles", "recommended")


def _pick_levels(levels: np.ndarray, n: int) -> tuple[float, ...]:
    if levels.size <= n:
        return tuple(float(v) for v in levels)
    idx = np.unique(np.round(np.linspace(0, levels.size - 1, n)).astype(int))
    return tuple(float(levels[i]) for i in idx)


def fit_config(store: Any, *, batch_size: int = 16, level_fields: int = 3, surface_fields: int = 1,
               levels: int = 5, time_step: int = 1) -> SamplingConfig:  # fmt: skip
    """AtmoRep's geometry ([12,6,12] tokens of [3,9,9]) fitted to a store: shrunk per axis until it fits.

    Takes up to ``level_fields`` fields on levels (``levels`` of their levels, evenly spread) and up to
    ``surface_fields`` fields without levels, all with time; raw values (normalisation ``none``), float32.
    """
    nt = 1 if store.time is None else len(store.time)
    extents = ((nt - 1) // time_step + 1, int(store.grid.ny), int(store.grid.nx))
    tokens, sizes = [], []
    for n, s, ext in zip(ATMOREP_TOKENS, ATMOREP_TOKEN_SIZE, extents):
        s = min(s, ext)
        tokens.append(max(1, min(n, ext // s)))
        sizes.append(s)
    with_levels = [f for f in store.fields.values() if f.has_time and f.levels is not None]
    surface = [f for f in store.fields.values() if f.has_time and f.levels is None]
    chosen = with_levels[:level_fields] + surface[:surface_fields]
    if not chosen:
        raise ConfigError(f"store {store.path}: no field with a time axis to sample; fields: {list(store.fields)}")
    fields = tuple(
        FieldConfig(name=f.name, levels=None if f.levels is None else _pick_levels(np.asarray(f.levels), levels),
                    num_tokens=tuple(tokens), token_size=tuple(sizes), normalization="none")
        for f in chosen
    )  # fmt: skip
    return SamplingConfig(fields=fields, batch_size=batch_size, time_step=time_step)


def raw_config(config: SamplingConfig) -> SamplingConfig:
    """The same config with every field's normalisation off and float32 out (what the comparison checks)."""
    fields = tuple(dataclasses.replace(f, normalization="none", transform=None) for f in config.fields)
    return dataclasses.replace(config, fields=fields, out_dtype="float32", norm_path=None)


def draw_batches(store: Any, config: SamplingConfig, *, batches: int, batch_size: int, seed: int, epoch: int,
                 plan: str = "random") -> list[np.ndarray]:  # fmt: skip
    """``batches`` arrays of ``(batch_size, 3)`` boxes, deterministic in ``(seed, epoch)``.

    Drawn with :func:`fastload.sampling.geometry.random_boxes` (the Loader's own placement); ``aligned`` then
    moves each start down to the chunk boundary of the first field's array (staying a valid box).
    """
    from fastload.sampling.geometry import GridExtent, random_boxes

    if plan not in PLANS:
        raise ConfigError(f"plan: expected one of {list(PLANS)}, got {plan!r}")
    extent = GridExtent.from_store(store)
    n = batches * batch_size
    if plan == "disjoint":
        boxes = _disjoint_boxes(store, config, extent, n, np.random.default_rng([seed, epoch, 0xD15]))
        return [boxes[i * batch_size : (i + 1) * batch_size] for i in range(batches)]
    spw = batch_size if plan == "window" else 1
    boxes = random_boxes(n, extent, config.box, seed=seed, epoch=epoch, time_step=config.time_step,
                         samples_per_window=spw)  # fmt: skip
    if plan == "aligned":
        info = store.fields[config.fields[0].name]
        chunks = store.arrays[info.array].chunks
        t_ax, _, _, y_ax, x_ax = info.axes
        for col, ax in ((0, t_ax), (1, y_ax), (2, x_ax)):
            if ax is not None:
                boxes[:, col] -= boxes[:, col] % chunks[ax]
    return [boxes[i * batch_size : (i + 1) * batch_size] for i in range(batches)]


def _disjoint_boxes(store: Any, config: SamplingConfig, extent: Any, n: int, rng: np.random.Generator) -> np.ndarray:
    """``n`` chunk-aligned boxes of which no two share a chunk of any sampled array, in random order (plan
    ``disjoint``: nothing overlaps, so no loader can gain from reuse); ConfigError when fewer fit."""
    t_box, h, w = config.box
    span = (t_box - 1) * config.time_step + 1
    mt, my, mx = extent.max_start(config.box, config.time_step)
    arrays = {store.fields[f.name].array: store.fields[f.name].axes for f in config.fields}
    grids = []
    for name, axes in arrays.items():
        ch = store.arrays[name].chunks
        grids.append((name, *(1 if axes[i] is None else ch[axes[i]] for i in (0, 3, 4))))
    ct, cy, cx = (max(g[i] for g in grids) for i in (1, 2, 3))  # aligned to the coarsest chunking
    starts = [(t, y, x) for t in range(0, mt + 1, ct) for y in range(0, my + 1, cy) for x in range(0, mx + 1, cx)]
    rng.shuffle(starts)
    used: set[tuple] = set()
    out = []
    for t0, y0, x0 in starts:
        foot = set()
        for name, gt, gy, gx in grids:
            xs = {((x0 + k) % extent.nx) // gx for k in range(w)}
            foot |= {(name, it, iy, ix) for it in range(t0 // gt, (t0 + span - 1) // gt + 1)
                     for iy in range(y0 // gy, (y0 + h - 1) // gy + 1) for ix in xs}  # fmt: skip
        if used.isdisjoint(foot):
            used |= foot
            out.append((t0, y0, x0))
            if len(out) == n:
                return np.asarray(out, np.int64)
    raise ConfigError(f"plan disjoint: only {len(out)} boxes of {list(config.box)} fit in {store.path} without "
                      f"sharing a chunk; ask for at most {len(out)} samples (batches x batch size), not {n}")


@dataclasses.dataclass(frozen=True, slots=True)
class Variant:
    """A store variant: chunking, zarr format, sharding, codec; ``None`` keeps the source store's."""

    chunking: str | None = None
    zarr_format: int | None = None
    sharded: bool = False
    codec: str | None = None

    @classmethod
    def parse(cls, text: str) -> Variant:
        from fastload.write import CODECS

        if text in ("", "as-is"):
            return cls()
        kw: dict[str, Any] = {}
        for part in text.split("+"):
            if part in CHUNKINGS:
                kw["chunking"] = part
            elif part in ("v2", "v3"):
                kw["zarr_format"] = int(part[1])
            elif part == "sharded":
                kw["sharded"] = True
            elif part in CODECS or part == "auto":
                kw["codec"] = part
            else:
                raise ConfigError(f"scenario {text!r}: unknown part {part!r}; expected a chunking {list(CHUNKINGS)}, "
                                  f"v2/v3, 'sharded', or a codec {[*CODECS, 'auto']}")  # fmt: skip
        v = cls(**kw)
        if v.sharded and v.zarr_format == 2:
            raise ConfigError(f"scenario {text!r}: sharding needs zarr v3")
        return v

    @property
    def name(self) -> str:
        parts = [self.chunking, None if self.zarr_format is None else f"v{self.zarr_format}",
                 "sharded" if self.sharded else None, self.codec]  # fmt: skip
        return "+".join(p for p in parts if p) or "as-is"


def _synth_source(store: Any) -> tuple[Any, int] | None:
    """``(SynthConfig, seed)`` of a store ``fastload synth`` wrote, else None."""
    import zarr

    from fastload.synth import SynthConfig

    attrs = dict(zarr.open_group(zarr_location(store.path), mode="r").attrs)
    cfg = attrs.get("synth_config")
    if not isinstance(cfg, dict) or "synth_seed" not in attrs:
        return None
    names = {f.name for f in dataclasses.fields(SynthConfig)}
    kw = {k: tuple(v) if isinstance(v, list) else v for k, v in cfg.items() if k in names}
    return SynthConfig(**kw), int(attrs["synth_seed"])


def prepare_store(store: Any, variant: Variant, config: SamplingConfig, workdir: str, *,
                  samples_per_window: int = 1) -> str:  # fmt: skip
    """Path of ``store`` in the layout ``variant`` asks for (the store itself for ``as-is``), written once.

    ``samples_per_window``: the plan's samples per time window, for the recommended chunking (a store per value).
    """
    if variant == Variant():
        return str(store.path)
    window = variant.chunking == "recommended" and samples_per_window > 1
    out = os.path.join(workdir, variant.name.replace("+", "_") + (f"_w{samples_per_window}" if window else "")
                       + ".zarr")  # fmt: skip
    if os.path.exists(out):
        return out
    src = _synth_source(store)
    if src is None:
        raise ConfigError(f"scenario {variant.name!r}: {store.path} was not written by 'fastload synth', so it "
                          f"cannot be regenerated in another layout; rechunk it with 'fastload rechunk' and bench "
                          f"the copy as-is")  # fmt: skip
    from fastload.synth import synthesize
    from fastload.write import DEFAULT_CODEC

    cfg, seed = src
    fmt = variant.zarr_format or store.zarr_format
    auto = variant.codec == "auto"
    codec = (None if auto else variant.codec) or _codec_of(store) or DEFAULT_CODEC
    chunking = variant.chunking or ("atmorep" if store.layout == "atmorep" else "tiles")
    layout = "atmorep" if chunking == "atmorep" else "per-variable"
    chunks: Sequence[int] | None = None
    if chunking == "recommended":
        chunks = _recommended(store, config, workdir, fmt, codec, samples_per_window)
    elif chunking == "tiles":
        chunks = cfg.chunks
    if auto:  # as `fastload rechunk --codec auto` picks it: measured once, on the new chunks of the first field
        from fastload.rechunk import auto_codec

        field = next((f.name for f in config.fields if f.levels is not None), config.fields[0].name)
        codec = auto_codec(store, zarr_format=fmt, field=field, block=chunks) if chunks else auto_codec(
            store, zarr_format=fmt)  # fmt: skip
        print(f"scenario {variant.name}: codec auto -> {codec} (written to {out}; kept while it exists)")
    shards = None
    if variant.sharded:
        base = chunks or (8, len(cfg.levels), cfg.latitude.size, cfg.longitude.size)
        shards = (base[0] * 4, base[1], base[2] * (2 if chunking != "atmorep" else 1),
                  base[3] * (2 if chunking != "atmorep" else 1))  # fmt: skip
    synthesize(out, cfg, seed, zarr_format=fmt, chunks=chunks, codec=codec, shards=shards, layout=layout,
               progress=False)  # fmt: skip
    return out


def _codec_of(store: Any) -> str | None:
    """The writer's name of the first data array's codec, when it is one the writer knows."""
    info = next(iter(store.arrays.values()))
    ids = [c.get("id") or c.get("name") for c in info.codecs]
    cname = next((c.get("cname") or c.get("configuration", {}).get("cname") for c in info.codecs
                  if (c.get("id") or c.get("name")) == "blosc"), None)  # fmt: skip
    if "blosc" in ids:
        return f"blosc-{cname}" if cname in ("lz4", "zstd") else None
    for name in ("zstd", "lz4", "gzip"):
        if name in ids or f"numcodecs.{name}" in ids:
            return name
    return "none"


def _recommended(store: Any, config: SamplingConfig, workdir: str, fmt: int, codec: str,
                 samples_per_window: int = 1) -> tuple[int, ...]:  # fmt: skip
    """The recommended (time, level, lat, lon) chunks of the config's first field on levels."""
    from fastload.inspect import recommend_chunks
    from fastload.store import open_store

    tiles = prepare_store(store, Variant(chunking="tiles", zarr_format=fmt, codec=codec), config, workdir)
    ts = open_store(tiles)
    rec = recommend_chunks(ts, config, samples_per_window=samples_per_window)
    field = next((f for f in config.fields if f.levels is not None), config.fields[0])
    ch = rec[ts.fields[field.name].array].chunks
    return tuple(ch) if len(ch) == 4 else (ch[0], 1, ch[1], ch[2])
