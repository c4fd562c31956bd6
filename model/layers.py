"""Building blocks shared by the Multiformer and the Forecaster: attention, MLP, adaptive layer norm, embeddings.

Why a separate file: both models are assembled from the same few blocks, and keeping them here keeps each model
file a readable "config -> blocks -> model" story. Everything is plain ``torch.nn`` on single tensors: no
knowledge of fields, batches or devices, and no host syncs, so the blocks run under bf16 autocast,
``torch.compile`` and activation checkpointing unchanged.

Attention goes through :func:`torch.nn.functional.scaled_dot_product_attention`, which picks the flash or
memory-efficient kernel on a GPU. A *key padding mask* (``key_valid``, ``(B, S_k)`` bool, True = a real token)
keeps padded tokens out of every softmax; with no padding pass ``None`` and the flash kernel is used. Every query
should see at least one valid key: the models make sure of it (``model._batch.attention_keys`` keeps every token
of a sample that would have none); a row without one gets whatever the kernel makes of an empty softmax.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.checkpoint import checkpoint

__all__ = [
    "Attention",
    "Checkpointable",
    "RMSNorm",
    "MLP",
    "AdaLNModulation",
    "EnsembleTail",
    "modulate",
    "time_features",
    "sphere_features",
    "offset_features",
    "scalar_embedding",
    "init_linear",
    "NUM_TIME_FEATURES",
    "num_sphere_features",
]

NUM_TIME_FEATURES = 4
"""sin/cos of the time of day and of the time of year."""

DAYS_PER_YEAR = 365.25


def init_linear(module: nn.Module, std: float | None = None) -> None:
    """Truncated-normal weights and zero biases for every ``nn.Linear`` inside ``module``.

    ``std`` defaults to ``fan_in ** -0.5`` (unit-variance outputs for unit-variance inputs; about GPT-2's 0.02
    at width 1024-2048, and large enough that a width-32 test model learns in a few dozen steps).
    """
    for m in module.modules():
        if isinstance(m, nn.Linear):
            s = m.in_features**-0.5 if std is None else std
            nn.init.trunc_normal_(m.weight, std=s, a=-2 * s, b=2 * s)
            if m.bias is not None:
                nn.init.zeros_(m.bias)


class Checkpointable(nn.Module):
    """A block whose ``_run`` is recomputed in the backward pass when ``checkpointing`` is set.

    :func:`model.compile.apply_activation_checkpointing` sets the flag from outside; the state dict keys stay the
    same (no wrapper module), so checkpoints load either way.
    """

    checkpointing: bool = False

    def forward(self, *args: object) -> object:
        if self.checkpointing and torch.is_grad_enabled():
            return checkpoint(self._run, *args, use_reentrant=False)
        return self._run(*args)

    def _run(self, *args: object) -> object:  # pragma: no cover - always overridden
        raise NotImplementedError(f"{type(self).__name__} must define _run")


class RMSNorm(nn.Module):
    """RMS norm whose weight is cast to the input's dtype, so the fused kernel runs under bf16 autocast too
    (``nn.RMSNorm`` with a float32 weight on a bf16 input falls back to the slow path with a warning)."""

    def __init__(self, dim: int, eps: float = 1e-6) -> None:
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.rms_norm(x, (x.shape[-1],), self.weight.to(x.dtype), self.eps)


class Attention(nn.Module):
    """Multi-head attention: self-attention (``kv_dim=None``) or cross-attention from another sequence.

    Parameters
    ----------
    dim : int
        Width of the query stream (and of the output).
    num_heads : int
        Heads; ``num_heads * head_dim`` is the inner width.
    head_dim : int
        Width of one head.
    kv_dim : int, optional
        Width of the key/value stream for cross-attention; ``None`` makes a self-attention with a fused QKV
        projection.
    qk_norm : bool
        RMS-normalise queries and keys per head before the dot product (stabilises bf16 training).
    zero_init_out : bool
        Start the output projection at zero so that the block adds nothing until trained (used for coupling heads,
        so that a model assembled from single-field runs starts out equal to them).
    """

    def __init__(
        self,
        dim: int,
        num_heads: int,
        head_dim: int,
        *,
        kv_dim: int | None = None,
        qk_norm: bool = True,
        zero_init_out: bool = False,
    ) -> None:
        super().__init__()
        inner = num_heads * head_dim
        self.num_heads = num_heads
        self.head_dim = head_dim
        self.is_self = kv_dim is None
        if self.is_self:
            self.qkv = nn.Linear(dim, 3 * inner, bias=False)
        else:
            self.q = nn.Linear(dim, inner, bias=False)
            self.kv = nn.Linear(kv_dim, 2 * inner, bias=False)
        self.q_norm = RMSNorm(head_dim) if qk_norm else nn.Identity()
        self.k_norm = RMSNorm(head_dim) if qk_norm else nn.Identity()
        self.out = nn.Linear(inner, dim, bias=True)
        init_linear(self)
        if zero_init_out:
            nn.init.zeros_(self.out.weight)

    def forward(
        self, x: torch.Tensor, context: torch.Tensor | None = None, key_valid: torch.Tensor | None = None
    ) -> torch.Tensor:
        """``x`` (B, S, dim), ``context`` (B, S_k, kv_dim) or None, ``key_valid`` (B, S_k) bool -> (B, S, dim)."""
        b, s, _ = x.shape
        h, d = self.num_heads, self.head_dim
        if self.is_self:
            q, k, v = self.qkv(x).view(b, s, 3, h, d).unbind(2)  # each (B, S, H, D)
        else:
            assert context is not None, "cross-attention needs a context"
            q = self.q(x).view(b, s, h, d)
            k, v = self.kv(context).view(b, context.shape[1], 2, h, d).unbind(2)
        q = self.q_norm(q).transpose(1, 2)  # (B, H, S, D)
        k = self.k_norm(k).transpose(1, 2)
        v = v.transpose(1, 2)
        mask = None if key_valid is None else key_valid[:, None, None, :]  # (B, 1, 1, S_k), True = attend
        o = F.scaled_dot_product_attention(q, k, v, attn_mask=mask)  # (B, H, S, D)
        return self.out(o.transpose(1, 2).reshape(b, s, h * d))


class MLP(nn.Module):
    """Two-layer feed-forward block with a tanh-approximated GELU."""

    def __init__(self, dim: int, ratio: float, out_dim: int | None = None) -> None:
        super().__init__()
        hidden = max(1, int(round(dim * ratio)))
        self.fc1 = nn.Linear(dim, hidden)
        self.fc2 = nn.Linear(hidden, out_dim or dim)
        init_linear(self)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(F.gelu(self.fc1(x), approximate="tanh"))


def modulate(x: torch.Tensor, shift: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    """Adaptive layer norm's affine step: ``x * (1 + scale) + shift``; shift/scale (B, dim) broadcast over tokens."""
    return x * (1 + scale.unsqueeze(1)) + shift.unsqueeze(1)


