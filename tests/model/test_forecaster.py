"""The Forecaster: shapes, frozen encoder, identity at init, rollout = repeated steps, stitching, skill."""

from __future__ import annotations

import pytest
import torch

from model import (
    FieldSpec,
    Forecaster,
    ForecasterConfig,
    ModelConfigError,
    Multiformer,
    MultiformerConfig,
    TileBlender,
)

from .synthetic import cut_tiles, ring_tiling, tile_index, token_meta, waves

NY, NX, ROWS, COLS, STRIDE = 16, 32, 2, 8, 4  # 8 x 8-point tiles, overlapping by 4 points in longitude
SPEC = FieldSpec(
    name="t", levels=(0.0,), num_tokens=(1, 2, 2), token_size=(1, 4, 4), embed_dim=32, num_heads=2
)


def _setup(seed=0, **fc):
    torch.manual_seed(seed)
    mcfg = MultiformerConfig(fields=(SPEC,), num_encoder_layers=2, num_decoder_layers=1, ensemble_size=2,
                             meta_frequencies=2)  # fmt: skip
    model = Forecaster(ForecasterConfig.tiny(overlap=(0, 4), **fc), Multiformer(mcfg))
    geometry = ring_tiling(ROWS, COLS, 180.0 / ROWS, 360.0 / COLS)
    index = tile_index(SPEC, ROWS, COLS, STRIDE, NY, NX)  # (T, 1, 1, 2, 2, 1, 4, 4)
    lat0 = 90.0 - torch.arange(ROWS).float().repeat_interleave(COLS) * 8 * (180.0 / NY)
    lon0 = torch.arange(COLS).float().repeat(ROWS) * STRIDE * (360.0 / NX)
    meta = token_meta(SPEC, index.shape[0], lat0, lon0, 180.0 / NY, 360.0 / NX)
    return model, geometry, index, meta


def _batch(tiles, meta):
    b = tiles.shape[0]
    return {"t": {"tokens": tiles, "meta": {k: v.expand(b, *v.shape) for k, v in meta.items()}}}


def _fields(g, b, steps, shift=2.0):
    f, _ = waves(g, b, 1, steps + 1, NY, NX, shift=shift)  # (B, 1, steps + 1, NY, NX)
    return [f[:, :, k] for k in range(steps + 1)]


def test_shapes_and_identity_at_init():
    model, geo, index, meta = _setup()
    g = torch.Generator().manual_seed(0)
    tiles = cut_tiles(_fields(g, 2, 0)[0], index)
    latent = model.encode(_batch(tiles, meta))
    assert latent.shape == (2, ROWS * COLS, 4, 32)
    state = model.initial_state(latent)
    nxt = model.step(state, 6.0, geo)
    assert torch.equal(nxt, state)  # adaLN-Zero tail: the first step is persistence in latent space
    out = model.decode(nxt, geo)["t"]
    assert out.shape == (
        2,
        4,
        ROWS * COLS,
        1,
        1,
        2,
        2,
        1,
        4,
        4,
    )  # (B, E, T, L, nt_out, nlat, nlon, tt, tlat, tlon)


def test_encoding_in_chunks_equals_at_once():
    model, _, index, meta = _setup()
    tiles = cut_tiles(_fields(torch.Generator().manual_seed(1), 2, 0)[0], index)
    with torch.no_grad():
        torch.testing.assert_close(
            model.encode(_batch(tiles, meta), tiles_per_chunk=5), model.encode(_batch(tiles, meta))
        )


def test_rollout_of_n_steps_equals_n_calls_of_step():
    model, geo, index, meta = _setup(input_window=2)
    for p in model.parameters():  # move off the identity so that steps differ
        if p.requires_grad:
            p.data.add_(0.05 * torch.randn_like(p))
    g = torch.Generator().manual_seed(2)
    f0, f1 = _fields(g, 2, 1)
    with torch.no_grad():
        state = model.initial_state([model.encode(_batch(cut_tiles(f, index), meta)) for f in (f0, f1)])
        assert state.shape[1] == 2
        lead = torch.tensor([6.0, 12.0])
        result = model.rollout(state, 3, lead_time=lead, geometry=geo, decode_at=[1, 3])
        s = state
        for k in range(1, 4):
            s = model.step(s, lead, geo)
            if k in (1, 3):
                assert torch.equal(result.outputs[k]["t"], model.decode(s, geo)["t"])
        assert torch.equal(result.state, s)
        assert sorted(result.outputs) == [1, 3]
        assert not torch.equal(result.outputs[1]["t"], result.outputs[3]["t"])
    with pytest.raises(ModelConfigError, match="decode_at"):
        model.rollout(state, 2, lead_time=6.0, geometry=geo, decode_at=[3])
    with pytest.raises(ModelConfigError, match="input_window"):
        model.initial_state(state[:, :1])


