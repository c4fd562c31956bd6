"""Fields whose leading batch axes differ are refused, naming both fields and their shapes: the Multiformer's
(B,) and the Forecaster's (B, T), which flattened (2, 3) and (3, 2) alike and mixed tiles across samples (review
s14 r4 p11, p12)."""

from __future__ import annotations

import pytest
import torch

from model import Forecaster, ForecasterConfig, Multiformer, MultiformerConfig
from model._config import ModelConfigError

from .synthetic import multiformer_batch


def _tiles(spec, b: int, t: int, g: torch.Generator) -> dict:
    grid = (b, t, spec.num_levels, *spec.num_tokens)
    return {"tokens": torch.randn(b, t, *spec.sample_shape, generator=g),
            "meta": {"time_of_day": torch.zeros(grid), "day_of_year": torch.zeros(grid),
                     "lat": torch.rand(grid, generator=g) * 60, "lon": torch.rand(grid, generator=g) * 360}}


def _drop(item: dict, n: int) -> dict:
    return {"tokens": item["tokens"][:n], "meta": {k: v[:n] for k, v in item["meta"].items()},
            "mask": item["mask"][:n]}


@pytest.mark.parametrize("n", [2, 1])
def test_the_multiformer_refuses_fields_with_different_batch_sizes(n):
    cfg = MultiformerConfig.tiny()
    net = Multiformer(cfg).eval()
    batch = multiformer_batch(cfg, 3, torch.Generator().manual_seed(0))
    f0, f1 = cfg.fields[0].name, cfg.fields[1].name
    batch[f1] = _drop(batch[f1], n)
    shape0, shape1 = tuple(batch[f0]["tokens"].shape), tuple(batch[f1]["tokens"].shape)
    with torch.no_grad(), pytest.raises(ModelConfigError) as err:
        net(batch)
    msg = str(err.value)
    assert f"batch[{f1!r}]['tokens']: leading batch axes (B,) = ({n},)" in msg
    assert f"(shape {shape1})" in msg and f"batch[{f0!r}]['tokens']'s (3,) (shape {shape0})" in msg


@pytest.mark.parametrize("bt", [(3, 2), (2, 2), (1, 3)])
def test_the_forecaster_refuses_fields_with_different_sample_or_tile_axes(bt):
    mc = MultiformerConfig.tiny(num_fields=2)
    fo = Forecaster(ForecasterConfig.tiny(), Multiformer(mc)).eval()
    g = torch.Generator().manual_seed(0)
    a, b = mc.fields
    win = {a.name: _tiles(a, 2, 3, g), b.name: _tiles(b, *bt, g)}  # (3, 2): as many tiles in all, mixed before
    with torch.no_grad(), pytest.raises(ModelConfigError) as err:
        fo.encode(win)
    msg = str(err.value)
    assert f"batch[{b.name!r}]['tokens']: leading batch axes (B, T) = {bt}" in msg
    assert f"batch[{a.name!r}]['tokens']'s (2, 3) (shape {tuple(win[a.name]['tokens'].shape)})" in msg
    assert "samples and tiles" in msg
    win[b.name] = _tiles(b, 2, 3, g)  # the same axes: accepted
    with torch.no_grad():
        assert tuple(fo.encode(win).shape[:2]) == (2, 3)
