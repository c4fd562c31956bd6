"""Hardware counters of the gather kernel, counted only while it runs, per output value.

Why this exists: the one-thread gather is limited by the micro-architecture (load-queue and retire stalls, L2
refills of lines it prefetched, the order of its memory accesses), not by its instruction count (RESULTS 12.2, 13),
and a counter over the whole process mixes in the data set-up, which takes longer than the kernel. Here each case
runs in a child process under ``perf stat --control``: the child builds the data of ``ab_gather.py`` (same grid,
chunks, boxes and coefficients), runs the kernel once to compile it, then enables the counters, runs its calls
``--reps`` times and disables them. Counts are divided by the output values the counted calls wrote.

Run (Linux, ``perf`` on the PATH, ``kernel.perf_event_paranoid`` <= 2 for ``:u`` events)::

    python benches/pmu_gather.py --geoms 9x9 --norms global,local
    python benches/pmu_gather.py --norms local --events cycles:u,instructions:u,ls_dmnd_fills_from_sys.lcl_l2:u

Event names are the machine's (``perf list``); AMD Zen 3's used in RESULTS 13: ``cycles``, ``instructions``,
``de_dis_dispatch_token_stalls1.load_queue_rsrc_stall``, ``de_dis_dispatch_token_stalls2.retire_token_stall``,
``ls_dmnd_fills_from_sys.lcl_l2``, ``ls_bad_status2.stli_other``, ``ex_ret_brn_misp``. Ask for at most as many
events as the core has counters (six on Zen 3), or perf multiplexes them and scales estimates.
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import ab_gather  # noqa: E402  (its data, so both tools measure the same cases)

DEFAULT_EVENTS = "cycles:u,instructions:u"


def _child(opts: argparse.Namespace) -> int:
    from fastload.sampling import _kernels

    world = ab_gather.make_world(opts.grid)
    _, calls = ab_gather.make_calls(world, opts.geoms, opts.norms, ["k"])
    ab_gather._run(_kernels, calls, "k")  # compile (or load from the cache) and touch everything once
    with open(opts.ctl, "w") as ctl, open(opts.ack) as ack:
        ctl.write("enable\n")
        ctl.flush()
        ack.readline()
        for _ in range(opts.reps):
            ab_gather._run(_kernels, calls, "k")
        ctl.write("disable\n")
        ctl.flush()
        ack.readline()
    print(opts.reps * sum(outs["k"].size for _, outs in calls))
    return 0


def count(grid: str, geom: str, norm: str, events: str, reps: int) -> dict[str, float]:
    """Per output value, each event's count over ``reps`` rounds of the case's calls (a child under perf)."""
    with tempfile.TemporaryDirectory(prefix="pmu_gather_") as work:
        ctl, ack = os.path.join(work, "ctl"), os.path.join(work, "ack")
        os.mkfifo(ctl)
        os.mkfifo(ack)
        cmd = ["perf", "stat", "-x", ",", "-D", "-1", "--control", f"fifo:{ctl},{ack}", "-e", events, "--",
               sys.executable, os.path.abspath(__file__), "--child", "--grid", grid, "--geoms", geom, "--norms",
               norm, "--reps", str(reps), "--ctl", ctl, "--ack", ack]
        res = subprocess.run(cmd, capture_output=True, text=True)
    if res.returncode != 0:
        raise RuntimeError(f"perf stat failed ({res.returncode}): {res.stderr.strip()[-2000:]}")
    values = int(res.stdout.strip().splitlines()[-1])
    counts = {}
    for line in res.stderr.splitlines():
        f = line.split(",")
        if len(f) > 3 and f[2]:
            if not f[0].replace(".", "").isdigit():
                raise RuntimeError(f"perf could not count {f[2]!r}: {f[0]}")
            counts[f[2]] = float(f[0]) / values
            if len(f) > 4 and f[4] and float(f[4]) < 100.0:  # multiplexed: perf scaled an estimate
                print(f"note: {f[2]} was counted {float(f[4]):.0f} % of the time (more events than counters); "
                      f"its figure is perf's estimate", file=sys.stderr)
    return counts


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--grid", choices=sorted(ab_gather.GRIDS), default="0.25", help="as ab_gather.py")
    p.add_argument("--geoms", default="9x9", help=f"of {', '.join(ab_gather.GEOMETRIES)}")
    p.add_argument("--norms", default="global,local", help="of none, global, local")
    p.add_argument("--events", default=DEFAULT_EVENTS, help=f"perf event list (default {DEFAULT_EVENTS})")
    p.add_argument("--reps", type=int, default=3, help="rounds of the case's calls counted")
    p.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--ctl", help=argparse.SUPPRESS)
    p.add_argument("--ack", help=argparse.SUPPRESS)
    opts = p.parse_args(argv)
    if opts.child:
        return _child(opts)
    if shutil.which("perf") is None:
        p.error("perf is not on the PATH (linux-perf / linux-tools)")
    print(f"grid {opts.grid}, {ab_gather.CALLS} calls of {ab_gather.SAMPLES} samples x {opts.reps}; "
          f"per output value; load {os.getloadavg()[0]:.2f}")
    for geom in opts.geoms.split(","):
        for norm in opts.norms.split(","):
            c = count(opts.grid, geom, norm, opts.events, opts.reps)
            print(f"{geom:6s} {norm:6s} " + "  ".join(f"{k} {v:.3f}" for k, v in c.items()), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
