"""Blocks against explicit references: attention with key padding, periodic features, adaLN-Zero identity."""

from __future__ import annotations

import math

import pytest
import torch

from model.layers import (
    MLP,
    AdaLNModulation,
    Attention,
    EnsembleTail,
    modulate,
    offset_features,
    scalar_embedding,
    sphere_features,
    time_features,
)


def _naive(q, k, v, valid):
    """softmax(q k^T / sqrt(d)) v with invalid keys at -inf, per batch and head, with Python loops."""
    b, h, s, d = q.shape
    out = torch.empty_like(q)
    for i in range(b):
        for j in range(h):
            logits = q[i, j] @ k[i, j].T / math.sqrt(d)
            if valid is not None:
                logits[:, ~valid[i]] = -math.inf
            out[i, j] = torch.softmax(logits, -1) @ v[i, j]
    return out


@pytest.mark.parametrize("cross", [False, True])
@pytest.mark.parametrize("qk_norm", [False, True])
def test_attention_matches_naive_reference_with_padding(cross, qk_norm):
    torch.manual_seed(0)
    dim, heads, hd, kv_dim = 12, 3, 4, 10
    attn = Attention(dim, heads, hd, kv_dim=kv_dim if cross else None, qk_norm=qk_norm).double()
    x = torch.randn(2, 5, dim, dtype=torch.float64)
    ctx = torch.randn(2, 7, kv_dim, dtype=torch.float64) if cross else None
    valid = torch.rand(2, 7 if cross else 5) < 0.6
    valid[:, 0] = True
    got = attn(x, ctx, valid)
    with torch.no_grad():
        if cross:
            q = attn.q(x).view(2, 5, heads, hd)
            k, v = attn.kv(ctx).view(2, 7, 2, heads, hd).unbind(2)
        else:
            q, k, v = attn.qkv(x).view(2, 5, 3, heads, hd).unbind(2)
        q, k = attn.q_norm(q), attn.k_norm(k)
        o = _naive(q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2), valid)
        ref = attn.out(o.transpose(1, 2).reshape(2, 5, heads * hd))
    torch.testing.assert_close(got, ref)


def test_padded_keys_do_not_influence_the_output():
    torch.manual_seed(1)
    attn = Attention(8, 2, 4)
    x = torch.randn(1, 6, 8)
    valid = torch.tensor([[True, True, False, True, False, True]])
    y1 = attn(x, key_valid=valid)
    x2 = x.clone()
    x2[0, 2] += 100.0
    x2[0, 4] = -50.0
    y2 = attn(x2, key_valid=valid)
    keep = valid[0]
    torch.testing.assert_close(y1[:, keep], y2[:, keep])


def test_zero_init_out_adds_nothing():
    attn = Attention(8, 2, 4, kv_dim=6, zero_init_out=True)
    assert attn(torch.randn(2, 3, 8), torch.randn(2, 5, 6)).abs().max().item() == 0.0


def test_sphere_features_are_periodic_in_longitude_and_seamless():
    lat = torch.tensor([10.0, -45.0, 89.0])
    a = sphere_features(lat, torch.tensor([359.75, 0.0, 180.0]), 4)
    b = sphere_features(lat, torch.tensor([-0.25, 360.0, -180.0]), 4)
    torch.testing.assert_close(a, b, atol=1e-5, rtol=0)
    # neighbours across the seam are as close as neighbours elsewhere
    seam = sphere_features(lat[:1], torch.tensor([359.9]), 4) - sphere_features(
        lat[:1], torch.tensor([0.1]), 4
    )
    mid = sphere_features(lat[:1], torch.tensor([99.9]), 4) - sphere_features(
        lat[:1], torch.tensor([100.1]), 4
    )
    assert seam.norm().item() == pytest.approx(mid.norm().item(), rel=1e-3)
    assert a.shape == (3, 3 + 4 * 4)


def test_time_and_offset_features():
    f = time_features(torch.tensor([0.0, 24.0, 6.0]), torch.tensor([0.0, 365.25, 0.0]))
    torch.testing.assert_close(f[0], f[1], atol=1e-5, rtol=0)
    assert f[2, 0].item() == pytest.approx(1.0)  # sin(2 pi 6 / 24)
    o1 = offset_features(torch.tensor([0.0]), torch.tensor([350.0]), 3)
    o2 = offset_features(torch.tensor([0.0]), torch.tensor([-10.0]), 3)
    torch.testing.assert_close(o1, o2, atol=1e-5, rtol=0)


def test_adaln_zero_block_is_identity_at_init_and_modulate():
    ada = AdaLNModulation(6, 4, 3)
    shift, scale, gate = ada(torch.randn(2, 6))
    assert all(t.abs().max().item() == 0.0 for t in (shift, scale, gate))
    x = torch.randn(2, 5, 4)
    torch.testing.assert_close(modulate(x, torch.ones(2, 4), torch.ones(2, 4)), 2 * x + 1)


def test_scalar_embedding_and_shapes():
    e = scalar_embedding(torch.tensor([0.0, 6.0, 12.0]), 8)
    assert e.shape == (3, 8)
    assert not torch.allclose(e[1], e[2])
    assert MLP(8, 2.0)(torch.randn(3, 8)).shape == (3, 8)
    assert EnsembleTail(8, 5, 4)(torch.randn(2, 3, 8)).shape == (2, 4, 3, 5)
