"""The Forecaster's learned parts: the adapter, the latent tail and the read-out, and the blocks they are built of.

Why a module of its own: :class:`~model.forecaster.Forecaster` is the config and the model's calls (encode, step,
decode, rollout, the rollout loss); the layers it owns live here, one class per part, as the Multiformer's blocks
live in :mod:`model.layers`. Shapes as in :mod:`model.forecaster` (``T`` tiles, ``K`` neighbours per tile, ``Q``
queries of width ``C`` per tile):

- :class:`Adapter`: a tile's encoder tokens of all fields -> its latent (N, Q, C);
- :class:`LatentTail`: the state (B, W, T, Q, C) and the lead time -> the next latent (B, T, Q, C), the identity at
  initialisation (adaLN-Zero: persistence);
- :class:`ReadOut`: a tile's latent and its neighbours' -> decoded tokens per field, one per ensemble member.

:mod:`model.forecaster` re-exports them all. No host syncs.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

import torch
from torch import nn

from ._geometry import TileGeometry
from .layers import (
    MLP,
    AdaLNModulation,
    Attention,
    Checkpointable,
    EnsembleTail,
    init_linear,
    modulate,
    num_sphere_features,
    offset_features,
    scalar_embedding,
    sphere_features,
)
from .multiformer import MultiformerConfig

if TYPE_CHECKING:
    from .forecaster import ForecasterConfig

__all__ = ["Adapter", "LatentTail", "ReadOut"]


class _CrossBlock(Checkpointable):
    """Queries attend to a key/value sequence, then an MLP (pre-norm residuals)."""

    def __init__(self, dim: int, heads: int, mlp_ratio: float, qk_norm: bool) -> None:
        super().__init__()
        self.norm_q, self.norm_kv, self.norm2 = nn.LayerNorm(dim), nn.LayerNorm(dim), nn.LayerNorm(dim)
        self.attn = Attention(dim, heads, dim // heads, kv_dim=dim, qk_norm=qk_norm)
        self.mlp = MLP(dim, mlp_ratio)

    def _run(self, q: torch.Tensor, kv: torch.Tensor, kv_valid: torch.Tensor | None) -> torch.Tensor:
        q = q + self.attn(self.norm_q(q), self.norm_kv(kv), kv_valid)
        return q + self.mlp(self.norm2(q))


class _TailBlock(Checkpointable):
    """Self-attention + MLP over the global latent, modulated by the lead time; identity at initialisation."""

    def __init__(self, dim: int, heads: int, mlp_ratio: float, qk_norm: bool) -> None:
        super().__init__()
        self.norm1 = nn.LayerNorm(dim, elementwise_affine=False)
        self.attn = Attention(dim, heads, dim // heads, qk_norm=qk_norm)
        self.norm2 = nn.LayerNorm(dim, elementwise_affine=False)
        self.mlp = MLP(dim, mlp_ratio)
        self.ada = AdaLNModulation(dim, dim, 6)

    def _run(self, x: torch.Tensor, cond: torch.Tensor) -> torch.Tensor:
        shift1, scale1, gate1, shift2, scale2, gate2 = self.ada(cond)
        x = x + gate1.unsqueeze(1) * self.attn(modulate(self.norm1(x), shift1, scale1))
        return x + gate2.unsqueeze(1) * self.mlp(modulate(self.norm2(x), shift2, scale2))


class Adapter(nn.Module):
    """Learned queries per tile cross-attend to the tile's encoder tokens of all fields -> (N, Q, C)."""

    def __init__(self, mcfg: MultiformerConfig, cfg: ForecasterConfig) -> None:
        super().__init__()
        c = cfg.latent_dim
        self.proj = nn.ModuleDict({f.name: nn.Linear(f.embed_dim, c) for f in mcfg.fields})
        self.field_embed = nn.ParameterDict({f.name: nn.Parameter(torch.zeros(c)) for f in mcfg.fields})
        self.queries = nn.Parameter(torch.zeros(cfg.latent_queries, c))
        self.blocks = nn.ModuleList(
            _CrossBlock(c, cfg.num_heads, cfg.mlp_ratio, cfg.qk_norm) for _ in range(cfg.adapter_layers)
        )
        self.norm = nn.LayerNorm(c)
        init_linear(self)
        nn.init.trunc_normal_(self.queries, std=0.02)
        for p in self.field_embed.values():
            nn.init.trunc_normal_(p, std=0.02)

    def forward(self, hidden: Mapping[str, torch.Tensor], valid: Mapping[str, Any]) -> torch.Tensor:
        kv = torch.cat(
            [self.proj[f](h) + self.field_embed[f] for f, h in hidden.items()], dim=1
        )  # (N, sum S, C)
        kv_valid = None
        if any(v is not None for v in valid.values()):
            kv_valid = torch.cat(
                [torch.ones(h.shape[:2], dtype=torch.bool, device=h.device) if valid[f] is None else valid[f]
                 for f, h in hidden.items()], dim=1)  # fmt: skip
        q = self.queries.expand(kv.shape[0], -1, -1)
        for block in self.blocks:
            q = block(q, kv, kv_valid)
        return self.norm(q)  # (N, Q, C)


