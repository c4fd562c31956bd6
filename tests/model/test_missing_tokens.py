"""Tokens without data stay out of attention: an all-land token of an ocean field (every value NaN, no ``valid``
mask) is not attended to by any token of any field, in the Multiformer and in the Forecaster's encoder and adapter,
exactly as if ``valid`` had marked it padding; no NaN appears anywhere in the edge cases (a sample with no data in
a field, masks over land, the ensemble tail, compile); a batch without such tokens takes the computation of the
code from before (no attention mask); and :meth:`Forecaster.missing_points` takes a caller's static mask, so a gap
at the only input time is forecast while land stays missing.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from model import (
    ModelConfigError,
    Multiformer,
    MultiformerConfig,
    multiformer_loss,
)
from model.multiformer import padding_masks

from .synthetic import cut_tiles, multiformer_batch
from .test_forecaster import _batch, _fields, _setup
from .test_missing_values import _batch_with_land, _forecaster_case, _global_land

NAN = float("nan")


def _perturbed(model: torch.nn.Module, seed: int) -> torch.nn.Module:
    """Every trainable parameter moved off its start (zero-initialised couplings and gates do something)."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            if p.requires_grad:
                p.add_(0.05 * torch.randn(p.shape, generator=g))
    return model


def _has_data(values: torch.Tensor) -> np.ndarray:
    """NumPy reference: (B, L, nt, nlat, nlon) True where a token has a finite value."""
    v = values.numpy()
    return np.isfinite(v).reshape(*v.shape[:5], -1).any(-1)


def _with(batch: dict, name: str, **entries) -> dict:
    return {**batch, name: {**batch[name], **entries}}


# -- the Multiformer ----------------------------------------------------------------------------------------------


def test_all_missing_tokens_are_left_out_as_if_marked_padding():
    """No ``valid`` given: the unmasked all-land tokens drop out of every attention, bit for bit as when ``valid``
    marks them (the mask path of mesh padding); masked ones stay (their input was replaced); the keys ``encode``
    reports are the NumPy reference's."""
    torch.manual_seed(0)
    cfg = MultiformerConfig.tiny()
    model = _perturbed(Multiformer(cfg), 1).eval()
    batch, _ = _batch_with_land(cfg)
    name = cfg.fields[0].name
    has = _has_data(batch[name]["tokens"]) | batch[name]["mask"].numpy()  # data or masked
    assert not has.all() and has.any()  # some unmasked all-land tokens, some with data
    marked = _with(batch, name, valid=torch.from_numpy(has))
    with torch.no_grad():
        got, want = model(batch), model(marked)
        _, keys = model.encode(batch)
    for f in cfg.field_names:
        assert torch.equal(got[f], want[f]), f
    assert np.array_equal(keys[name].numpy(), has.reshape(2, -1))
    assert keys[cfg.fields[1].name] is None  # a field without missing tokens: no mask at all


