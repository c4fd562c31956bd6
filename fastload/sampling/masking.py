"""Token masks for masked-token training, built vectorised on any torch device and reproducible per step.

Why this exists: AtmoRep builds its masks per sample and per level in Python loops with an unseeded generator, so
runs cannot be repeated and masking shows up in the data loader's time. Here a batch's masks come from one torch
generator seeded by ``(seed, rank, step)`` (so a resumed run or another rank count draws exactly what it should),
with no loop over tokens or samples, on the device the batch lives on.

Strategies (:class:`MaskingConfig`):

- ``"BERT"`` (AtmoRep's): per sample and level a ratio ``r ~ U(0, rate)``; ``ceil(r * tokens)`` tokens chosen at
  random are masked. Of those, independently, a fraction ``frac_zero`` is set to zero (the mean of normalised
  data), a fraction ``frac_noise`` is blended toward zero with noise ``(1 - w) x + noise_scale * std * N(0, 1)``
  (``w ~ U(0, 1)`` per token, ``std`` the batch's per-level standard deviation), and a fraction ``frac_coarse`` is
  resampled at ``1 / coarse_factor`` spatial resolution and back (linear in latitude and longitude, cell centres
  aligned, as ``interpolate(align_corners=False)``; a NaN point spreads only to the values that depend on it), in
  that order. On an accelerator every token is corrupted and the masked ones are selected with ``where``, so no
  tensor's shape depends on the mask and nothing waits for the device's queued work;
- ``"forecast"``: the last ``forecast_tokens`` time tokens of every level are masked (zeroed); at least one
  time token stays as context (``forecast_tokens < nt``);
- ``"temporal_interpolation"``: ``interp_tokens`` time tokens in the middle are masked (zeroed); a token before
  and one after stay (``interp_tokens <= nt - 2``);
- ``"identity"``: nothing is masked.

With ``synced``, every field and level of a sample shares one token mask (fields must have equal ``num_tokens``).
Token tensors have the gather layout ``(B, L, nt, nlat, nlon, tt, tlat, tlon)``; masks are ``(B, L, nt, nlat,
nlon)`` bool.
"""

from __future__ import annotations

import dataclasses
import functools
import math
from collections.abc import Mapping
from typing import Any, Literal

import numpy as np
import torch

from ..errors import ConfigError

__all__ = ["MaskingConfig", "MaskedField", "as_masking_config", "mask_generator", "make_masks", "mask_batch",
           "STRATEGIES"]

STRATEGIES = ("BERT", "forecast", "temporal_interpolation", "identity")


@dataclasses.dataclass(frozen=True, kw_only=True, slots=True)
class MaskingConfig:
    """How tokens are masked for training."""

    strategy: Literal["BERT", "forecast", "temporal_interpolation", "identity"] = "BERT"
    """Which tokens are masked (see the module docstring)."""
    rate: float = 0.5
    """BERT: the per-sample masking ratio is drawn from U(0, rate)."""
    frac_zero: float = 0.9
    """BERT: fraction of masked tokens set to zero."""
    frac_noise: float = 0.1
    """BERT: fraction of masked tokens blended toward zero with noise."""
    frac_coarse: float = 0.05
    """BERT: fraction of masked tokens resampled at a coarser resolution."""
    noise_scale: float = 0.1
    """BERT: noise amplitude in units of the data's standard deviation (AtmoRep's 0.1)."""
    coarse_factor: int = 2
    """BERT: spatial coarsening factor of the resampled tokens."""
    forecast_tokens: int = 1
    """forecast: how many of the last time tokens are masked; fewer than every field's ``nt`` (checked when the
    Loader is made, where the token geometry is known)."""
    interp_tokens: int = 1
    """temporal_interpolation: how many middle time tokens are masked; at most ``nt - 2``."""
    synced: bool = False
    """Share one mask across the fields (and levels) of a sample."""

    def __post_init__(self) -> None:
        if self.strategy not in STRATEGIES:
            raise ConfigError(f"masking.strategy: expected one of {list(STRATEGIES)}, got {self.strategy!r}")
        for key in ("rate", "frac_zero", "frac_noise", "frac_coarse"):
            v = getattr(self, key)
            if isinstance(v, bool) or not isinstance(v, (int, float)) or not 0.0 <= v <= 1.0:
                raise ConfigError(f"masking.{key}: expected a number in [0, 1], got {v!r}")
        if isinstance(self.noise_scale, bool) or not isinstance(self.noise_scale, (int, float)) \
                or not (self.noise_scale >= 0 and math.isfinite(self.noise_scale)):
            raise ConfigError(f"masking.noise_scale: expected a finite number >= 0, got {self.noise_scale!r}")
        for key in ("coarse_factor", "forecast_tokens", "interp_tokens"):
            v = getattr(self, key)
            if isinstance(v, bool) or not isinstance(v, int) or v < 1:
                raise ConfigError(f"masking.{key}: expected an integer >= 1, got {v!r}")
        if not isinstance(self.synced, bool):
            raise ConfigError(f"masking.synced: expected true or false, got {self.synced!r}")

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


