"""Interleaved A/B of a CPU Loader that masks (BERT): the consumer's wait per batch while it trains, the working
tree against another git revision.

The consumer stands for a CPU training step: after each ``next()`` it keeps one core busy for ``--step-ms`` (small
matrix products in torch). Whatever the loader does inside ``next()`` adds to every step; what its worker threads
do overlaps the step. Each variant runs in its own process (the revision's tree from ``git archive``, imported
first on ``sys.path``), alternately, ``--rounds`` times; the first ``--skip`` batches of each run are left out (JIT,
pipeline fill). The data and sampling are the ``--preset`` run's (the built-in synthetic dataset and its
normalisation coefficients, made once as ``fastload profile`` makes them), its masking, ``--workers`` threads.

Run::

    python benches/ab_loader_masking.py --against 043b79e                 # small_h100's batch, a 400 ms step
    python benches/ab_loader_masking.py --against HEAD --step-ms 0        # loader-bound: no step to overlap
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path


def measure(opts: argparse.Namespace) -> dict:
    """One run in this process: the consumer's wait per batch (seconds), after ``skip`` batches."""
    import torch

    import fastload
    from profiling.loop import prepare_data
    from profiling.presets import get_preset

    rc = get_preset(opts.preset)
    store, sampling = prepare_data(rc, log=lambda s: None)
    n = opts.skip + opts.batches
    busy = torch.randn(256, 256)
    waits = []
    with fastload.Loader(store, sampling, samples_per_epoch=opts.batch_size * n, batch_size=opts.batch_size,
                         workers=opts.workers, seed=0, masking=rc.masking, device="cpu") as loader:
        it = iter(loader)
        for i in range(n):
            t0 = time.perf_counter()
            batch = next(it)
            wait = time.perf_counter() - t0
            assert batch.masks is not None
            if i >= opts.skip:
                waits.append(wait)
            t1 = time.perf_counter()
            while time.perf_counter() - t1 < opts.step_ms * 1e-3:  # the training step: one busy core
                busy = torch.tanh(busy @ busy * 1e-3)
    return {"waits": waits, "module": fastload.__file__}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--against", help="git revision of the baseline (e.g. HEAD)")
    p.add_argument("--preset", default="small_h100")
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--workers", type=int, default=2)
    p.add_argument("--step-ms", type=float, default=400.0)
    p.add_argument("--batches", type=int, default=12)
    p.add_argument("--skip", type=int, default=2)
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    opts = p.parse_args()
    if opts.child:
        print(json.dumps(measure(opts)))
        return
    if not opts.against:
        p.error("--against REV is required")
    root = Path(__file__).resolve().parents[1]
    args = sys.argv[1:]
    with tempfile.TemporaryDirectory(prefix="ab-loader-masking-") as tmp:
        base = Path(tmp) / "base"
        base.mkdir()
        archive = subprocess.run(["git", "-C", str(root), "archive", opts.against], check=True,
                                 capture_output=True).stdout
        subprocess.run(["tar", "-x", "-C", str(base)], input=archive, check=True)
        trees = {opts.against: base, "tree": root}
        for r in range(opts.rounds):
            for name, tree in trees.items():
                env = dict(os.environ, PYTHONPATH=str(tree))
                out = subprocess.run([sys.executable, __file__, *args, "--child"], cwd=tree, env=env, check=False,
                                     capture_output=True, text=True)  # this script, the tree's packages
                if out.returncode != 0:
                    raise SystemExit(f"{name}: the run failed:\n{out.stderr[-3000:]}")
                res = json.loads(out.stdout.strip().splitlines()[-1])
                assert res["module"].startswith(str(tree)), (name, res["module"])
                w = [1e3 * x for x in res["waits"]]
                print(f"round {r + 1}  {name:>10}  wait per batch ms: mean {statistics.mean(w):7.1f}  "
                      f"median {statistics.median(w):7.1f}  max {max(w):7.1f}", flush=True)


if __name__ == "__main__":
    main()
