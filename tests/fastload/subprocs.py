"""Child processes for the writer tests: one started and waited for until it says it is ready, and one that is gone."""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

from fastload._write_temps import _proc_start


def start_when_ready(script: Path, args: list[str], ready: Path, what: str,
                     guard_s: float) -> subprocess.Popen:
    """Run ``script`` with ``args`` and wait until it has written ``ready``; an AssertionError naming ``what``, its
    exit status and stderr if it exits first or takes more than ``guard_s`` (a guard against a hang, not a timing
    check)."""
    p = subprocess.Popen([sys.executable, str(script), *args],
                         stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)  # fmt: skip
    deadline = time.monotonic() + guard_s
    while not ready.exists():
        if p.poll() is not None or time.monotonic() > deadline:
            p.kill()
            raise AssertionError(f"{what} did not get ready: rc {p.poll()}\n{p.communicate()[1]}")
        time.sleep(0.02)
    return p


def dead_process() -> tuple[int, int]:
    """(pid, start) of a process that ran on this host and is gone."""
    p = subprocess.Popen(["sleep", "60"])
    start = _proc_start(p.pid)[0]
    p.kill()
    p.wait()
    return p.pid, start