class AdaLNModulation(nn.Module):
    """Conditioning vector -> ``chunks`` per-channel vectors (shift, scale, gate, ...), zero-initialised.

    With zero weights every shift, scale and gate starts at 0, so a residual block ``x + gate * f(modulate(..))``
    is exactly the identity at initialisation (DiT's adaLN-Zero).
    """

    def __init__(self, cond_dim: int, dim: int, chunks: int) -> None:
        super().__init__()
        self.chunks = chunks
        self.proj = nn.Linear(cond_dim, chunks * dim)
        nn.init.zeros_(self.proj.weight)
        nn.init.zeros_(self.proj.bias)

    def forward(self, cond: torch.Tensor) -> tuple[torch.Tensor, ...]:
        """``cond`` (B, cond_dim) -> ``chunks`` tensors of shape (B, dim)."""
        return self.proj(F.silu(cond)).chunk(self.chunks, dim=-1)


class EnsembleTail(nn.Module):
    """Hidden states -> ``ensemble_size`` predictions of the flattened token values.

    ``(B, S, dim)`` -> ``(B, E, S, out_dim)``. Members share the first layer and differ in their output rows; their
    spread is what the ensemble losses train.
    """

    def __init__(self, dim: int, out_dim: int, ensemble_size: int) -> None:
        super().__init__()
        self.ensemble_size = ensemble_size
        self.out_dim = out_dim
        self.norm = nn.LayerNorm(dim)
        self.hidden = nn.Linear(dim, dim)
        self.out = nn.Linear(dim, ensemble_size * out_dim)
        init_linear(self)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, s, _ = x.shape
        y = self.out(F.gelu(self.hidden(self.norm(x)), approximate="tanh"))  # (B, S, E * D)
        return y.view(b, s, self.ensemble_size, self.out_dim).transpose(1, 2)  # (B, E, S, D)


def time_features(time_of_day: torch.Tensor, day_of_year: torch.Tensor) -> torch.Tensor:
    """sin/cos of the hour of day (period 24) and the day of year (period 365.25): ``(...,)`` -> ``(..., 4)``.

    A NaN time (a field without a time axis, as the loader reports it) gives zero features: "no time", not
    midnight on 1 January.
    """
    a = time_of_day * (2 * math.pi / 24.0)
    b = day_of_year * (2 * math.pi / DAYS_PER_YEAR)
    f = torch.stack([torch.sin(a), torch.cos(a), torch.sin(b), torch.cos(b)], dim=-1)
    return torch.nan_to_num(f, nan=0.0)