class LatentTail(nn.Module):
    """Advances the global latent one step: (B, W, T, Q, C) window + lead time -> (B, T, Q, C)."""

    def __init__(self, cfg: ForecasterConfig) -> None:
        super().__init__()
        c = cfg.latent_dim
        self.pos_frequencies = cfg.pos_frequencies
        self.pos = nn.Linear(num_sphere_features(cfg.pos_frequencies), c)
        self.slot = nn.Parameter(torch.zeros(cfg.latent_queries, c))
        self.window = nn.Parameter(torch.zeros(cfg.input_window, c))
        self.cond = nn.Sequential(nn.Linear(c, c), nn.SiLU(), nn.Linear(c, c))
        self.blocks = nn.ModuleList(
            _TailBlock(c, cfg.num_heads, cfg.mlp_ratio, cfg.qk_norm) for _ in range(cfg.tail_layers)
        )
        self.norm = nn.LayerNorm(c, elementwise_affine=False)
        self.ada = AdaLNModulation(c, c, 2)
        self.out = nn.Linear(c, c)
        init_linear(self.pos)
        init_linear(self.cond)
        nn.init.trunc_normal_(self.slot, std=0.02)
        nn.init.trunc_normal_(self.window, std=0.02)
        nn.init.zeros_(self.out.weight)  # the update starts at exactly zero: step() is the identity
        nn.init.zeros_(self.out.bias)

    def forward(self, window: torch.Tensor, lead_time: torch.Tensor, geometry: TileGeometry) -> torch.Tensor:
        b, w, t, q, c = window.shape
        # features in float32, cast to the weights' dtype (a model cast to bfloat16/float16), as the embedding does
        pos = self.pos(
            sphere_features(geometry.lat.float(), geometry.lon.float(), self.pos_frequencies).to(self.pos.weight.dtype)
        )  # (T, C)
        enc = self.window[:, None, None] + pos[None, :, None] + self.slot[None, None]  # (W, T, Q, C)
        x = (window + enc).reshape(b, w * t * q, c)
        cond = self.cond(scalar_embedding(lead_time, c).to(self.pos.weight.dtype))  # (B, C)
        for block in self.blocks:
            x = block(x, cond)
        shift, scale = self.ada(cond)
        delta = self.out(modulate(self.norm(x), shift, scale)).reshape(b, w, t, q, c)[:, -1]
        return window[:, -1] + delta


