"""A rank's process group ends before its interpreter does: :func:`profiling.distributed.init_distributed`'s exit
hook destroys the group, which joins gloo's worker threads while Python is whole.

Why it matters: a gloo worker thread drops a collective's work (and its tensors) just after the collective has
returned to Python; dropping a tensor Python also saw takes the GIL, and a thread that asks for the GIL while the
interpreter finalizes is ended by ``pthread_exit``, which aborts the process through the work's noexcept destructor
("terminate called without an active exception", exit status -6). A rank that exits right after a collective (one
that failed the run's checks, in ``all_or_none``) exited -6 instead of 2 in 1 run of 21 on a loaded machine. The
abort is a race, so the test checks its condition instead: no thread the group started is left at exit.

Before the fix the group outlived its destroy_process_group once a DistributedDataParallel had been built: torch
imports ``torch.distributed.nn.functional`` then, whose functions take ``group=group.WORLD`` as a default argument
(evaluated at import, so it holds the group for good), and the model's reducer, in a reference cycle, held it until
the interpreter's own last collection."""

from __future__ import annotations

import os
import subprocess

import pytest

from tests.profiling.ranks import start_ranks

_RANK = '''
import atexit, dataclasses, os, sys


def tasks():
    """This process's threads: {thread id: name}."""
    out = {}
    for t in os.listdir("/proc/self/task"):
        try:
            with open(f"/proc/self/task/{t}/comm") as fh:
                out[t] = fh.read().strip()
        except OSError:  # the thread ended meanwhile
            pass
    return out


before = set(tasks())
# registered before init_distributed registers its own hook, so it runs after it (atexit runs last-in, first-out)
atexit.register(lambda: print(f"left at exit: {sorted(n for t, n in tasks().items() if t not in before)}",
                              flush=True))

import torch
from profiling.distributed import all_or_none, init_distributed
from profiling.presets import cpu_tiny

rank, world, _ = init_distributed(dataclasses.replace(cpu_tiny(), device="cpu"))
if sys.argv[1] != "plain":
    def train():  # a model trained, then dropped (as profiling.loop.run's is when it returns)
        net = torch.nn.parallel.DistributedDataParallel(torch.nn.Linear(2, 1))
        net(torch.ones(3, 2)).sum().backward()
        if sys.argv[1] == "cycle":  # garbage only the cyclic collector frees
            net.me = [net]

    train()
print(f"started by the group: {sorted(n for t, n in tasks().items() if t not in before)}", flush=True)
with all_or_none("the test's stretch", world):  # the last collective, just before the exit
    pass
'''


@pytest.mark.dist
@pytest.mark.slow
@pytest.mark.skipif(not os.path.isdir("/proc/self/task"), reason="lists a process's threads from /proc (Linux)")
@pytest.mark.parametrize("case", ["plain", "ddp", "cycle"])
def test_no_thread_of_the_process_group_is_left_when_the_interpreter_finalizes(case, tmp_path):
    """plain: init_distributed, one gather (all_or_none), exit; ddp: the same after a DistributedDataParallel
    trained a step and was dropped; cycle: dropped in a reference cycle. Before the fix the gloo worker threads
    were left at exit on every rank in the ddp and cycle cases."""
    script = tmp_path / "rank.py"
    script.write_text(_RANK)
    procs = start_ranks([str(script), case], tmp_path)
    try:
        outs = [p.communicate(timeout=120)[0] for p in procs]
    except subprocess.TimeoutExpired:
        for p in procs:
            p.kill()
        pytest.fail("the ranks did not finish in 120 s: " + "\n---\n".join(p.communicate()[0][-2000:] for p in procs))
    for rank, (p, out) in enumerate(zip(procs, outs)):
        assert p.returncode == 0, (rank, out[-3000:])
        started = [line for line in out.splitlines() if line.startswith("started by the group: ")]
        assert started and started[0] != "started by the group: []", (rank, out[-3000:])  # gloo's threads ran
        assert "left at exit: []" in out.splitlines(), (rank, started, out[-3000:])
