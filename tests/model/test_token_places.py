"""Token coordinates: a padding token's NaN lat/lon reaches no other output and no gradient, and a real token
without a finite place is refused by the Multiformer and the Forecaster (review s14 r4 p8)."""

from __future__ import annotations

import copy
import math

import numpy as np
import pytest
import torch

from model import Forecaster, ForecasterConfig, Multiformer, MultiformerConfig, multiformer_loss
from model._config import ModelConfigError
from model.layers import sphere_features

from .synthetic import multiformer_batch

NAN = float("nan")


def _sphere_numpy(lat: np.ndarray, lon: np.ndarray, n: int) -> np.ndarray:
    """The features of finite places in plain NumPy (float64)."""
    phi, lam = np.deg2rad(lat), np.deg2rad(lon)
    feats = [np.cos(phi) * np.cos(lam), np.cos(phi) * np.sin(lam), np.sin(phi)]
    for k in range(1, n + 1):
        feats += [np.sin(2**k * phi), np.cos(2**k * phi), np.sin(2**k * lam), np.cos(2**k * lam)]
    return np.stack(feats, -1)


def test_sphere_features_of_a_non_finite_place_can_be_zero_with_a_zero_gradient():
    lat = torch.tensor([10.0, NAN, 45.5, 3.0, -math.inf, -80.25], dtype=torch.float64, requires_grad=True)
    lon = torch.tensor([359.75, 20.0, NAN, math.inf, 7.0, 181.0], dtype=torch.float64, requires_grad=True)
    f = sphere_features(lat, lon, 3, non_finite="zero")
    finite = np.array([True, False, False, False, False, True])
    plain = sphere_features(lat.detach(), lon.detach(), 3)  # the default: a bad place shows as NaN (tile geometry)
    assert torch.isnan(plain[torch.from_numpy(~finite)]).any(dim=-1).all()
    assert torch.equal(plain[torch.from_numpy(finite)], f.detach()[torch.from_numpy(finite)])
    want = np.zeros((6, 15))
    want[finite] = _sphere_numpy(lat.detach().numpy()[finite], lon.detach().numpy()[finite], 3)
    np.testing.assert_allclose(f.detach().numpy(), want, rtol=0, atol=1e-12)
    assert (f.detach().numpy()[~finite] == 0).all()
    w = torch.linspace(-1.0, 2.0, 15, dtype=torch.float64)
    (f * w).sum().backward()
    assert torch.isfinite(lat.grad).all() and torch.isfinite(lon.grad).all()
    keep = torch.from_numpy(finite)
    assert (lat.grad[~keep] == 0).all() and (lon.grad[~keep] == 0).all()
    # the finite places get the gradient of the plain formula on them alone
    la, lo = lat.detach()[keep].requires_grad_(), lon.detach()[keep].requires_grad_()
    phi, lam = torch.deg2rad(la), torch.deg2rad(lo)
    plain = [torch.cos(phi) * torch.cos(lam), torch.cos(phi) * torch.sin(lam), torch.sin(phi)]
    for k in range(1, 4):
        plain += [torch.sin(2**k * phi), torch.cos(2**k * phi), torch.sin(2**k * lam), torch.cos(2**k * lam)]
    (torch.stack(plain, -1) * w).sum().backward()
    torch.testing.assert_close(lat.grad[keep], la.grad, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(lon.grad[keep], lo.grad, rtol=1e-12, atol=1e-12)
    assert (la.grad != 0).all()
    with pytest.raises(ValueError, match="non_finite: expected 'propagate' or 'zero', got 'drop'"):
        sphere_features(lat, lon, 3, non_finite="drop")


def _padded_batch(cfg: MultiformerConfig) -> dict:
    """Two samples; token (0, 0, 0, 0, 0) of every field is padding (valid False), the rest real."""
    batch = multiformer_batch(cfg, 2, torch.Generator().manual_seed(3))
    for spec in cfg.fields:
        item = batch[spec.name]
        valid = torch.ones_like(item["mask"])
        valid[0, 0, 0, 0, 0] = False
        item["valid"] = valid
        item["mask"][0, 0, 0, 0, 0] = False
        item["target"] = item["tokens"].clone()
    return batch


def _run(net: Multiformer, batch: dict, cfg: MultiformerConfig):
    net.zero_grad(set_to_none=True)
    out = net(batch)
    loss, _ = multiformer_loss(out, batch, config=cfg)
    loss.backward()
    grads = {n: p.grad.clone() for n, p in net.named_parameters() if p.grad is not None}
    return {k: v.detach() for k, v in out.items()}, loss.detach(), grads


def test_a_padding_tokens_nan_place_reaches_no_other_output_and_no_gradient():
    torch.manual_seed(0)
    cfg = MultiformerConfig.tiny()
    net = Multiformer(cfg).eval()  # eval: no dropout, so the two runs are comparable bit for bit
    batch = _padded_batch(cfg)
    nan = copy.deepcopy(batch)
    f0 = cfg.fields[0].name
    for key in ("lat", "lon"):
        nan[f0]["meta"][key][0, 0, 0, 0, 0] = NAN
    nan[f0]["tokens"][0, 0, 0, 0, 0] = NAN
    ref, ref_loss, ref_grads = _run(net, batch, cfg)
    got, loss, grads = _run(net, nan, cfg)
    assert torch.isfinite(loss) and loss.item() == ref_loss.item()
    for spec in cfg.fields:
        y, r = got[spec.name], ref[spec.name]  # (B, E, L, nt, nlat, nlon, tt, tlat, tlon)
        assert torch.isfinite(y).all(), spec.name
        other = torch.ones(y.shape[:6], dtype=torch.bool)
        if spec.name == f0:
            other[0, :, 0, 0, 0, 0] = False  # the padding token's own prediction may differ (no loss trains it)
        assert torch.equal(y[other], r[other]), spec.name
    assert grads.keys() == ref_grads.keys() and grads
    for name, g in grads.items():
        assert torch.isfinite(g).all(), name
        torch.testing.assert_close(g, ref_grads[name], rtol=1e-6, atol=1e-7, msg=name)


@pytest.mark.parametrize("given_valid", [False, True])
def test_a_real_token_without_a_finite_place_is_refused(given_valid):
    torch.manual_seed(0)
    cfg = MultiformerConfig.tiny()
    net = Multiformer(cfg).eval()
    batch = multiformer_batch(cfg, 2, torch.Generator().manual_seed(3))
    f1 = cfg.fields[1].name
    if given_valid:
        for spec in cfg.fields:
            batch[spec.name]["valid"] = torch.ones_like(batch[spec.name]["mask"])
    batch[f1]["meta"]["lon"][1, 0, 1, 2, 3] = math.inf
    with torch.no_grad(), pytest.raises(ModelConfigError) as err:
        net(batch)
    msg = str(err.value)
    assert f"batch[{f1!r}]['meta']['lat'/'lon']" in msg and "1 real token(s)" in msg
    assert "(1, 0, 1, 2, 3)" in msg and "lon inf" in msg and "valid False" in msg
    if given_valid:  # marked padding, the same place is accepted and the outputs are finite
        batch[f1]["valid"][1, 0, 1, 2, 3] = False
        with torch.no_grad():
            out = net(batch)
        assert all(torch.isfinite(y).all() for y in out.values())


def _tiles(spec, b: int, t: int, g: torch.Generator) -> dict:
    grid = (b, t, spec.num_levels, *spec.num_tokens)
    return {"tokens": torch.randn(b, t, *spec.sample_shape, generator=g),
            "meta": {"time_of_day": torch.zeros(grid), "day_of_year": torch.zeros(grid),
                     "lat": torch.rand(grid, generator=g) * 60, "lon": torch.rand(grid, generator=g) * 360}}


def test_the_forecaster_refuses_a_real_tile_token_without_a_finite_place():
    torch.manual_seed(0)
    mc = MultiformerConfig.tiny(num_fields=2)
    fo = Forecaster(ForecasterConfig.tiny(), Multiformer(mc)).eval()
    g = torch.Generator().manual_seed(1)
    a, b = mc.fields
    win = {a.name: _tiles(a, 2, 3, g), b.name: _tiles(b, 2, 3, g)}
    win[b.name]["meta"]["lat"][1, 2, 0, 0, 0, 0] = NAN
    with torch.no_grad(), pytest.raises(ModelConfigError, match=rf"batch\[{b.name!r}\]\['meta'\]\['lat'/'lon'\]"):
        fo.encode(win)
    win[b.name]["valid"] = torch.ones(win[b.name]["meta"]["lat"].shape, dtype=torch.bool)
    win[b.name]["valid"][1, 2, 0, 0, 0, 0] = False
    with torch.no_grad():
        assert torch.isfinite(fo.encode(win)).all()