class ReadOut(nn.Module):
    """Target-token queries of a tile attend to the latents of the tile and its K neighbours; ensemble tails."""

    def __init__(self, mcfg: MultiformerConfig, cfg: ForecasterConfig) -> None:
        super().__init__()
        c = cfg.latent_dim
        self.nt_out = cfg.readout_time_tokens
        self.pos_frequencies = cfg.pos_frequencies
        self.fields = mcfg.fields
        self.level = nn.ParameterDict(
            {f.name: nn.Parameter(torch.zeros(f.num_levels, c)) for f in mcfg.fields}
        )
        self.pos_t = nn.ParameterDict(
            {f.name: nn.Parameter(torch.zeros(self.nt_out, c)) for f in mcfg.fields}
        )
        self.pos_lat = nn.ParameterDict(
            {f.name: nn.Parameter(torch.zeros(f.num_tokens[1], c)) for f in mcfg.fields}
        )
        self.pos_lon = nn.ParameterDict(
            {f.name: nn.Parameter(torch.zeros(f.num_tokens[2], c)) for f in mcfg.fields}
        )
        self.tile_pos = nn.Linear(num_sphere_features(cfg.pos_frequencies), c)
        self.rel = nn.Linear(4 * max(cfg.pos_frequencies, 1), c)
        self.slot = nn.Parameter(torch.zeros(cfg.latent_queries, c))
        self.blocks = nn.ModuleList(
            _CrossBlock(c, cfg.num_heads, cfg.mlp_ratio, cfg.qk_norm) for _ in range(cfg.readout_layers)
        )
        self.tail = nn.ModuleDict(
            {f.name: EnsembleTail(c, f.token_dim, cfg.ensemble_size) for f in mcfg.fields}
        )
        init_linear(self.tile_pos)
        init_linear(self.rel)
        for pd in (self.level, self.pos_t, self.pos_lat, self.pos_lon):
            for p in pd.values():
                nn.init.trunc_normal_(p, std=0.02)
        nn.init.trunc_normal_(self.slot, std=0.02)

    def forward(self, latent: torch.Tensor, geometry: TileGeometry) -> dict[str, torch.Tensor]:
        b, t, q, c = latent.shape
        own = torch.arange(t, device=latent.device)[:, None]
        nb = torch.cat([own, geometry.neighbors.to(latent.device).long()], dim=1)  # (T, K+1)
        lat, lon = geometry.lat.float(), geometry.lon.float()
        rel = self.rel(
            offset_features(lat[nb] - lat[:, None], lon[nb] - lon[:, None], max(self.pos_frequencies, 1))
            .to(self.rel.weight.dtype)
        )
        kv = latent[:, nb] + rel[None, :, :, None] + self.slot  # (B, T, K+1, Q, C)
        kv = kv.reshape(b * t, nb.shape[1] * q, c)  # sizes spelt out: a reshape cannot infer -1 for 0 samples
        tile = self.tile_pos(sphere_features(lat, lon, self.pos_frequencies).to(self.tile_pos.weight.dtype))  # (T, C)
        queries, sizes = [], []
        for f in self.fields:
            n = f.name
            qf = (self.level[n][:, None, None, None] + self.pos_t[n][None, :, None, None]
                  + self.pos_lat[n][None, None, :, None] + self.pos_lon[n][None, None, None, :])  # fmt: skip
            queries.append(qf.reshape(-1, c))
            sizes.append(queries[-1].shape[0])
        qs = torch.cat(queries)[None] + tile[:, None]  # (T, S_all, C)
        x = qs.expand(b, -1, -1, -1).reshape(b * t, qs.shape[1], c)
        for block in self.blocks:
            x = block(x, kv, None)
        out = {}
        for f, xf in zip(self.fields, x.split(sizes, dim=1)):
            ens = self.tail[f.name](xf)  # (B*T, E, S_f, D)
            e = ens.shape[1]
            shape = (f.num_levels, self.nt_out, *f.num_tokens[1:], *f.token_size)
            out[f.name] = ens.reshape(b, t, e, *shape).transpose(1, 2)  # (B, E, T, L, nt_out, ...)
        return out
