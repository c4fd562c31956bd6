"""What a loader test may leave running: fastload's threads and worker processes (all named ``fastload...``)."""

from __future__ import annotations

import multiprocessing as mp
import threading


def fastload_threads() -> list[str]:
    """Names of the live threads fastload started."""
    return [t.name for t in threading.enumerate() if t.name.startswith("fastload")]


def fastload_processes() -> list[str]:
    """Names of the live child processes fastload started (reaping those that have exited)."""
    return [p.name for p in mp.active_children() if p.name.startswith("fastload")]
