"""Token masks: counts, strategies, determinism per (seed, rank, step), sync across fields, devices."""

from __future__ import annotations

import math

import pytest
import torch

from fastload.errors import ConfigError
from fastload.sampling.masking import (
    STRATEGIES,
    MaskingConfig,
    as_masking_config,
    make_masks,
    mask_batch,
    mask_generator,
)

SHAPE = (6, 2, 4, 3, 5, 2, 3, 3)  # (B, L, nt, nlat, nlon, tt, tlat, tlon)


def batch(device="cpu", seed=0):
    g = torch.Generator().manual_seed(seed)
    return {"t": torch.randn(SHAPE, generator=g).to(device) + 1.0,
            "u": torch.randn(SHAPE, generator=g).to(device) - 1.0}


def tok_changed(src, x):
    return (src != x).flatten(5).any(-1)  # (B, L, nt, nlat, nlon)


@pytest.fixture(params=["sparse", "dense"])
def bert_way(request, monkeypatch):
    """Run a BERT test through the CPU's way (gathering the selected tokens) and the accelerator's (a where over
    every token, no host sync), here both on the CPU."""
    import fastload.sampling.masking as mk

    way = mk._apply_bert_sparse if request.param == "sparse" else mk._apply_bert_dense
    monkeypatch.setattr(mk, "_apply_bert", way)
    return request.param


def test_same_seed_rank_step_same_masks_and_others_differ():
    cfg = MaskingConfig(rate=0.9, frac_noise=0.5, frac_coarse=0.5)
    x = batch()
    a = mask_batch(cfg, x, seed=3, rank=1, step=7)
    b = mask_batch(cfg, x, seed=3, rank=1, step=7)
    for k in x:
        assert torch.equal(a[k].mask, b[k].mask) and torch.equal(a[k].source, b[k].source)
    for other in (dict(seed=3, rank=1, step=8), dict(seed=3, rank=2, step=7), dict(seed=4, rank=1, step=7)):
        c = mask_batch(cfg, x, **other)
        assert not torch.equal(a["t"].mask, c["t"].mask)


def test_bert_counts_per_sample_and_level():
    cfg = MaskingConfig(rate=0.6)
    x = batch()
    r = mask_batch(cfg, x, seed=0, rank=0, step=0)
    n_tok = 4 * 3 * 5
    for k in x:
        counts = r[k].mask.flatten(2).sum(-1)  # (B, L)
        assert counts.max() <= math.ceil(0.6 * n_tok)
        assert len(set(counts.flatten().tolist())) > 1  # ratios differ between samples/levels
    # over many steps the mean masked fraction is about rate / 2
    fr = torch.stack([mask_batch(cfg, x, seed=0, rank=0, step=s)["t"].mask.float().mean() for s in range(40)])
    assert abs(fr.mean().item() - 0.3) < 0.05


def test_bert_zeroing_only_touches_masked_tokens(bert_way):
    cfg = MaskingConfig(rate=0.8, frac_zero=1.0, frac_noise=0.0, frac_coarse=0.0)
    x = batch()
    r = mask_batch(cfg, x, seed=1, rank=0, step=0)["t"]
    m = r.mask[..., None, None, None].expand(SHAPE)
    assert (r.source[m] == 0).all()
    assert torch.equal(r.source[~m], x["t"][~m])
    assert r.target is x["t"]


def test_bert_noise_blends_toward_zero_with_scaled_noise(bert_way):
    cfg = MaskingConfig(rate=1.0, frac_zero=0.0, frac_noise=1.0, frac_coarse=0.0, noise_scale=0.0)
    x = batch()
    r = mask_batch(cfg, x, seed=2, rank=0, step=0)["t"]
    m = r.mask[..., None, None, None].expand(SHAPE)
    # without noise, each masked token is (1 - w) x with one w in [0, 1) per token: same sign, smaller magnitude
    src, orig = r.source[m], x["t"][m]
    assert ((src * orig) >= 0).all() and (src.abs() <= orig.abs() + 1e-6).all()
    ratio = (r.source / x["t"]).flatten(5)[r.mask]  # (K, tokens elems): constant per token
    assert torch.allclose(ratio, ratio[:, :1].expand_as(ratio), atol=1e-5)
    noisy = mask_batch(MaskingConfig(rate=1.0, frac_zero=0.0, frac_noise=1.0, frac_coarse=0.0, noise_scale=1.0),
                       x, seed=2, rank=0, step=0)["t"]
    assert not torch.allclose((noisy.source / x["t"]).flatten(5)[noisy.mask][:, 0],
                              (noisy.source / x["t"]).flatten(5)[noisy.mask][:, 1])


