"""LLVM intrinsics for the Numba kernels: a software prefetch of one array element's cache line.

Why this exists: the gather kernel reads short rows scattered across a chunk (one row of a box per time step and
grid row), and without help the CPU fetches each row only when the kernel reaches it, one DRAM latency per row.
Prefetching the rows a few steps ahead lets the loads overlap; on a 2-core machine it roughly doubled the gather
rate. A prefetch is a hint: it never faults and never changes results, so the NumPy reference has no twin of it.

Numba's on-disk cache keys on the kernel file only: after editing this file, clear the cache
(``rm -rf .numba-cache`` or the ``__pycache__`` next to ``_kernels.py``).
"""

from __future__ import annotations

import llvmlite.ir as ir
from numba import types
from numba.core import cgutils
from numba.extending import intrinsic

__all__ = ["prefetch2", "prefetch4"]


def _codegen(context, builder, signature, args):
    aryty = signature.args[0]
    ary = context.make_array(aryty)(context, builder, args[0])
    idx = [context.cast(builder, a, t, types.intp) for a, t in zip(args[1:], signature.args[1:])]
    ptr = cgutils.get_item_pointer(context, builder, aryty, ary, idx, wraparound=False, boundscheck=False)
    i32 = ir.IntType(32)
    fnty = ir.FunctionType(ir.VoidType(), [ir.PointerType(), i32, i32, i32])
    fn = cgutils.get_or_insert_function(builder.module, fnty, "llvm.prefetch.p0")
    # (address, rw = read, locality = keep in all cache levels, cache type = data)
    builder.call(fn, [builder.bitcast(ptr, ir.PointerType()), i32(0), i32(3), i32(1)])
    return context.get_dummy_value()


@intrinsic
def prefetch2(typingctx, arr, i, j):
    """Prefetch the cache line of ``arr[i, j]`` (no bounds check: callers pass valid indices)."""
    return types.void(arr, i, j), _codegen


@intrinsic
def prefetch4(typingctx, arr, i, j, k, l):  # noqa: E741
    """Prefetch the cache line of ``arr[i, j, k, l]`` (no bounds check: callers pass valid indices)."""
    return types.void(arr, i, j, k, l), _codegen
