"""Plain NumPy twins of :mod:`._mesh_kernels`: the same names, arguments and results, written to be read.

These are the specification of the point kernels: :func:`bin_nodes` tests every node of the mesh against every
sample's cells (no spatial index: it is the brute-force check of the bucketed kernel) and sorts with
``numpy.lexsort``; :func:`gather_points` is one fancy-indexing expression. ``FASTLOAD_NO_JIT=1`` (or
``jit=False``) makes the package use them instead of Numba.
"""

from __future__ import annotations

import numpy as np

from ._reference import _bf16, _f16, _masked

__all__ = ["bin_nodes", "gather_points"]


def bin_nodes(bstart, bnodes, bgeo, node_lat, node_lon, regions, coslat, out_nodes, out_count) -> None:
    """Same contract as :func:`fastload.sampling._mesh_kernels.bin_nodes` (the bucket arrays are not needed)."""
    n_samples, nlat, nlon, k_max = out_nodes.shape
    out_nodes[...] = -1
    out_count[...] = 0
    for s in range(n_samples):
        lf, ll, lo0, width = (float(v) for v in regions[s])
        lo0 = lo0 % 360.0
        span = ll - lf
        with np.errstate(divide="ignore", invalid="ignore"):
            fb = np.floor((node_lat - lf) / span * nlat)
            if ll == 90.0 or ll == -90.0:  # the last row is closed at a pole: a node there is in it
                fb = np.where(fb == nlat, nlat - 1.0, fb)
            dl = (node_lon - lo0) % 360.0
            fc = np.floor(dl / width * nlon)
        inside = (fb >= 0) & (fb < nlat) & (fc >= 0) & (fc < nlon)
        node = np.flatnonzero(inside)
        b = fb[inside].astype(np.int64)
        c = fc[inside].astype(np.int64)
        dy = node_lat[node] - (lf + (b + 0.5) * span / nlat)
        dx = (node_lon[node] - (lo0 + (c + 0.5) * width / nlon) + 180.0) % 360.0 - 180.0
        dx = coslat[s, b] * dx
        dist = dy * dy + dx * dx
        cell = b * nlon + c
        order = np.lexsort((node, dist, cell))  # by cell, then distance, then node index
        cell, node = cell[order], node[order]
        first = np.searchsorted(cell, cell, side="left")
        rank = np.arange(cell.size) - first  # position of each node within its cell
        np.add.at(out_count[s].reshape(-1), cell, 1)
        keep = rank < k_max
        out_nodes[s].reshape(-1, k_max)[cell[keep], rank[keep]] = node[keep]


def gather_points(slots, table, t_pos, t_off, p_pos, p_off, p_norm, lev_off, geometry, mean, std, month_of,
                  out, missing) -> None:
    """Same contract as :func:`fastload.sampling._mesh_kernels.gather_points`."""
    nt, nlat, nlon, tt, kk, log1p, norm, kind = (int(v) for v in geometry)
    n_samples, n_lev = t_pos.shape[0], lev_off.shape[0]
    s4 = np.arange(n_samples)[:, None, None, None]
    l4 = np.arange(n_lev)[None, :, None, None]
    tp = t_pos[:, None, :, None]  # (S, 1, T, 1)
    pp = p_pos[:, None, None, :]  # (S, 1, 1, P)
    pad = pp < 0
    slot = table[s4, l4, tp, np.maximum(pp, 0)]  # (S, L, T, P)
    if np.any((slot[np.broadcast_to(~pad, slot.shape)] < 0) | (slot[np.broadcast_to(~pad, slot.shape)] >= slots.shape[0])):
        raise IndexError("gather_points: slot table has no valid slot for a needed chunk")
    offset = lev_off[None, :, None, None] + t_off[:, None, :, None] + p_off[:, None, None, :]
    v = _masked(slots[np.where(pad, 0, slot), np.where(pad, 0, offset)], missing)
    if log1p:
        with np.errstate(invalid="ignore", divide="ignore"):
            v = np.log1p(v.astype(np.float64)).astype(np.float32)
    if norm:
        m4 = month_of[:, None, :, None]
        g4 = np.zeros_like(pp) if norm == 1 else p_norm[:, None, None, :]
        with np.errstate(invalid="ignore", divide="ignore", over="ignore"):
            v = (v - mean[m4, l4, g4]) / std[m4, l4, g4]
    v = np.where(pad, np.float32(0), v)
    # (S, L, nt*tt, nlat*nlon*K) -> (S, L, nt, nlat, nlon, tt, K)
    v = v.reshape(n_samples, n_lev, nt, tt, nlat, nlon, kk).transpose(0, 1, 2, 4, 5, 3, 6)
    flat = out.reshape(n_samples, n_lev, nt, nlat, nlon, tt, kk)
    if kind == 0:
        flat[...] = v
    elif kind == 1:
        flat[...] = _bf16(v)
    else:
        flat[...] = _f16(v)