def test_bert_coarsening_keeps_constant_tokens_and_smooths_others(bert_way):
    cfg = MaskingConfig(rate=1.0, frac_zero=0.0, frac_noise=0.0, frac_coarse=1.0, coarse_factor=3)
    const = torch.full(SHAPE, 2.5)
    r = mask_batch(cfg, {"t": const}, seed=0, rank=0, step=0)["t"]
    assert torch.allclose(r.source, const)
    x = batch()["t"]
    r = mask_batch(cfg, {"t": x}, seed=0, rank=0, step=0)["t"]
    changed = tok_changed(r.source, x)
    assert torch.equal(changed, r.mask)
    # coarsening by 3 leaves one value per time step of a 3 x 3 token: no spatial variance left
    var_in = x.flatten(6).var(-1)[r.mask].mean()
    var_out = r.source.flatten(6).var(-1)[r.mask].mean()
    assert var_out < 1e-6 * var_in


def test_forecast_masks_last_time_tokens_of_every_level():
    x = batch()
    r = mask_batch(MaskingConfig(strategy="forecast", forecast_tokens=2), x, seed=0, rank=0, step=0)
    for k in x:
        assert r[k].mask[:, :, 2:].all() and not r[k].mask[:, :, :2].any()
        assert (r[k].source[:, :, 2:] == 0).all() and torch.equal(r[k].source[:, :, :2], x[k][:, :, :2])
    with pytest.raises(ConfigError, match="forecast_tokens"):
        mask_batch(MaskingConfig(strategy="forecast", forecast_tokens=5), x, seed=0, rank=0, step=0)


def test_temporal_interpolation_masks_middle_tokens():
    x = batch()
    r = mask_batch(MaskingConfig(strategy="temporal_interpolation"), x, seed=0, rank=0, step=0)["u"]
    assert r.mask[:, :, 2].all() and not r.mask[:, :, [0, 1, 3]].any()
    assert (r.source[:, :, 2] == 0).all()
    r = mask_batch(MaskingConfig(strategy="temporal_interpolation", interp_tokens=2), x, seed=0, rank=0, step=0)["u"]
    assert r.mask[:, :, 1:3].all() and not r.mask[:, :, [0, 3]].any()


def test_identity_masks_nothing():
    x = batch()
    r = mask_batch(MaskingConfig(strategy="identity"), x, seed=0, rank=0, step=0)["t"]
    assert not r.mask.any() and torch.equal(r.source, x["t"])


def test_synced_masks_are_shared_across_fields_and_levels():
    x = batch()
    r = mask_batch(MaskingConfig(synced=True, rate=0.7), x, seed=5, rank=0, step=1)
    assert torch.equal(r["t"].mask, r["u"].mask)
    assert torch.equal(r["t"].mask[:, 0], r["t"].mask[:, 1])
    unsynced = mask_batch(MaskingConfig(rate=0.7), x, seed=5, rank=0, step=1)
    assert not torch.equal(unsynced["t"].mask, unsynced["u"].mask)
    odd = {"t": x["t"], "v": torch.zeros(6, 1, 2, 3, 5, 4, 3, 3)}
    with pytest.raises(ConfigError, match="synced"):
        mask_batch(MaskingConfig(synced=True), odd, seed=0, rank=0, step=0)


def test_nan_inputs_do_not_spread_into_noise(bert_way):
    x = batch()["t"].clone()
    x[0, 0, 0, 0, 0] = float("nan")  # one NaN token (e.g. land)
    cfg = MaskingConfig(rate=1.0, frac_zero=0.0, frac_noise=1.0, frac_coarse=0.0)
    r = mask_batch(cfg, {"t": x}, seed=0, rank=0, step=0)["t"]
    nan_tokens = torch.isnan(r.source).flatten(5).any(-1)
    assert nan_tokens.sum() <= 1


def test_config_validation():
    with pytest.raises(ConfigError, match="masking.strategy"):
        MaskingConfig(strategy="random")
    with pytest.raises(ConfigError, match="masking.rate"):
        MaskingConfig(rate=1.5)
    with pytest.raises(ConfigError, match="masking.coarse_factor"):
        MaskingConfig(coarse_factor=0)
    with pytest.raises(ConfigError, match="step"):
        mask_generator(0, 0, -1)
    assert MaskingConfig().to_dict()["strategy"] == "BERT"


