"""Interleaved A/B of the gather kernel: the working tree against the kernel of another git revision.

Why this exists: a kernel change is worth a few percent at most, and on a shared machine the noise between two runs
a minute apart is larger than that (memcpy alone moves by 15 %). Timing both kernels in one process, on the same
data, in alternating order (best of N per kernel) is the only comparison that shows such a change; and the two
outputs must agree bit for bit, or the change is wrong, not faster. The other revision's ``_kernels.py`` and
``_intrinsics.py`` are taken from git into a temporary package (with its own Numba cache), so nothing in the
checkout changes.

Run::

    python benches/ab_gather.py --against HEAD                      # 0.25-degree grid, AtmoRep's chunks
    python benches/ab_gather.py --against 37be58c --grid 1 --chunks 24,5,48,72 --norms none,global,local
    python benches/ab_gather.py --against HEAD~3 --geoms 9x9 --reps 15

Prints per case the output GB/s of each kernel and the working tree's ratio to the other (> 1: faster), then a
memcpy of the same bytes for scale. CPU time per kernel (``time.thread_time``) excludes time the thread waits
to be scheduled, not memory stalls.
"""

from __future__ import annotations

import argparse
import importlib
import os
import subprocess
import sys
import tempfile
import time
import types

import numpy as np

from fastload.config import FieldConfig, SamplingConfig
from fastload.sampling import _kernels as tree
from fastload.sampling.chunks import FieldLayout
from fastload.sampling.geometry import GridExtent, box_to_tokens, random_boxes
from fastload.sampling.neighborhood import _static
from fastload.sampling.tokenizer import LatLonTokenizer

GEOMETRIES = {"9x9": ((12, 6, 12), (3, 9, 9)), "18x18": ((12, 3, 6), (3, 18, 18)), "27x27": ((12, 2, 4), (3, 27, 27))}
LEVELS = 5
GRIDS = {"0.25": (40, 721, 1440), "1": (168, 181, 360), "small": (40, 61, 120)}  # (time steps, ny, nx)
SAMPLES, CALLS = 16, 8


def kernel_at(rev: str, root: str, workdir: str) -> types.ModuleType:
    """The ``_kernels`` module of git revision ``rev``, imported from a package under ``workdir``."""
    name = "ab_" + "".join(ch if ch.isalnum() else "_" for ch in rev)
    pkg = os.path.join(workdir, name)
    os.makedirs(pkg)
    open(os.path.join(pkg, "__init__.py"), "w").close()
    for f in ("_kernels.py", "_intrinsics.py"):
        src = subprocess.run(["git", "-C", root, "show", f"{rev}:fastload/sampling/{f}"], check=True,
                             capture_output=True, text=True).stdout
        with open(os.path.join(pkg, f), "w") as fh:
            fh.write(src)
    sys.path.insert(0, workdir)
    return importlib.import_module(f"{name}._kernels")


