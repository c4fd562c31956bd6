"""Missing values in the models' inputs and targets, as the loader gives them: NaN where a store declares a value
missing (an ocean field's land points), on a plain grid with no ``valid``/``valid_values`` masks, and NaN in a mesh
field's padding slots next to its slot masks.

The Multiformer and the Forecaster must not let a NaN input reach the embedding (zeroed, and marked by the
missing-value indicator), losses must ignore NaN targets exactly as if only the valid values had been given, and a
Forecaster rollout must neither carry NaN into its next step nor invent values at missing points it is told of.
"""

from __future__ import annotations

import pytest
import torch

from model import Forecaster, ForecasterConfig, Multiformer, MultiformerConfig, multiformer_loss
from model.checkpoint import assemble_multiformer, load_checkpoint, save_checkpoint
from model.losses import LOSS_KINDS, token_loss
from model.multiformer import padding_masks

from .synthetic import cut_tiles, multiformer_batch, tokenise
from .test_forecaster import NX, NY, _batch, _blender, _fields, _setup

NAN = float("nan")


# -- the Multiformer ----------------------------------------------------------------------------------------------


def _land(spec, b: int) -> torch.Tensor:
    """A static land mask of one field in the token layout (B, L, nt, nlat, nlon, tt, tlat, tlon), True = land:
    grid rows 0-4 x columns 0-5 of every level and time, so two tokens are all land and two are coast (part land)."""
    (nt, ny, nx), (tt, ty, tx) = spec.num_tokens, spec.token_size
    grid = torch.zeros(ny * ty, nx * tx, dtype=torch.bool)
    grid[:5, :6] = True
    field = grid.expand(b, spec.num_levels, nt * tt, ny * ty, nx * tx)
    return tokenise(field, spec)


def _batch_with_land(cfg: MultiformerConfig, seed: int = 0, mesh: bool = False) -> tuple[dict, torch.Tensor]:
    """A Multiformer batch whose first field is NaN over land (the loader's decoded ``_FillValue``), without any
    mask; with ``mesh`` the second field is point-sampled: NaN in padding slots, ``valid``/``valid_values`` from
    :func:`padding_masks` (the training loop's ``model_inputs``)."""
    g = torch.Generator().manual_seed(seed)
    batch = multiformer_batch(cfg, 2, g)
    spec = cfg.fields[0]
    land = _land(spec, 2)
    item = batch[spec.name]
    item["tokens"] = item["tokens"].masked_fill(land, NAN)  # the target is the tokens (no "target" entry)
    if mesh:
        other = cfg.fields[1]
        _, nlat, nlon = other.num_tokens
        _, tlat, tlon = other.token_size
        slot = torch.rand(2, nlat, nlon, tlat * tlon, generator=g) < 0.6
        slot[:, 0, 0] = True
        it = batch[other.name]
        pad = ~slot.reshape(2, 1, 1, nlat, nlon, 1, tlat, tlon).expand_as(it["tokens"])
        it["tokens"] = it["tokens"].masked_fill(pad, NAN)
        it.update(padding_masks(it["tokens"], slot))
    return batch, land


@pytest.mark.parametrize("mesh", [False, True], ids=["grid", "grid+mesh"])
def test_multiformer_with_missing_inputs_gives_finite_outputs_loss_and_gradients(mesh):
    torch.manual_seed(0)
    cfg = MultiformerConfig.tiny()
    model = Multiformer(cfg)
    batch, _ = _batch_with_land(cfg, mesh=mesh)
    out = model(batch)
    for name, y in out.items():
        assert torch.isfinite(y).all(), name  # predictions everywhere, missing points included
    loss, per_field = multiformer_loss(out, batch, kinds={"mse": 1.0, "crps": 1.0, "lat_mse": 1.0})
    assert torch.isfinite(loss) and all(torch.isfinite(v) for v in per_field.values())
    loss.backward()
    for n, p in model.named_parameters():
        assert p.grad is None or torch.isfinite(p.grad).all(), n


