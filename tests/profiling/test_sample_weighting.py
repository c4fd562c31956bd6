"""The DDP sample weighting as ``fastload train`` applies it (profiling.loop with profiling.steps.SampleCounter).

Two gloo ranks whose batches hold different sample counts (``on_bad_chunk = "skip"`` drops the samples that need a
corrupt chunk: per step (1, 0), (2, 1), (2, 2), (2, 0) samples with loader seed 2) must end where one process
ends that trains on the union of their batches: with forecast masking every sample has the same masked tokens, so
the Multiformer's token-mean loss on the union is the sample-count-weighted mean of the ranks' losses. Without
the loop's weighting (DDP's plain mean of the ranks' means) the (2, 1) step weighs rank 1's sample double and the
(1, 0) and (2, 0) steps are halved: the weights differ. The union of the two ranks' batch k is the one process's
batch k of twice the size (the loader deals windows round-robin). Gradient clipping is off: AdamW does not see a
constant gradient scale, and a clip that binds in every step would hide a missing ``world / N`` (the step's scale
varies with N, which AdamW's moments do see). Checked by hand: dropping the weighting, or only the scaling, from
the loop moves 15000-20000 of the 21884 weights out of the tolerance (max difference 1e-3, against 1.2e-7 with it).
Also: ``SampleCounter.total`` only counts."""

from __future__ import annotations

import datetime
import logging

import pytest
import torch

from tests.profiling.loopdata import run_toml
from tests.profiling.test_train_dist import _torchrun
from tests.profiling.test_train_skip import bad_copy

SETS = ["loader.on_bad_chunk=skip", "loader.retries=0", "loader.seed=2", "masking.strategy=forecast",
        "optim.grad_clip=0", "threads=1"]


def _weights(path) -> dict[str, torch.Tensor]:
    payload = torch.load(path, weights_only=True)
    return {f"{f}.{c}.{k}": v for f, comps in payload["components"].items() for c, sd in comps.items()
            for k, v in sd.items()}


@pytest.mark.dist
@pytest.mark.slow
def test_two_ranks_with_unequal_samples_step_as_one_process_on_their_union(tmp_path_factory, tmp_path, caplog):
    from fastload.config import LoaderConfig
    from profiling.loop import run
    from profiling.presets import load_run_config
    from tests.profiling.test_train_skip import empty_steps

    bad, norm = bad_copy(tmp_path_factory, tmp_path)
    toml = run_toml(tmp_path, bad, norm, warmup=0)
    loader = LoaderConfig(workers=1, samples_per_epoch=16, on_bad_chunk="skip", seed=2, batch_size=2)
    full = [[not e for e in empty_steps(bad, norm, loader, epochs=1, rank=r, world=2)] for r in (0, 1)]
    counts = [(sum(full[0][2 * k:2 * k + 2]), sum(full[1][2 * k:2 * k + 2])) for k in range(4)]
    assert counts == [(1, 0), (2, 1), (2, 2), (2, 0)]  # an empty rank, and unequal non-empty ranks

    sets = [a for s in [*SETS, "loader.batch_size=2"] for a in ("--set", s)]
    _torchrun(["-m", "profiling.loop", "train", "--config", str(toml), "--device", "cpu", "--steps", "4",
               "--out", str(tmp_path / "ddp"), "--checkpoint-dir", str(tmp_path / "ck2"), *sets], tmp_path,
              timeout=300)
    cfg = load_run_config(str(toml), overrides=[*SETS, "loader.batch_size=4", "steps=4", "warmup=0", "device=cpu",
                                                f"checkpoint_dir={tmp_path / 'ck1'}"])
    caplog.set_level(logging.ERROR, logger="fastload")
    run(cfg, mode="train", out=tmp_path / "one", log=lambda msg: None)

    two, one = _weights(tmp_path / "ck2" / "last.pt"), _weights(tmp_path / "ck1" / "last.pt")
    assert two.keys() == one.keys() and len(one) > 20
    moved = max(float((v - w).abs().max()) for v, w in zip(one.values(), _initial(cfg).values(), strict=True))
    assert moved > 1e-3  # the four steps did train
    for k in one:
        torch.testing.assert_close(two[k], one[k], rtol=1e-4, atol=2e-6, msg=k)


def _initial(cfg) -> dict[str, torch.Tensor]:
    from model.checkpoint import split_components
    from profiling.loop import build_model

    net = build_model(cfg, cfg.data.sampling)
    return {f"{f}.{c}.{k}": v for f, comps in split_components(net).items() for c, sd in comps.items()
            for k, v in sd.items()}


def test_total_only_counts_and_scale_grads_scales(tmp_path):
    """One gloo rank: ``total()`` returns the summed count and leaves the gradients alone (its name says it
    counts); ``scale_grads`` makes them the mean over the samples (``world / N``)."""
    import torch.distributed as dist

    from profiling.steps import SampleCounter

    dist.init_process_group("gloo", init_method=f"file://{tmp_path / 'pg'}", rank=0, world_size=1,
                            timeout=datetime.timedelta(seconds=60))
    try:
        counter = SampleCounter(1, 60.0)
        p = torch.nn.Parameter(torch.ones(2))
        for n in (3, 0):
            p.grad = torch.full((2,), 6.0)
            counter.start(n)
            assert counter.total() == n and counter.total() == n and p.grad.tolist() == [6.0, 6.0]
            counter.scale_grads([p])
            assert p.grad.tolist() == ([2.0, 2.0] if n else [6.0, 6.0])
    finally:
        dist.destroy_process_group()


