"""Numba kernels vs their NumPy references vs a direct crop of the full array: identical bits on random geometries.

Geometries drawn by hypothesis: periodic and regional grids, boxes touching the x seam, the first/last rows and
both ends of the time axis, time steps longer than a time chunk, per-variable and AtmoRep-style (all fields in
one chunk) arrays, fields without time or level axes, every normalisation mode, log1p, NaN inputs, float32 and
bfloat16/float16 output; slots are placed in shuffled arena rows. Sizes stay tiny: JIT compile time dominates
and there are only a few dtype signatures.
"""

from __future__ import annotations

import dataclasses
import types

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from fastload.config import FieldConfig
from fastload.errors import ConfigError
from fastload.sampling import _kernels, _reference
from fastload.sampling.chunks import FieldLayout, plan_batch
from fastload.sampling.geometry import box_to_tokens
from fastload.sampling.neighborhood import gather_field, kernels, use_jit
from fastload.sampling.tokenizer import CurvilinearTokenizer, LatLonTokenizer

SETTINGS = settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow])
NORMS = ("none", "global", "local")
OUTS = ("float32", "bfloat16", "float16")


# ---------------------------------------------------------------------------------------------------- helpers
def chunk_arena(data: np.ndarray, chunks: tuple[int, ...], wanted: np.ndarray, rng: np.random.Generator):
    """Arena with the wanted chunks (padded at edges) in shuffled rows, plus garbage rows; and each chunk's slot."""
    n = wanted.shape[0]
    n_slots = n + 3
    rows = rng.permutation(n_slots)[:n]
    arena = np.full((n_slots, int(np.prod(chunks))), 1e30, dtype=data.dtype)
    for u, idx in enumerate(wanted):
        block = np.full(chunks, -7.0, dtype=data.dtype)  # padding outside the array: never read
        sl = tuple(slice(c * k, min(c * (k + 1), s)) for c, k, s in zip(chunks, idx, data.shape))
        part = data[sl]
        block[tuple(slice(0, p) for p in part.shape)] = part
        arena[rows[u]] = block.ravel()
    return arena, rows.astype(np.int32)


def exact_arena(data: np.ndarray, lay: FieldLayout, plan) -> tuple[np.ndarray, np.ndarray]:
    """Arena with exactly the plan's chunks of array ``a`` in plan order (edges padded with 0), and field ``f``'s
    slot table."""
    wanted = plan.chunks["a"]
    arena = np.zeros((wanted.shape[0], int(np.prod(lay.chunks))), data.dtype)
    for u, idx in enumerate(wanted):
        block = np.zeros(lay.chunks, data.dtype)
        part = data[tuple(slice(c * k, min(c * (k + 1), s)) for c, k, s in zip(lay.chunks, idx, data.shape))]
        block[tuple(slice(0, q) for q in part.shape)] = part
        arena[u] = block.ravel()
    return arena, plan.slot_tables({"a": np.arange(wanted.shape[0], dtype=np.int32)})["f"]


def two_months(rng: np.random.Generator, norm: str, ny: int, nx: int) -> tuple[np.ndarray, np.ndarray]:
    """Mean and std of two months and two levels, global or local (an ``ny`` x ``nx`` grid)."""
    shape = (2, 1, 1) if norm == "global" else (2, ny, nx)
    return (rng.standard_normal((2, *shape)).astype(np.float32),
            rng.uniform(0.5, 2.0, (2, *shape)).astype(np.float32))


def direct(data4: np.ndarray, lay: FieldLayout, field: FieldConfig, boxes: np.ndarray, dt: int, mean, std, month_of,
           out_dtype: str) -> np.ndarray:
    """The sample tensors straight from the full ``(t, l, y, x)`` array, no chunks involved."""
    T, H, W = field.box
    nx = data4.shape[-1]
    res = []
    for s, (t0, y0, x0) in enumerate(boxes):
        t = t0 + np.arange(T) * dt if lay.has_time else np.zeros(T, np.int64)
        x = x0 + np.arange(W)
        if lay.periodic_x:
            x %= nx
        v = data4[np.ix_(t, lay.lev_idx, np.arange(y0, y0 + H), x)].astype(np.float32)  # (T, L, H, W)
        v = v.transpose(1, 0, 2, 3)
        if field.transform == "log1p":
            with np.errstate(invalid="ignore", divide="ignore"):
                v = np.log1p(v.astype(np.float64)).astype(np.float32)
        if field.normalization != "none":
            m = month_of[s]
            if field.normalization == "global":
                mu = mean[m][:, :, 0, 0].T[:, :, None, None]  # (L, T, 1, 1)
                sd = std[m][:, :, 0, 0].T[:, :, None, None]
            else:
                mu = mean[m][:, :, y0:y0 + H][..., x].transpose(1, 0, 2, 3)
                sd = std[m][:, :, y0:y0 + H][..., x].transpose(1, 0, 2, 3)
            with np.errstate(invalid="ignore", divide="ignore", over="ignore"):
                v = (v - mu) / sd
        nt, nlat, nlon = field.num_tokens
        tt, tlat, tlon = field.token_size
        v = v.reshape(-1, nt, tt, nlat, tlat, nlon, tlon).transpose(0, 1, 3, 5, 2, 4, 6)
        res.append(v)
    v = np.stack(res) if res else np.empty((0, *field.sample_shape), np.float32)
    if out_dtype == "float32":
        return v
    if out_dtype == "float16":
        with np.errstate(over="ignore", invalid="ignore"):
            return v.astype(np.float16).view(np.uint16)
    return torch.from_numpy(np.ascontiguousarray(v)).to(torch.bfloat16).view(torch.int16).numpy().view(np.uint16)