@pytest.mark.parametrize("mask_input", ["learned", "as_given"])
def test_what_a_token_without_data_holds_reaches_no_other_token(mask_input):
    """The loader's masked training: ``tokens`` are the masked sources (masked tokens zeroed, land included),
    ``target`` the truth with NaN over land, and the mask covers land and sea tokens. Whatever missing values the
    unmasked land tokens' inputs hold (NaN, +-inf, or finite values that ``valid_values`` marks missing) and
    whatever their metadata hold, every other token's prediction (all members, both fields) is the same bit for
    bit (a masked land token is a key: at inference the loader's zeroed input is all the model has of it, so it
    cannot be told from sea); outputs, loss and gradients are finite and the land tokens' predictions get no
    gradient from the loss."""
    torch.manual_seed(0)
    cfg = MultiformerConfig.tiny(mask_input=mask_input)
    model = _perturbed(Multiformer(cfg), 2)
    batch, land = _batch_with_land(cfg)
    name = cfg.fields[0].name
    item = batch[name]
    target = item["tokens"]
    no_data = torch.from_numpy(~_has_data(target))  # (B, L, nt, nlat, nlon)
    mask = item["mask"].clone()
    mask[:, :, :, 0, 0] = True  # masked land
    mask[:, :, :, 0, 1] = False  # unmasked land
    mask[:, :, :, 2, 2] = True  # masked sea
    sources = target.masked_fill(mask[..., None, None, None], 0.0)  # as fastload's mask_batch does
    base = _with(batch, name, tokens=sources, target=target, mask=mask)
    free = no_data & ~mask  # unmasked land: not a key
    assert free.any() and (no_data & mask).any()
    g = torch.Generator().manual_seed(3)
    holes = torch.tensor([NAN, float("inf"), -float("inf")])[torch.randint(0, 3, sources.shape, generator=g)]
    noise = torch.randn(sources.shape, generator=g)
    meta = dict(item["meta"])
    meta["time_of_day"] = torch.where(free, torch.rand(free.shape, generator=g) * 24, meta["time_of_day"])
    at_free = free[..., None, None, None].expand(sources.shape)
    # the unmasked land tokens' inputs: other non-finite values, or finite noise that valid_values marks missing
    other = _with(base, name, tokens=torch.where(at_free, holes, sources), meta=meta)
    marked = _with(base, name, tokens=torch.where(at_free, noise, sources), meta=meta, valid_values=~at_free)
    out = model(base)
    with torch.no_grad():
        alt, alt_marked = model(other), model(marked)
    keep = {f: torch.ones(2, *cfg.field(f).sample_shape[:4], dtype=torch.bool) for f in cfg.field_names}
    keep[name] = ~free
    for f in cfg.field_names:
        assert torch.isfinite(out[f]).all(), f  # every member of every token, no-data tokens included
        sel = keep[f][:, None].expand(out[f].shape[:6])
        assert torch.equal(out[f][sel], alt[f][sel]), f
        assert torch.equal(out[f][sel], alt_marked[f][sel]), f
        assert not torch.equal(out[f], alt[f]) or f != name  # the no-data tokens themselves do change
    loss, _ = multiformer_loss(out, base, kinds={"mse": 1.0, "crps": 1.0, "stats": 1.0, "lat_mse": 1.0})
    assert torch.isfinite(loss) and loss > 0
    grads = torch.autograd.grad(loss, [out[name], *model.parameters()], allow_unused=True)
    assert all(gr is None or torch.isfinite(gr).all() for gr in grads)
    assert (grads[0][no_data[:, None].expand(grads[0].shape[:6])] == 0).all()  # no-data tokens count in no loss


def test_a_sample_without_data_in_a_field_keeps_all_its_tokens():
    """Every token of one sample's field is land: that sample keeps all its tokens as keys (no empty softmax), so
    its outputs are those of the sample alone, where no mask is used at all, and everything stays finite. A caller's ``valid`` that
    leaves a sample no token is read the same way (it gave a zero attention row before). Nothing of the field is
    masked here: a masked token is a key whatever its input holds (with the masks, sample 0's keys are its masked
    tokens)."""
    torch.manual_seed(0)
    cfg = MultiformerConfig.tiny()
    model = _perturbed(Multiformer(cfg), 4)
    name = cfg.fields[0].name
    batch = multiformer_batch(cfg, 2, torch.Generator().manual_seed(5))
    masks = batch[name]["mask"]
    tokens = batch[name]["tokens"].clone()
    tokens[0] = NAN  # sample 0: no data at all in this field
    tokens[1, :, :, 0, 0] = NAN  # sample 1: one all-land token per level and time
    with torch.no_grad():
        _, keys = model.encode(_with(batch, name, tokens=tokens))
    assert masks[0].any() and torch.equal(keys[name][0], masks[0].flatten())
    nan_batch = _with(batch, name, tokens=tokens, mask=torch.zeros_like(masks))
    everything = torch.ones(2, *cfg.fields[0].sample_shape[:4], dtype=torch.bool)
    out = model(nan_batch)
    _, keys = model.encode(nan_batch)
    assert keys[name][0].all() and not keys[name][1].all()
    with torch.no_grad():  # sample 0 alone: every token a key and no mask at all, as a model dropping nothing
        alone = model({f: {k: ({m: t[:1] for m, t in v.items()} if k == "meta" else v[:1]) for k, v in it.items()}
                       for f, it in nan_batch.items()})  # fmt: skip
    for f in cfg.field_names:
        assert torch.isfinite(out[f]).all(), f
        torch.testing.assert_close(out[f][:1].detach(), alone[f], rtol=0, atol=1e-6, msg=f)
    loss, per_field = multiformer_loss(out, nan_batch, kinds={"mse": 1.0, "crps": 1.0})
    assert torch.isfinite(loss) and all(torch.isfinite(v) for v in per_field.values())
    loss.backward()
    assert all(p.grad is None or torch.isfinite(p.grad).all() for p in model.parameters())
    # a caller's valid with no token left for sample 0, on data without gaps
    nothing = everything.clone()
    nothing[0] = False
    with torch.no_grad():
        got, plain = model(_with(batch, name, valid=nothing)), model(batch)
    for f in cfg.field_names:
        assert torch.isfinite(got[f]).all(), f
        torch.testing.assert_close(got[f][0], plain[f][0], rtol=0, atol=1e-6, msg=f)


