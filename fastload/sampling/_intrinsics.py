"""LLVM intrinsics for the Numba kernels: software prefetch, 32-byte non-temporal (streaming) stores, a store fence.

Why this exists: the gather kernel reads short rows scattered across a chunk (one row of a box per time step and
grid row), and without help the CPU fetches each row only when the kernel reaches it, one DRAM latency per row.
Prefetching the rows a few steps ahead lets the loads overlap; on a 2-core machine it roughly doubled the gather
rate. A prefetch is a hint: it never faults and never changes results, so the NumPy reference has no twin of it.

The gather's output (tens of MB per batch) is written once and read later by someone else, so it is written with
non-temporal stores, as glibc's memcpy does at this size: an ordinary store first reads the destination line from
memory (read for ownership), which adds a third memory stream to the two the copy needs. :func:`stream32` stores
32 bytes with LLVM's ``!nontemporal`` hint (``vmovntps`` on x86); :func:`store_fence` orders those weakly ordered
stores before the kernel returns, so the thread that reads the batch next sees them.

Numba's on-disk cache keys on the kernel file only: after editing this file, clear the cache
(``rm -rf .numba-cache`` or the ``__pycache__`` next to ``_kernels.py``).
"""

from __future__ import annotations

import llvmlite.ir as ir
from numba import types
from numba.core import cgutils
from numba.extending import intrinsic

__all__ = ["prefetch2", "prefetch4", "store_fence", "stream32"]


def _item_pointer(context, builder, aryty, ary, args, argtys):
    idx = [context.cast(builder, a, t, types.intp) for a, t in zip(args, argtys)]
    return cgutils.get_item_pointer(context, builder, aryty, ary, idx, wraparound=False, boundscheck=False)


def _codegen(context, builder, signature, args):
    aryty = signature.args[0]
    ary = context.make_array(aryty)(context, builder, args[0])
    ptr = _item_pointer(context, builder, aryty, ary, args[1:], signature.args[1:])
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


@intrinsic
def stream32(typingctx, dst, d0, src, s0):
    """``dst[d0:d0 + n] = src[s0:s0 + n]`` for the ``n`` elements of 32 bytes, stored non-temporally.

    ``dst`` and ``src`` are 1-D contiguous arrays of the same 1-, 2-, 4- or 8-byte dtype; ``&dst[d0]`` must be
    32-byte aligned, ``src`` needs no alignment. No bounds check: callers pass valid ranges.
    """
    if not (isinstance(dst, types.Array) and isinstance(src, types.Array) and dst.dtype == src.dtype
            and dst.ndim == 1 and src.ndim == 1 and dst.layout == "C" and src.layout == "C"):
        return None

    def codegen(context, builder, signature, args):
        dty, _, sty, _ = signature.args
        lty = context.get_data_type(dty.dtype)
        width = 32 // context.get_abi_sizeof(lty)
        vty = ir.VectorType(lty, width)
        d = _item_pointer(context, builder, dty, context.make_array(dty)(context, builder, args[0]), args[1:2],
                          signature.args[1:2])
        s = _item_pointer(context, builder, sty, context.make_array(sty)(context, builder, args[2]), args[3:4],
                          signature.args[3:4])
        v = builder.load(builder.bitcast(s, vty.as_pointer()), align=1)
        st = builder.store(v, builder.bitcast(d, vty.as_pointer()), align=32)
        st.set_metadata("nontemporal", builder.module.add_metadata([ir.IntType(32)(1)]))
        return context.get_dummy_value()

    return types.void(dst, d0, src, s0), codegen


@intrinsic
def store_fence(typingctx):
    """Order earlier (non-temporal) stores before everything after it: ``sfence`` on x86, else a full fence.

    (LLVM's generic fence is a ``lock or`` on x86, which the Linux kernel does not rely on for streaming stores.)
    """

    def codegen(context, builder, signature, args):
        if str(builder.module.triple).startswith(("x86_64", "i386", "i686")):
            fn = cgutils.get_or_insert_function(builder.module, ir.FunctionType(ir.VoidType(), []),
                                                "llvm.x86.sse.sfence")
            builder.call(fn, [])
        else:
            builder.fence("seq_cst")
        return context.get_dummy_value()

    return types.void(), codegen