def test_what_missing_values_hold_does_not_reach_the_model():
    """NaN without masks == any other stand-in with ``valid_values`` saying where values are missing, bit for bit."""
    torch.manual_seed(0)
    cfg = MultiformerConfig.tiny()
    model = Multiformer(cfg).eval()
    batch, land = _batch_with_land(cfg)
    name = cfg.fields[0].name
    other = {**batch, name: {**batch[name], "tokens": batch[name]["tokens"].masked_fill(land, 1e4),
                             "valid_values": ~land}}
    with torch.no_grad():
        got, want = model(batch), model(other)
    for f in cfg.field_names:
        assert torch.equal(got[f], want[f]), f


def test_the_embedding_is_told_where_values_are_missing():
    """A missing value reads as 0 *and* is marked by the missing-value indicator. The indicator starts at zero (a
    new model reads a missing value as a real 0, as a checkpoint from before the indicator does) and learns from a
    batch with missing values; once it has, the token's embedding differs from the same token holding a real 0,
    and every other token's embedding is untouched."""
    torch.manual_seed(0)
    cfg = MultiformerConfig.tiny(num_fields=1)
    model = Multiformer(cfg)
    spec = cfg.fields[0]
    item = multiformer_batch(cfg, 1, torch.Generator().manual_seed(1))[spec.name]
    emb = model.embed[spec.name]
    where = (0, 1, 1, 2, 3, 0, 1, 2)  # one value of one token
    zero, nan = item["tokens"].clone(), item["tokens"].clone()
    zero[where], nan[where] = 0.0, NAN
    token = where[1:5]

    def both():
        with torch.no_grad():
            return (emb(zero, item["meta"], None).reshape(*spec.sample_shape[:4], -1),
                    emb(nan, item["meta"], None).reshape(*spec.sample_shape[:4], -1))

    assert not emb.missing.weight.any()
    a, b = both()
    assert torch.isfinite(b).all() and torch.equal(a, b)
    emb(nan, item["meta"], None).square().sum().backward()
    assert emb.missing.weight.grad.abs().sum() > 0  # it learns where values are missing
    with torch.no_grad():
        emb.missing.weight -= emb.missing.weight.grad
    a, b = both()
    assert torch.isfinite(b).all()
    assert not torch.equal(a[token], b[token])
    a[token] = b[token] = 0
    assert torch.equal(a, b)


def test_the_indicator_draws_no_random_numbers():
    """Adding the indicator changed no other parameter's start: a seeded model's other parameters equal those of
    the same model built without it (its construction draws nothing from the generator)."""
    from torch import nn

    cfg = MultiformerConfig.tiny(num_fields=1)
    torch.manual_seed(3)
    with_it = Multiformer(cfg).state_dict()
    class NoIndicator(nn.Module):  # no parameter, no random draw
        def __init__(self, *args, **kwargs):
            super().__init__()
            self.weight = torch.empty(0)  # a plain attribute, not registered

    real = nn.utils.skip_init
    try:  # the model as it was before: no indicator parameter at all
        nn.utils.skip_init = NoIndicator
        torch.manual_seed(3)
        without = Multiformer(cfg).state_dict()
    finally:
        nn.utils.skip_init = real
    assert set(with_it) - set(without) == {f"embed.{cfg.fields[0].name}.missing.weight"}
    assert all(torch.equal(without[k], with_it[k]) for k in without)