def test_as_masking_config_takes_a_config_a_mapping_or_a_strategy_name():
    cfg = MaskingConfig(strategy="forecast", forecast_tokens=2)
    assert as_masking_config(cfg) is cfg and as_masking_config(None) is None
    assert as_masking_config({"strategy": "forecast", "forecast_tokens": 2}) == cfg
    assert as_masking_config({}) == MaskingConfig()
    for name in STRATEGIES:
        assert as_masking_config(name) == MaskingConfig(strategy=name)
    with pytest.raises(ConfigError, match=r"^masking: unknown key\(s\) 'tokens', 'x'; MaskingConfig fields are \["):
        as_masking_config({"strategy": "forecast", "tokens": 2, "x": 1})
    with pytest.raises(ConfigError, match=r"^run.masking: unknown strategy 'random'; expected a fastload.MaskingConfig, "
                                          r"a mapping of its fields \['strategy', .*\] or a strategy name \['BERT', "):
        as_masking_config("random", "run.masking")
    for bad in (1, 0.5, True, ["BERT"], ("forecast",), MaskingConfig):
        with pytest.raises(ConfigError, match=r"^masking: expected a fastload.MaskingConfig, a mapping"):
            as_masking_config(bad)
    with pytest.raises(ConfigError, match="masking.synced: expected true or false, got 1"):
        as_masking_config({"synced": 1})


def test_masking_config_is_exported_from_fastload():
    import fastload

    assert "MaskingConfig" in fastload.__all__ and "MaskingConfig" in dir(fastload)
    assert fastload.MaskingConfig is MaskingConfig


def test_inputs_are_not_modified(bert_way):
    x = batch()
    copy = {k: v.clone() for k, v in x.items()}
    mask_batch(MaskingConfig(rate=1.0, frac_noise=1.0, frac_coarse=1.0), x, seed=0, rank=0, step=0)
    for k in x:
        assert torch.equal(x[k], copy[k])


@pytest.mark.gpu
@pytest.mark.filterwarnings("ignore:Synchronization debug mode:UserWarning")  # torch calls it a prototype feature
def test_masks_on_the_gpu_are_deterministic_and_make_no_host_sync():
    x = batch("cuda")
    cfg = MaskingConfig(rate=0.8, frac_noise=0.5, frac_coarse=0.5)
    a = mask_batch(cfg, x, seed=1, rank=0, step=2)
    torch.cuda.synchronize()
    torch.cuda.set_sync_debug_mode("error")  # the gathering way made 8 syncs per field (RESULTS 17.3)
    try:
        b = mask_batch(cfg, x, seed=1, rank=0, step=2)
    finally:
        torch.cuda.set_sync_debug_mode(0)
    assert a["t"].mask.device.type == "cuda"
    assert torch.equal(a["t"].source, b["t"].source) and torch.equal(a["u"].mask, b["u"].mask)


@pytest.mark.parametrize("nt,k,fits", [(4, 3, True), (4, 4, False), (4, 5, False), (2, 1, True), (1, 1, False)])
def test_forecast_must_leave_a_context_token(nt, k, fits):
    """Forecasting the last k of nt time tokens needs k < nt: k = nt masks every token (no context to forecast
    from) and is refused as temporal interpolation refuses the same, naming the setting, the field and the most
    allowed; k < nt masks exactly the last k tokens and keeps the rest."""
    shape = (2, 3, nt, 2, 2)
    cfg = MaskingConfig(strategy="forecast", forecast_tokens=k)
    if fits:
        m = make_masks(cfg, {"t": shape}, mask_generator(0, 0, 0))["t"]
        assert m[:, :, nt - k:].all() and not m[:, :, :nt - k].any()
        return
    most = f"expected at most {nt - 1}" if nt > 1 else "a forecast needs nt >= 2"
    rel = ">" if k > nt else "=="
    with pytest.raises(ConfigError, match=rf"masking.forecast_tokens = {k} {rel} nt = {nt} of field 't' leaves no "
                                          rf"context \(every time token masked\); {most}"):
        make_masks(cfg, {"t": shape}, mask_generator(0, 0, 0))


