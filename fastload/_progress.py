"""A tiny progress bar on stderr for long writes (synth, convert, rechunk), with no dependency.

Why not tqdm: one more dependency for twenty lines, and tqdm's default of drawing into pipes and CI logs is
noise. This bar draws only when the stream is a terminal, redraws at most ten times a second, and can be
silenced with ``enabled=False`` (the ``--quiet`` flag of the tools) or the environment variable
``FASTLOAD_NO_PROGRESS=1``.

Use::

    with Progress(total=n_bytes, desc="synth temperature", unit="B") as bar:
        for block in blocks:
            ...
            bar.update(block.nbytes)
"""

from __future__ import annotations

import os
import sys
import time
from typing import TextIO

__all__ = ["Progress"]

_PREFIXES = ("", "k", "M", "G", "T", "P")


def _human(x: float, unit: str) -> str:
    """``1536, "B"`` -> ``"1.5 kB"``; plain counts keep no unit."""
    for p in _PREFIXES:
        if abs(x) < 1000 or p == _PREFIXES[-1]:
            return f"{x:.3g} {p}{unit}".rstrip()
        x /= 1000.0
    return f"{x:.3g}"  # pragma: no cover - the loop always returns


def _clock(seconds: float) -> str:
    seconds = int(max(seconds, 0))
    h, rest = divmod(seconds, 3600)
    m, s = divmod(rest, 60)
    return f"{h}:{m:02d}:{s:02d}" if h else f"{m:02d}:{s:02d}"


class Progress:
    """A one-line progress bar: ``desc |#####     | 52% 1.2 GB/2.3 GB 410 MB/s eta 00:03``.

    Parameters
    ----------
    total : float
        Amount of work (bytes, blocks, ...); ``0`` draws no bar but still counts.
    desc : str
        Label in front of the bar.
    unit : str
        Unit of ``total`` shown with SI prefixes (``"B"`` for bytes, ``""`` for counts).
    enabled : bool, optional
        Draw at all. ``None`` (default): only when ``stream`` is a terminal and ``FASTLOAD_NO_PROGRESS`` is unset.
    stream : file, optional
        Where to draw; ``sys.stderr`` by default.
    """

    def __init__(
        self,
        total: float,
        desc: str = "",
        unit: str = "",
        *,
        enabled: bool | None = None,
        stream: TextIO | None = None,
    ):
        self.total = float(total)
        self.desc = desc
        self.unit = unit
        self.stream = sys.stderr if stream is None else stream
        if enabled is None:
            isatty = getattr(self.stream, "isatty", None)
            enabled = bool(isatty and isatty()) and not os.environ.get("FASTLOAD_NO_PROGRESS")
        self.enabled = enabled
        self.done = 0.0
        self._start = time.perf_counter()
        self._last_draw = 0.0
        self._closed = False

    def update(self, n: float = 1) -> None:
        """Add ``n`` to the work done and redraw (at most every 0.1 s)."""
        self.done += n
        if not self.enabled:
            return
        now = time.perf_counter()
        if now - self._last_draw >= 0.1 or (self.total and self.done >= self.total):
            self._last_draw = now
            self._draw(now)

    def set_description(self, desc: str) -> None:
        """Change the label (e.g. to the variable being written)."""
        self.desc = desc

    def _draw(self, now: float) -> None:
        elapsed = max(now - self._start, 1e-9)
        rate = self.done / elapsed
        if self.total > 0:
            frac = min(self.done / self.total, 1.0)
            width = 24
            filled = int(frac * width)
            eta = (self.total - self.done) / rate if rate > 0 else 0.0
            line = (
                f"{self.desc} |{'#' * filled}{' ' * (width - filled)}| {frac * 100:3.0f}% "
                f"{_human(self.done, self.unit)}/{_human(self.total, self.unit)} "
                f"{_human(rate, self.unit)}/s eta {_clock(eta)}"
            )
        else:
            line = f"{self.desc} {_human(self.done, self.unit)} {_human(rate, self.unit)}/s {_clock(elapsed)}"
        self.stream.write("\r" + line + "\x1b[K")
        self.stream.flush()

    def close(self) -> None:
        """Draw the final state and end the line; safe to call twice."""
        if self._closed:
            return
        self._closed = True
        if self.enabled:
            self._draw(time.perf_counter())
            self.stream.write("\n")
            self.stream.flush()

    def __enter__(self) -> Progress:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