def num_sphere_features(num_frequencies: int) -> int:
    """Width of :func:`sphere_features` for ``num_frequencies`` octaves."""
    return 3 + 4 * num_frequencies


def sphere_features(
    lat: torch.Tensor, lon: torch.Tensor, num_frequencies: int, *, non_finite: str = "propagate"
) -> torch.Tensor:
    """Position on the sphere without seams: ``(...,)`` degrees -> ``(..., 3 + 4 * num_frequencies)``.

    The unit vector ``(cos φ cos λ, cos φ sin λ, sin φ)`` is continuous across the 360° -> 0° seam and the poles;
    sin/cos of ``2**k φ`` and ``2**k λ`` (k = 1..num_frequencies) resolve the few-degree spacing of tokens inside one
    neighborhood. Every term is periodic in longitude, so 359.75° and -0.25° give the same features.

    A place whose ``lat`` or ``lon`` is not finite (NaN, +-inf): ``non_finite="propagate"`` (the default) gives NaN
    features, so a bad place is seen downstream (the Forecaster's tile geometry); ``"zero"`` all-zero features ("no
    position", as :func:`time_features` reads a NaN time) and a zero gradient for both coordinates, for a token
    embedding, where a padding token's NaN coordinates must not reach attention (a zero weight times a NaN value is
    NaN: every other token of the sample would be NaN). Finite places give bit-identical features either way.
    Whether a real token may lack a place is the caller's rule (the Multiformer refuses it:
    :func:`model._batch.encode_fields`).
    """
    if non_finite not in ("propagate", "zero"):
        raise ValueError(f"sphere_features: non_finite: expected 'propagate' or 'zero', got {non_finite!r}")
    if non_finite == "propagate":
        return _sphere_features(lat, lon, num_frequencies)
    ok = torch.isfinite(lat) & torch.isfinite(lon)
    zero = torch.zeros((), dtype=lat.dtype, device=lat.device)
    # the coordinates are replaced before sin/cos, not the features after: a NaN that reaches sin/cos gives a NaN
    # gradient even where a later torch.where drops its value
    out = _sphere_features(torch.where(ok, lat, zero), torch.where(ok, lon, zero.to(lon.dtype)), num_frequencies)
    return torch.where(ok[..., None], out, torch.zeros((), dtype=out.dtype, device=out.device))


def _sphere_features(lat: torch.Tensor, lon: torch.Tensor, num_frequencies: int) -> torch.Tensor:
    """:func:`sphere_features` without a guard: NaN in, NaN out."""
    phi = torch.deg2rad(lat)
    lam = torch.deg2rad(lon)
    feats = [torch.cos(phi) * torch.cos(lam), torch.cos(phi) * torch.sin(lam), torch.sin(phi)]
    for k in range(1, num_frequencies + 1):
        f = float(2**k)
        feats += [torch.sin(f * phi), torch.cos(f * phi), torch.sin(f * lam), torch.cos(f * lam)]
    return torch.stack(feats, dim=-1)


def offset_features(dlat: torch.Tensor, dlon: torch.Tensor, num_frequencies: int) -> torch.Tensor:
    """Relative offset between two places, in degrees: ``(...,)`` -> ``(..., 4 * num_frequencies)``.

    Longitude differences are wrapped to [-180, 180) first, so the tile across the seam is "just east".
    """
    dlon = torch.remainder(dlon + 180.0, 360.0) - 180.0
    feats = []
    for k in range(num_frequencies):
        f = math.pi / 180.0 * 2.0 ** (k - 1)  # periods 720°, 360°, 180°, ... degrees
        feats += [torch.sin(f * dlat), torch.cos(f * dlat), torch.sin(f * dlon), torch.cos(f * dlon)]
    return torch.stack(feats, dim=-1)


def scalar_embedding(t: torch.Tensor, dim: int, max_period: float = 10_000.0) -> torch.Tensor:
    """Sinusoidal embedding of a scalar per sample (a lead time in hours): ``(B,)`` -> ``(B, dim)`` (dim even)."""
    half = dim // 2
    freqs = torch.exp(-math.log(max_period) * torch.arange(half, device=t.device, dtype=torch.float32) / half)
    args = t.float()[:, None] * freqs[None]
    return torch.cat([torch.cos(args), torch.sin(args)], dim=-1)
