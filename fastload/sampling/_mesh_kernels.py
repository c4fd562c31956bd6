"""Numba kernels of point sampling: bin mesh nodes into token cells, gather listed points into token tensors.

Only ``@njit(nogil=True, cache=True)`` functions live here: arrays in, results written into preallocated outputs,
no I/O, no Python objects. Each has a NumPy twin of the same name and meaning in :mod:`._mesh_reference`; the
switch between them is :func:`fastload.sampling.points.point_kernels` (``FASTLOAD_NO_JIT=1`` picks the reference),
and ``tests/fastload/test_mesh.py`` checks that both give identical results. No transcendental function is
evaluated here (callers pass cosines in), so kernel and reference agree bit for bit.

Binning rule (:func:`bin_nodes`): a sample's region is ``[lat_first, lat_last] x [lon_first, lon_first + width]``
cut into ``nlat x nlon`` equal cells (row 0 at ``lat_first``, which may be the north edge). A node at (lat, lon)
falls in cell ``(floor((lat - lat_first) / (lat_last - lat_first) * nlat), floor(((lon - lon_first) mod 360) /
width * nlon))`` when both are in range (cells are half-open, so a node on a shared edge belongs to one cell;
the last row is closed when ``lat_last`` is a pole, +-90, so a node at the pole there falls in it).
A cell keeps its ``K`` nodes nearest its centre, by ``dlat**2 + (cos(lat_centre) * dlon)**2`` (``dlon`` wrapped
to [-180, 180)), ties broken by the smaller node index; slot 0 holds the nearest. Empty slots are -1.

Gather (:func:`gather_points`): like the structured gather (``fastload/DESIGN.md``) but every sample lists its
points, per time step and per point, as (which of the sample's chunks, element offset in the chunk), so one
kernel serves meshes (points = nodes) and boxes mapped onto a stream's own time axis (arbitrary time indices).
Arithmetic as in :mod:`._kernels`: float32 value, optional ``log1p`` in float64, ``(v - mean) / std`` in float32,
then float32 or bfloat16/float16 bits; a stored value equal to one of the field's missing markers is NaN.
Padded points are written as 0 (their mask says they are not data).
"""

from __future__ import annotations

import numpy as np
from numba import njit

from ._kernels import _bf16, _f16

__all__ = ["bin_nodes", "gather_points"]