def test_mesh_tokens_without_a_point_leave_attention_without_padding_masks():
    """A point-sampled field whose padding slots are NaN, given without ``valid``/``valid_values``: the same
    outputs as with :func:`padding_masks` (the unmasked tokens that have no point are out either way; a masked one
    is a key unless ``valid`` leaves it out, so none is masked here)."""
    torch.manual_seed(0)
    cfg = MultiformerConfig.tiny()
    model = _perturbed(Multiformer(cfg), 6).eval()
    batch = multiformer_batch(cfg, 2, torch.Generator().manual_seed(10))
    other = cfg.fields[1].name
    slot = torch.rand(2, 3, 4, 9, generator=torch.Generator().manual_seed(11)) < 0.6
    slot[:, 0, 0] = True
    slot[:, 1, 2] = False  # a token without a point
    it = batch[other]
    pad = ~slot.reshape(2, 1, 1, 3, 4, 1, 3, 3).expand_as(it["tokens"])
    it["tokens"] = it["tokens"].masked_fill(pad, NAN)
    it.update(padding_masks(it["tokens"], slot))
    it["mask"] = it["mask"] & it["valid"]
    assert (~it["valid"]).any() and it["mask"].any()
    bare = _with(batch, other)
    del bare[other]["valid"], bare[other]["valid_values"]
    with torch.no_grad():
        got, want = model(bare), model(batch)
    for f in cfg.field_names:
        assert torch.equal(got[f], want[f]), f


# -- nothing changes without tokens lacking data -------------------------------------------------------------------