def test_frozen_encoder_stays_frozen_and_everything_else_learns():
    model, geo, index, meta = _setup()
    frozen = {
        n: p.detach().clone() for n, p in model.named_parameters() if n.startswith(("embed.", "encoder."))
    }
    assert frozen and not any(model.get_parameter(n).requires_grad for n in frozen)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-2, weight_decay=0.1)
    g = torch.Generator().manual_seed(3)
    f0, f1, f2 = _fields(g, 2, 2)
    targets = [{"t": {"tokens": cut_tiles(f, index)}} for f in (f1, f2)]
    for _ in range(3):  # zero-initialised out -> gates -> lead-time MLP: each passes gradients one step later
        opt.zero_grad()
        state = model.initial_state(model.encode(_batch(cut_tiles(f0, index), meta)))
        loss, per_step = model.rollout_loss(
            state, targets, lead_time=6.0, geometry=geo, kinds={"mse": 1, "crps": 1}
        )
        loss.backward()
        opt.step()
    assert len(per_step) == 2
    for n, p in model.named_parameters():
        if n in frozen:
            assert p.grad is None and torch.equal(p, frozen[n]), n
        else:
            assert p.grad is not None and p.grad.abs().max().item() > 0, n
    unfrozen, _, _, _ = _setup(freeze_encoder=False)
    assert unfrozen.num_parameters(trainable_only=True) == unfrozen.num_parameters()


def _blender(model, index):
    t = index.shape[0]
    weights = model.blend_weights("t").expand(t, *index.shape[1:])
    return TileBlender(index, weights, num_points=NY * NX)


def test_stitching_a_constant_field_is_exactly_constant_and_tiles_of_one_field_reconstruct_it():
    model, _, index, _ = _setup()
    blend = _blender(model, index)
    assert bool(blend.covered.all())
    const = torch.full((2, 3, *index.shape), 0.1234567, dtype=torch.float32)  # (B, E, T, ...)
    out = blend(const)
    assert out.shape == (2, 3, NY * NX)
    assert bool((out == const.flatten()[0]).all())
    field = torch.randn(2, 1, NY, NX)
    assert torch.equal(blend(cut_tiles(field, index)), field.reshape(2, -1))


def test_stitching_is_the_weighted_mean_of_the_overlapping_tiles():
    model, _, index, _ = _setup()
    blend = _blender(model, index)
    values = torch.randn(3, *index.shape, dtype=torch.float64)
    w = model.blend_weights("t").expand(index.shape)
    num = torch.zeros(3, NY * NX, dtype=torch.float64).index_add_(
        1, index.reshape(-1), (values * w).reshape(3, -1)
    )
    den = torch.zeros(NY * NX, dtype=torch.float64).index_add_(0, index.reshape(-1), w.reshape(-1))
    torch.testing.assert_close(blend(values), num / den, rtol=1e-12, atol=1e-12)
    # the edge taper over 4 lon points of an 8-point tile: 0.2, 0.4, 0.6, 0.8, 0.8, 0.6, 0.4, 0.2; none in lat
    lon_w = w[0, 0, 0, :, :, 0].permute(0, 2, 1, 3).reshape(8, 8)[3]  # (nlon * tlon) at lat point 3
    torch.testing.assert_close(
        lon_w, torch.tensor([0.2, 0.4, 0.6, 0.8, 0.8, 0.6, 0.4, 0.2], dtype=torch.float64)
    )


def test_rollout_with_stitch_callable():
    model, geo, index, meta = _setup()
    blend = _blender(model, index)
    tiles = cut_tiles(_fields(torch.Generator().manual_seed(4), 1, 0)[0], index)
    with torch.no_grad():
        state = model.initial_state(model.encode(_batch(tiles, meta)))
        out = model.rollout(state, 2, lead_time=6.0, geometry=geo, stitch=lambda f, x: blend(x)).outputs
    assert sorted(out) == [2] and out[2]["t"].shape == (1, 4, NY * NX)


def test_forecaster_config_validation():
    with pytest.raises(ModelConfigError, match="latent_dim"):
        ForecasterConfig(latent_dim=30, num_heads=4)
    with pytest.raises(ModelConfigError, match="overlap"):
        ForecasterConfig(overlap=(1,))
    with pytest.raises(ModelConfigError, match="readout_time_tokens"):
        _setup(readout_time_tokens=2)
    assert ForecasterConfig.from_dict(ForecasterConfig.tiny().to_dict()) == ForecasterConfig.tiny()


@pytest.mark.slow
def test_tiny_forecaster_beats_persistence_on_an_advecting_field():
    """Waves move 2 grid points east per step; a frozen (untrained) encoder, 120 steps of training."""
    model, geo, index, meta = _setup(seed=0)
    g = torch.Generator().manual_seed(1)
    opt = torch.optim.AdamW(model.trainable_parameters(), lr=3e-3)
    for _ in range(120):
        f0, f1 = _fields(g, 8, 1)
        state = model.initial_state(model.encode(_batch(cut_tiles(f0, index), meta)))
        loss, _ = model.rollout_loss(
            state, [{"t": {"tokens": cut_tiles(f1, index)}}], lead_time=6.0, geometry=geo
        )
        opt.zero_grad()
        loss.backward()
        opt.step()
    f0, f1 = _fields(torch.Generator().manual_seed(99), 32, 1)
    now, nxt = cut_tiles(f0, index), cut_tiles(f1, index)
    with torch.no_grad():
        state = model.initial_state(model.encode(_batch(now, meta)))
        pred = model.rollout(state, 1, lead_time=6.0, geometry=geo).outputs[1]["t"].mean(1)
    mse = (pred - nxt).square().mean().item()
    persistence = (now - nxt).square().mean().item()
    a = (now * nxt).sum() / now.square().sum()  # the best damped persistence, a * now
    damped = (a * now - nxt).square().mean().item()
    assert mse < 0.7 * persistence and mse < damped, (mse, persistence, damped)