@pytest.mark.parametrize("kind", LOSS_KINDS)
@pytest.mark.parametrize("per_value", [False, True], ids=["token-weights", "value-weights"])
def test_every_loss_counts_a_nan_target_as_weight_zero(kind, per_value):
    """A NaN target weighs nothing whatever weight it was given: the same loss, bit for bit, as weight 0 there."""
    g = torch.Generator().manual_seed(5)
    n, e, s, d = 2, 4, 5, 6
    ens = torch.randn(n, e, s, d, generator=g, requires_grad=True)
    target = torch.randn(n, s, d, generator=g)
    nan = torch.rand(n, s, d, generator=g) < 0.3
    nan[0, 0] = True  # a token with no value at all
    target[nan] = NAN
    weight = torch.rand(n, s, d, generator=g) if per_value else torch.rand(n, s, generator=g)
    lat = torch.rand(n, s, generator=g) * 80.0
    got = token_loss(ens, target, weight, {kind: 1.0}, lat=lat)
    full = weight if per_value else weight[..., None].expand(n, s, d)
    want = token_loss(ens, target.masked_fill(nan, 5.0), full.masked_fill(nan, 0.0), {kind: 1.0}, lat=lat)
    assert torch.isfinite(got) and torch.equal(got, want)
    got.backward()
    assert torch.isfinite(ens.grad).all() and (ens.grad.movedim(1, -1)[nan] == 0).all()


def _manual_member_mse(ens: torch.Tensor, target: torch.Tensor, count: torch.Tensor) -> float:
    """Mean over the values that count of the members' mean squared error, float64, from the kept values only."""
    e = ens.double().movedim(1, -1)[count]  # (V, E)
    t = target.double()[count]  # (V,)
    return float((e - t[:, None]).square().mean(1).mean())


def test_multiformer_loss_ignores_missing_targets_exactly():
    torch.manual_seed(0)
    cfg = MultiformerConfig.tiny()
    g = torch.Generator().manual_seed(2)
    batch, land = _batch_with_land(cfg)
    name = cfg.fields[0].name
    out = {f.name: torch.randn(2, cfg.ensemble_size, *f.sample_shape, generator=g, requires_grad=True)
           for f in cfg.fields}
    loss, per_field = multiformer_loss(out, batch)
    # the same loss with the missing targets holding anything and valid_values saying where they are
    stand_in = {**batch, name: {**batch[name], "tokens": batch[name]["tokens"].masked_fill(land, 123.0),
                                "valid_values": ~land}}
    loss2, per_field2 = multiformer_loss(out, stand_in)
    assert torch.equal(per_field[name], per_field2[name]) and torch.equal(loss, loss2)
    # and the loss on the valid points alone: masked tokens' values that are not land
    count = batch[name]["mask"][..., None, None, None].expand_as(land) & ~land
    want = _manual_member_mse(out[name].detach(), batch[name]["tokens"], count)
    assert per_field[name].item() == pytest.approx(want, rel=1e-6)
    loss.backward()
    grad = out[name].grad
    assert torch.isfinite(grad).all() and (grad.movedim(1, -1)[land] == 0).all()  # missing targets: no gradient
    for kinds in ({"crps": 1.0}, {"stats": 1.0}, {"lat_mse": 1.0}):
        a, _ = multiformer_loss(out, batch, kinds=kinds)
        b, _ = multiformer_loss(out, stand_in, kinds=kinds)
        assert torch.isfinite(a) and torch.equal(a, b), kinds


def test_a_checkpoint_from_before_the_missing_value_indicator_loads_with_it_off(tmp_path):
    """Checkpoints written before the embedding had its indicator load, the indicator at zero: a missing value
    reads as 0, exactly as that model was trained."""
    torch.manual_seed(0)
    cfg = MultiformerConfig.tiny()
    model = Multiformer(cfg)
    path = save_checkpoint(tmp_path / "new.pt", model)
    payload = torch.load(path, weights_only=True)
    for comps in payload["components"].values():
        del comps["embed"]["missing.weight"]
    old = tmp_path / "old.pt"
    torch.save(payload, old)
    fresh = Multiformer(cfg)  # another initialisation, indicator included
    load_checkpoint(old, fresh, restore_rng=False)
    for loaded in (fresh, assemble_multiformer(cfg, {f: old for f in cfg.field_names})):
        for f in cfg.field_names:
            assert torch.equal(loaded.embed[f].missing.weight, torch.zeros_like(model.embed[f].missing.weight))
            assert torch.equal(loaded.embed[f].token.weight, model.embed[f].token.weight)