def as_masking_config(masking: Any, what: str = "masking") -> MaskingConfig | None:
    """``masking`` as a :class:`MaskingConfig` (None stays None): a MaskingConfig, a mapping of its fields
    (``{"strategy": "forecast", "forecast_tokens": 2}``) or a strategy name (``"BERT"``, its defaults).

    Raises :class:`ConfigError` naming ``what`` for anything else, an unknown key or a bad value.
    """
    if masking is None or isinstance(masking, MaskingConfig):
        return masking
    accepted = (f"a fastload.MaskingConfig, a mapping of its fields {[f.name for f in dataclasses.fields(MaskingConfig)]}"
                f" or a strategy name {list(STRATEGIES)}")
    if isinstance(masking, str):
        if masking not in STRATEGIES:
            raise ConfigError(f"{what}: unknown strategy {masking!r}; expected {accepted}")
        return MaskingConfig(strategy=masking)
    if isinstance(masking, Mapping):
        known = {f.name for f in dataclasses.fields(MaskingConfig)}
        unknown = sorted(map(repr, set(masking) - known))
        if unknown:
            raise ConfigError(f"{what}: unknown key(s) {', '.join(unknown)}; MaskingConfig fields are {sorted(known)}")
        return MaskingConfig(**masking)
    raise ConfigError(f"{what}: expected {accepted}, got {type(masking).__name__} {masking!r}")


@dataclasses.dataclass(frozen=True, slots=True, eq=False)
class MaskedField:
    """One field of a masked batch."""

    source: torch.Tensor
    """Model input: the tokens with the masked ones altered, ``(B, L, nt, nlat, nlon, tt, tlat, tlon)``."""
    mask: torch.Tensor
    """``(B, L, nt, nlat, nlon)`` bool: True where a token is masked (the loss looks there)."""
    target: torch.Tensor
    """The unaltered tokens (the tensor passed in; not copied)."""


def mask_generator(seed: int, rank: int, step: int, device: Any = "cpu") -> torch.Generator:
    """A torch generator on ``device`` seeded from ``(seed, rank, step)`` through NumPy's SeedSequence."""
    for key, v in (("seed", seed), ("rank", rank), ("step", step)):
        if isinstance(v, bool) or not isinstance(v, (int, np.integer)) or v < 0:
            raise ConfigError(f"mask_generator: {key} must be an integer >= 0, got {v!r}")
    state = np.random.SeedSequence([int(seed), int(rank), int(step)]).generate_state(2, np.uint32)
    g = torch.Generator(device=torch.device(device))
    g.manual_seed((int(state[0]) << 31 | int(state[1])) & ((1 << 63) - 1))
    return g


def _bert_mask(shape: tuple[int, ...], rate: float, g: torch.Generator, device: Any) -> torch.Tensor:
    """``(B, L, nt, nlat, nlon)`` mask: per (sample, level) ``ceil(U(0, rate) * tokens)`` tokens at random."""
    B, L = shape[:2]
    n_tok = int(np.prod(shape[2:]))
    ratio = torch.rand((B, L), generator=g, device=device) * rate
    n_masked = torch.ceil(ratio * n_tok)
    order = torch.rand((B, L, n_tok), generator=g, device=device).argsort(dim=-1).argsort(dim=-1)
    return (order < n_masked[..., None]).reshape(shape)


def _time_mask(shape: tuple[int, ...], first: int, count: int, device: Any) -> torch.Tensor:
    m = torch.zeros(shape, dtype=torch.bool, device=device)
    m[:, :, first:first + count] = True
    return m


