"""Helpers of the tests that run several ranks: the slow rank's data the torchrun scripts wrap their loader in, a
script run under torchrun on the loop tests' tiny store, and ranks started one process each, as srun or each node's
own torchrun starts them (no launcher on the machine that ends the other ranks when one fails, as a one-node
torchrun does)."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[2]


class Slow:
    """``run(..., wrap_loader=Slow)``: the batches of ``data``, each ``LATE_S`` late on rank 1 (the environment's
    ``RANK``), on time on every other rank."""

    LATE_S = 0.03

    def __init__(self, data: Any):
        self.data = data
        self.late = self.LATE_S if int(os.environ.get("RANK", "0")) == 1 else 0.0

    def __iter__(self):
        for b in self.data:
            if self.late:
                time.sleep(self.late)
            yield b


def torchrun_on_tiny_store(script: str, tmp_path_factory: Any, tmp_path: Path) -> tuple[str, Path]:
    """Run the text ``script`` under torchrun with 2 ranks as ``SCRIPT RUN_FILE OUT``, the run file on the loop tests'
    tiny store (warm-up 1 step); (what it printed, OUT). A run that fails or takes past 400 s fails the test."""
    from tests.profiling.loopdata import run_toml, tiny_store
    from tests.profiling.test_train_dist import _torchrun

    store, norm = tiny_store(tmp_path_factory)
    cfg = run_toml(tmp_path, store, norm, warmup=1)
    path = tmp_path / "rank_script.py"
    path.write_text(script)
    out = tmp_path / "out"
    return _torchrun([str(path), str(cfg), str(out)], tmp_path, timeout=400), out


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_ranks(args: Sequence[str], cwd: Path, world: int = 2,
                env_of: Mapping[int, Mapping[str, str]] | None = None) -> list[subprocess.Popen]:
    """``python ARGS`` once per rank, with the environment torchrun gives a rank (``RANK``, ``WORLD_SIZE``,
    ``MASTER_ADDR``/``MASTER_PORT``, ...) and rank ``r``'s own extra variables ``env_of[r]``; stdin a pipe (a rank
    may wait on it), stdout and stderr together, as text."""
    port = str(free_port())
    procs = []
    for rank in range(world):
        env = {**os.environ, "PYTHONPATH": str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", ""),
               "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": port, "RANK": str(rank), "LOCAL_RANK": str(rank),
               "WORLD_SIZE": str(world), "LOCAL_WORLD_SIZE": str(world), "OMP_NUM_THREADS": "1",
               **((env_of or {}).get(rank, {}))}
        procs.append(subprocess.Popen([sys.executable, *args], cwd=cwd, env=env, stdin=subprocess.PIPE,
                                      stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True))
    return procs