def same_bits(a: np.ndarray, b: np.ndarray) -> bool:
    """Equal, with NaN == NaN (any payload) for float data and for float16/bfloat16 bit patterns."""
    if a.dtype == np.uint16:
        return a.shape == b.shape and bool(np.array_equal(a, b))  # NaNs from the same formula share bits
    return a.shape == b.shape and bool(np.array_equal(a, b, equal_nan=True))


def half_nan(bits: np.ndarray, kind: str) -> np.ndarray:
    return (bits & 0x7FFF) > (0x7C00 if kind == "float16" else 0x7F80)


# ------------------------------------------------------------------------------------------------ geometries
@st.composite
def cases(draw, *, log1p=None, wide=False):
    rng = np.random.default_rng(draw(st.integers(0, 2**32 - 1)))
    periodic = draw(st.booleans())
    layout = draw(st.sampled_from(["tlyx", "tyx", "yx", "tflyx"]))
    nt_, nlat, nlon = draw(st.integers(1, 2)), draw(st.integers(1, 2)), draw(st.integers(1, 3))
    tt, tlat, tlon = draw(st.integers(1, 2)), draw(st.integers(1, 3)), draw(st.integers(1, 4))
    if wide:  # token rows around the kernel's 8-wide moves (one, one plus an overlapping one, several; the
        # unrolled copies of 2, 3 and 4 moves and the loop beyond 32)
        nlon, tlon = draw(st.integers(1, 2)), draw(st.sampled_from([7, 8, 9, 15, 16, 17, 24, 25, 27, 32, 33]))
    T, H, W = nt_ * tt, nlat * tlat, nlon * tlon
    dt = draw(st.integers(1, 3))
    NT = (T - 1) * dt + 1 + draw(st.integers(0, 4))
    NY = H + draw(st.integers(0, 4))
    NX = W + draw(st.integers(0 if not periodic else 0, 6))
    NL = draw(st.integers(1, 4))
    NF = 3
    ct, cl = draw(st.integers(1, 4)), draw(st.integers(1, NL))
    cy, cx = draw(st.integers(1, NY)), draw(st.integers(1, NX))
    if layout == "tlyx":
        shape, chunks, axes = (NT, NL, NY, NX), (ct, cl, cy, cx), (0, None, 1, 2, 3)
    elif layout == "tyx":
        shape, chunks, axes = (NT, NY, NX), (ct, cy, cx), (0, None, None, 1, 2)
    elif layout == "yx":
        shape, chunks, axes = (NY, NX), (cy, cx), (None, None, None, 0, 1)
    else:  # AtmoRep: (time, field, level, y, x), chunks holding all fields and levels
        shape, chunks, axes = (NT, NF, NL, NY, NX), (ct, NF, NL, cy, cx), (0, 1, 2, 3, 4)
    has_level = axes[2] is not None
    L = draw(st.integers(1, NL)) if has_level else 1
    lev_idx = rng.choice(NL, size=L, replace=False) if has_level else np.zeros(1, np.int64)
    field_index = int(rng.integers(NF)) if axes[1] is not None else None
    data = (rng.standard_normal(shape) * 3).astype(np.float32)
    if draw(st.booleans()):  # NaN inputs
        data.ravel()[rng.choice(data.size, size=max(1, data.size // 10), replace=False)] = np.nan
    norm = draw(st.sampled_from(NORMS))
    transform = draw(st.sampled_from([None, "log1p"])) if log1p is None else log1p
    out_dtype = draw(st.sampled_from(OUTS))
    lay = FieldLayout(name="f", array="a", shape=shape, chunks=chunks, axes=axes, field_index=field_index,
                      lev_idx=lev_idx, periodic_x=periodic)
    field = FieldConfig(name="f", levels=tuple(float(v) for v in range(L)) if has_level else None,
                        num_tokens=(nt_, nlat, nlon), token_size=(tt, tlat, tlon), normalization=norm,
                        transform=transform)
    # boxes: random, plus the corners of the index space (seam, first/last rows, both ends of time)
    S = draw(st.integers(1, 5))
    tmax = NT - ((T - 1) * dt + 1) if axes[0] is not None else 0
    ymax, xmax = NY - H, (NX - 1 if periodic else NX - W)
    corners = np.array([[0, 0, 0], [tmax, ymax, xmax], [tmax, 0, xmax], [0, ymax, max(xmax - 1, 0)]])
    rand = np.stack([rng.integers(0, tmax + 1, S), rng.integers(0, ymax + 1, S), rng.integers(0, xmax + 1, S)], 1)
    boxes = np.ascontiguousarray(np.concatenate([corners[: draw(st.integers(0, 4))], rand]), dtype=np.int64)
    M = draw(st.integers(1, 3))
    ny_m, nx_m = (1, 1) if norm == "global" else (NY, NX)
    mean = (rng.standard_normal((M, L, ny_m, nx_m))).astype(np.float32)
    std = (rng.uniform(0.5, 2.0, (M, L, ny_m, nx_m))).astype(np.float32)
    month_of = rng.integers(0, M, (boxes.shape[0], T)).astype(np.int32)
    return types.SimpleNamespace(data=data, lay=lay, field=field, boxes=boxes, dt=dt, mean=mean, std=std,
                                 month_of=month_of, out_dtype=out_dtype, rng=rng)


def data4_of(c) -> np.ndarray:
    """The field's (t, l, y, x) view of the full array (extent 1 for missing axes)."""
    d = c.data
    axes = c.lay.axes
    if axes[1] is not None:
        d = d[:, c.lay.field_index]
    if axes[2] is None:
        d = d[..., None, :, :] if axes[0] is not None else d[None, None]
    return d


def run_gather(c, jit: bool) -> np.ndarray:
    plan = plan_batch(c.boxes, [c.lay], c.field.box, c.dt)
    arena, slot_of = chunk_arena(c.data, c.lay.chunks, plan.chunks["a"], c.rng)
    table = plan.slot_tables({"a": slot_of})["f"]
    out = np.empty((c.boxes.shape[0], *c.field.sample_shape), np.float32 if c.out_dtype == "float32" else np.uint16)
    norm = c.field.normalization != "none"
    gather_field(arena, table, c.lay, c.field, plan.boxes, out, time_step=c.dt, out_dtype=c.out_dtype,
                 mean=c.mean if norm else None, std=c.std if norm else None, month_of=c.month_of if norm else None,
                 jit=jit)
    return out


# --------------------------------------------------------------------------------------------------- tests
@SETTINGS
@given(cases())
def test_kernel_matches_reference_and_direct_crop(c):
    with np.errstate(invalid="ignore", divide="ignore", over="ignore"):
        ref = run_gather(c, jit=False)
        exp = direct(data4_of(c), c.lay, c.field, c.boxes, c.dt, c.mean, c.std, c.month_of, c.out_dtype)
    got = run_gather(c, jit=True)
    assert same_bits(got, ref), "Numba kernel and NumPy reference differ"
    if c.out_dtype == "float32":
        assert same_bits(ref, exp)
    else:  # NaN payloads may differ between converters; everything else is bit-exact
        nan_r, nan_e = half_nan(ref, c.out_dtype), half_nan(exp, c.out_dtype)
        assert np.array_equal(nan_r, nan_e)
        assert np.array_equal(ref[~nan_r], exp[~nan_e])


@SETTINGS
@given(cases(wide=True))
def test_kernel_long_token_rows_match_reference_and_direct_crop(c):
    test_kernel_matches_reference_and_direct_crop.hypothesis.inner_test(c)


def test_float64_slots_match_reference():
    rng = np.random.default_rng(5)
    data = rng.standard_normal((6, 2, 5, 8))
    lay = FieldLayout(name="f", array="a", shape=data.shape, chunks=(2, 1, 3, 5), axes=(0, None, 1, 2, 3),
                      lev_idx=[1, 0], periodic_x=True)
    field = FieldConfig(name="f", levels=(1.0, 2.0), num_tokens=(1, 1, 2), token_size=(2, 3, 3),
                        normalization="none")
    c = types.SimpleNamespace(data=data, lay=lay, field=field, boxes=np.array([[0, 0, 6], [4, 2, 0]]), dt=1,
                              mean=None, std=None, month_of=None, out_dtype="float32", rng=rng)
    ref = run_gather(c, jit=False)
    assert same_bits(run_gather(c, jit=True), ref)
    exp = direct(data4_of(c), lay, field, c.boxes, 1, None, None, None, "float32")
    assert same_bits(ref, exp)


@pytest.mark.parametrize("impl", [_kernels, _reference])
def test_float16_bits_match_numpy(impl):
    rng = np.random.default_rng(0)
    bits = np.concatenate([
        rng.integers(0, 2**32, 200_000, dtype=np.uint64).astype(np.uint32),
        np.array([0, 0x80000000, 0x7F800000, 0xFF800000, 0x7FC00000, 0x477FE000, 0x477FF000, 0x477FEFFF,
                  0x33000000, 0x33000001, 0x387FC000, 0x38800000, 0x3F800000], np.uint32),
    ])
    x = bits.view(np.float32)
    out = np.empty(x.shape, np.uint16)
    impl.to_float16_bits(x, out)
    with np.errstate(over="ignore", invalid="ignore"):
        want = x.astype(np.float16).view(np.uint16)
    nan = np.isnan(x)
    assert np.array_equal(out[~nan], want[~nan])
    assert np.all((out[nan] & 0x7FFF) > 0x7C00)  # NaN stays NaN


@pytest.mark.parametrize("impl", [_kernels, _reference])
def test_bfloat16_bits_match_torch(impl):
    rng = np.random.default_rng(1)
    x = np.concatenate([rng.integers(0, 2**32, 200_000, dtype=np.uint64).astype(np.uint32),
                        np.array([0x7F7FFFFF, 0x3F808000, 0x3F818000, 0x7FC00000], np.uint32)]).view(np.float32)
    out = np.empty(x.shape, np.uint16)
    impl.to_bfloat16_bits(x, out)
    want = torch.from_numpy(x.copy()).to(torch.bfloat16).view(torch.int16).numpy().view(np.uint16)
    nan = np.isnan(x)
    assert np.array_equal(out[~nan], want[~nan])
    assert np.all((out[nan] & 0x7FFF) > 0x7F80)


@pytest.mark.parametrize("jit", [True, False])
def test_missing_slot_raises(jit):
    data = np.arange(4 * 6 * 8, dtype=np.float32).reshape(4, 6, 8)
    lay = FieldLayout(name="f", array="a", shape=data.shape, chunks=(2, 3, 4), axes=(0, None, None, 1, 2))
    field = FieldConfig(name="f", num_tokens=(1, 1, 1), token_size=(2, 3, 4), normalization="none")
    plan = plan_batch([[0, 2, 2]], [lay], field.box)
    slot_of = np.arange(plan.chunks["a"].shape[0], dtype=np.int32)
    slot_of[-1] = -1  # the reader failed to place a chunk
    table = plan.slot_tables({"a": slot_of})["f"]
    arena = np.zeros((4, 24), np.float32)
    out = np.empty((1, *field.sample_shape), np.float32)
    with pytest.raises(IndexError):
        gather_field(arena, table, lay, field, plan.boxes, out, jit=jit)


@pytest.mark.parametrize("bad", [-1, 99])
@pytest.mark.parametrize("which", [0, -1])
@pytest.mark.parametrize("norm", NORMS)
def test_missing_slot_raises_in_the_move_kernel(bad, which, norm):
    """The 8-wide-move kernel (float32, 9-wide tokens, 5-wide x chunks: rows across chunk edges) refuses a slot
    table entry of -1 or past the arena, at the first or the last chunk, like the row kernel above."""
    data = np.arange(4 * 6 * 16, dtype=np.float32).reshape(4, 6, 16)
    lay = FieldLayout(name="f", array="a", shape=data.shape, chunks=(2, 3, 5), axes=(0, None, None, 1, 2))
    field = FieldConfig(name="f", num_tokens=(1, 1, 1), token_size=(2, 3, 9), normalization=norm)
    plan = plan_batch([[0, 2, 2]], [lay], field.box)
    slot_of = np.arange(plan.chunks["a"].shape[0], dtype=np.int32)
    slot_of[which] = bad
    table = plan.slot_tables({"a": slot_of})["f"]
    arena = np.zeros((plan.chunks["a"].shape[0], 30), np.float32)
    out = np.empty((1, *field.sample_shape), np.float32)
    shp = (1, 1, 1, 1) if norm == "global" else (1, 1, 6, 16)
    coef = {} if norm == "none" else dict(mean=np.zeros(shp, np.float32), std=np.ones(shp, np.float32),
                                          month_of=np.zeros((1, 2), np.int32))
    with pytest.raises(IndexError):
        gather_field(arena, table, lay, field, plan.boxes, out, jit=True, **coef)


def test_bad_arguments_raise_config_errors():
    lay = FieldLayout(name="f", array="a", shape=(4, 6, 8), chunks=(2, 3, 4), axes=(0, None, None, 1, 2))
    field = FieldConfig(name="f", num_tokens=(1, 1, 1), token_size=(2, 3, 4), normalization="global")
    plan = plan_batch([[0, 2, 2]], [lay], field.box)
    table = plan.slot_tables({"a": np.arange(plan.chunks["a"].shape[0])})["f"]
    arena = np.zeros((4, 24), np.float32)
    out = np.empty((1, *field.sample_shape), np.float32)
    with pytest.raises(ConfigError, match="needs mean, std and month_of"):
        gather_field(arena, table, lay, field, plan.boxes, out)
    with pytest.raises(ConfigError, match="output buffer has shape"):
        gather_field(arena, table, lay, field, plan.boxes, np.empty((1, 1, 1, 1, 1, 2, 3, 3), np.float32))
    with pytest.raises(ConfigError, match="uint16"):
        gather_field(arena, table, lay, field, plan.boxes, out, out_dtype="bfloat16")
    mean = np.zeros((1, 1, 1, 1), np.float32)
    with pytest.raises(ConfigError, match="month_of"):
        gather_field(arena, table, lay, field, plan.boxes, out, mean=mean, std=mean + 1,
                     month_of=np.full((1, 2), 3, np.int32))
    with pytest.raises(ConfigError, match="outside the grid"):
        gather_field(arena, table, lay, field, np.array([[0, 4, 2]]), out, mean=mean, std=mean + 1,
                     month_of=np.zeros((1, 2), np.int32))
    with pytest.raises(ConfigError, match="slot table"):
        gather_field(arena, table[:, :, :, :1], lay, field, plan.boxes, out, mean=mean, std=mean + 1,
                     month_of=np.zeros((1, 2), np.int32))


def test_switch_follows_argument_then_environment(monkeypatch):
    monkeypatch.setenv("FASTLOAD_NO_JIT", "1")
    assert not use_jit() and kernels() is _reference
    assert use_jit(True) and kernels(True) is _kernels
    assert use_jit(None, types.SimpleNamespace(jit=True))
    monkeypatch.setenv("FASTLOAD_NO_JIT", "0")
    assert use_jit() and kernels() is _kernels
    assert not use_jit(False)


def test_torch_outputs_are_written_in_place():
    rng = np.random.default_rng(3)
    data = rng.standard_normal((3, 5, 8)).astype(np.float32)
    lay = FieldLayout(name="f", array="a", shape=data.shape, chunks=(3, 5, 8), axes=(0, None, None, 1, 2),
                      periodic_x=True)
    field = FieldConfig(name="f", num_tokens=(1, 1, 2), token_size=(3, 5, 4), normalization="none")
    plan = plan_batch([[0, 0, 6]], [lay], field.box)
    table = plan.slot_tables({"a": [0]})["f"]
    for dt, np_dt in ((torch.float32, None), (torch.bfloat16, "bfloat16"), (torch.float16, "float16")):
        out = torch.empty((1, *field.sample_shape), dtype=dt)
        gather_field(data.reshape(1, -1), table, lay, field, plan.boxes, out, out_dtype=np_dt or "float32")
        want = box_to_tokens(data[:, :, (6 + np.arange(8)) % 8], field.token_size)  # (nt, nlat, nlon, tt, ...)
        assert torch.equal(out[0, 0], torch.from_numpy(np.ascontiguousarray(want)).to(dt))


@pytest.mark.parametrize("out_dtype", ["float32", "bfloat16"])
def test_output_at_every_cache_line_offset(out_dtype):
    """The kernel streams whole 64-byte lines of the output and stores the partial ones before and after normally;
    an output starting at any element offset inside a line must come out the same as the reference's."""
    rng = np.random.default_rng(5)
    data = rng.standard_normal((4, 2, 6, 40)).astype(np.float32)
    lay = FieldLayout(name="f", array="a", shape=data.shape, chunks=(4, 2, 6, 40), axes=(0, None, 1, 2, 3),
                      lev_idx=[0, 1], periodic_x=True)
    field = FieldConfig(name="f", levels=(0.0, 1.0), num_tokens=(1, 2, 3), token_size=(2, 3, 9),
                        normalization="local")
    boxes = np.array([[0, 0, 30], [2, 0, 3]], np.int64)  # one across the seam
    plan = plan_batch(boxes, [lay], field.box)
    table = plan.slot_tables({"a": [0]})["f"]
    mean = rng.standard_normal((1, 2, 6, 40)).astype(np.float32)
    std = rng.uniform(0.5, 2.0, (1, 2, 6, 40)).astype(np.float32)
    month_of = np.zeros((2, 2), np.int32)
    dt = np.float32 if out_dtype == "float32" else np.uint16
    shape = (2, *field.sample_shape)
    want = np.empty(shape, dt)
    gather_field(data.reshape(1, -1), table, lay, field, plan.boxes, want, out_dtype=out_dtype, mean=mean, std=std,
                 month_of=month_of, jit=False)
    n = int(np.prod(shape))
    for shift in range(64 // np.dtype(dt).itemsize):
        buf = np.full(n + 64, 7, dt)
        out = buf[shift:shift + n].reshape(shape)
        gather_field(data.reshape(1, -1), table, lay, field, plan.boxes, out, out_dtype=out_dtype, mean=mean,
                     std=std, month_of=month_of, jit=True)
        assert np.array_equal(out.view(dt), want), shift
        assert (buf[:shift] == 7).all() and (buf[shift + n:] == 7).all(), shift


@pytest.mark.parametrize("cx", ["whole", 7])
@pytest.mark.parametrize("tlon", [8, 9, 17, 25, 32])
@pytest.mark.parametrize("norm", NORMS)
def test_direct_path_matches_reference(norm, tlon, cx):
    """float32 output without transform takes the kernel's direct path (8-wide normalising moves from the chunk
    into the tokens; token rows across a chunk edge or the seam value by value): every token width class, every
    normalisation, NaN inputs, two months within a box, whole-row chunks and x chunks of 7, a box across the
    seam."""
    rng = np.random.default_rng(tlon)
    nx = 2 * tlon + 5
    data = (rng.standard_normal((6, 2, 7, nx)) * 3).astype(np.float32)
    data.ravel()[rng.choice(data.size, size=data.size // 10, replace=False)] = np.nan
    lay = FieldLayout(name="f", array="a", shape=data.shape, chunks=(3, 2, 7, nx if cx == "whole" else cx),
                      axes=(0, None, 1, 2, 3), lev_idx=[1, 0], periodic_x=True)
    field = FieldConfig(name="f", levels=(0.0, 1.0), num_tokens=(2, 2, 2), token_size=(2, 3, tlon),
                        normalization=norm)
    boxes = np.array([[0, 0, 0], [2, 1, 5], [1, 1, nx - 3]], np.int64)
    plan = plan_batch(boxes, [lay], field.box)
    arena, slot_of = chunk_arena(data, lay.chunks, plan.chunks["a"], rng)
    table = plan.slot_tables({"a": slot_of})["f"]
    shape = (2, 1, 1) if norm == "global" else (2, 7, nx)
    mean = rng.standard_normal((2, *shape)).astype(np.float32)
    std = rng.uniform(0.5, 2.0, (2, *shape)).astype(np.float32)
    month_of = np.array([[0, 0, 1, 1], [1, 1, 1, 1], [1, 0, 0, 1]], np.int32)
    coef = {} if norm == "none" else dict(mean=mean, std=std, month_of=month_of)
    got, want = (np.empty((3, *field.sample_shape), np.float32) for _ in range(2))
    with np.errstate(invalid="ignore", divide="ignore", over="ignore"):
        gather_field(arena, table, lay, field, plan.boxes, want, jit=False, **coef)
    gather_field(arena, table, lay, field, plan.boxes, got, jit=True, **coef)
    assert same_bits(got, want)


# ------------------------------------------------------------------------------------- token metadata
def _meta_case(curvilinear: bool, lat_descending: bool):
    ny, nx, nt = 12, 20, 10
    lat1 = np.linspace(-80, 80, ny)[:: -1 if lat_descending else 1]
    lon1 = np.arange(nx) * 18.0
    if curvilinear:
        jj, ii = np.meshgrid(np.arange(ny), np.arange(nx), indexing="ij")
        lat = lat1[jj] + 1.5 * np.sin(ii / nx * 2 * np.pi)
        lon = (lon1[ii] + 2.0 * jj) % 360.0
        grid = types.SimpleNamespace(kind="curvilinear", lat=lat, lon=lon, periodic_x=True, ny=ny, nx=nx)
    else:
        lat, lon = np.broadcast_to(lat1[:, None], (ny, nx)), np.broadcast_to(lon1[None, :], (ny, nx))
        grid = types.SimpleNamespace(kind="latlon", lat=lat1, lon=lon1, periodic_x=True, ny=ny, nx=nx)
    time = np.datetime64("2021-03-01T00:00", "ns") + np.arange(nt) * np.timedelta64(3, "h")
    hours = ((time - time[0]) / np.timedelta64(1, "h")).astype(np.float64)
    # three "fields" whose values are their own coordinates: latitude, cos/sin of longitude, time in hours
    fields = {"lat": np.broadcast_to(lat, (nt, ny, nx)), "coslon": np.broadcast_to(np.cos(np.deg2rad(lon)), (nt, ny, nx)),
              "sinlon": np.broadcast_to(np.sin(np.deg2rad(lon)), (nt, ny, nx)),
              "hours": np.broadcast_to(hours[:, None, None], (nt, ny, nx))}
    return grid, time, {k: np.ascontiguousarray(v, dtype=np.float64) for k, v in fields.items()}


@pytest.mark.parametrize("curvilinear,lat_descending", [(False, True), (False, False), (True, True)])
def test_token_metadata_matches_coordinates_of_the_data(curvilinear, lat_descending):
    from fastload.config import SamplingConfig

    grid, time, fields = _meta_case(curvilinear, lat_descending)
    cfg = SamplingConfig(fields=[FieldConfig(name=k, num_tokens=(2, 2, 3), token_size=(2, 3, 4), normalization="none")
                                 for k in fields], time_step=1)
    layouts = {k: FieldLayout(name=k, array=k, shape=v.shape, chunks=(4, 5, 7), axes=(0, None, None, 1, 2),
                              periodic_x=True) for k, v in fields.items()}
    tok = (CurvilinearTokenizer if curvilinear else LatLonTokenizer)(grid, time, cfg, layouts)
    boxes = tok.check_boxes([[0, 0, 15], [6, 6, 0], [3, 2, 9]])  # the first crosses the x seam
    plan = tok.plan(boxes)
    slots, slot_of = {}, {}
    for k, v in fields.items():
        slots[k], slot_of[k] = chunk_arena(v, layouts[k].chunks, plan.chunks[k], np.random.default_rng(0))
    outs = {k: np.empty((3, *cfg.field(k).sample_shape), np.float32) for k in fields}
    tok.gather(slots, plan.slot_tables(slot_of), boxes, outs)
    vals = {k: o.astype(np.float64)[:, 0] for k, o in outs.items()}  # (B, nt, nlat, nlon, tt, tlat, tlon)
    meta = tok.meta(boxes)["lat"]
    # centre latitude = mean over the token's points (float32 data: compare to float32 precision)
    np.testing.assert_allclose(vals["lat"].mean(axis=(1, 4, 5, 6)), meta.lat, atol=1e-4)
    # centre longitude = direction of the mean of the token's unit vectors... for small tokens equal to the
    # unwrapped mean up to second order: compare the direction
    ang = np.rad2deg(np.arctan2(vals["sinlon"].mean(axis=(1, 4, 5, 6)), vals["coslon"].mean(axis=(1, 4, 5, 6))))
    diff = (ang - meta.lon + 180) % 360 - 180
    assert np.abs(diff).max() < 0.05
    # time of a token = time of its first step
    first = vals["hours"][:, :, 0, 0, 0, 0, 0]  # (B, nt)
    want = ((meta.time - time[0]) / np.timedelta64(1, "h")).astype(np.float64)
    np.testing.assert_array_equal(first, want)
    assert np.array_equal(meta.t_index, boxes[:, :1] + np.arange(2) * 2)
    np.testing.assert_allclose(meta.hour, (want + 0.0) % 24)
    np.testing.assert_allclose(meta.day_of_year, 59 + want / 24.0)  # 1 March 2021 is day 59 (0-based)


@pytest.mark.parametrize("dtype", [np.float32, np.float64, np.int16])
@pytest.mark.parametrize("cx", [5, 8, 12, 20])
@pytest.mark.parametrize("tlon", [9, 17, 27])
@pytest.mark.parametrize("norm", NORMS)
def test_x_chunked_token_rows_across_chunk_edges(norm, tlon, cx, dtype):
    """x chunks narrower and wider than a token (token rows in two pieces: one 8-wide move across the edge from
    both chunks; in three or more: value by value), every x offset (every split of a token row), across the seam,
    two months in a box; the arena holds exactly the needed chunks, so the moves at its first and last values take
    the guarded path. Kernel, reference and a direct crop agree bit for bit."""
    rng = np.random.default_rng(tlon * 100 + cx)
    nx = 2 * tlon + 7
    data = (rng.standard_normal((5, 2, 6, nx)) * 40).astype(dtype)
    if dtype != np.int16:
        data.ravel()[rng.choice(data.size, size=data.size // 10, replace=False)] = np.nan
    lay = FieldLayout(name="f", array="a", shape=data.shape, chunks=(2, 2, 3, cx), axes=(0, None, 1, 2, 3),
                      lev_idx=[1, 0], periodic_x=True)
    field = FieldConfig(name="f", levels=(0.0, 1.0), num_tokens=(2, 2, 2), token_size=(2, 2, tlon),
                        normalization=norm)
    T, H, _ = field.box
    xs = np.arange(nx)
    boxes = np.stack([xs % (5 - T + 1), (xs // 2) % (6 - H + 1), xs], 1).astype(np.int64)
    boxes[0, :2] = 0  # the first chunk's first values
    boxes[-1, :2] = (5 - T, 6 - H)  # the last chunk's last values
    plan = plan_batch(boxes, [lay], field.box)
    arena, table = exact_arena(data, lay, plan)
    mean, std = two_months(rng, norm, 6, nx)
    month_of = (rng.random((boxes.shape[0], T)) < 0.3).astype(np.int32)
    coef = {} if norm == "none" else dict(mean=mean, std=std, month_of=month_of)
    got, want = (np.empty((boxes.shape[0], *field.sample_shape), np.float32) for _ in range(2))
    with np.errstate(invalid="ignore", divide="ignore", over="ignore"):
        gather_field(arena, table, lay, field, plan.boxes, want, jit=False, **coef)
        exp = direct(data, lay, field, plan.boxes, 1, mean, std, month_of, "float32")
    gather_field(arena, table, lay, field, plan.boxes, got, jit=True, **coef)
    assert same_bits(got, want)
    assert same_bits(want, exp)


# ------------------------------------------------------------------------------------- missing markers
@pytest.mark.parametrize("out_dtype", ["float32", "bfloat16"])
@pytest.mark.parametrize("norm", NORMS)
@pytest.mark.parametrize("tlon", [3, 9])
@pytest.mark.parametrize("dtype, marker, others", [(np.float32, 1e20, [12345.5]), (np.int16, -999, [12345.5]),
                                                   (np.float32, 1e20, [12345.5, -7.25])])
def test_missing_markers_are_nan(dtype, marker, others, tlon, norm, out_dtype):
    """Stored values equal to a field's missing marker (a CMIP float32 _FillValue of 1e20 over land, an int16
    -999) come out NaN, before normalisation; the other values as without markers. Kernel and reference agree bit
    for bit, token widths of the row path and of the one that moves token rows (markers tested in its moves),
    x chunks and boxes across the seam; and both agree with a direct crop of the
    array with NaN written at the markers (what xarray decodes)."""
    _check_markers(dtype, marker, others, tlon, norm, out_dtype, tlon + 2)


@pytest.mark.parametrize("norm", NORMS)
@pytest.mark.parametrize("others", [[], [12345.5], [0.1]])
def test_missing_markers_in_narrow_chunks(others, norm):
    """The same with x chunks narrower than a token (token rows in three pieces, assembled value by value before
    their moves), with one marker, two, and a second that no float32 equals (0.1: left out of the moves'
    float32 compare, as no stored float32 can equal it as float64)."""
    _check_markers(np.float32, 1e20, others, 9, norm, "float32", 4)


def test_moves_take_float32_exact_markers_only():
    """Which markers the moves test: float32-exact ones of float32-exact chunks; None (the row kernel) for wider
    chunks with markers."""
    from fastload.sampling._kernels import _move_marks

    f4, i2, i4, f8 = (np.dtype(t) for t in ("float32", "int16", "int32", "float64"))
    assert _move_marks(f4, None) == () and _move_marks(i4, np.zeros(0)) == ()
    assert _move_marks(f4, np.array([1e20])) == ()  # 1e20 is no float32: no float32 equals it as float64
    m = float(np.float32(1e20))
    assert _move_marks(f4, np.array([m, 0.1, np.nan, m])) == (np.float32(m),)
    assert _move_marks(i2, np.array([-999.0, 12345.5])) == (np.float32(-999), np.float32(12345.5))
    assert _move_marks(f4, np.array([3.0, 2.0, 1.0])) == (1.0, 2.0, 3.0)
    assert _move_marks(i4, np.array([-999.0])) is None and _move_marks(f8, np.array([1.0])) is None


def _check_markers(dtype, marker, others, tlon, norm, out_dtype, cx):
    rng = np.random.default_rng(tlon * 7 + len(norm))
    nx = 2 * tlon + 5
    data = (rng.standard_normal((5, 2, 6, nx)) * 40).astype(dtype)
    hit = rng.random(data.shape) < 0.15
    data[hit] = marker
    lay0 = FieldLayout(name="f", array="a", shape=data.shape, chunks=(2, 2, 3, cx), axes=(0, None, 1, 2, 3),
                       lev_idx=[1, 0], periodic_x=True)
    # markers as the stored dtype holds them (as missing_markers gives them), and others that no value equals (up
    # to two markers are tested in the kernel's vectorised loops, three in its per-value loop)
    lay = dataclasses.replace(lay0, missing=np.array([dtype(marker), *others]))
    field = FieldConfig(name="f", levels=(0.0, 1.0), num_tokens=(2, 2, 2), token_size=(2, 2, tlon),
                        normalization=norm)
    raw_field = dataclasses.replace(field, normalization="none")
    boxes = np.array([[0, 0, 0], [1, 2, nx - 2], [1, 1, nx - tlon - 1], [0, 2, 5]], np.int64)  # two across 0/360
    plan = plan_batch(boxes, [lay], field.box)
    arena, table = exact_arena(data, lay, plan)
    mean, std = two_months(rng, norm, 6, nx)
    month_of = (rng.random((boxes.shape[0], field.box[0])) < 0.3).astype(np.int32)
    coef = {} if norm == "none" else dict(mean=mean, std=std, month_of=month_of)
    odt = np.float32 if out_dtype == "float32" else np.uint16

    def run(layout, f, jit, **kw):
        out = np.empty((boxes.shape[0], *f.sample_shape), odt if f is field else np.float32)
        with np.errstate(invalid="ignore", divide="ignore", over="ignore"):
            gather_field(arena, table, layout, f, plan.boxes, out, jit=jit,
                         out_dtype=out_dtype if f is field else "float32", **kw)
        return out

    got, ref = run(lay, field, True, **coef), run(lay, field, False, **coef)
    assert same_bits(got, ref), "Numba kernel and NumPy reference differ"
    # independent expectation: the unmasked result, NaN where the stored value is the marker
    stored = run(lay0, raw_field, True)  # the stored values, as float32, in token order
    masked = stored == np.float32(marker)
    assert masked.any() and (~masked).any()
    plain = run(lay0, field, True, **coef)
    nan = np.isnan(ref) if out_dtype == "float32" else half_nan(ref, out_dtype)
    assert nan[masked].all()
    assert np.array_equal(ref[~masked], plain[~masked])
    # and a direct crop of the array with NaN at the markers
    with np.errstate(invalid="ignore", divide="ignore", over="ignore"):
        exp = direct(np.where(hit, np.nan, data.astype(np.float32)), lay, field, plan.boxes, 1, mean, std, month_of,
                     out_dtype)
    if out_dtype == "float32":
        assert same_bits(ref, exp)
    else:
        assert np.array_equal(nan, half_nan(exp, out_dtype)) and np.array_equal(ref[~nan], exp[~nan])