def _reference_outputs() -> dict[str, torch.Tensor]:
    """Seeded Multiformer outputs, loss and gradients on batches with no token lacking data (no gaps; a NaN row in
    some tokens; a mesh field with its padding masks) and Forecaster forecasts (no gaps; a NaN row in every token)."""
    torch.manual_seed(0)
    cfg = MultiformerConfig.tiny()
    model = Multiformer(cfg)
    g = torch.Generator().manual_seed(7)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.05 * torch.randn(p.shape, generator=g))
    out = {}
    plain = multiformer_batch(cfg, 2, torch.Generator().manual_seed(8))
    coast = multiformer_batch(cfg, 2, torch.Generator().manual_seed(8))
    coast[cfg.fields[0].name]["tokens"][:, :, :, 0, 0, :, 0, :] = NAN  # one row of the corner tokens
    mesh = multiformer_batch(cfg, 2, torch.Generator().manual_seed(8))
    slot = torch.rand(2, 3, 4, 9, generator=torch.Generator().manual_seed(9)) < 0.6
    slot[..., 0] = True
    it = mesh[cfg.fields[1].name]
    pad = ~slot.reshape(2, 1, 1, 3, 4, 1, 3, 3).expand_as(it["tokens"])
    it["tokens"] = it["tokens"].masked_fill(pad, NAN)
    it.update(padding_masks(it["tokens"], slot))
    for name, batch in (("plain", plain), ("coast", coast), ("mesh", mesh)):
        model.zero_grad()
        y = model(batch)
        loss, _ = multiformer_loss(y, batch, kinds={"mse": 1.0, "crps": 1.0})
        loss.backward()
        for f, t in y.items():
            out[f"multiformer.{name}.{f}"] = t.detach()
        out[f"multiformer.{name}.loss"] = loss.detach()
        out[f"multiformer.{name}.grad"] = torch.cat([p.grad.flatten() for p in model.parameters()
                                                     if p.grad is not None])  # fmt: skip
    fc, geo, index, meta = _setup(seed=3)
    with torch.no_grad():
        for p in fc.parameters():
            if p.requires_grad:
                p.add_(0.05 * torch.randn(p.shape, generator=g))
        tiles = cut_tiles(_fields(torch.Generator().manual_seed(4), 2, 0)[0], index)
        out["forecaster.plain"] = fc(_batch(tiles, meta), 6.0, geo)["t"]
        tiles = tiles.clone()
        tiles[..., 0, :] = NAN  # the first row of every token
        out["forecaster.coast"] = fc(_batch(tiles, meta), 6.0, geo)["t"]
    return out


def test_batches_without_tokens_lacking_data_take_the_unmasked_path_of_before(monkeypatch):
    """No attention mask at all where no token lacks data and no ``valid`` is given (no gaps; a NaN row in some
    tokens; the Forecaster's tiles likewise): the computation of the code from before, and the flash kernel on a
    GPU; a mesh field's given masks still reach attention. (When this change was made, the outputs, losses and
    gradients of these cases were checked bit-identical to those of the code before, ``d7b723a``; digests are
    not kept in the test, as they depend on the CPU's instruction set and the thread count.)"""
    import model.layers as layers

    masks = []
    real = layers.F.scaled_dot_product_attention

    def spy(q, k, v, attn_mask=None, **kw):
        masks.append(attn_mask)
        return real(q, k, v, attn_mask=attn_mask, **kw)

    monkeypatch.setattr(layers.F, "scaled_dot_product_attention", spy)
    out = _reference_outputs()
    for k, v in out.items():  # the Multiformer's outputs, losses and gradients (the Forecaster's forecast is
        # NaN where its inputs have no value: missing_points)
        assert k.startswith("forecaster") or bool(torch.isfinite(v).all()), k
    assert masks and sum(m is not None for m in masks) > 0  # the mesh case's given masks
    for case in ("plain", "coast"):
        masks.clear()
        cfg = MultiformerConfig.tiny()
        batch = multiformer_batch(cfg, 2, torch.Generator().manual_seed(8))
        if case == "coast":
            batch[cfg.fields[0].name]["tokens"][:, :, :, 0, 0, :, 0, :] = NAN  # one row of the corner tokens
        Multiformer(cfg)(batch)
        assert masks and all(m is None for m in masks), case


# -- the Forecaster -----------------------------------------------------------------------------------------------