def make_masks(cfg: MaskingConfig, shapes: Mapping[str, tuple[int, ...]], g: torch.Generator,
               device: Any = "cpu") -> dict[str, torch.Tensor]:
    """Token masks ``(B, L, nt, nlat, nlon)`` per field, for the token shapes given (drawn from ``g``)."""
    out: dict[str, torch.Tensor] = {}
    shapes = {k: tuple(int(v) for v in s) for k, s in shapes.items()}
    if cfg.synced and (len({s[0] for s in shapes.values()}) > 1 or len({s[2:] for s in shapes.values()}) > 1):
        raise ConfigError(f"masking.synced needs equal batch size and num_tokens for all fields, got {shapes}")
    shared = None
    for name, shape in shapes.items():
        if len(shape) != 5:
            raise ConfigError(f"masking: field {name!r}: expected token shape (B, L, nt, nlat, nlon), got {shape}")
        nt = shape[2]
        if cfg.strategy == "identity":
            m = torch.zeros(shape, dtype=torch.bool, device=device)
        elif cfg.strategy == "forecast":
            k = cfg.forecast_tokens
            if k >= nt:  # every time token masked: nothing left to forecast from
                raise ConfigError(f"masking.forecast_tokens = {k} {'>' if k > nt else '=='} nt = {nt} of field "
                                  f"{name!r} leaves no context (every time token masked); "
                                  + (f"expected at most {nt - 1}" if nt > 1 else "a forecast needs nt >= 2"))
            m = _time_mask(shape, nt - cfg.forecast_tokens, cfg.forecast_tokens, device)
        elif cfg.strategy == "temporal_interpolation":
            if cfg.interp_tokens > nt - 2:
                raise ConfigError(f"masking.interp_tokens = {cfg.interp_tokens} leaves no context in nt = {nt} "
                                  f"time tokens of field {name!r} (one unmasked token before and after); "
                                  + (f"expected at most {nt - 2}" if nt > 2 else "interpolation needs nt >= 3"))
            m = _time_mask(shape, nt // 2 - cfg.interp_tokens // 2, cfg.interp_tokens, device)
        elif cfg.synced:
            if shared is None:
                shared = _bert_mask((shape[0], 1, *shape[2:]), cfg.rate, g, device)
            m = shared.expand(shape).clone()
        else:
            m = _bert_mask(shape, cfg.rate, g, device)
        out[name] = m
    return out


@functools.lru_cache(maxsize=64)
def _resample_taps(n: int, factor: int, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    """Taps of resampling ``n`` points to ``ceil(n / factor)`` and back, each way linearly with cell centres aligned
    (``interpolate(mode="linear", align_corners=False)``): ``(taps, n)`` indices and float32 weights, so that output
    ``i`` is ``sum_k weight[k, i] * x[index[k, i]]``. Only points of non-zero weight are taps (unused slots repeat a
    tap with weight 0), so a NaN spreads only to the outputs that depend on it. Cached per device: copying the
    tables to an accelerator on every call would wait for its queued work."""

    def linear(n_in: int, n_out: int) -> np.ndarray:  # (n_out, n_in) float64 matrix
        src = np.maximum((np.arange(n_out) + 0.5) * (n_in / n_out) - 0.5, 0.0)
        i0 = np.minimum(np.floor(src).astype(np.int64), n_in - 1)
        i1 = np.minimum(i0 + 1, n_in - 1)
        w1 = src - i0
        a = np.zeros((n_out, n_in))
        np.add.at(a, (np.arange(n_out), i0), 1.0 - w1)
        np.add.at(a, (np.arange(n_out), i1), w1)
        return a

    small = max(1, -(-n // factor))
    a = linear(small, n) @ linear(n, small)  # (n, n)
    nz = np.abs(a) > 1e-9  # a weight of 1e-16 is rounding in the product, not a dependence
    taps = int(nz.sum(axis=1).max())
    index = np.empty((taps, n), np.int64)
    weight = np.zeros((taps, n), np.float32)
    for i in range(n):
        cols = np.flatnonzero(nz[i])
        index[:, i] = cols[0]
        index[:len(cols), i] = cols
        weight[:len(cols), i] = a[i, cols]
    return torch.from_numpy(index).to(device), torch.from_numpy(weight).to(device)


def _coarsen(tokens: torch.Tensor, factor: int) -> torch.Tensor:
    """Resample ``(K, tt, tlat, tlon)`` tokens at ``1/factor`` spatial resolution and back, linearly in latitude and
    longitude (time unchanged), in float32; a few gathers and multiply-adds per axis, the same cost for every token,
    so an accelerator can coarsen every token of a batch and select with ``where`` (no data-dependent shape)."""
    x = tokens.float()
    for dim in (-2, -1):
        n = x.shape[dim]
        if n == 1:
            continue
        index, weight = _resample_taps(n, factor, x.device)
        view = (-1, 1) if dim == -2 else (-1,)
        out = x.index_select(dim, index[0]).mul_(weight[0].view(view))
        for k in range(1, index.shape[0]):
            out.add_(x.index_select(dim, index[k]).mul_(weight[k].view(view)))
        x = out
    return x.to(tokens.dtype)


def _level_std(x: torch.Tensor, *, may_branch: bool = False) -> torch.Tensor:
    """Population standard deviation per level (axis 1) over the finite values of the batch, float32.

    Reduced over each (sample, level)'s contiguous values first (a reduction over axes 0 and 2.. at once ran at
    0.5 GB/s on the CPU), counted in int32. With ``may_branch`` (the CPU, where a branch on a value waits for nothing) a batch whose
    values are all finite skips the finite-value masks and their batch-sized temporaries (fresh pages the CPU faults in
    on every call; ``var_mean`` ran at 0.45 GB/s)."""
    b, n_lev = x.shape[:2]
    if b == 0:
        return torch.zeros(n_lev, dtype=torch.float32, device=x.device)
    xf = x.reshape(b, n_lev, math.prod(x.shape[2:]))
    xf = xf if xf.dtype == torch.float32 else xf.float()
    if may_branch:
        mean = xf.sum(-1) / xf.shape[-1]  # (B, L)
        if bool(torch.isfinite(mean).all()):  # every value finite (else the masked way below; float32 sums: values
            # beyond ~1e19 overflow the squares in either way)
            # squared deviations a sample at a time: a sample-sized temporary, not a batch-sized one
            var = torch.stack([torch.linalg.vector_norm(xf[i] - mean[i, :, None], dim=-1) for i in range(b)])
            var = var * var / xf.shape[-1]
            if bool(torch.isfinite(var).all()):
                # rows of equal size: the total variance is the rows' mean variance plus the variance of their means
                return torch.sqrt(var.mean(0) + torch.var(mean, dim=0, correction=0))
    ok = (xf - xf) == 0  # finite (NaN and inf give NaN); 3x faster than isfinite on the CPU
    n = ok.sum(-1, dtype=torch.int32).sum(0).clamp(min=1)  # an int64 count of bools ran 25x slower
    zero = torch.zeros((), dtype=xf.dtype, device=xf.device)
    mean = torch.where(ok, xf, zero).sum(-1).sum(0) / n
    d = torch.where(ok, xf - mean[None, :, None], zero)
    return torch.sqrt((d * d).sum(-1).sum(0) / n)


def _apply_bert(cfg: MaskingConfig, x: torch.Tensor, mask: torch.Tensor, g: torch.Generator) -> torch.Tensor:
    """BERT's corruption of the masked tokens: a fraction set to zero, a fraction blended toward zero with noise
    scaled by the level's std, a fraction resampled coarser (drawn independently, applied in that order). On the
    CPU the selected tokens are gathered (:func:`_apply_bert_sparse`); on an accelerator every token is computed and
    the selection is a ``where`` (:func:`_apply_bert_dense`): no shape depends on the mask, so nothing waits for the
    device (the gathering way made 8 host syncs per field, each waiting for the whole queued step)."""
    if x.device.type == "cpu":
        return _apply_bert_sparse(cfg, x, mask, g)
    return _apply_bert_dense(cfg, x, mask, g)


def _bert_draws(cfg: MaskingConfig, mask: torch.Tensor, g: torch.Generator) -> tuple[torch.Tensor, ...]:
    """(masked, zero, noise, coarse, w) per token ``(B, L, N)``: which tokens each corruption takes, and the blend
    weights; the same draws, in the same order, for both ways (the noise drawn after them is not: the gathering way
    draws it for the chosen tokens only, so the next field's draws differ between the ways)."""
    m = mask.reshape(mask.shape[0], mask.shape[1], math.prod(mask.shape[2:]))
    u = torch.rand((3, *m.shape), generator=g, device=m.device)
    zero = m & (u[0] < cfg.frac_zero)
    noise = m & (u[1] < cfg.frac_noise)
    coarse = m & (u[2] < cfg.frac_coarse)
    w = torch.rand(m.shape, generator=g, device=m.device)
    return m, zero, noise, coarse, w


def _apply_bert_dense(cfg: MaskingConfig, x: torch.Tensor, mask: torch.Tensor, g: torch.Generator) -> torch.Tensor:
    B, L = x.shape[:2]
    tok_shape = x.shape[5:]
    m, zero, noise, coarse, w = _bert_draws(cfg, mask, g)

    def each(sel: torch.Tensor) -> torch.Tensor:
        return sel[..., None, None, None]

    # about three batch-sized tensors alive at once: the result, the noise and one temporary of a stage; a stage
    # the settings turn off is skipped (a host-side decision: no sync)
    out = torch.where(each(zero), torch.zeros((), dtype=x.dtype, device=x.device),
                      x.reshape(B, L, m.shape[-1], *tok_shape))
    if cfg.frac_noise > 0:
        eps = torch.randn((*m.shape, *tok_shape), generator=g, device=x.device)  # every token's noise: no sync
        eps.mul_(each((cfg.noise_scale * _level_std(x))[None, :, None].expand(m.shape)))
        eps.addcmul_(each(1.0 - w), out)  # (1 - w) x + amp * eps
        out = torch.where(each(noise), eps.to(x.dtype), out)
        del eps
    if cfg.frac_coarse > 0:
        coarsened = _coarsen(out.reshape(-1, *tok_shape), cfg.coarse_factor).reshape(out.shape)
        out = torch.where(each(coarse), coarsened, out)
    return out.reshape(x.shape)


def _apply_bert_sparse(cfg: MaskingConfig, x: torch.Tensor, mask: torch.Tensor, g: torch.Generator) -> torch.Tensor:
    dev = x.device
    B, L = x.shape[:2]
    tok_shape = x.shape[5:]
    m, zero, noise, coarse, w = _bert_draws(cfg, mask, g)
    # the copy and the zeroing in one pass (a sync-free where; the ways below gather, which syncs an accelerator)
    flat = torch.where(zero[..., None, None, None], torch.zeros((), dtype=x.dtype, device=dev),
                       x.reshape(B, L, m.shape[-1], *tok_shape))  # (B, L, N, tt, tlat, tlon)
    src = flat.reshape(x.shape)  # a view of flat
    n_noise = int(noise.sum())  # sync point: the noise draw's size depends on the mask
    if n_noise:
        std = _level_std(x, may_branch=True)  # (L,) float32, NaN-aware
        amp = (cfg.noise_scale * std)[None, :, None].expand(m.shape)[noise]
        eps = torch.randn((n_noise, *tok_shape), generator=g, device=dev)
        blended = (1.0 - w[noise])[:, None, None, None] * flat[noise].float() + amp[:, None, None, None] * eps
        flat[noise] = blended.to(src.dtype)
    if coarse.any():  # sync point
        flat[coarse] = _coarsen(flat[coarse], cfg.coarse_factor)
    return src


def mask_batch(cfg: MaskingConfig, fields: Mapping[str, torch.Tensor], *, seed: int, rank: int,
               step: int) -> dict[str, MaskedField]:
    """Mask a batch of token tensors (``(B, L, nt, nlat, nlon, tt, tlat, tlon)`` per field, any device).

    Deterministic in ``(seed, rank, step)`` and the device type; the inputs are not modified.
    """
    if not fields:
        return {}
    devices = {t.device for t in fields.values()}
    if len(devices) != 1:
        raise ConfigError(f"mask_batch: all fields must be on one device, got {sorted(map(str, devices))}")
    dev = devices.pop()
    for name, t in fields.items():
        if t.ndim != 8:
            raise ConfigError(f"mask_batch: field {name!r} has shape {tuple(t.shape)}; expected (B, L, nt, nlat, "
                              f"nlon, tt, tlat, tlon)")
    g = mask_generator(seed, rank, step, dev)
    masks = make_masks(cfg, {k: tuple(t.shape[:5]) for k, t in fields.items()}, g, dev)
    out: dict[str, MaskedField] = {}
    for name, x in fields.items():
        m = masks[name]
        if cfg.strategy == "BERT":
            src = _apply_bert(cfg, x, m, g)
        else:
            src = x.masked_fill(m[..., None, None, None], 0)
        out[name] = MaskedField(source=src, mask=m, target=x)
    return out
