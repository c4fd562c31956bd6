"""Losses on ensemble predictions of masked tokens: per-member MSE, ensemble statistics, fair CRPS, lat-weighted MSE.

Why a module of its own: the Multiformer (masked tokens) and the Forecaster (rollout targets) score predictions the
same way, and the losses are where "only masked, valid tokens count" is enforced, so it is written once and tested.

Every loss takes flattened tensors::

    ens    (N, E, S, D)   E ensemble members' predictions of S tokens of D values each
    target (N, S, D)      the true token values
    weight (N, S)         float, 0 for tokens that do not count (unmasked or padding), else a token weight
        or (N, S, D)      per value: 0 also for values that do not count (a padding slot of a mesh token, NaN)

and returns ``sum(w * per_value_loss) / sum(w)`` over all values, with ``w`` a value's weight: its own, or its
token's repeated over the token's D values (for a token whose values all count that is
``sum_tokens(weight * per_token_loss) / sum(weight)``, ``per_token_loss`` averaged over the D values), and 0
wherever the target is not finite: a NaN target (a store's declared missing value, say a land point of an ocean
field) counts as missing whatever weight it was given, so a token with missing values is scored on the rest.
0 when nothing counts, never NaN from a target. Values with weight 0 contribute nothing and get no gradient,
whatever they hold: both inputs are zeroed there with ``torch.where`` before any arithmetic (no host sync). A NaN
*prediction* where the weight is not 0 still gives NaN (a broken model shows). :func:`multiformer_loss` builds
per-value weights from a batch's ``valid_values`` (:func:`model.multiformer.padding_masks`) too.

- ``mse``: mean over members of the squared error (each member is trained to be a good forecast).
- ``stats``: the ensemble statistics loss: a Gaussian kernel term ``1 - exp(-(y - mu)^2 / (2 sigma^2))`` with the
  ensemble mean ``mu`` and spread ``sigma`` (unbiased std), plus ``spread_weight * sigma`` so that the spread
  cannot grow without bound (AtmoRep's "stats" loss in spirit: a calibrated spread is rewarded, a wide one penalised).
- ``crps``: the fair (unbiased in ensemble size) CRPS, ``mean|x_i - y| - sum_ij |x_i - x_j| / (2 E (E - 1))``,
  the pair sum computed from sorted members in O(E log E).
- ``lat_mse``: squared error of the ensemble mean with ``cos(latitude)`` area weights (needs per-token latitudes).
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

import torch

if TYPE_CHECKING:
    from .multiformer import MultiformerConfig

__all__ = [
    "LOSS_KINDS",
    "ensemble_statistics",
    "member_mse",
    "ensemble_stats_loss",
    "fair_crps",
    "lat_weighted_mse",
    "token_loss",
    "token_weights",
    "multiformer_loss",
]


def ensemble_statistics(ens: torch.Tensor, dim: int = 1) -> tuple[torch.Tensor, torch.Tensor]:
    """Ensemble mean and spread (unbiased standard deviation; 0 for one member) along ``dim``, in float32.

    For Multiformer outputs ``(B, E, L, nt, nlat, nlon, tt, tlat, tlon)`` this gives the predicted tokens and their
    uncertainty, each ``(B, L, nt, nlat, nlon, tt, tlat, tlon)``.
    """
    e = ens.float()
    spread = _std(e, dim) if e.shape[dim] > 1 else torch.zeros_like(e.select(dim, 0))
    return e.mean(dim), spread


def _std(e: torch.Tensor, dim: int) -> torch.Tensor:
    """Unbiased std along ``dim``; of an empty tensor (0 samples) an empty one, without torch's degrees-of-freedom
    warning (it divides the 0 elements by the 0 outputs)."""
    return e.std(dim, correction=1) if e.numel() else e.sum(dim)


def _reduce(per_value: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
    """``per_value`` (N, S, D) -> the mean weighted by ``weight`` (N, S, D), 0 where nothing counts."""
    num = torch.where(weight > 0, per_value * weight, torch.zeros_like(per_value)).sum()
    return num / weight.sum().clamp_min(torch.finfo(weight.dtype).tiny)


def _check(ens: torch.Tensor, target: torch.Tensor, weight: torch.Tensor, min_members: int = 1) -> None:
    if (
        ens.dim() != 4
        or target.shape != (ens.shape[0], *ens.shape[2:])
        or weight.shape not in (ens.shape[:1] + ens.shape[2:3], target.shape)
    ):
        raise ValueError(
            f"losses: expected ens (N, E, S, D), target (N, S, D), weight (N, S) or (N, S, D); got "
            f"{tuple(ens.shape)}, {tuple(target.shape)}, {tuple(weight.shape)}"
        )
    if ens.shape[1] < min_members:
        raise ValueError(
            f"losses: this loss needs an ensemble of >= {min_members} members, got {ens.shape[1]}"
        )


def _clean(
    ens: torch.Tensor, target: torch.Tensor, weight: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """float32 ``(ens, target, weight)``: the weight per value (N, S, D), 0 where the target is not finite, and
    both inputs set to 0 where it is 0 (so NaNs there cannot leak into values or gradients)."""
    w = weight.float()
    if w.dim() == 2:  # a token's weight for each of its values
        w = w[..., None].expand(target.shape)
    w = torch.where(torch.isfinite(target), w, 0.0)
    keep = w > 0  # (N, S, D)
    e = torch.where(keep[:, None], ens.float(), 0.0)
    t = torch.where(keep, target.float(), 0.0)
    return e, t, w


def member_mse(ens: torch.Tensor, target: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
    """Mean over members of the weighted mean squared error."""
    _check(ens, target, weight)
    e, t, w = _clean(ens, target, weight)
    se = (e - t.unsqueeze(1)).square().mean(1)  # (N, S, D)
    return _reduce(se, w)


def ensemble_stats_loss(
    ens: torch.Tensor,
    target: torch.Tensor,
    weight: torch.Tensor,
    spread_weight: float = 1.0,
    eps: float = 1e-4,
) -> torch.Tensor:
    """Gaussian kernel term of the ensemble mean/spread plus ``spread_weight * spread`` (needs >= 2 members)."""
    _check(ens, target, weight, 2)
    e, t, w = _clean(ens, target, weight)
    mu = e.mean(1)
    sigma = _std(e, 1) + eps  # (N, S, D)
    kernel = 1.0 - torch.exp(-0.5 * ((t - mu) / sigma).square())
    return _reduce(kernel + spread_weight * sigma, w)


def fair_crps(ens: torch.Tensor, target: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
    """Fair CRPS of the ensemble (needs >= 2 members)."""
    _check(ens, target, weight, 2)
    e, t, w = _clean(ens, target, weight)
    m = e.shape[1]
    skill = (e - t.unsqueeze(1)).abs().mean(1)  # (N, S, D)
    ranks = torch.arange(1, m + 1, device=e.device, dtype=e.dtype).view(1, m, 1, 1)
    pair_sum = 2.0 * ((2.0 * ranks - m - 1.0) * torch.sort(e, dim=1).values).sum(1)  # sum_ij |x_i - x_j|
    return _reduce(skill - pair_sum / (2.0 * m * (m - 1)), w)


def lat_weighted_mse(
    ens: torch.Tensor, target: torch.Tensor, weight: torch.Tensor, lat: torch.Tensor
) -> torch.Tensor:
    """Squared error of the ensemble mean, weighted by ``cos(lat)`` (``lat`` (N, S) in degrees) and ``weight``."""
    _check(ens, target, weight)
    e, t, w = _clean(ens, target, weight)
    se = (e.mean(1) - t).square()
    coslat = torch.cos(torch.deg2rad(lat.float())).clamp_min(0.0)[..., None]  # (N, S, 1)
    return _reduce(se, torch.where(w > 0, w * coslat, 0.0))


LOSS_KINDS = ("mse", "stats", "crps", "lat_mse")


def token_loss(
    ens: torch.Tensor,
    target: torch.Tensor,
    weight: torch.Tensor,
    kinds: Mapping[str, float],
    *,
    lat: torch.Tensor | None = None,
    spread_weight: float = 1.0,
) -> torch.Tensor:
    """Weighted sum of the losses named in ``kinds`` (``{"mse": 1.0, "crps": 0.5}``), flattened shapes as above."""
    total = ens.new_zeros((), dtype=torch.float32)
    for kind, k in kinds.items():
        if kind == "mse":
            total = total + k * member_mse(ens, target, weight)
        elif kind == "stats":
            total = total + k * ensemble_stats_loss(ens, target, weight, spread_weight)
        elif kind == "crps":
            total = total + k * fair_crps(ens, target, weight)
        elif kind == "lat_mse":
            if lat is None:
                raise ValueError("losses: 'lat_mse' needs per-token latitudes (meta['lat'])")
            total = total + k * lat_weighted_mse(ens, target, weight, lat)
        else:
            raise ValueError(f"losses: unknown loss {kind!r}; expected one of {list(LOSS_KINDS)}")
    return total


def token_weights(
    mask: torch.Tensor | None, valid: torch.Tensor | None, shape: tuple[int, int]
) -> torch.Tensor:
    """Per-token weight (N, S): 1 where masked (all tokens when ``mask`` is None) and valid, else 0."""
    n, s = shape
    w = torch.ones(n, s, dtype=torch.bool) if mask is None else mask.reshape(n, s).bool()
    if valid is not None:
        w = w.to(valid.device) & valid.reshape(n, s).bool()
    return w.float()


def multiformer_loss(
    outputs: Mapping[str, torch.Tensor],
    batch: Mapping[str, Any],
    *,
    kinds: Mapping[str, float] | None = None,
    field_weights: Mapping[str, float] | None = None,
    config: MultiformerConfig | None = None,
    spread_weight: float = 1.0,
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """Loss of Multiformer outputs on the masked, valid tokens of ``batch`` (see :mod:`model.multiformer`).

    Parameters
    ----------
    outputs : mapping
        ``{field: (B, E, L, nt, nlat, nlon, tt, tlat, tlon)}`` as the Multiformer returns.
    batch : mapping
        The batch: per field ``target`` (or ``tokens``), ``mask``, optional ``valid``, ``valid_values``
        (padding slots count for nothing), ``meta['lat']``. NaN targets (missing values) count for nothing, with
        or without ``valid_values``.
    kinds : mapping, optional
        Loss name -> weight; default ``{"mse": 1.0}``.
    field_weights : mapping, optional
        Field name -> weight in the sum; a field it does not name weighs its ``FieldSpec.loss_weight`` in
        ``config`` (1 without ``config``).
    config : MultiformerConfig, optional
        The model's config (``net.config``): each field's default weight is its ``loss_weight``, as
        :meth:`model.Forecaster.rollout_loss` weighs it. Pass it: without it (and without ``field_weights``) every
        field weighs 1 whatever its ``loss_weight``. With it, a field with a ``mask`` but no ``target`` under
        ``mask_input="as_given"`` raises ``ValueError`` (its masked tokens' inputs are not the truth).

    A batch of 0 samples scores 0, connected to ``outputs`` (its backward gives zero gradients), as any batch in
    which nothing counts; a training step should not update on it alone (see ``fastload.Batch``).

    Returns
    -------
    total : Tensor
        ``sum_f field_weight_f * loss_f``, a float32 scalar.
    per_field : dict
        Each field's (unweighted) loss, for logging.
    """
    kinds = {"mse": 1.0} if kinds is None else kinds
    total = None  # made on the losses' device by the first field (a CPU zero moved to the GPU per step would wait)
    per_field = {}
    for f, ens in outputs.items():
        item = batch[f]
        if "target" not in item and item.get("mask") is not None and config is not None \
                and config.mask_input == "as_given":
            raise ValueError(
                f"multiformer_loss: batch[{f!r}] has a 'mask' but no 'target', and the model's mask_input is "
                "'as_given' (the data path zeroed or noised the masked tokens' inputs), so the masked tokens would be "
                "scored against those inputs, not the truth: give the true values as 'target' (model_inputs does)")
        b, e = ens.shape[:2]
        s = math.prod(ens.shape[2:6])
        d = math.prod(ens.shape[6:])
        # sizes spelt out, not -1: a batch of 0 samples has 0 elements, from which reshape cannot infer one
        flat = ens.reshape(b, e, s, d)
        target = item.get("target", item["tokens"]).reshape(b, s, d)
        weight = token_weights(item.get("mask"), item.get("valid"), (b, s)).to(flat.device)
        vv = item.get("valid_values")
        if vv is not None:  # per value: (B, L, nt, nlat, nlon, tt, tlat, tlon) broadcast -> (N, S, D)
            vv = vv.to(flat.device).expand(ens.shape[:1] + ens.shape[2:]).reshape(b, s, d)
            weight = weight[..., None] * vv.float()
        lat = item["meta"]["lat"].reshape(b, s) if "lat" in item.get("meta", {}) else None
        loss = token_loss(flat, target, weight, kinds, lat=lat, spread_weight=spread_weight)
        per_field[f] = loss.detach()
        if field_weights is not None and f in field_weights:
            w = float(field_weights[f])
        else:
            w = 1.0 if config is None else config.field(f).loss_weight
        total = w * loss if total is None else total + w * loss
    return (torch.zeros((), dtype=torch.float32) if total is None else total), per_field
