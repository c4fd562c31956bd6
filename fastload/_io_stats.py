"""Per-batch I/O counters of the loader: what was read, decoded and used, and where the seconds went.

Why this exists: every batch the reader (:mod:`fastload.reader`) gathers carries an :class:`IOStats`, and the
loader, the rollout loader, the process workers and the profiling tools add them up and report them. The counters
are plain data, so they live apart from the reader that fills them (public as ``fastload.reader.IOStats``).

    python -c "from fastload.reader import IOStats; print(IOStats(batches=1, samples=8, hits=3, misses=1))"
"""

from __future__ import annotations

import dataclasses
from typing import Any

__all__ = ["IOStats"]


@dataclasses.dataclass(slots=True, repr=False)
class IOStats:
    """Counters of one batch (or a sum of batches, see :meth:`add`); ``repr`` is one line (:meth:`summary`, and the
    decoded bytes and hit rate of each stream)."""

    batches: int = 0
    samples: int = 0
    skipped: int = 0
    """Samples dropped because a chunk they need was bad (``on_bad_chunk="skip"``)."""
    chunks: int = 0
    """Unique chunks the batch needed (per step)."""
    hits: int = 0
    """Chunks found decoded in the cache (or being decoded for another batch)."""
    misses: int = 0
    """Chunks fetched and decoded for this batch."""
    bytes_stored: int = 0
    """Stored chunk bytes read from the store: the batch's own fetches (a shard read whole counted once, its index
    included), plus, for a remote store, the read-ahead requests that returned since the previous batch's count,
    whether a later step takes their bytes (not counted again there), drops them or never uses them. Summed over
    an iteration it is the chunk bytes the store handed out; not counted are the separate reads of a sharded
    array's shard indexes (read by inner chunk: each shard's index is read once when first needed, and cached)
    and metadata reads. Summed over an epoch it is exact too, but for read-ahead requests slower than 2 s: the
    epoch's last batch waits for the read-ahead requests still running (each at most ``loader.read_timeout_s``
    from its start, or 30 s when that is None, and all of them at most 2 s, ``_raw_ahead.SETTLE_WAIT_S``: a request
    slower than that is left running and counts in the next batch read; none still queued is made) and counts them
    (in process mode each worker does so with its own last batch of the epoch, for its own reader). A request
    past its read timeout then is given up and named in a warning; should it
    answer later, its bytes count in a later batch. The wait ends at once when the iteration is stopped (close,
    set_epoch, load_state_dict, a new iter): that batch is not handed out, and the bytes of the requests not
    settled then count in the next batch the reader (or that worker) reads, the next iteration's."""
    bytes_decoded: int = 0
    """Bytes of the chunks decoded for this batch (its ``misses``, decoded size): a chunk found in the decoded-chunk
    cache (a hit) is not decoded again and adds nothing."""
    bytes_useful: int = 0
    """Bytes of source values the samples use (what a perfect reader without a cache would decode)."""
    retries: int = 0
    plan_s: float = 0.0
    fetch_s: float = 0.0
    """Thread-seconds spent fetching (summed over I/O threads)."""
    decode_s: float = 0.0
    """Thread-seconds spent decoding."""
    gather_s: float = 0.0
    wait_s: float = 0.0
    """Seconds the consumer waited for this batch."""
    copy_s: float = 0.0
    """Seconds a GPU loader's worker spent issuing the batch's host-to-device copy and, when the loader masks, the
    masks' kernels (from pinned buffers the copy and kernels run on the side stream, not counted; without pinning
    the copy itself is); 0 on the CPU."""
    streams: dict[str, IOStats] | None = None
    """Multi-stream loading: the same counters per stream (``chunks``, ``hits``, ``misses``, bytes, retries,
    ``fetch_s``, ``decode_s``, ``gather_s``, ``samples``, ``batches``); None for one store. Per-stream values sum to
    the batch's (seconds up to timer resolution; ``wait_s``, ``copy_s`` and ``plan_s`` are the batch's only)."""

    def add(self, other: IOStats) -> IOStats:
        """Add ``other``'s counters to this one (in place, per stream too); returns self."""
        for f in dataclasses.fields(self):
            if f.name != "streams":
                setattr(self, f.name, getattr(self, f.name) + getattr(other, f.name))
        if other.streams:
            mine = self.streams if self.streams is not None else {}
            for name, s in other.streams.items():
                mine.setdefault(name, IOStats()).add(s)
            self.streams = mine
        return self

    def stream(self, name: str) -> IOStats:
        """The counters of stream ``name`` (created on first use)."""
        if self.streams is None:
            self.streams = {}
        got = self.streams.get(name)
        if got is None:
            got = self.streams[name] = IOStats()
        return got

    def as_dict(self) -> dict[str, Any]:
        """The counters as a dict (``streams``: name -> a dict of the same counters, or None)."""
        return dataclasses.asdict(self)

    @property
    def hit_rate(self) -> float:
        n = self.hits + self.misses
        return self.hits / n if n else 0.0

    @property
    def amplification(self) -> float:
        """Read amplification after the cache: :attr:`bytes_decoded` / :attr:`bytes_useful` (0.0 without useful
        bytes). Only the chunks decoded for the batch count (cache misses), every sample's bytes do, so it is not the
        bytes decoded per useful byte of a reader without a cache (``fastload inspect``'s read amplification, one
        sample read alone: >= 1): once the cache serves most chunks it falls below 1, to 0 when all were hits."""
        return self.bytes_decoded / self.bytes_useful if self.bytes_useful else 0.0

    def summary(self) -> str:
        """One line: samples, chunks (hit rate), bytes stored/decoded/useful (:attr:`amplification`, after the
        cache), stage times."""
        extra = "".join(f", {getattr(self, k)} {k}" for k in ("skipped", "retries") if getattr(self, k))
        return (f"{self.batches} batch{'es' if self.batches != 1 else ''}, {self.samples} samples{extra}, "
                f"{self.chunks} chunks ({100 * self.hit_rate:.0f}% hits), {_mb(self.bytes_stored)} stored / "
                f"{_mb(self.bytes_decoded)} decoded / {_mb(self.bytes_useful)} useful "
                f"({self.amplification:.2f}x), "
                + ", ".join(f"{k} {1e3 * getattr(self, f'{k}_s'):.1f} ms"
                            for k in ("plan", "fetch", "decode", "gather", "wait", "copy")))

    def __repr__(self) -> str:
        per = "" if not self.streams else "; streams: " + ", ".join(
            f"{n} {_mb(s.bytes_decoded)} decoded ({100 * s.hit_rate:.0f}% hits)" for n, s in self.streams.items())
        return f"IOStats({self.summary()}{per})"


def _mb(n: int) -> str:
    return f"{n / 1e6:.2f} MB"