def arena(data: np.ndarray, chunks: tuple[int, ...]) -> tuple[np.ndarray, list[int]]:
    """The chunks of ``data`` (t, l, y, x) as arena rows, chunk-major (row = chunk index), edges zero-padded."""
    n = [-(-e // c) for e, c in zip(data.shape, chunks)]
    slots = np.zeros((n[0] * n[2] * n[3], int(np.prod(chunks))), np.float32)
    ct, _, cy, cx = chunks
    for u, (a, b, c) in enumerate(np.ndindex(n[0], n[2], n[3])):
        block = np.zeros(chunks, np.float32)
        part = data[a * ct:(a + 1) * ct, :, b * cy:(b + 1) * cy, c * cx:(c + 1) * cx]
        block[:part.shape[0], :, :part.shape[2], :part.shape[3]] = part
        slots[u] = block.ravel()
    return slots, n


def make_world(grid: str, chunks: tuple[int, ...] | None = None) -> types.SimpleNamespace:
    """The data every case gathers from: a (t, 5, y, x) float32 field on grid ``grid`` (a key of ``GRIDS``), its
    chunk arena (``chunks``, default AtmoRep's: 8 h x the globe), two months of local coefficients, the layout."""
    nt, ny, nx = GRIDS[grid]
    chunks = chunks or (8, LEVELS, ny, nx)
    rng = np.random.default_rng(0)
    data = rng.standard_normal((nt, LEVELS, ny, nx), dtype=np.float32) * 10 + np.float32(250)
    mean = rng.standard_normal((2, LEVELS, ny, nx), dtype=np.float32) + np.float32(250)
    std = rng.uniform(5, 15, (2, LEVELS, ny, nx)).astype(np.float32)
    lattice = types.SimpleNamespace(kind="latlon", lat=np.linspace(90, -90, ny), lon=np.arange(nx) * (360.0 / nx),
                                    periodic_x=True, ny=ny, nx=nx)
    times = np.datetime64("2000-01-01T00:00", "ns") + np.arange(nt) * np.timedelta64(1, "h")
    slots, n = arena(data, chunks)
    layout = FieldLayout(name="t", array="t", shape=data.shape, chunks=chunks, axes=(0, None, 1, 2, 3),
                         lev_idx=np.arange(LEVELS), levels=np.arange(LEVELS, dtype=np.float64) + 96, periodic_x=True)
    return types.SimpleNamespace(grid=grid, data=data, mean=mean, std=std, lattice=lattice, times=times, slots=slots,
                                 n=n, chunks=chunks, layout=layout)


def make_calls(world: types.SimpleNamespace, geom: str, norm: str, names: list[str]):
    """The field config of one case and its ``CALLS`` kernel calls of ``SAMPLES`` samples each: per call the
    arguments of ``gather`` but the output, and one output array per name in ``names``."""
    nt, ny, nx = GRIDS[world.grid]
    layout = world.layout
    f = FieldConfig(name="t", levels=tuple(float(v) for v in layout.levels), num_tokens=GEOMETRIES[geom][0],
                    token_size=GEOMETRIES[geom][1], normalization=norm)
    cfg = SamplingConfig(fields=[f], batch_size=SAMPLES)
    # a window plan on the 1-degree grid (as the Loader gathers), independent samples on 0.25 degrees
    boxes = random_boxes(SAMPLES * CALLS, GridExtent(nt=nt, ny=ny, nx=nx, periodic_x=True), f.box, seed=0, epoch=0,
                         samples_per_window=SAMPLES if world.grid == "1" else 1)
    tok = LatLonTokenizer(world.lattice, world.times, cfg, {"t": layout})
    geo, view, _ = _static(layout, f, 1, "float32")
    mu, sd = ((np.ascontiguousarray(world.mean[:, :, :1, :1]), np.ascontiguousarray(world.std[:, :, :1, :1]))
              if norm == "global" else (world.mean, world.std))
    n = world.n
    calls = []
    for k in range(CALLS):
        plan = tok.plan(np.ascontiguousarray(boxes[k * SAMPLES:(k + 1) * SAMPLES]))
        c = np.asarray(plan.chunks["t"])
        table = plan.slot_tables({"t": ((c[:, 0] * n[2] + c[:, 2]) * n[3] + c[:, 3]).astype(np.int32)})
        month_of = np.zeros((SAMPLES, f.box[0]), np.int32)
        month_of[3, 20:] = 1  # two samples cross into the next month
        month_of[11, 5:] = 1
        outs = {name: np.empty((SAMPLES, *f.sample_shape), np.float32) for name in names}
        calls.append(((world.slots, table["t"], view, plan.boxes, layout.lev_idx, geo, mu, sd, month_of), outs))
    return f, calls


def _run(kernel: types.ModuleType, calls: list, name: str) -> None:
    for args, outs in calls:
        kernel.gather(*args, outs[name])


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--against", required=True, help="git revision whose kernel is the baseline (e.g. HEAD)")
    p.add_argument("--grid", choices=sorted(GRIDS), default="0.25", help="0.25 (721 x 1440), 1 (181 x 360), small (61 x 120, a smoke test)")
    p.add_argument("--chunks", default=None, help="t,l,y,x chunk shape (default: AtmoRep's, 8 h x the globe)")
    p.add_argument("--geoms", default="9x9,18x18,27x27", help=f"of {', '.join(GEOMETRIES)}")
    p.add_argument("--norms", default="none,local", help="of none, global, local")
    p.add_argument("--reps", type=int, default=7, help="timed rounds per kernel (best is kept)")
    opts = p.parse_args(argv)
    chunks = tuple(int(v) for v in opts.chunks.split(",")) if opts.chunks else None
    if chunks is not None and (len(chunks) != 4 or chunks[1] != LEVELS):
        p.error(f"--chunks: expected t,{LEVELS},y,x (all {LEVELS} levels in one chunk), got {opts.chunks}")
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    with tempfile.TemporaryDirectory(prefix="ab_gather_") as work:
        base = kernel_at(opts.against, root, work)
        kernels = {opts.against: base, "tree": tree}
        world = make_world(opts.grid, chunks)
        data, nx = world.data, world.data.shape[-1]
        print(f"grid {opts.grid} {data.shape}, chunks {world.chunks}, {CALLS} calls of {SAMPLES} samples, "
              f"best of {opts.reps}; load {os.getloadavg()[0]:.2f}")
        nbytes = 0
        for geom in opts.geoms.split(","):
            for norm in opts.norms.split(","):
                f, calls = make_calls(world, geom, norm, list(kernels))
                for name in kernels:
                    _run(kernels[name], calls, name)  # compiles or loads from the cache
                for _, outs in calls:
                    if not np.array_equal(outs["tree"].view(np.uint32), outs[opts.against].view(np.uint32)):
                        print(f"{geom} {norm}: the kernels' outputs differ", file=sys.stderr)
                        return 1
                bx, outs = calls[0][0][3], calls[0][1]
                if norm == "none":  # and the working tree's against NumPy indexing of the full array
                    T, H, W = f.box
                    for b, (t0, y0, x0) in enumerate(bx):
                        v = data[t0:t0 + T][:, :, y0:y0 + H][..., (x0 + np.arange(W)) % nx].transpose(1, 0, 2, 3)
                        if not np.array_equal(outs["tree"][b], box_to_tokens(v, f.token_size)):
                            print(f"{geom} {norm}: sample {b} differs from NumPy", file=sys.stderr)
                            return 1
                best = dict.fromkeys(kernels, float("inf"))
                order = list(kernels)
                for rep in range(opts.reps):
                    for name in order if rep % 2 == 0 else order[::-1]:
                        t = time.thread_time()
                        _run(kernels[name], calls, name)
                        best[name] = min(best[name], time.thread_time() - t)
                nbytes = sum(outs["tree"].nbytes for _, outs in calls)
                print(f"{geom:6s} {norm:6s} " + "  ".join(f"{name} {nbytes / best[name] / 1e9:5.2f} GB/s"
                                                          for name in order)
                      + f"  tree/{opts.against} {best[opts.against] / best['tree']:.3f}", flush=True)
        src = np.ones(nbytes // 4, np.float32)
        dst = np.empty_like(src)
        bm = float("inf")
        for _ in range(7):
            t = time.perf_counter()
            np.copyto(dst, src)
            bm = min(bm, time.perf_counter() - t)
        print(f"memcpy of the same bytes {src.nbytes / bm / 1e9:.2f} GB/s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
