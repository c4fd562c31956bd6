"""The spread ``fastload rollout`` writes is the unbiased std over the members (ddof 1), as
``model.losses.ensemble_statistics`` and the "stats" loss define it (review s11 r2 L8: it wrote ddof 0)."""

from __future__ import annotations

from types import SimpleNamespace

import numpy as np
import pytest
import torch

from model.losses import ensemble_statistics
from profiling.rollout import _write


class _Writer:
    def __init__(self):
        self.got = {}

    def write(self, name, values, row):
        self.got[name] = (values, row)


@pytest.mark.parametrize("members, levels", [(4, None), (3, (500.0, 850.0)), (1, None)])
def test_spread_is_the_unbiased_std_of_the_members(members, levels):
    rng = np.random.default_rng(members)
    L = 1 if levels is None else len(levels)
    x = rng.standard_normal((members, L, 2, 3, 5)).astype(np.float32) * 3 + 100  # (E, L, Tp, NY, NX)
    f = SimpleNamespace(name="t", levels=levels)
    wr = _Writer()
    _write(wr, f, x, [] if levels is None else list(levels), row=7)
    spread, row = wr.got["t_spread"]
    mean, _ = wr.got["t"]
    assert row == 7
    want = x.astype(np.float64).std(axis=0, ddof=1) if members > 1 else np.zeros(x.shape[1:])
    want = np.moveaxis(want, 1, 0)  # (Tp, L, NY, NX)
    got = spread[:, None] if levels is None else spread
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(mean if levels else mean[:, None], np.moveaxis(x.astype(np.float64).mean(0), 1, 0),
                               rtol=1e-6)
    # the same as the model's own ensemble statistics
    _, model_spread = ensemble_statistics(torch.from_numpy(x), dim=0)
    np.testing.assert_allclose(got, np.moveaxis(model_spread.numpy(), 1, 0), rtol=1e-4, atol=1e-4)
