"""Losses against plain NumPy references: values, masking, degenerate cases."""

from __future__ import annotations

import itertools

import numpy as np
import pytest
import torch

from model.losses import (
    ensemble_statistics,
    ensemble_stats_loss,
    fair_crps,
    lat_weighted_mse,
    member_mse,
    multiformer_loss,
    token_loss,
)


def _data(seed=0, n=3, e=5, s=7, d=4):
    g = torch.Generator().manual_seed(seed)
    ens = torch.randn(n, e, s, d, generator=g, dtype=torch.float64)
    target = torch.randn(n, s, d, generator=g, dtype=torch.float64)
    weight = (torch.rand(n, s, generator=g) < 0.6).double()
    weight[0, 0] = 1.0
    return ens, target, weight


def _ref_reduce(per_value, w):
    per_token = per_value.mean(-1)
    return (per_token * w).sum() / w.sum()


def test_member_mse_matches_numpy():
    ens, target, w = _data()
    e, t, wn = ens.numpy(), target.numpy(), w.numpy()
    ref = _ref_reduce(((e - t[:, None]) ** 2).mean(1), wn)
    assert member_mse(ens, target, w).item() == pytest.approx(ref, rel=1e-6)


def test_fair_crps_matches_pairwise_definition():
    ens, target, w = _data(1)
    e, t, wn = ens.numpy(), target.numpy(), w.numpy()
    m = e.shape[1]
    skill = np.abs(e - t[:, None]).mean(1)
    pairs = sum(np.abs(e[:, i] - e[:, j]) for i, j in itertools.product(range(m), range(m)))
    ref = _ref_reduce(skill - pairs / (2 * m * (m - 1)), wn)
    assert fair_crps(ens, target, w).item() == pytest.approx(ref, rel=1e-6)


def test_fair_crps_of_identical_members_is_mae():
    _, target, w = _data(2)
    ens = target.unsqueeze(1).expand(-1, 4, -1, -1) + 0.5
    assert fair_crps(ens, target, w).item() == pytest.approx(0.5, rel=1e-9)


def test_stats_loss_matches_numpy():
    ens, target, w = _data(3)
    e, t, wn = ens.numpy(), target.numpy(), w.numpy()
    mu, sigma = e.mean(1), e.std(1, ddof=1) + 1e-4
    ref = _ref_reduce(1 - np.exp(-0.5 * ((t - mu) / sigma) ** 2) + 0.3 * sigma, wn)
    assert ensemble_stats_loss(ens, target, w, spread_weight=0.3).item() == pytest.approx(ref, rel=1e-6)


def test_lat_weighted_mse_matches_numpy():
    ens, target, w = _data(4)
    lat = torch.linspace(-80, 80, ens.shape[2], dtype=torch.float64).expand(ens.shape[0], -1)
    e, t, wn = ens.numpy(), target.numpy(), w.numpy()
    ww = wn * np.cos(np.deg2rad(lat.numpy()))
    ref = _ref_reduce((e.mean(1) - t) ** 2, ww)
    assert lat_weighted_mse(ens, target, w, lat).item() == pytest.approx(ref, rel=1e-6)


@pytest.mark.parametrize("kind", ["mse", "stats", "crps", "lat_mse"])
def test_zero_weight_tokens_do_not_count_even_if_nan(kind):
    ens, target, w = _data(5)
    lat = torch.zeros(w.shape, dtype=torch.float64)
    base = token_loss(ens, target, w, {kind: 1.0}, lat=lat)
    ens2, target2, lat2 = ens.clone(), target.clone(), lat.clone()
    off = w == 0
    target2[off] = float("nan")
    lat2[off] = float("nan")
    ens2.permute(0, 2, 1, 3)[off] = 1e6
    ens2.requires_grad_(True)
    loss = token_loss(ens2, target2, w, {kind: 1.0}, lat=lat2)
    assert loss.item() == pytest.approx(base.item(), rel=1e-12)
    loss.backward()
    assert torch.isfinite(ens2.grad).all()
    assert (ens2.grad.permute(0, 2, 1, 3)[off] == 0).all()


def test_no_counted_token_gives_zero_not_nan():
    ens, target, w = _data(6)
    assert token_loss(ens, target, torch.zeros_like(w), {"mse": 1, "crps": 1}).item() == 0.0


def test_bad_inputs_raise():
    ens, target, w = _data()
    with pytest.raises(ValueError, match="unknown loss"):
        token_loss(ens, target, w, {"mae": 1.0})
    with pytest.raises(ValueError, match=">= 2 members"):
        fair_crps(ens[:, :1], target, w)
    with pytest.raises(ValueError, match="lat_mse"):
        token_loss(ens, target, w, {"lat_mse": 1.0})
    with pytest.raises(ValueError, match="expected ens"):
        member_mse(ens, target[:, :-1], w)


def test_multiformer_loss_weights_fields_and_masks():
    g = torch.Generator().manual_seed(0)
    shape = (2, 1, 2, 1, 2, 1, 2, 2)  # (B, L, nt, nlat, nlon, tt, tlat, tlon)
    outputs, batch = {}, {}
    for f in ("a", "b"):
        tokens = torch.randn(shape, generator=g)
        mask = torch.rand(shape[:5], generator=g) < 0.5
        mask[0, 0, 0, 0, 0] = True
        batch[f] = {"tokens": tokens, "mask": mask, "meta": {"lat": torch.zeros(shape[:5])}}
        outputs[f] = torch.randn(shape[0], 3, *shape[1:], generator=g)
    total, per_field = multiformer_loss(outputs, batch, field_weights={"a": 2.0, "b": 0.5})
    for f in ("a", "b"):
        ens = outputs[f].reshape(2, 3, 4, 4).numpy()
        t = batch[f]["tokens"].reshape(2, 4, 4).numpy()
        m = batch[f]["mask"].reshape(2, 4).numpy()
        ref = ((ens - t[:, None]) ** 2).mean(1).mean(-1)[m].mean()
        assert per_field[f].item() == pytest.approx(ref, rel=1e-5)
    assert total.item() == pytest.approx(2.0 * per_field["a"].item() + 0.5 * per_field["b"].item(), rel=1e-6)


def test_ensemble_statistics():
    ens, _, _ = _data(7)
    mean, spread = ensemble_statistics(ens)
    e = ens.numpy()
    np.testing.assert_allclose(mean.numpy(), e.mean(1), rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(spread.numpy(), e.std(1, ddof=1), rtol=1e-5)
    assert (ensemble_statistics(ens[:, :1])[1] == 0).all()
