"""The streams of a multi-stream config, one at a time: open the store, check it, give it what samples it.

Why this exists: :class:`fastload.streams.MultiStream` holds one :class:`Stream` per ``[streams.NAME]`` table
(its store, its share of the sampling config, its kind: the ``reference``, a structured ``box`` stream or a
``mesh``) and counts each stream's I/O (:class:`Counters`). What a stream needs depends only on itself: the reference
a structured tokenizer (and a regular lat-lon grid), the others a point sampler and, for index boxes, a mapper
from the reference's regions (:func:`build_stream`). Bad input (a field the store lacks, packed fields, a grid
smaller than the sample box, a reference whose time rule is not ``inside``) fails here, at construction.

    python -m pytest tests/fastload/test_streams.py -q
"""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Iterator
from typing import Any

import numpy as np

from ._stream_space import (
    CurvilinearMapper,
    LatLonMapper,
    ReferenceRegions,
    ReferenceRowSampler,
    rows_reversed,
)
from .config import SamplingConfig
from .errors import ConfigError
from .sampling.mesh import MeshPointSampler, point_layouts
from .sampling.points import BoxPointSampler
from .sampling.tokenizer import build_tokenizer
from .store._check import refuse_packed, unknown_field

__all__ = ["Counters", "Stream", "open_stream_store", "check_point_fields", "build_stream"]


class Counters:
    """Per-stream I/O totals (thread-safe)."""

    __slots__ = ("lock", "values")

    def __init__(self, names: list[str]):
        self.lock = threading.Lock()
        self.values = {n: dict(fetches=0, bytes_stored=0, fetch_s=0.0, decodes=0, bytes_decoded=0, decode_s=0.0)
                       for n in names}

    def add(self, stream: str, **kw: float) -> None:
        with self.lock:
            v = self.values[stream]
            for k, x in kw.items():
                v[k] += x


class Stream:
    """One stream: its store, its share of the config, and how samples map into it."""

    def __init__(self, name: str, spec: Any, store: Any, config: SamplingConfig, kind: str):
        self.name, self.spec, self.store, self.config, self.kind = name, spec, store, config, kind
        self.rule = spec.time_rule
        # (a field the store lacks is refused, saying why, by build_stream's checks)
        self.has_time = any(store.fields[f.name].has_time for f in config.fields if f.name in store.fields)
        self.time = store.time if self.has_time else None
        self.tokenizer: Any = None
        self.sampler: Any = None
        self.mapper: Any = None
        self.months: np.ndarray | None = None
        self.layouts: dict[str, Any] = {}

    @property
    def arrays(self) -> list[str]:
        return sorted({lay.array for lay in self.layouts.values()})

    def key(self, array: str) -> str:
        return f"{self.name}/{array}"


def open_stream_store(where: Any, storage_options: Any, backend: str = "auto") -> Any:
    """An open store as it is, or :func:`fastload.store.open_store` of a path or URL (with ``backend``)."""
    if hasattr(where, "chunk_bytes") and hasattr(where, "fields"):
        return where
    from .store import open_store

    return open_store(where, storage_options=storage_options, backend=backend)


def check_point_fields(st: Stream, box: tuple[int, int, int]) -> None:
    """A point-sampled stream has every field, unpacked, on a grid at least as large as the sample box."""
    g = st.store.grid
    for f in st.config.fields:
        info = st.store.fields.get(f.name)
        if info is None and f.name in getattr(st.store, "not_fields", {}):
            raise ConfigError(f"fields.{f.name} of stream {st.name!r}: {unknown_field(st.store, f.name)}")
        if info is None:
            raise ConfigError(f"fields.{f.name}: not in stream {st.name!r} ({st.store.path}); it has "
                              f"{list(st.store.fields)}")
        refuse_packed(info, f"fields.{f.name} of stream {st.name!r}")
        if g.kind != "mesh" and (box[1] > g.ny or box[2] > g.nx):
            raise ConfigError(f"fields.{f.name}: the sample box spans {box[1]} x {box[2]} grid points but stream "
                              f"{st.name!r} has a {g.ny} x {g.nx} grid")


@contextlib.contextmanager
def _naming(st: Stream) -> Iterator[None]:
    """Re-raise a :class:`ConfigError` about a stream's grid naming the stream and its store."""
    try:
        yield
    except ConfigError as e:
        raise ConfigError(f"streams.{st.name} ({st.store.path}): {e}") from e


def build_stream(st: Stream, jit: bool | None = None, reference: Any = None) -> Stream:
    """Check ``st`` against its share of the config and give it what samples it: the reference its structured
    tokenizer; a box stream its :class:`~fastload.sampling.points.BoxPointSampler` and the mapper from the reference's
    regions to its index boxes (:mod:`fastload._stream_space`); a mesh stream its mesh sampler.

    ``reference`` is the reference stream's grid (for every stream but the reference): a lat-lon stream whose rows
    run the other way from it gets a :class:`~fastload._stream_space.ReferenceRowSampler`, so its token rows come out
    in the reference's row order."""
    if st.kind == "reference":
        if st.rule != "inside":
            raise ConfigError(f"streams.{st.name}.time_rule = {st.rule!r}: the first stream sets each sample's "
                              "window on its own steps; leave its time_rule at 'inside'")
        with _naming(st):
            ReferenceRegions(st.store.grid, st.config.box)  # refuses a non-lat-lon reference
        st.store.check(st.config)
        st.tokenizer = build_tokenizer(st.store, st.config)
        st.layouts = dict(st.tokenizer.layouts)
        return st
    check_point_fields(st, st.config.box)
    st.layouts = point_layouts(st.store, st.config)
    _, H, W = st.config.box
    if st.kind == "mesh":
        st.sampler = MeshPointSampler(st.config, st.layouts, st.time, st.store.grid)
    elif st.store.grid.kind == "latlon":
        if reference is None:
            raise TypeError(f"build_stream: lat-lon stream {st.name!r} needs reference= (the reference's grid)")
        flip = rows_reversed(st.store.grid, reference)
        st.sampler = (ReferenceRowSampler if flip else BoxPointSampler)(st.config, st.layouts, st.time, st.store.grid)
        with _naming(st):
            st.mapper = LatLonMapper(st.store.grid, H, W, reversed_rows=flip)
    else:
        st.sampler = BoxPointSampler(st.config, st.layouts, st.time, st.store.grid)
        st.mapper = CurvilinearMapper(st.store.grid, H, W, jit=jit)
    return st