# -- the Forecaster -----------------------------------------------------------------------------------------------


def _global_land() -> torch.Tensor:
    """(1, NY, NX) land: rows 2-9 x columns 5-14, across tile and token edges."""
    land = torch.zeros(1, NY, NX, dtype=torch.bool)
    land[:, 2:10, 5:15] = True
    return land


def _tiles_with_land(field: torch.Tensor, index: torch.Tensor, land_tiles: torch.Tensor) -> torch.Tensor:
    return cut_tiles(field, index).masked_fill(land_tiles, NAN)


def _forecaster_case(seed=0, steps=2, **fc):
    model, geo, index, meta = _setup(seed, **fc)
    for p in model.parameters():  # off the identity, so that steps and members differ
        if p.requires_grad:
            p.data.add_(0.05 * torch.randn_like(p))
    land_tiles = cut_tiles(_global_land().expand(2, 1, NY, NX), index)  # (B, T, L, nt, nlat, nlon, tt, tlat, tlon)
    fields = _fields(torch.Generator().manual_seed(seed + 10), 2, steps)
    batch = _batch(_tiles_with_land(fields[0], index, land_tiles), meta)
    targets = [{"t": {"tokens": _tiles_with_land(f, index, land_tiles)}} for f in fields[1:]]
    return model, geo, index, batch, targets, land_tiles


def test_forecaster_training_step_with_missing_inputs_and_targets():
    model, geo, _, batch, targets, land = _forecaster_case()
    state = model.initial_state(model.encode(batch))
    assert torch.isfinite(state).all()
    lat = torch.zeros(land.shape[:6]) + 30.0
    for t in targets:
        t["t"]["lat"] = lat
    loss, per_step = model.rollout_loss(state, targets, lead_time=6.0, geometry=geo,
                                        kinds={"mse": 1.0, "crps": 1.0, "lat_mse": 1.0})
    assert torch.isfinite(loss) and all(torch.isfinite(x) for x in per_step)
    loss.backward()
    grads = [p.grad for p in model.trainable_parameters()]
    assert all(g is not None and torch.isfinite(g).all() for g in grads)
    assert any(g.abs().max() > 0 for g in grads)


def test_forecaster_loss_ignores_missing_targets_exactly():
    model, geo, _, batch, targets, land = _forecaster_case(steps=1)
    with torch.no_grad():
        state = model.initial_state(model.encode(batch))
        loss, _ = model.rollout_loss(state, targets, lead_time=6.0, geometry=geo)
        stand_in = [{"t": {"tokens": t["t"]["tokens"].masked_fill(land, -7.0), "valid_values": ~land}}
                    for t in targets]
        loss2, _ = model.rollout_loss(state, stand_in, lead_time=6.0, geometry=geo)
        ens = model.decode(model.step(state, 6.0, geo), geo)["t"]  # (B, E, T, L, 1, nlat, nlon, 1, tlat, tlon)
    assert torch.equal(loss, loss2)
    want = _manual_member_mse(ens, targets[0]["t"]["tokens"], ~land)
    assert loss.item() == pytest.approx(want, rel=1e-6)


