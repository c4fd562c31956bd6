"""RolloutBatch.to: copies to the CPU block, whatever ``non_blocking`` says (review s11 r2 L10): a non-blocking
GPU -> CPU copy may not have arrived when the host reads it. CPU-only test: ``Tensor.to`` is recorded."""

from __future__ import annotations

import pytest
import torch

from fastload.reader import IOStats
from fastload.rollout_data import RolloutBatch


def _batch(device="cpu"):
    g = torch.Generator().manual_seed(0)
    B, W, T, L = 2, 1, 3, 1
    def r(*s):
        return torch.rand(*s, generator=g).to(device)
    return RolloutBatch(fields={"a": r(B, W, T, L, 1, 2, 2, 1, 2, 2)},
                        meta={"a": {"hour": r(B, W, 1), "day_of_year": r(B, W, 1), "lat": r(B, T, 2, 2),
                                    "lon": r(B, T, 2, 2), "level": r(L)}},
                        targets=[{"a": r(B, T, L, 1, 2, 2, 1, 2, 2)}], boxes=torch.zeros(B, W, T, 3),
                        t0=torch.zeros(B), lead_hours=r(B), index=0, epoch=0, stats=IOStats(), levelled=("a",))


@pytest.mark.parametrize("target, want", [("cpu", False), ("cuda", True), ("cuda:0", True)])
def test_non_blocking_only_towards_an_accelerator(monkeypatch, target, want):
    calls = []

    def fake_to(self, device, non_blocking=False):
        calls.append((str(device), non_blocking))
        return self.clone()

    b = _batch("meta")  # on another device than every target, so every tensor is copied
    monkeypatch.setattr(torch.Tensor, "to", fake_to)
    b.to(target)  # the default: non_blocking=True
    assert calls and all(nb is want for _, nb in calls), calls
    calls.clear()
    b.to(target, non_blocking=False)
    assert calls and all(nb is False for _, nb in calls)


@pytest.mark.gpu
def test_gpu_round_trip_gives_the_values():
    b = _batch()
    back = b.to("cuda").to("cpu")  # default non_blocking: the CPU copy must be complete when read
    assert torch.equal(back.fields["a"], b.fields["a"]) and torch.equal(back.targets[0]["a"], b.targets[0]["a"])
    assert torch.equal(back.meta["a"]["lat"], b.meta["a"]["lat"])
