"""Point-slot padding and missing values: :func:`model.multiformer.padding_masks` against a NumPy reference,
per-value loss weights against a plain computation, and a Multiformer whose real tokens do not see what padding
slots, NaN values or padded tokens hold."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from model import Multiformer, MultiformerConfig, multiformer_loss
from model._config import ModelConfigError
from model.losses import fair_crps, lat_weighted_mse, member_mse
from model.multiformer import padding_masks

from .synthetic import multiformer_batch


def _slots(b: int, nlat: int, nlon: int, k: int, seed: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.rand(b, nlat, nlon, k, generator=g) < 0.6


def test_padding_masks_equal_numpy():
    g = torch.Generator().manual_seed(1)
    B, L, nt, nlat, nlon, tt, tlat, tlon = 3, 2, 2, 3, 4, 2, 2, 3
    tokens = torch.randn(B, L, nt, nlat, nlon, tt, tlat, tlon, generator=g)
    tokens[0, 1, 0, 2, 1] = float("nan")  # a whole token of NaN (land)
    tokens[1, 0, 1, 0, 0, 1, 0, 2] = float("nan")
    slot = _slots(B, nlat, nlon, tlat * tlon, 2)
    slot[2] = False  # a sample with no point at all
    out = padding_masks(tokens, slot)
    s = slot.numpy().reshape(B, 1, 1, nlat, nlon, 1, tlat, tlon)
    want_values = np.isfinite(tokens.numpy()) & s
    assert np.array_equal(out["valid_values"].numpy(), want_values)
    want_valid = want_values.reshape(B, L, nt, nlat, nlon, -1).any(-1)
    want_valid[2] = True  # no valid token at all: every token stays a key
    assert np.array_equal(out["valid"].numpy(), want_valid)
    assert not out["valid"][0, 1, 0, 2, 1]  # the NaN token is padding
    assert padding_masks(tokens)["valid_values"].sum() == np.isfinite(tokens.numpy()).sum()
    with pytest.raises(ModelConfigError, match=r"slot_valid \(B, nlat, nlon, K\)"):
        padding_masks(tokens, slot[..., :-1])
    with pytest.raises(ModelConfigError, match="expected tokens"):
        padding_masks(tokens[0])


@pytest.mark.parametrize("loss", [member_mse, fair_crps])
def test_per_value_weights_equal_a_plain_weighted_mean(loss):
    g = torch.Generator().manual_seed(3)
    N, E, S, D = 2, 4, 5, 6
    ens = torch.randn(N, E, S, D, generator=g, requires_grad=True)
    target = torch.randn(N, S, D, generator=g)
    w = (torch.rand(N, S, D, generator=g) < 0.5).float() * torch.rand(N, S, D, generator=g)
    target[w == 0] = float("nan")  # values that do not count may be NaN
    got = loss(ens, target, w)
    e, t, ww = ens.detach().double().numpy(), target.double().numpy(), w.double().numpy()
    if loss is member_mse:
        per = ((e - t[:, None]) ** 2).mean(1)
    else:
        per = np.abs(e - t[:, None]).mean(1) - np.abs(e[:, :, None] - e[:, None]).sum((1, 2)) / (2 * E * (E - 1))
    keep = ww > 0
    want = (np.where(keep, per, 0) * ww).sum() / ww.sum()
    assert got.item() == pytest.approx(want, rel=1e-5)
    got.backward()
    assert torch.isfinite(ens.grad).all()
    assert (ens.grad.permute(0, 2, 3, 1)[w == 0] == 0).all()  # no gradient where nothing counts
    # a token weight repeated over its values gives the per-token loss
    wt = torch.rand(N, S, generator=g)
    t2 = torch.randn(N, S, D, generator=g)
    assert loss(ens, t2, wt).item() == pytest.approx(loss(ens, t2, wt[..., None].expand(N, S, D)).item(), rel=1e-5)
    lat = torch.rand(N, S, generator=g) * 80
    assert lat_weighted_mse(ens, t2, wt, lat).item() == pytest.approx(
        lat_weighted_mse(ens, t2, wt[..., None].expand(N, S, D), lat).item(), rel=1e-5)


def test_multiformer_ignores_padding_slots_nans_and_padded_tokens():
    torch.manual_seed(0)
    cfg = MultiformerConfig.tiny()
    model = Multiformer(cfg).eval()
    g = torch.Generator().manual_seed(4)
    batch = multiformer_batch(cfg, 2, g)
    for spec in cfg.fields:
        item = batch[spec.name]
        _, nlat, nlon = spec.num_tokens
        _, tlat, tlon = spec.token_size
        slot = _slots(2, nlat, nlon, tlat * tlon, 6)
        slot[:, 0, 0] = True
        item["tokens"][0, 0, 0, 1, 1, 0, 0, 0] = float("nan")
        pads = padding_masks(item["tokens"], slot)
        item.update(pads)
        item["target"] = item["tokens"]
    with torch.no_grad():
        ref = model(batch)
        loss, _ = multiformer_loss(ref, batch)
        assert torch.isfinite(loss) and loss > 0
        for spec in cfg.fields:  # change what padding slots, NaNs and padded tokens hold
            item = batch[spec.name]
            item["tokens"] = torch.where(item["valid_values"], item["tokens"], torch.tensor(1e4))
            item["target"] = torch.where(item["valid_values"], item["target"], torch.tensor(float("nan")))
        got = model(batch)
        loss2, _ = multiformer_loss(got, batch)
    for spec in cfg.fields:
        keep = batch[spec.name]["valid"][:, None].expand_as(ref[spec.name][..., 0, 0, 0])
        torch.testing.assert_close(got[spec.name][keep], ref[spec.name][keep], rtol=1e-5, atol=1e-5)
    assert loss2.item() == pytest.approx(loss.item(), rel=1e-5)
    bad = dict(batch)
    bad[cfg.fields[0].name] = {**batch[cfg.fields[0].name], "valid_values": torch.ones(3, 3, dtype=torch.bool)}
    with pytest.raises(ModelConfigError, match=r"\['valid_values'\]: expected a bool tensor broadcastable"):
        model(bad)