@njit(nogil=True, cache=True)
def bin_nodes(bstart, bnodes, bgeo, node_lat, node_lon, regions, coslat, out_nodes, out_count):
    """Bin the nodes of every sample's region into its token cells, keeping the ``K`` nearest each centre.

    Parameters
    ----------
    bstart : (NBY * NBX + 1,) int64
        CSR offsets of the bucket grid (row-major, bucket row 0 at latitude -90).
    bnodes : (N,) int64
        Node indices sorted by bucket.
    bgeo : (4,) float64
        ``[bucket_deg_lat, bucket_deg_lon, NBY, NBX]``.
    node_lat, node_lon : (N,) float64
        Node coordinates in degrees, longitudes in [0, 360).
    regions : (S, 4) float64
        ``[lat_first, lat_last, lon_first, width]`` per sample (``lat_last`` may be below ``lat_first``).
    coslat : (S, nlat) float64
        Cosine of each cell row's centre latitude.
    out_nodes : (S, nlat, nlon, K) int64
        Written: node index per slot, -1 where empty.
    out_count : (S, nlat, nlon) int64
        Written: nodes in each cell before keeping ``K``.
    """
    dlat_b, dlon_b = bgeo[0], bgeo[1]
    nby, nbx = np.int64(bgeo[2]), np.int64(bgeo[3])
    n_samples, nlat, nlon, k_max = out_nodes.shape
    n_cells = nlat * nlon
    out_nodes[:] = -1
    out_count[:] = 0
    cell_n = np.zeros(n_cells + 1, np.int64)
    fill = np.zeros(n_cells, np.int64)
    # per sample: the bucket window to visit; buffers sized once for the largest window
    win = np.zeros((n_samples, 4), np.int64)  # r0, r1, c0, ncol (r1 < r0: nothing to visit)
    most = 0
    for s in range(n_samples):
        lf, ll, lo0, width = regions[s, 0], regions[s, 1], regions[s, 2] % 360.0, regions[s, 3]
        win[s, 0], win[s, 1] = 1, 0
        if ll - lf == 0.0 or not width > 0.0:  # an empty region holds no node
            continue
        la_lo, la_hi = min(lf, ll), max(lf, ll)
        win[s, 0] = min(nby - 1, max(np.int64(0), np.int64(np.floor((la_lo + 90.0) / dlat_b))))
        win[s, 1] = min(nby - 1, np.int64(np.floor((la_hi + 90.0) / dlat_b)))
        if width >= 360.0:
            win[s, 2], win[s, 3] = 0, nbx
        else:
            win[s, 2] = min(nbx - 1, np.int64(np.floor(lo0 / dlon_b)))
            win[s, 3] = min(nbx, np.int64(np.floor((lo0 + width) / dlon_b)) - win[s, 2] + 1)
        n_cand = 0
        for r in range(win[s, 0], win[s, 1] + 1):
            for cc in range(win[s, 3]):
                bk = r * nbx + (win[s, 2] + cc) % nbx
                n_cand += bstart[bk + 1] - bstart[bk]
        most = max(most, n_cand)
    cand = np.empty(most, np.int64)
    cell = np.empty(most, np.int64)
    dist = np.empty(most, np.float64)
    g_node = np.empty(most, np.int64)
    g_dist = np.empty(most, np.float64)
    for s in range(n_samples):
        lf, ll, lo0, width = regions[s, 0], regions[s, 1], regions[s, 2] % 360.0, regions[s, 3]
        span = ll - lf
        pole = ll == 90.0 or ll == -90.0
        m = 0
        for r in range(win[s, 0], win[s, 1] + 1):
            for cc in range(win[s, 3]):
                bk = r * nbx + (win[s, 2] + cc) % nbx
                for q in range(bstart[bk], bstart[bk + 1]):
                    node = bnodes[q]
                    lat = node_lat[node]
                    fb = np.floor((lat - lf) / span * nlat)
                    if fb == nlat and pole:  # the last row is closed at a pole: a node there is in it
                        fb = nlat - 1.0
                    if not (fb >= 0.0 and fb < nlat):
                        continue
                    dl = (node_lon[node] - lo0) % 360.0
                    fc = np.floor(dl / width * nlon)
                    if not (fc >= 0.0 and fc < nlon):
                        continue
                    b = np.int64(fb)
                    c = np.int64(fc)
                    dy = lat - (lf + (b + 0.5) * span / nlat)
                    dx = (node_lon[node] - (lo0 + (c + 0.5) * width / nlon) + 180.0) % 360.0 - 180.0
                    dx = coslat[s, b] * dx
                    cand[m] = node
                    cell[m] = b * nlon + c
                    dist[m] = dy * dy + dx * dx
                    m += 1
        if m == 0:
            continue
        # candidates in node order, grouped by cell (a stable counting sort keeps node order inside a cell)
        by_node = np.argsort(cand[:m])
        cell_n[:] = 0
        for i in range(m):
            cell_n[cell[i] + 1] += 1
        for i in range(n_cells):
            cell_n[i + 1] += cell_n[i]
            fill[i] = cell_n[i]
        for j in range(m):
            i = by_node[j]
            p = fill[cell[i]]
            g_node[p] = cand[i]
            g_dist[p] = dist[i]
            fill[cell[i]] += 1
        for ci in range(n_cells):
            lo, hi = cell_n[ci], cell_n[ci + 1]
            n_in = hi - lo
            b = ci // nlon
            c = ci % nlon
            out_count[s, b, c] = n_in
            if n_in == 0:
                continue
            if n_in <= 48:  # stable insertion sort by distance (equal distances keep node order)
                for i in range(lo + 1, hi):
                    dv, nv = g_dist[i], g_node[i]
                    j = i - 1
                    while j >= lo and g_dist[j] > dv:
                        g_dist[j + 1] = g_dist[j]
                        g_node[j + 1] = g_node[j]
                        j -= 1
                    g_dist[j + 1] = dv
                    g_node[j + 1] = nv
                for j in range(min(n_in, k_max)):
                    out_nodes[s, b, c, j] = g_node[lo + j]
            else:
                order = np.argsort(g_dist[lo:hi], kind="mergesort")  # stable
                for j in range(min(n_in, k_max)):
                    out_nodes[s, b, c, j] = g_node[lo + order[j]]