def test_rollout_keeps_missing_points_missing_and_no_nan_reaches_the_next_step():
    model, geo, index, batch, _, land = _forecaster_case()
    missing = model.missing_points(batch)["t"]
    assert missing.shape == (2, 1, index.shape[0], 1, 1, 2, 2, 1, 4, 4)  # broadcasts over E, nt_out, tt
    assert torch.equal(missing[:, 0, :, :, 0, :, :, 0], land[:, :, :, 0, :, :, 0])
    blend = _blender(model, index)
    with torch.no_grad():
        state = model.initial_state(model.encode(batch))
        s = state
        for _ in range(3):  # the latent a step hands on is finite: nothing missing leaks into the next step
            s = model.step(s, 6.0, geo)
            assert torch.isfinite(s).all()
        res = model.rollout(state, 3, lead_time=6.0, geometry=geo, decode_at=[1, 3], missing={"t": missing})
        stitched = model.rollout(state, 3, lead_time=6.0, geometry=geo, missing={"t": missing},
                                 stitch=lambda f, x: blend(x)).outputs[3]["t"]  # (B, E, NY * NX)
        plain = model.rollout(state, 3, lead_time=6.0, geometry=geo, decode_at=[1, 3]).outputs
        one = model(batch, 6.0, geo)["t"]
    assert torch.equal(res.state, s)
    full = missing.expand_as(res.outputs[1]["t"])
    for k in (1, 3):
        out = res.outputs[k]["t"]
        assert torch.isnan(out[full]).all() and torch.isfinite(out[~full]).all()
        assert torch.equal(out[~full], plain[k]["t"][~full])  # valid points: exactly the unmasked rollout
        assert torch.isfinite(plain[k]["t"]).all()  # not told: predictions everywhere, as documented
    assert torch.equal(torch.isnan(one), full)
    glob = _global_land().reshape(1, 1, -1).expand_as(stitched)
    assert torch.isnan(stitched[glob]).all() and torch.isfinite(stitched[~glob]).all()


def test_a_point_missing_at_only_some_input_times_is_forecast():
    """Only points missing at every time of the input window are missing in the forecast (a static land mask);
    a gap at one time is a value to predict. ``valid_values`` counts as missing too."""
    torch.manual_seed(0)
    mcfg = MultiformerConfig.tiny(num_fields=1)
    spec = mcfg.fields[0]
    model = Forecaster(ForecasterConfig.tiny(), Multiformer(mcfg))
    tokens = torch.randn(1, 2, *spec.sample_shape)  # (B, T, L, nt=2, nlat, nlon, tt=1, tlat, tlon)
    tokens[0, 0, 0, 0, 1, 1, 0, 2, 2] = NAN  # time 0 only: forecast
    tokens[0, 1, 1, :, 2, 3, 0, 0, 1] = NAN  # every time: missing
    vv = torch.ones_like(tokens, dtype=torch.bool)
    vv[0, 0, 1, :, 0, 0, 0, 1, 0] = False  # every time, by valid_values: missing
    m = model.missing_points({spec.name: {"tokens": tokens, "valid_values": vv}})[spec.name]
    assert m.shape == (1, 1, 2, 2, 1, 3, 4, 1, 3, 3)
    want = torch.zeros_like(m)
    want[0, 0, 1, 1, 0, 2, 3, 0, 0, 1] = True
    want[0, 0, 0, 1, 0, 0, 0, 0, 1, 0] = True
    assert torch.equal(m, want)


def test_forecaster_encode_takes_valid_values_given_broadcastable():
    """``valid_values`` may be given broadcastable to the tokens (one mask for every sample and tile): the latents
    equal those with the mask expanded (before, flattening (B, T) failed on the broadcast shape)."""
    model, _, _, batch, _, land = _forecaster_case()
    full = ~land  # (B, T, L, nt, nlat, nlon, tt, tlat, tlon)
    tokens = batch["t"]["tokens"].masked_fill(land, 0.0)
    one = full[:1, :1].clone()  # the first tile's mask, for every sample and tile
    same = one.expand_as(full).clone()
    with torch.no_grad():
        a = model.encode({"t": {**batch["t"], "tokens": tokens, "valid_values": one}})
        b = model.encode({"t": {**batch["t"], "tokens": tokens, "valid_values": same}})
    assert torch.equal(a, b)
