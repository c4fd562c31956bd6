"""What declared missing values cost the gather: the same cases with and without a missing marker, interleaved.

Why this exists: a field whose store declares missing values (a ``_FillValue``, ``missing_value``, a non-zero zarr
v2 ``fill_value``) is gathered with a compare and select per value (NaN where the stored value is a marker): one or
two markers in the 8-wide moves of the kernel that moves token rows straight from their chunks, more in the row
kernel's per-value loop. This prices both on ``ab_gather.py``'s cases: the markers (float32 values) match no value,
so both outputs must be equal and only the time differs.

Run::

    python benches/missing_gather.py                       # 9x9 and 27x27, raw and local normalisation
    python benches/missing_gather.py --markers 3           # three markers: the row kernel's per-value loop
"""

from __future__ import annotations

import argparse
import os
import sys
import time

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import ab_gather  # noqa: E402  (its data, so the cases are the A/B's)

from fastload.sampling import _kernels  # noqa: E402


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--grid", choices=sorted(ab_gather.GRIDS), default="0.25", help="as ab_gather.py")
    p.add_argument("--geoms", default="9x9,27x27", help=f"of {', '.join(ab_gather.GEOMETRIES)}")
    p.add_argument("--norms", default="none,local", help="of none, global, local")
    p.add_argument("--markers", type=int, default=1, help="how many markers (none of them in the data)")
    p.add_argument("--reps", type=int, default=7, help="timed rounds per variant (best is kept)")
    opts = p.parse_args(argv)
    # float32 values (markers a float32 chunk can hold), none of them in the data
    marks = np.array([np.float32(1e20) * np.float32(k + 1) for k in range(opts.markers)], np.float64)
    world = ab_gather.make_world(opts.grid)
    print(f"grid {opts.grid}, {ab_gather.CALLS} calls of {ab_gather.SAMPLES} samples, {opts.markers} marker(s), "
          f"best of {opts.reps}; load {os.getloadavg()[0]:.2f}")
    for geom in opts.geoms.split(","):
        for norm in opts.norms.split(","):
            _, calls = ab_gather.make_calls(world, geom, norm, ["plain", "marked"])
            runs = {"plain": lambda calls=calls: [_kernels.gather(*a, o["plain"]) for a, o in calls],
                    "marked": lambda calls=calls: [_kernels.gather(*a, o["marked"], marks) for a, o in calls]}
            for run in runs.values():
                run()  # compile (or load from the cache)
            if not all(np.array_equal(o["plain"], o["marked"], equal_nan=True) for _, o in calls):
                print(f"{geom} {norm}: outputs differ with a marker that matches nothing", file=sys.stderr)
                return 1
            best = dict.fromkeys(runs, float("inf"))
            for rep in range(opts.reps):
                for name in list(runs) if rep % 2 == 0 else list(runs)[::-1]:
                    t = time.thread_time()
                    runs[name]()
                    best[name] = min(best[name], time.thread_time() - t)
            nbytes = sum(o["plain"].nbytes for _, o in calls)
            print(f"{geom:6s} {norm:6s} without {nbytes / best['plain'] / 1e9:5.2f} GB/s  with "
                  f"{nbytes / best['marked'] / 1e9:5.2f} GB/s  ratio {best['plain'] / best['marked']:.2f}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
