"""Forecaster edge cases from review s11 r2: batches of 0 samples and tiles_per_chunk (L2), target shapes and step
weights (L3), a uint8 ``valid`` (L4), a model cast to bfloat16 (L5). References: NumPy weighted means of the decoded
tiles, and the float32 model."""

from __future__ import annotations

import copy

import pytest
import torch

from model import ModelConfigError

from .synthetic import cut_tiles
from .test_forecaster import _batch, _fields, _setup


def _case(seed=0):
    model, geo, index, meta = _setup(seed)
    for p in model.parameters():  # away from the identity at init, so steps and fields differ
        if p.requires_grad:
            p.data.add_(0.05 * torch.randn_like(p))
    fields = _fields(torch.Generator().manual_seed(3), 2, 1)
    tiles = [cut_tiles(f, index) for f in fields]
    with torch.no_grad():
        state = model.initial_state(model.encode(_batch(tiles[0], meta)))
    return model, geo, meta, tiles, state


def test_encode_of_0_samples_and_tiles_per_chunk():
    model, geo, meta, tiles, state = _case()
    with torch.no_grad():
        empty = model.encode(_batch(tiles[0][:0], meta))
        assert empty.shape == (0, *state.shape[2:])
        for bad in (0, -1, 1.5, True):
            with pytest.raises(ModelConfigError, match=r"encode: tiles_per_chunk: expected an integer >= 1"):
                model.encode(_batch(tiles[0], meta), tiles_per_chunk=bad)
        torch.testing.assert_close(model.encode(_batch(tiles[0], meta), tiles_per_chunk=1), state[:, 0])


def test_rollout_loss_of_0_samples_is_a_connected_zero():
    model, geo, meta, tiles, state = _case()
    s0 = state[:0].clone().requires_grad_(True)
    loss, per_step = model.rollout_loss(s0, [{"t": {"tokens": tiles[1][:0]}}], lead_time=6.0, geometry=geo,
                                        kinds={"mse": 1.0, "crps": 1.0})
    assert loss.item() == 0.0 and [p.item() for p in per_step] == [0.0]
    loss.backward()
    assert s0.grad is not None and s0.grad.shape == s0.shape


def _numpy_step_loss(model, state, geo, target, valid):
    """Step 1's member-mean MSE over valid tokens, from the decoded tiles in NumPy (loss_weight 1)."""
    with torch.no_grad():
        ens = model.rollout(state, 1, lead_time=6.0, geometry=geo).outputs[1]["t"]  # (B, E, T, L, nt, ny, nx, ...)
    x = ens.double().numpy()
    t = target.double().numpy()
    se = ((x - t[:, None]) ** 2).mean(1)  # (B, T, L, nt, ny, nx, tt, ty, tx)
    per_token = se.reshape(*se.shape[:6], -1).mean(-1)
    v = valid.numpy() != 0
    return float(per_token[v].mean())


def test_uint8_valid_is_read_as_bool_not_by_value():
    model, geo, meta, tiles, state = _case()
    tt = tiles[1]
    v = torch.zeros(tt.shape[:6], dtype=torch.uint8)
    v[:, :8] = 1
    v[:, 8:10] = 255  # non-zero: True, as a uint8 mask or valid is everywhere else in the model
    ref = _numpy_step_loss(model, state, geo, tt, v)
    with torch.no_grad():
        got_u8, _ = model.rollout_loss(state, [{"t": {"tokens": tt, "valid": v}}], lead_time=6.0, geometry=geo)
        got_b, _ = model.rollout_loss(state, [{"t": {"tokens": tt, "valid": v.bool()}}], lead_time=6.0, geometry=geo)
    assert got_u8.item() == pytest.approx(ref, rel=1e-5)
    assert got_b.item() == pytest.approx(ref, rel=1e-5)


def test_targets_of_another_shape_or_field_are_named():
    model, geo, meta, tiles, state = _case()
    tt = tiles[1]  # (B, T, L, nt, nlat, nlon, tt, tlat, tlon) = (2, 16, 1, 1, 2, 2, 1, 4, 4)
    cases = [
        ([{"t": {"tokens": tt[:, :, :, :, :1]}}], r"targets\[0\]\['t'\]\['tokens'\]: expected shape .* got \(2, 16, 1, 1, 1, 2"),
        # as many values in another layout (the reviewer's: nlat and nlon swapped) was scored silently
        ([{"t": {"tokens": tt.reshape(2, 16, 1, 1, 2, 2, 1, 4, 4).transpose(5, 6)}}], r"\['tokens'\]: expected"),
        ([{"t": {"tokens": tt.reshape(2, 16, 1, 1, 4, 1, 1, 4, 4)}}], r"targets\[0\]\['t'\]\['tokens'\]"),
        ([{"t": {"tokens": tt}}, {"u": {"tokens": tt}}], r"targets\[1\] \(step 2\) has no field 't'"),
        ([{"t": {"tokens": tt, "valid": torch.ones(2, 16)}}], r"targets\[0\]\['t'\]\['valid'\]: expected shape"),
        ([{"t": {"tokens": tt, "lat": torch.ones(2, 16, 1, 1, 4)}}], r"\['lat'\]: expected shape"),
        ([{"t": {"tokens": tt, "valid_values": torch.ones(3, 16, 1, 1, 1, 1, 1, 1, 1, dtype=torch.bool)}}],
         r"\['valid_values'\]: expected a bool tensor broadcastable"),
    ]
    for targets, match in cases:
        with pytest.raises(ModelConfigError, match=match):
            model.rollout_loss(state, targets, lead_time=6.0, geometry=geo)


@pytest.mark.parametrize("weights", [[0.0, 0.0], [1.0, -1.0], [1.0, float("nan")], [1.0, float("inf")]])
def test_step_weights_must_be_finite_non_negative_not_all_zero(weights):
    model, geo, meta, tiles, state = _case()
    targets = [{"t": {"tokens": tiles[1]}}] * 2
    with pytest.raises(ModelConfigError, match=r"rollout_loss: step_weights: expected finite numbers >= 0"):
        model.rollout_loss(state, targets, lead_time=6.0, geometry=geo, step_weights=weights)
    loss, per = model.rollout_loss(state, targets, lead_time=6.0, geometry=geo, step_weights=[0.0, 2.0])
    assert loss.item() == pytest.approx(per[1].item(), rel=1e-6)  # a zero weight is allowed


def test_forecaster_cast_to_bfloat16_runs_and_agrees_with_float32():
    model, geo, meta, tiles, state = _case()
    batch = _batch(tiles[0], meta)
    with torch.no_grad():
        ref = model.rollout(model.initial_state(model.encode(batch)), 2, lead_time=6.0, geometry=geo)
        low = copy.deepcopy(model).to(torch.bfloat16)  # the float32 model is the reference
        got = low.rollout(low.initial_state(low.encode(batch)), 2, lead_time=6.0, geometry=geo)
    a, b = ref.outputs[2]["t"], got.outputs[2]["t"]
    assert b.dtype == torch.bfloat16 and torch.isfinite(b.float()).all()
    err = (a - b.float()).abs().max().item()
    assert 0 < a.abs().max().item() and err < 0.05 * a.abs().max().item() + 0.05, err