def test_the_loader_refuses_a_forecast_of_every_time_token_when_it_is_made(tmp_path):
    """The Loader knows the fields' nt when it is made: forecast_tokens = nt fails there (the audit's case: nt = 4,
    forecast_tokens = 4 masked 100 % of the tokens and was accepted), before any batch; nt - 1 is accepted."""
    from fastload import Loader
    from fastload.config import FieldConfig, SamplingConfig

    from .stores import make_per_variable

    make_per_variable(tmp_path / "s.zarr", nt=8)
    cfg = SamplingConfig(fields=(FieldConfig(name="t", levels=(500.0,), num_tokens=(4, 1, 1), token_size=(2, 4, 4),
                                             normalization="none"),), batch_size=2)
    with pytest.raises(ConfigError, match=r"forecast_tokens = 4 == nt = 4 of field 't' leaves no context"):
        Loader(tmp_path / "s.zarr", cfg, samples_per_epoch=2, workers=1, device="cpu",
               masking={"strategy": "forecast", "forecast_tokens": 4})
    with Loader(tmp_path / "s.zarr", cfg, samples_per_epoch=2, workers=1, device="cpu",
                masking={"strategy": "forecast", "forecast_tokens": 3}) as loader:
        m = next(iter(loader)).masks["t"]  # (B, L, nt, nlat, nlon)
        assert m[:, :, 1:].all() and not m[:, :, 0].any()


@pytest.mark.parametrize("seed", range(4))
def test_the_dense_way_equals_the_gathering_way(seed):
    """The accelerator's BERT corruption (every token computed, selected by where) gives the CPU's bits wherever the
    noise amplitude is 0 (the only draw the two ways take differently is the noise of unselected tokens), with
    zeroing, blending and coarsening all on and NaN tokens in the batch."""
    import fastload.sampling.masking as mk

    x = batch(seed=seed)["t"].clone()
    x[0, 0, 0, 0, :2] = float("nan")
    cfg = MaskingConfig(rate=0.9, frac_zero=0.4, frac_noise=0.5, frac_coarse=0.3, noise_scale=0.0)
    m = make_masks(cfg, {"t": tuple(SHAPE[:5])}, mask_generator(seed, 0, 0))["t"]
    a = mk._apply_bert_sparse(cfg, x, m, mask_generator(seed, 0, 1))
    b = mk._apply_bert_dense(cfg, x, m, mask_generator(seed, 0, 1))
    assert torch.equal(torch.isnan(a), torch.isnan(b))
    assert torch.equal(torch.nan_to_num(a), torch.nan_to_num(b))
    assert tok_changed(torch.nan_to_num(a), torch.nan_to_num(x)).any()


