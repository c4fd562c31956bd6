"""LLVM intrinsics for the Numba kernels: prefetch, 8-wide normalising moves, non-temporal stores, a store fence.

Why this exists: the gather kernel reads short rows scattered across a chunk (one row of a box per time step and
grid row), and without help the CPU fetches each row only when the kernel reaches it, one DRAM latency per row.
Prefetching the rows a few steps ahead lets the loads overlap; on a 2-core machine it roughly doubled the gather
rate. A prefetch is a hint: it never faults and never changes results, so the NumPy reference has no twin of it.

:func:`move8n` moves eight consecutive source values, cast to float32 and normalised, in one vector operation
straight into the token buffer: token rows are 9 to 27 values, too short for LLVM's loop vectoriser, and it does
not join eight scalar lanes by itself. The arithmetic is the scalar kernel's, lane by lane (IEEE float32 subtract
and divide; a missing marker's lane NaN first), so results are bit-identical.

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

__all__ = ["marked", "move8n", "move8s", "prefetch2", "prefetch4", "store_fence", "stream32"]


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



def _ok_move(dst, src):
    return (isinstance(dst, types.Array) and dst.ndim == 1 and dst.layout == "C"
            and dst.dtype in (types.float32, types.uint16)
            and isinstance(src, types.Array) and src.ndim == 2 and src.layout == "C"
            and isinstance(src.dtype, (types.Integer, types.Float, types.Boolean)))


def _load8(context, builder, aryty, ary, idx, idxty):
    """Eight consecutive elements from ``ary[idx]`` on, as an ``<8 x float>`` (cast from the array's dtype)."""
    ptr = _item_pointer(context, builder, aryty, context.make_array(aryty)(context, builder, ary), idx, idxty)
    vty = ir.VectorType(ir.FloatType(), 8)
    if aryty.dtype == types.float32:
        return builder.load(builder.bitcast(ptr, vty.as_pointer()), align=4)
    vec = ir.Constant(vty, ir.Undefined)
    for k in range(8):
        v = builder.load(builder.gep(ptr, [ir.IntType(64)(k)]))
        vec = builder.insert_element(vec, context.cast(builder, v, aryty.dtype, types.float32), ir.IntType(32)(k))
    return vec


def _store8(context, builder, aryty, ary, idx, idxty, vec):
    ptr = _item_pointer(context, builder, aryty, context.make_array(aryty)(context, builder, ary), idx, idxty)
    builder.store(vec, builder.bitcast(ptr, vec.type.as_pointer()), align=4)


def _splat(builder, x):
    vty = ir.VectorType(ir.FloatType(), 8)
    v = builder.insert_element(ir.Constant(vty, ir.Undefined), x, ir.IntType(32)(0))
    mask = ir.Constant(ir.VectorType(ir.IntType(32), 8), [0] * 8)
    return builder.shuffle_vector(v, ir.Constant(vty, ir.Undefined), mask)


@intrinsic
def move8n(typingctx, dst, d0, src, i, j, norm, gm, gs, mean, std, y, x, marks):
    """``dst[d0:d0 + 8]`` = ``float32(src[i, j:j + 8])``, normalised by ``norm``: 0 not, 1 ``(v - gm) / gs``,
    2 ``(v - mean[y, x:x + 8]) / std[y, x:x + 8]`` (2-D float32 C arrays, read only when ``norm`` is 2); with
    ``marks`` a tuple of float32 missing markers, a lane equal to one is NaN before normalisation (``()``: no
    test; a type, so each count compiles separately). The caller passes only markers that a float32 holds exactly,
    for sources whose every value converts to float32 exactly, so the float32 compare is the float64 one.

    One intrinsic rather than a Numba function with three branches: inlined Numba functions that take arrays add
    reference-count operations (atomic) around every call. ``dst`` is float32; a uint16 ``dst`` (the kernel's
    bfloat16/float16 specialisation, which never takes this path) compiles to a trap.
    """
    if not (_ok_move(dst, src) and _ok_norm(norm, gm, gs, mean, std) and _ok_marks(marks)):
        return None

    def codegen(context, builder, sig, args):
        if sig.args[0].dtype != types.float32:
            return _trap(context, builder)
        v = _load8(context, builder, sig.args[2], args[2], args[3:5], sig.args[3:5])
        v = _mask8(builder, v, sig.args[12], args[12])
        _norm_store8(context, builder, sig, args, v, 5)
        return context.get_dummy_value()

    return types.void(dst, d0, src, i, j, norm, gm, gs, mean, std, y, x, marks), codegen


@intrinsic
def marked(typingctx, v, marks):
    """float32 ``v``, or NaN where it equals a marker of ``marks`` (as :func:`move8n`, for one value)."""
    if not (v == types.float32 and _ok_marks(marks)):
        return None

    def codegen(context, builder, sig, args):
        hit = _hits(builder, args[0], len(sig.args[1]), args[1], lambda m: m)
        return args[0] if hit is None else builder.select(hit, ir.Constant(ir.FloatType(), float("nan")), args[0])

    return types.float32(v, marks), codegen


def _ok_marks(marks) -> bool:
    """Typing check of the missing markers of :func:`move8n` and :func:`move8s`: a tuple of float32 (maybe empty)."""
    return isinstance(marks, types.BaseTuple) and all(t == types.float32 for t in marks)


def _hits(builder, v, n, marks, widen):
    """``v == m`` for each of the ``n`` markers in ``marks`` (each widened by ``widen`` to ``v``'s shape), or-ed;
    None for none."""
    hit = None
    for k in range(n):
        eq = builder.fcmp_ordered("==", v, widen(builder.extract_value(marks, k)))
        hit = eq if hit is None else builder.or_(hit, eq)
    return hit


def _mask8(builder, v, marks_ty, marks):
    """``v`` (``<8 x float>``) with the lanes equal to a marker of ``marks`` NaN (``v`` itself for ``()``)."""
    hit = _hits(builder, v, len(marks_ty), marks, lambda m: _splat(builder, m))
    return v if hit is None else builder.select(hit, ir.Constant(v.type, [float("nan")] * 8), v)


def _ok_norm(norm, gm, gs, mean, std) -> bool:
    """Typing check of the normalisation arguments of :func:`move8n` and :func:`move8s`: an integer mode, float32
    global coefficients, 2-D C-contiguous float32 local coefficient arrays."""
    return (isinstance(norm, types.Integer) and gm == types.float32 and gs == types.float32
            and all(isinstance(c, types.Array) and c.dtype == types.float32 and c.ndim == 2 and c.layout == "C"
                    for c in (mean, std)))


def _trap(context, builder):
    fn = cgutils.get_or_insert_function(builder.module, ir.FunctionType(ir.VoidType(), []), "llvm.trap")
    builder.call(fn, [])
    return context.get_dummy_value()


def _norm_store8(context, builder, sig, args, v, k):
    """Normalise ``v`` (``<8 x float>``) by ``args[k:k + 7]`` = ``norm, gm, gs, mean, std, y, x`` as
    :func:`move8n` says, and store it at ``args[0][args[1]]``."""
    nrm = context.cast(builder, args[k], sig.args[k], types.int64)
    i64 = ir.IntType(64)
    with builder.if_else(builder.icmp_signed("==", nrm, i64(0))) as (then0, else0):
        with then0:
            b0 = builder.block
        with else0:
            with builder.if_else(builder.icmp_signed("==", nrm, i64(1))) as (then1, else1):
                with then1:
                    v1 = builder.fdiv(builder.fsub(v, _splat(builder, args[k + 1])), _splat(builder, args[k + 2]))
                    b1 = builder.block
                with else1:
                    mu = _load8(context, builder, sig.args[k + 3], args[k + 3], args[k + 5:k + 7], sig.args[k + 5:k + 7])
                    sd = _load8(context, builder, sig.args[k + 4], args[k + 4], args[k + 5:k + 7], sig.args[k + 5:k + 7])
                    v2 = builder.fdiv(builder.fsub(v, mu), sd)
                    b2 = builder.block
            v12 = builder.phi(v.type)
            v12.add_incoming(v1, b1)
            v12.add_incoming(v2, b2)
            b12 = builder.block
    res = builder.phi(v.type)
    res.add_incoming(v, b0)
    res.add_incoming(v12, b12)
    _store8(context, builder, sig.args[0], args[0], args[1:2], sig.args[1:2], res)


@intrinsic
def move8s(typingctx, dst, d0, src, i, j, k, l, split, norm, gm, gs, mean, std, y, x, marks):  # noqa: E741
    """:func:`move8n` of eight values from two places, the last ``split`` (0..8) values of one run and the first
    ``8 - split`` of another: lane ``q`` is ``src[i, j + 8 - split + q]`` for ``q < split``, else
    ``src[k, l + q - split]``. Reads ``src[i, j:j + 8]`` and ``src[k, l:l + 8]`` whole (two vector loads, then one
    constant shuffle per ``split``; masked loads were 2x slower on AMD Zen 3), and ``j`` may point before a row
    start and ``l + 8`` past a row end: the caller keeps both inside the array. For a token row that straddles a
    chunk edge: the eight values at the edge in one move, without a round trip through memory, reading only
    cache lines next to the ones the token needs. ``marks`` as for :func:`move8n`.
    """
    if not (_ok_move(dst, src) and isinstance(src.dtype, (types.Integer, types.Float))
            and isinstance(split, types.Integer) and _ok_norm(norm, gm, gs, mean, std) and _ok_marks(marks)):
        return None

    def codegen(context, builder, sig, args):
        if sig.args[0].dtype != types.float32:
            return _trap(context, builder)
        sty = sig.args[2]
        ary = context.make_array(sty)(context, builder, args[2])
        vty = ir.VectorType(context.get_data_type(sty.dtype), 8)
        i32 = ir.IntType(32)
        pa = _item_pointer(context, builder, sty, ary, args[3:5], sig.args[3:5])
        pb = _item_pointer(context, builder, sty, ary, args[5:7], sig.args[5:7])
        va = builder.load(builder.bitcast(pa, vty.as_pointer()), align=1)
        vb = builder.load(builder.bitcast(pb, vty.as_pointer()), align=1)
        sp = context.cast(builder, args[7], sig.args[7], types.int64)
        merge = builder.append_basic_block("move8s.merge")
        default = builder.append_basic_block("move8s.all_a")
        sw = builder.switch(sp, default)
        incoming = []
        for n in range(8):  # lanes 0..n-1 from va[8-n:], lanes n..7 from vb[:8-n]
            blk = builder.append_basic_block(f"move8s.{n}")
            sw.add_case(ir.IntType(64)(n), blk)
            builder.position_at_end(blk)
            mask = ir.Constant(ir.VectorType(i32, 8), [8 - n + q for q in range(8)])
            incoming.append((builder.shuffle_vector(va, vb, mask), builder.block))
            builder.branch(merge)
        builder.position_at_end(default)
        incoming.append((va, builder.block))
        builder.branch(merge)
        builder.position_at_end(merge)
        v = builder.phi(vty)
        for val, blk in incoming:
            v.add_incoming(val, blk)
        if sty.dtype != types.float32:
            fv = ir.Constant(ir.VectorType(ir.FloatType(), 8), ir.Undefined)
            for q in range(8):
                e = builder.extract_element(v, i32(q))
                fv = builder.insert_element(fv, context.cast(builder, e, sty.dtype, types.float32), i32(q))
            v = fv
        v = _mask8(builder, v, sig.args[15], args[15])
        _norm_store8(context, builder, sig, args, v, 8)
        return context.get_dummy_value()

    return types.void(dst, d0, src, i, j, k, l, split, norm, gm, gs, mean, std, y, x, marks), codegen
