"""Blend the predictions of overlapping tiles into one global field, without seams, on tensors.

Why here: a global rollout decodes every tile of an overlapping tiling, and each grid point covered by several
tiles gets several predictions. The sampling side (``fastload.sampling.geometry``) knows which global grid point
each tile value lands on; ``model`` may not import it, so the geometry comes in as tensors (``index``) and the
blend is done here. :meth:`model.Forecaster.rollout` also takes any ``stitch(field, tiles)`` callable, so the
sampling engineer's own ``stitch`` plugs in the same way.

The blend is the weighted mean ``sum_i w_i x_i / sum_i w_i`` of the contributions to each point, computed as a
running convex update ``v <- v + (w_k / W_k) (x_k - v)`` (``W_k`` the running weight sum) in a fixed order. The
result is the same weighted mean, but where the contributions agree (a constant field, or tiles cut from one
field) it is *exactly* that value: every update adds ``frac * 0``. A plain ``sum(w x) / sum(w)`` rounds instead.
"""

from __future__ import annotations

import math

import torch
from torch import nn

__all__ = ["TileBlender", "edge_taper"]


def edge_taper(n: int, overlap: int) -> torch.Tensor:
    """Weights along one tile axis of ``n`` points that fall off linearly over ``overlap`` points at both edges.

    ``w[i] = min(1, (i + 1) / (overlap + 1), (n - i) / (overlap + 1))``: all positive (every point keeps some
    weight), 1 in the interior; ``overlap=0`` gives ones.
    """
    i = torch.arange(n, dtype=torch.float64)
    w = torch.minimum((i + 1) / (overlap + 1), (n - i) / (overlap + 1))
    return w.clamp(max=1.0)


class TileBlender(nn.Module):
    """Weighted, seam-free blend of overlapping tile values onto global points.

    Parameters
    ----------
    index : Tensor
        ``(T, *tile_shape)`` integer: the global point (flat index in ``[0, num_points)``) of every tile value.
    weights : Tensor
        ``(T, *tile_shape)`` positive float: each value's weight (e.g. a product of :func:`edge_taper`).
    num_points : int
        Number of global points (e.g. ``levels * lat * lon`` of the global grid).
    fill : float
        Value of points no tile covers (see :attr:`covered`).

    Calling it on ``values`` of shape ``(..., T, *tile_shape)`` returns ``(..., num_points)``. A NaN contribution
    (a missing point, as :meth:`model.Forecaster.decode` marks them) makes its point NaN.
    """

    def __init__(
        self, index: torch.Tensor, weights: torch.Tensor, num_points: int, fill: float = math.nan
    ) -> None:
        super().__init__()
        if index.shape != weights.shape or index.dim() < 2:
            raise ValueError(
                f"TileBlender: index and weights must both be (T, *tile_shape); got {tuple(index.shape)} "
                f"and {tuple(weights.shape)}"
            )
        if index.dtype not in (torch.int32, torch.int64):
            raise ValueError(f"TileBlender: index must be an integer tensor, got {index.dtype}")
        g = index.reshape(-1).long().cpu()
        if g.numel() and (int(g.min()) < 0 or int(g.max()) >= num_points):
            raise ValueError(
                f"TileBlender: index values must lie in [0, {num_points}), got [{int(g.min())}, {int(g.max())}]"
            )
        w = weights.reshape(-1).double().cpu()
        if not bool(torch.isfinite(w).all()) or not bool((w > 0).all()):
            raise ValueError("TileBlender: weights must be finite and > 0")
        self.tile_shape = tuple(index.shape[1:])
        self.num_tiles = int(index.shape[0])
        self.num_points = int(num_points)
        self.fill = float(fill)
        order = torch.argsort(g, stable=True)  # contributions grouped by point, in tile order
        gs, ws = g[order], w[order]
        _, counts = torch.unique_consecutive(gs, return_counts=True)
        starts = torch.cumsum(counts, 0) - counts
        rank = torch.arange(gs.numel()) - torch.repeat_interleave(starts, counts)
        covered = torch.zeros(num_points, dtype=torch.bool)
        covered[gs] = True
        self.register_buffer("covered", covered, persistent=False)
        self.num_ranks = int(counts.max()) if counts.numel() else 0
        # W_k, each point's running weight sum, accumulated one contribution at a time in tile order (float64), so
        # the blend rounds exactly as fastload.sampling.geometry.stitch does: frac = w_k / (W_{k-1} + w_k)
        running = torch.zeros(num_points, dtype=torch.float64)
        for r in range(self.num_ranks):
            sel = rank == r
            dst, wr = gs[sel], ws[sel]
            running[dst] += wr
            self.register_buffer(f"src_{r}", order[sel], persistent=False)
            self.register_buffer(f"dst_{r}", dst, persistent=False)
            self.register_buffer(f"frac_{r}", wr / running[dst], persistent=False)

    def forward(self, values: torch.Tensor) -> torch.Tensor:
        nd = len(self.tile_shape) + 1
        if tuple(values.shape[-nd:]) != (self.num_tiles, *self.tile_shape):
            raise ValueError(
                f"TileBlender: expected values (..., {self.num_tiles}, {', '.join(map(str, self.tile_shape))}), "
                f"got {tuple(values.shape)}"
            )
        lead = values.shape[:-nd]
        flat = values.reshape(*lead, -1)
        out = torch.full((*lead, self.num_points), self.fill, dtype=values.dtype, device=values.device)
        for r in range(self.num_ranks):
            src, dst = getattr(self, f"src_{r}"), getattr(self, f"dst_{r}")
            x = flat[..., src]
            if r == 0:  # the first contribution of each point has frac exactly 1
                out[..., dst] = x
            else:
                cur = out[..., dst]
                out[..., dst] = cur + getattr(self, f"frac_{r}").to(values.dtype) * (x - cur)
        return out