def _interpolate_reference(tokens, factor):
    """The coarsening as torch's trilinear interpolate does it (down to 1/factor in space, back up), float32."""
    k, tt, tlat, tlon = tokens.shape
    small = (tt, max(1, -(-tlat // factor)), max(1, -(-tlon // factor)))
    x = tokens.reshape(k, 1, tt, tlat, tlon).float()
    x = torch.nn.functional.interpolate(x, size=small, mode="trilinear", align_corners=False)
    x = torch.nn.functional.interpolate(x, size=(tt, tlat, tlon), mode="trilinear", align_corners=False)
    return x.reshape(k, tt, tlat, tlon)


@pytest.mark.parametrize("tok,factor", [((3, 9, 9), 3), ((3, 6, 6), 3), ((3, 27, 27), 3), ((2, 5, 7), 2),
                                        ((1, 1, 4), 3), ((3, 9, 9), 4), ((3, 4, 4), 9), ((2, 3, 8), 1)])
def test_coarsening_is_linear_resampling_down_and_back(tok, factor):
    """The gathered taps give interpolate's values (up to float32 rounding of the weights' order)."""
    import fastload.sampling.masking as mk

    x = torch.randn((40, *tok), generator=torch.Generator().manual_seed(factor)) * 10
    got = mk._coarsen(x, factor)
    assert got.shape == x.shape and got.dtype == x.dtype
    torch.testing.assert_close(got, _interpolate_reference(x, factor), rtol=1e-5, atol=3e-5)


@pytest.mark.parametrize("tok,factor", [((3, 9, 9), 3), ((2, 5, 7), 2), ((1, 6, 6), 4), ((1, 25, 29), 4),
                                        ((1, 29, 25), 2)])
def test_coarsening_spreads_a_nan_only_to_the_values_that_depend_on_it(tok, factor):
    """A NaN point (e.g. land in a sea field) turns exactly the outputs whose value depends on it into NaN: those
    that change in the reference when that point changes; every other output keeps the reference value (interpolate
    itself also spreads it through taps of weight 0)."""
    import fastload.sampling.masking as mk

    tt, tlat, tlon = tok
    x = torch.randn((tlat * tlon + 2, *tok), generator=torch.Generator().manual_seed(1))
    lo, hi, nan = x.clone(), x.clone(), x.clone()
    for m in range(tlat * tlon):  # token m has one NaN point: every (lat, lon) position once; the last two none
        s = (m, m % tt, m // tlon, m % tlon)
        lo[s], hi[s], nan[s] = 0.0, 1.0, float("nan")
    # weight > 1e-6 (interpolate's own weights of 0 can come out 1e-8 from the float32 scale 1/factor)
    depends = (_interpolate_reference(hi, factor) - _interpolate_reference(lo, factor)).abs() > 1e-6
    got = mk._coarsen(nan, factor)
    assert depends.any() and not depends.all()
    assert torch.equal(torch.isnan(got), depends)
    torch.testing.assert_close(got[~depends], _interpolate_reference(lo, factor)[~depends], rtol=1e-5, atol=3e-5)


def test_coarsening_keeps_bfloat16_tokens_in_bfloat16():
    import fastload.sampling.masking as mk

    x = torch.randn(10, 3, 9, 9).to(torch.bfloat16)
    got = mk._coarsen(x, 3)
    assert got.dtype == torch.bfloat16
    torch.testing.assert_close(got.float(), _interpolate_reference(x, 3).to(torch.bfloat16).float(), rtol=0.02,
                               atol=0.02)


@pytest.mark.parametrize("may_branch", [False, True])
@pytest.mark.parametrize("bad", ["none", "nan", "inf", "level_all_nan"])
def test_level_std_is_numpys_std_over_the_finite_values_of_each_level(may_branch, bad):
    import numpy as np

    import fastload.sampling.masking as mk

    x = (torch.randn(SHAPE, generator=torch.Generator().manual_seed(3)) * 3 + 280).to(torch.float32)
    if bad == "nan":
        x[0, 0, 1] = float("nan")
        x[2, 1, 0, 0, 0, 0] = float("nan")
    elif bad == "inf":
        x[1, 0, 0, 1] = float("inf")
        x[3, 1, 2, 2, 2, 1, 1, 1] = -float("inf")
    elif bad == "level_all_nan":
        x[:, 1] = float("nan")
    got = mk._level_std(x, may_branch=may_branch)
    a = x.double().numpy().swapaxes(0, 1).reshape(SHAPE[1], -1)
    want = [np.std(row[np.isfinite(row)]) if np.isfinite(row).any() else 0.0 for row in a]
    assert got.dtype == torch.float32 and got.shape == (SHAPE[1],)
    np.testing.assert_allclose(got.numpy(), want, rtol=1e-5, atol=0)


def test_bert_noise_amplitude_is_noise_scale_times_each_levels_std():
    """Every masked token noised, none zeroed or coarsened, w drawn per token: the noise's spread per level follows
    that level's own std (levels of std 1, 10 and 100), in both ways."""
    import fastload.sampling.masking as mk

    shape = (8, 3, 2, 4, 4, 2, 6, 6)
    x = torch.randn(shape, generator=torch.Generator().manual_seed(5)) * torch.tensor([1.0, 10.0, 100.0]).reshape(
        1, 3, *([1] * 6))
    cfg = MaskingConfig(rate=1.0, frac_zero=0.0, frac_noise=1.0, frac_coarse=0.0, noise_scale=0.5)
    m = torch.ones(shape[:5], dtype=torch.bool)
    for way in (mk._apply_bert_sparse, mk._apply_bert_dense):
        src = way(cfg, x, m, mask_generator(0, 0, 1))
        g = mask_generator(0, 0, 1)
        w = mk._bert_draws(cfg, m, g)[4]  # the blend weights the way drew
        noise = src - (1 - w.reshape(shape[:5]))[..., None, None, None] * x
        for lev, std in enumerate((1.0, 10.0, 100.0)):
            got = noise[:, lev].std().item()
            assert abs(got - 0.5 * x[:, lev].std().item()) < 0.05 * 0.5 * std, (way.__name__, lev, got)


@pytest.mark.parametrize("way", ["sparse", "dense"])
def test_bert_masking_of_zero_samples_gives_empty_results(way):
    import fastload.sampling.masking as mk

    x = torch.randn((0, *SHAPE[1:]))
    m = make_masks(MaskingConfig(), {"t": tuple(x.shape[:5])}, mask_generator(0, 0, 0))["t"]
    fn = mk._apply_bert_sparse if way == "sparse" else mk._apply_bert_dense
    src = fn(MaskingConfig(rate=1.0, frac_noise=1.0, frac_coarse=1.0), x, m, mask_generator(0, 0, 1))
    assert src.shape == x.shape and m.shape == x.shape[:5]
    r = mask_batch(MaskingConfig(), {"t": x}, seed=0, rank=0, step=0)["t"]
    assert r.source.shape == x.shape and r.mask.shape == x.shape[:5]
