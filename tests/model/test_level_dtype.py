"""The level table stays float32 when a model is cast to float16/bfloat16 (review s11 r2, M3): cast with the model,
pressure levels in Pa (50000, 85000, 100000) became [49984, inf, inf] in float16 and (1000, 1001) merged in
bfloat16, so every level looked up one embedding, and the stray-level check (comparing in float32) never fired."""

from __future__ import annotations

import pytest
import torch

from model import FieldSpec, Forecaster, ForecasterConfig, Multiformer, MultiformerConfig

META = ("time_of_day", "day_of_year", "lat", "lon")


def _net(levels):
    spec = FieldSpec(name="t", levels=levels, num_tokens=(1, 2, 2), token_size=(1, 2, 2), embed_dim=16, num_heads=2)
    torch.manual_seed(0)
    return Multiformer(MultiformerConfig(fields=(spec,), num_encoder_layers=1, num_decoder_layers=1,
                                         ensemble_size=2))


@pytest.mark.parametrize("levels, dtype", [
    ((50000.0, 85000.0, 100000.0), torch.float16),
    ((50000.0, 85000.0, 100000.0), torch.bfloat16),
    ((1000.0, 1001.0), torch.bfloat16),
    ((1000.0, 1001.0), torch.float64),
])
def test_each_level_looks_up_its_own_embedding_in_any_model_dtype(levels, dtype):
    net = _net(levels).to(dtype)
    emb = net.embed["t"]
    assert emb.level_values.dtype == torch.float32
    assert emb.level_values.tolist() == [float(v) for v in levels]
    assert emb.token.weight.dtype == dtype  # the parameters were cast
    # the index the level embedding is looked up with, for every level of the table, through the forward
    seen = []
    emb.level.register_forward_hook(lambda mod, args, out: seen.append(args[0].unique().tolist()))
    s = net.config.fields[0]
    grid = (1, s.num_levels, *s.num_tokens)
    item = {"tokens": torch.zeros(*grid, *s.token_size, dtype=dtype),
            "meta": {**{k: torch.zeros(grid) for k in META},
                     "level": torch.tensor(levels)[None, :, None, None, None].expand(grid)}}
    with torch.no_grad():
        net({"t": item})
        for lev in levels:  # one level at a time
            net({"t": {**item, "meta": {**item["meta"], "level": torch.full(grid, lev)}}})
    assert seen == [list(range(len(levels)))] + [[i] for i in range(len(levels))]


def test_forward_and_device_moves_keep_the_table():
    net = _net((50000.0, 85000.0, 100000.0)).half().float().to("cpu")
    assert net.embed["t"].level_values.dtype == torch.float32
    assert net.embed["t"].level_values.tolist() == [50000.0, 85000.0, 100000.0]  # rebuilt, not the lossy cast back
    # a Forecaster sharing the embedding keeps it too
    fc = Forecaster(ForecasterConfig.tiny(), net).to(torch.bfloat16)
    assert fc.embed["t"].level_values.tolist() == [50000.0, 85000.0, 100000.0]
