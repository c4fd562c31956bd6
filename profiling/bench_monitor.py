"""Peak memory and CPU time of this process and all its children while one loader runs, sampled by a thread.

Why this exists: peers run in worker processes (DataLoader), in C++ thread pools (tensorstore) or in our threads;
comparing them needs one measure that sees all of it. :class:`ResourceMonitor` polls ``psutil`` every
``interval`` seconds for the memory of the process and of every descendant, summed, and keeps the peak. Memory is
the proportional set size (PSS: a page shared by k processes counts 1/k to each) where Linux reports it, so
forked DataLoader workers sharing the parent's torch pages are not counted k times; elsewhere the resident set.
CPU seconds are the process's own delta plus, for each child, the last user+system time seen (children started
before :meth:`start` count from then). A child that ends between two polls loses at most ``interval`` of CPU.

    with ResourceMonitor() as mon:
        run_the_loader()
    mon.peak_bytes, mon.baseline_bytes, mon.cpu_seconds
"""

from __future__ import annotations

import threading

import psutil

__all__ = ["ResourceMonitor"]


def _mem(p: psutil.Process) -> int:
    try:
        return int(p.memory_full_info().pss)
    except (AttributeError, psutil.AccessDenied):
        return int(p.memory_info().rss)


def _cpu(p: psutil.Process) -> float:
    t = p.cpu_times()
    return float(t.user + t.system)


class ResourceMonitor:
    """Samples RSS (peak of the sum over the process tree) and CPU seconds of the tree between start and stop.

    Parameters
    ----------
    interval : float
        Seconds between polls.
    """

    def __init__(self, interval: float = 0.05):
        self.interval = float(interval)
        self.peak_bytes = 0
        """Peak over polls of the memory (PSS, else RSS) summed over the process tree."""
        self.baseline_bytes = 0
        """The same sum at :meth:`start` (the harness and whatever it had imported)."""
        self.cpu_seconds = 0.0
        self._proc = psutil.Process()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._child_cpu: dict[int, float] = {}
        self._child_base: dict[int, float] = {}

    def _poll(self) -> int:
        try:
            total = _mem(self._proc)
            children = self._proc.children(recursive=True)
        except psutil.Error:
            return 0
        for c in children:
            try:
                total += _mem(c)
                self._child_cpu[c.pid] = _cpu(c)
            except psutil.Error:
                continue  # it ended between listing and reading
        self.peak_bytes = max(self.peak_bytes, total)
        return total

    def _run(self) -> None:
        while not self._stop.wait(self.interval):
            self._poll()

    def start(self) -> ResourceMonitor:
        """Take the baselines and start polling."""
        self._self_cpu0 = _cpu(self._proc)
        for c in self._proc.children(recursive=True):
            try:
                self._child_base[c.pid] = _cpu(c)
            except psutil.Error:
                pass
        self.baseline_bytes = self._poll()
        self._thread = threading.Thread(target=self._run, name="resource-monitor", daemon=True)
        self._thread.start()
        return self

    def sample(self) -> None:
        """Poll now (call just before the loader's workers shut down to catch their last CPU time)."""
        self._poll()

    def stop(self) -> ResourceMonitor:
        """Stop polling and total the CPU seconds; safe to call twice."""
        if self._thread is None:
            return self
        self._poll()
        self._stop.set()
        self._thread.join()
        self._thread = None
        own = _cpu(self._proc) - self._self_cpu0
        kids = sum(v - self._child_base.get(pid, 0.0) for pid, v in self._child_cpu.items())
        self.cpu_seconds = own + kids
        return self

    def __enter__(self) -> ResourceMonitor:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