@njit(nogil=True, cache=True)
def gather_points(slots, table, t_pos, t_off, p_pos, p_off, p_norm, lev_off, geometry, mean, std, month_of, out,
                  missing):
    """Gather listed points of every sample into the token layout, with transform, normalisation and cast.

    Parameters
    ----------
    slots : (n_slots, chunk_elems) array
        Decoded chunks of the field's array.
    table : (S, L, nct, ncp) int32
        Slot of the sample's ``it``-th time chunk x ``ip``-th spatial chunk, per output level; -1 = not needed.
    t_pos, t_off : (S, T) int64
        Per time step: which of the sample's time chunks, and the element offset of the step in the chunk.
    p_pos, p_off : (S, P) int64
        Per point (``P = nlat * nlon * K``, token-major): which of the sample's spatial chunks (-1: padding), and
        the element offset of the point in the chunk.
    p_norm : (S, P) int64
        Index of the point along the last axis of ``mean``/``std`` (local normalisation).
    lev_off : (L,) int64
        Element offset of each output level (and the field, in AtmoRep chunks) in a chunk.
    geometry : (8,) int64
        ``[nt, nlat, nlon, tt, K, log1p, norm, out_kind]``; norm 0 none, 1 global, 2 local.
    mean, std : (M, L, NS) float32
        Coefficients (``NS = 1`` for global).
    month_of : (S, T) int32
        Coefficient month of each time step.
    out : (S, L, nt, nlat, nlon, tt, K) float32 or uint16, C-contiguous
        Written in place.
    missing : (NM,) float64
        Missing markers: a point whose stored value (as float64) equals one is NaN (before transform and
        normalisation); empty for none.
    """
    nt, nlat, nlon, tt, kk = geometry[0], geometry[1], geometry[2], geometry[3], geometry[4]
    log1p, norm, kind = geometry[5], geometry[6], geometry[7]
    n_samples = t_pos.shape[0]
    n_lev = lev_off.shape[0]
    n_slots = slots.shape[0]
    outf = out.reshape(out.size)
    o_i = kk
    o_c = tt * o_i
    o_b = nlon * o_c
    o_a = nlat * o_b
    o_l = nt * o_a
    o_s = n_lev * o_l
    buf = np.empty(1, np.float32)
    bits = buf.view(np.uint32)
    n_p = p_pos.shape[1]
    n_miss = missing.shape[0]
    simple = kind == 0 and norm == 0 and not log1p and n_miss == 0
    for s in range(n_samples):
        pp = p_pos[s]
        po = p_off[s]
        n_ip = 0  # spatial chunks this sample uses: every one must have a slot at every time chunk and level
        for p in range(n_p):
            n_ip = max(n_ip, pp[p] + 1)
        for lv in range(n_lev):
            for a in range(nt):
                for i in range(tt):
                    tk = a * tt + i
                    trow = table[s, lv, t_pos[s, tk]]
                    for ip in range(n_ip):
                        if trow[ip] < 0 or trow[ip] >= n_slots:
                            raise IndexError("gather_points: slot table has no valid slot for a needed chunk")
                    base = lev_off[lv] + t_off[s, tk]
                    m = month_of[s, tk] if norm != 0 else 0
                    for b in range(nlat):
                        for c in range(nlon):
                            o = s * o_s + lv * o_l + a * o_a + b * o_b + c * o_c + i * o_i
                            p0 = (b * nlon + c) * kk
                            if simple:
                                for q in range(kk):
                                    ip = pp[p0 + q]
                                    if ip < 0:
                                        outf[o + q] = 0
                                    else:
                                        outf[o + q] = np.float32(slots[trow[ip], base + po[p0 + q]])
                                continue
                            for q in range(kk):
                                ip = pp[p0 + q]
                                if ip < 0:
                                    outf[o + q] = 0
                                    continue
                                sv = slots[trow[ip], base + po[p0 + q]]
                                v = np.float32(sv)
                                for k in range(n_miss):  # a declared missing value: NaN
                                    if np.float64(sv) == missing[k]:
                                        v = np.float32(np.nan)
                                if log1p:
                                    v = np.float32(np.log1p(np.float64(v)))
                                if norm == 1:
                                    v = (v - mean[m, lv, 0]) / std[m, lv, 0]
                                elif norm == 2:
                                    g = p_norm[s, p0 + q]
                                    v = (v - mean[m, lv, g]) / std[m, lv, g]
                                if kind == 0:
                                    outf[o + q] = v
                                else:
                                    buf[0] = v
                                    if kind == 1:
                                        outf[o + q] = _bf16(np.int64(bits[0]))
                                    else:
                                        outf[o + q] = _f16(np.int64(bits[0]))
