"""Child processes for the writer tests: one started and waited for until it says it is ready, and one that is gone."""

from __future__ import annotations

import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import IO

from fastload._write_temps import _proc_start


class DrainedPopen(subprocess.Popen):
    """A ``Popen`` of text ``stdout`` and ``stderr`` pipes that two threads read from the start, so a child that
    prints more than a pipe buffer (64 KiB) never blocks on a full pipe while no one reads it.
    :meth:`communicate` returns what they read, as ``Popen.communicate`` does (the pipes belong to the threads:
    read them through it, not through ``stdout``/``stderr``)."""

    def __init__(self, args: list[str]) -> None:
        super().__init__(args, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        self._read: dict[str, list[str]] = {"stdout": [], "stderr": []}
        self._readers = [threading.Thread(target=_drain, args=(pipe, self._read[key]), daemon=True,
                                          name=f"drain {key} of {self.pid}")
                         for key, pipe in (("stdout", self.stdout), ("stderr", self.stderr))]
        for t in self._readers:
            t.start()

    def communicate(self, input: str | None = None, timeout: float | None = None) -> tuple[str, str]:
        """Wait for the child to exit (``subprocess.TimeoutExpired`` after ``timeout``), then ``(stdout,
        stderr)``: everything it printed."""
        if input is not None:
            raise ValueError("communicate: the child's stdin is not a pipe; expected input=None")
        deadline = None if timeout is None else time.monotonic() + timeout
        self.wait(timeout)
        for t in self._readers:  # the child is gone: its pipes end (unless a grandchild holds them open)
            t.join(None if deadline is None else max(0.0, deadline - time.monotonic()))
            if t.is_alive():
                raise subprocess.TimeoutExpired(self.args, timeout or 0.0)
        return "".join(self._read["stdout"]), "".join(self._read["stderr"])


def _drain(pipe: IO[str], into: list[str]) -> None:
    with pipe:
        while chunk := pipe.read(1 << 16):  # returns once it has 64 Ki characters or the pipe ends
            into.append(chunk)


def start_when_ready(script: Path, args: list[str], ready: Path, what: str,
                     guard_s: float) -> subprocess.Popen:
    """Run ``script`` with ``args`` and wait until it has written ``ready``; an AssertionError naming ``what``, its
    exit status and stderr if it exits first or takes more than ``guard_s`` (a guard against a hang, not a timing
    check). The child's stdout and stderr are read from the start (:class:`DrainedPopen`): ``communicate()`` on
    the process returned gives all it printed."""
    p = DrainedPopen([sys.executable, str(script), *args])
    deadline = time.monotonic() + guard_s
    while not ready.exists():
        if p.poll() is not None or time.monotonic() > deadline:
            p.kill()
            err = p.communicate()[1]
            raise AssertionError(f"{what} did not get ready: rc {p.returncode}\n{err}")
        time.sleep(0.02)
    return p


def dead_process() -> tuple[int, int]:
    """(pid, start) of a process that ran on this host and is gone."""
    p = subprocess.Popen(["sleep", "60"])
    start = _proc_start(p.pid)[0]
    p.kill()
    p.wait()
    return p.pid, start