def test_forecaster_encoder_and_adapter_leave_tokens_without_data_out():
    """Land tiles: the latents equal those with ``valid`` marking the all-land tokens, and do not depend on what
    those tokens' metadata hold; a tile that is all land keeps all its tokens (its latent is that of the tile
    encoded alone, without a mask); the rollout loss and its gradients are finite."""
    model, geo, index, batch, targets, land = _forecaster_case(seed=1, steps=1)
    item = batch["t"]
    tokens = item["tokens"].clone()
    tokens[0, 3] = NAN  # a tile of sample 0 without any data
    has = torch.from_numpy(_has_data(tokens.flatten(0, 1))).reshape(tokens.shape[:6])  # (B, T, L, nt, nlat, nlon)
    assert not has.all() and has[0, 3].sum() == 0
    nan_batch = {"t": {**item, "tokens": tokens}}
    valid = has.clone()
    valid[0, 3] = True  # the all-land tile: every token, as attention_keys keeps them
    meta = dict(item["meta"])
    meta["lat"] = torch.where(has, meta["lat"], -meta["lat"])
    with torch.no_grad():
        lat = model.encode(nan_batch)
        marked = model.encode({"t": {**item, "tokens": tokens, "valid": valid}})
        moved = model.encode({"t": {**item, "tokens": tokens, "meta": meta}})
        alone = model.encode({"t": {"tokens": tokens[:1, 3:4],  # every token a key, no mask at all
                                    "meta": {k: v[:1, 3:4] for k, v in item["meta"].items()}}})
    assert torch.isfinite(lat).all()
    assert torch.equal(lat, marked)
    keep = torch.ones(lat.shape[:2], dtype=torch.bool)
    keep[0, 3] = False  # the all-land tile attends to its own tokens' metadata (all of them are keys)
    assert torch.equal(lat[keep], moved[keep])
    torch.testing.assert_close(lat[0, 3], alone[0, 0], rtol=0, atol=1e-6)
    state = model.initial_state(model.encode(nan_batch))
    loss, _ = model.rollout_loss(state, targets, lead_time=6.0, geometry=geo, kinds={"mse": 1.0, "crps": 1.0})
    assert torch.isfinite(loss)
    loss.backward()
    assert all(p.grad is None or torch.isfinite(p.grad).all() for p in model.parameters())


def test_a_static_mask_tells_land_from_a_gap_at_the_only_input_time():
    """One input time (``input_window`` 1, one time token of one step): a point missing there is land or a gap,
    and without more it is taken for land (NaN in the forecast, the documented limit). Given the static land mask,
    land stays NaN and the gap is forecast, as are land points that do have a value; the valid points' forecasts
    are those of the plain forward."""
    model, geo, index, batch, _, land = _forecaster_case(seed=2, steps=1)
    tokens = batch["t"]["tokens"].clone()  # (B, T, L, 1, nlat, nlon, 1, tlat, tlon)
    gap = torch.zeros_like(land)
    gap[0, 0, 0, 0, 0, 0, 0, 1, 2] = True  # a sea point with no value at the only input time
    assert not land[gap].any()
    tokens[gap] = NAN
    lake = land[1].nonzero()[0]  # a land point of sample 1 that has a value (the data win over the mask)
    tokens[(1, *lake)] = 0.5
    gapped = {"t": {**batch["t"], "tokens": tokens}}
    static = {"t": cut_tiles(_global_land().expand(1, 1, *_global_land().shape[1:]), index)}  # (1, T, L, 1, ...)
    assert static["t"].shape[0] == 1 and torch.equal(static["t"].expand_as(land), land)
    plain = model.missing_points(gapped)["t"][:, 0]
    told = model.missing_points(gapped, static=static)["t"][:, 0]
    want_told = land.clone()
    want_told[(1, *lake)] = False
    assert torch.equal(plain, want_told | gap)  # without the mask, the gap is taken for land
    assert torch.equal(told, want_told)
    with torch.no_grad():
        out = model(gapped, 6.0, geo, static=static)["t"]  # (B, E, T, L, 1, nlat, nlon, 1, tlat, tlon)
        ref = model(gapped, 6.0, geo)["t"]
    full = want_told[:, None].expand_as(out)
    assert torch.isnan(out[full]).all() and torch.isfinite(out[~full]).all()
    both = ~(land | gap)[:, None].expand_as(out)
    assert torch.equal(out[both], ref[both])
    with pytest.raises(ModelConfigError, match=r"static\['t'\]: expected a bool tensor broadcastable"):
        model.missing_points(gapped, static={"t": static["t"].expand(1, -1, -1, 2, -1, -1, -1, -1, -1)})
    with pytest.raises(ModelConfigError, match=r"static\['t'\]: expected a bool tensor.*got torch.float32"):
        model.missing_points(gapped, static={"t": static["t"].float()})
    with pytest.raises(ModelConfigError, match=r"static names unknown field\(s\) \['sst'\]"):
        model.missing_points(gapped, static={"sst": static["t"]})
