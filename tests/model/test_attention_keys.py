"""Which tokens attend is decided from what the model also has at inference, never from ``target``: the same inputs
give the same predictions bit for bit whatever the targets hold and whether a target is given at all (training vs
inference); a masked token is a key (its input was replaced), an unmasked token without data is not. And
:func:`model._batch.flatten_item` broadcasts every entry given in a broadcastable form before flattening (B, T).
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from model import ModelConfigError, Multiformer, MultiformerConfig
from model._batch import flatten_item

from .test_missing_tokens import _has_data, _perturbed, _with
from .test_missing_values import _batch_with_land, _forecaster_case

NAN = float("nan")


def _masked_training(cfg: MultiformerConfig) -> tuple[dict, str, torch.Tensor, torch.Tensor]:
    """The loader's masked training batch: ``tokens`` the sources (masked tokens zeroed, land included), ``target``
    the truth (NaN over land); the mask covers a land and a sea token of every level and time."""
    batch, _ = _batch_with_land(cfg)
    name = cfg.fields[0].name
    item = batch[name]
    target = item["tokens"]
    mask = item["mask"].clone()
    mask[:, :, :, 0, 0] = True  # masked land
    mask[:, :, :, 0, 1] = False  # unmasked land
    mask[:, :, :, 2, 2] = True  # masked sea
    sources = target.masked_fill(mask[..., None, None, None], 0.0)  # as fastload's mask_batch does
    return _with(batch, name, tokens=sources, target=target, mask=mask), name, target, mask


def _without_target(batch: dict) -> dict:
    return {f: {k: v for k, v in it.items() if k != "target"} for f, it in batch.items()}


@pytest.mark.parametrize("mask_input", ["learned", "as_given"])
def test_predictions_do_not_depend_on_the_target(mask_input):
    """The reviewer's reproducer (``keys_from_target.py``): only the masked sea token's target turned NaN (a
    transient gap), every target replaced by noise with NaN holes, and no target at all (inference on the same
    inputs) give the predictions of the training batch, every token and member of both fields, bit for bit (before,
    up to 0.1 and 0.23 apart)."""
    torch.manual_seed(0)
    cfg = MultiformerConfig.tiny(mask_input=mask_input)
    model = _perturbed(Multiformer(cfg), 2).eval()
    train, name, target, _ = _masked_training(cfg)
    gap = target.clone()
    gap[:, :, :, 2, 2] = NAN  # the masked sea token's target only
    g = torch.Generator().manual_seed(1)
    noise = torch.randn(target.shape, generator=g).masked_fill(torch.rand(target.shape, generator=g) < 0.7, NAN)
    noise[:, :, :, 1] = NAN  # whole rows of tokens without a target value
    with torch.no_grad():
        want = model(train)
        cases = {"gap": model(_with(train, name, target=gap)), "noise": model(_with(train, name, target=noise)),
                 "inference": model(_without_target(train))}  # fmt: skip
    for case, got in cases.items():
        for f in cfg.field_names:
            assert torch.isfinite(got[f]).all(), (case, f)
            assert torch.equal(got[f], want[f]), (case, f)


def test_keys_are_the_tokens_with_data_or_a_mask_within_valid():
    """The keys ``encode`` reports are the NumPy reference's: a token is a key where ``valid`` (default all) allows
    it and it is masked or has a finite value in ``tokens``; the masked land token is a key, the unmasked one is
    not; ``valid`` leaves out a masked token too; a sample with no key keeps all its tokens."""
    torch.manual_seed(0)
    cfg = MultiformerConfig.tiny()
    model = Multiformer(cfg).eval()
    train, name, target, mask = _masked_training(cfg)
    train[name]["tokens"][:, :, :, 0, 0] = NAN  # the masked land token's input: anything, NaN too
    tokens = train[name]["tokens"]
    has = _has_data(tokens)
    want = (has | mask.numpy()).reshape(2, -1)
    assert not want.all()
    with torch.no_grad():
        _, keys = model.encode(train)
    assert np.array_equal(keys[name].numpy(), want)
    per_token = keys[name].reshape(mask.shape)  # (B, L, nt, nlat, nlon)
    assert per_token[:, :, :, 0, 0].all() and not has[:, :, :, 0, 0].any()  # masked all-land tokens are keys
    assert not per_token[:, :, :, 0, 1].any() and not has[:, :, :, 0, 1].any()  # unmasked all-land tokens are not
    valid = torch.ones(mask.shape, dtype=torch.bool)
    valid[:, :, :, 0, 0] = False  # the caller leaves the masked land token out
    valid[1] = False  # and sample 1 has no token left
    with torch.no_grad():
        _, keys = model.encode(_with(train, name, valid=valid))
    ref = want & valid.numpy().reshape(2, -1)
    ref[1] = True
    assert np.array_equal(keys[name].numpy(), ref)


def test_forecaster_latents_do_not_depend_on_the_target():
    """The Forecaster's encoder and adapter: the latents of a tiled batch are the same bit for bit with its targets,
    with other targets (NaN over a tile that has data) and without a target."""
    model, _, _, batch, _, land = _forecaster_case(seed=1, steps=1)
    item = batch["t"]
    target = item["tokens"].clone()
    other = target.clone()
    other[0, 2] = NAN  # a tile with data whose target is missing
    other[1] = torch.randn(other[1].shape, generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        plain = model.encode(batch)
        got = {"target": model.encode({"t": {**item, "target": target}}),
               "other": model.encode({"t": {**item, "target": other}})}  # fmt: skip
    for case, lat in got.items():
        assert torch.equal(lat, plain), case


def test_flatten_item_broadcasts_every_entry_given_broadcastable():
    """``mask`` and ``valid`` (one for every sample, or every tile), metadata and ``target``/``valid_values`` in a
    broadcastable form flatten as their expanded copies do (before, ``mask`` and ``valid`` failed the reshape)."""
    b, t, grid = 2, 3, (1, 2, 3, 4)
    g = torch.Generator().manual_seed(0)
    tokens = torch.randn(b, t, *grid, 1, 2, 2, generator=g)
    given = {
        "tokens": tokens,
        "mask": torch.rand(1, t, *grid, generator=g) < 0.5,  # the same for every sample
        "valid": torch.rand(b, 1, *grid, generator=g) < 0.5,  # the same for every tile
        "valid_values": torch.rand(1, 1, *grid, 1, 2, 2, generator=g) < 0.5,
        "target": torch.randn(1, t, *grid, 1, 2, 2, generator=g),
        "meta": {"lat": torch.randn(1, t, *grid, generator=g), "lon": torch.randn(b, t, *grid, generator=g)},
    }
    full = {k: (v.expand(tokens.shape if v.dim() == 9 else tokens.shape[:6]).clone() if k != "meta" else
                {m: x.expand(tokens.shape[:6]).clone() for m, x in v.items()}) for k, v in given.items()}  # fmt: skip
    got, want = flatten_item(given, b * t), flatten_item(full, b * t)
    assert set(got) == set(want) == set(given)
    for k in ("tokens", "mask", "valid", "valid_values", "target"):
        assert got[k].shape == want[k].shape and torch.equal(got[k], want[k]), k
    assert got["mask"].shape == (b * t, *grid)
    for m in ("lat", "lon"):
        assert torch.equal(got["meta"][m], want["meta"][m]), m


def test_forecaster_refuses_a_mask_or_valid_not_of_the_grid_shape():
    """``Forecaster.encode`` checks the batch first: ``mask`` and ``valid`` must have the tokens' grid shape
    (``check_batch``), and the error names the field and the entry."""
    model, _, _, batch, _, _ = _forecaster_case(seed=0, steps=1)
    item = batch["t"]
    grid = item["tokens"].shape[:6]
    for key in ("mask", "valid"):
        with pytest.raises(ModelConfigError, match=rf"batch\['t'\]\['{key}'\]: expected shape"):
            model.encode({"t": {**item, key: torch.ones(1, *grid[1:], dtype=torch.bool)}})
