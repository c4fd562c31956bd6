"""``fastload train`` on a store with bad chunks and ``loader.on_bad_chunk = "skip"``: a batch whose every sample was
skipped comes with 0 samples; the loop makes no update on it (no NaN loss, the model never sees 0 samples) and
counts it in the report. The step modules' zero loss of 0 samples gives every trainable parameter a zero gradient,
which is what keeps DDP's all-reduce in step (the 2-rank runs are in ``test_train_dist.py``)."""

from __future__ import annotations

import dataclasses
import logging
import math
import shutil
from types import SimpleNamespace

import numpy as np
import pytest
import torch

from fastload.config import LoaderConfig
from fastload.errors import StoreError
from fastload.loader import Loader
from profiling.presets import DataConfig
from tests.fastload.test_skip_batches import corrupt_time_chunk
from tests.profiling.loopdata import SlowModel, run_config, sampling, tiny_store


def bad_copy(tmp_path_factory, tmp_path):
    """A copy of the loop tests' store with every chunk of hours 0-5 (time chunk 0) corrupt, and its coefficients.
    A sample (6 hours from t0) needs a bad chunk iff t0 <= 5."""
    store, norm = tiny_store(tmp_path_factory)
    bad = tmp_path / "bad.zarr"
    shutil.copytree(store, bad)
    assert corrupt_time_chunk(bad, 0)
    return str(bad), norm


def empty_steps(bad: str, norm: str, loader: LoaderConfig, epochs: int, rank: int = 0, world: int = 1) -> list[bool]:
    """Per step (batch size 1), whether the rank's sample is bad, from the loader's plan and the corrupt hours."""
    cfg = dataclasses.replace(loader, rank=rank, world_size=world, device="cpu")
    with Loader(bad, dataclasses.replace(sampling(norm), batch_size=1), cfg) as ld:
        return [bool(b) for e in range(epochs) for b in ld.epoch_boxes(e)[:, 0] <= 5]


def test_empty_batches_make_no_update_and_are_reported(tmp_path_factory, tmp_path, caplog):
    from profiling.loop import run

    bad, norm = bad_copy(tmp_path_factory, tmp_path)
    loader = LoaderConfig(workers=1, prefetch=2, samples_per_epoch=8, on_bad_chunk="skip", retries=0)
    empty = empty_steps(bad, norm, loader, epochs=2)
    assert 0 < sum(empty) < len(empty) == 16
    cfg = run_config(tmp_path_factory, data=DataConfig(sampling=dataclasses.replace(sampling(norm), batch_size=1),
                                                       store=bad),
                     loader=loader, steps=16, warmup=1, checkpoint_dir=str(tmp_path / "ck"))
    models: list[SlowModel] = []

    def wrap(net):
        models.append(SlowModel(net, 0.0))
        return models[0]

    lines: list[str] = []
    caplog.set_level(logging.ERROR, logger="fastload")  # (each skipped sample warns)
    s = run(cfg, mode="train", out=tmp_path / "out", wrap_model=wrap, log=lines.append)
    assert s["skipped"] == {"samples": sum(empty), "empty_batches": sum(empty), "steps_without_update": sum(empty)}
    assert math.isfinite(s["final_loss"])
    assert len(models[0].took) == 16 - sum(empty)  # the model never saw 0 samples
    payload = torch.load(tmp_path / "ck" / "last.pt", weights_only=True)
    steps = {int(v["step"]) for v in payload["optimizer"]["state"].values()}
    assert steps == {16 - sum(empty)}  # AdamW stepped once per batch with samples, never on an empty one
    assert payload["extra"]["loader"][0]["batch"] == 8  # every batch taken: 2 epochs of 8 in 16 steps
    said = [ln for ln in lines if "skipped for bad chunks" in ln]
    assert said and f"{sum(empty)} sample(s), {sum(empty)} batch(es) left with none" in said[0]
    assert not any("nan" in ln.split("lr")[0] for ln in lines if ln.startswith("step "))


def test_zero_loss_of_0_samples_gives_every_trainable_parameter_a_zero_gradient(tmp_path_factory):
    from profiling.loop import build_model, model_inputs
    from profiling.steps import MultiformerStep, zero_loss

    cfg = run_config(tmp_path_factory)
    net = build_model(cfg, cfg.data.sampling)
    step = MultiformerStep(net, {"mse": 1.0})
    seen = []
    net.register_forward_hook(lambda *a: seen.append(1))
    batch = SimpleNamespace(fields={}, meta={}, masks=None)
    for f in cfg.data.sampling.fields:  # a 0-sample batch as the loader hands it out (fields and meta)
        nt, nlat, nlon = f.num_tokens
        batch.fields[f.name] = torch.zeros((0, *f.sample_shape))
        batch.meta[f.name] = {"hour": torch.zeros(0, nt), "day_of_year": torch.zeros(0, nt),
                              "lat": torch.zeros(0, nlat, nlon), "lon": torch.zeros(0, nlat, nlon),
                              "level": torch.tensor(f.levels or (0.0,), dtype=torch.float32)}
    levelled = [f.name for f in cfg.data.sampling.fields if f.levels is not None]
    loss = step(model_inputs(batch, levelled, torch.device("cpu")))
    loss.backward()
    assert loss.item() == 0.0 and not seen  # not the model on nothing (its mean over 0 tokens)
    grads = [p.grad for p in net.parameters()]
    assert all(g is not None and not g.any() for g in grads) and len(grads) > 10

    # a model with a frozen part (a Forecaster's encoder): only what requires grad takes part
    inner = torch.nn.Sequential(torch.nn.Linear(3, 4), torch.nn.Linear(4, 2))
    inner[0].requires_grad_(False)
    loss = zero_loss(inner)
    loss.backward()
    assert loss.item() == 0.0 and inner[0].weight.grad is None
    assert all(p.grad is not None and not p.grad.any() for p in inner[1].parameters())
    assert np.isfinite(loss.item())


def test_synthetic_mode_replays_a_batch_with_samples_not_an_empty_first_one(tmp_path_factory, tmp_path, caplog):
    """``--data synthetic`` replays the loader's first batch: with seed 11 the first two batches are empty, so
    the replayed batch is the third (each timed step trains on its 1 sample, the loss is finite)."""
    from profiling.loop import run

    bad, norm = bad_copy(tmp_path_factory, tmp_path)
    loader = LoaderConfig(workers=1, prefetch=2, samples_per_epoch=8, on_bad_chunk="skip", retries=0, seed=11)
    assert empty_steps(bad, norm, loader, epochs=1)[:3] == [True, True, False]
    cfg = run_config(tmp_path_factory, data=DataConfig(sampling=dataclasses.replace(sampling(norm), batch_size=1),
                                                       store=bad, mode="synthetic"), loader=loader, steps=3, warmup=1)
    caplog.set_level(logging.ERROR, logger="fastload")
    s = run(cfg, mode="profile", out=tmp_path / "out", log=lambda msg: None)
    assert s["samples"] == 2 and math.isfinite(s["final_loss"])
    assert s["skipped"] == {"samples": 0, "empty_batches": 0, "steps_without_update": 0}  # nothing skipped in replay


def _all_bad(tmp_path_factory, tmp_path):
    """A copy of the loop tests' store with every time chunk corrupt: every sample needs a bad chunk."""
    store, norm = tiny_store(tmp_path_factory)
    bad = tmp_path / "allbad.zarr"
    shutil.copytree(store, bad)
    for k in range(4):  # 24 hours in chunks of 6
        assert corrupt_time_chunk(bad, k)
    return str(bad), norm


def test_a_run_that_trained_on_no_sample_is_an_error(tmp_path_factory, tmp_path, caplog):
    """Every sample skipped (review r5 F3): the run ended as a success with 0 samples and a NaN loss; now an error
    names loader.on_bad_chunk, the count skipped and the store. Synthetic mode said 'the loader produced no batch'
    (it produced 8, all empty)."""
    from profiling.loop import run

    bad, norm = _all_bad(tmp_path_factory, tmp_path)
    loader = LoaderConfig(workers=1, prefetch=2, samples_per_epoch=8, on_bad_chunk="skip", retries=0)
    caplog.set_level(logging.ERROR, logger="fastload")
    for mode, want in (("cached", r"trained on 0 samples.*loader.on_bad_chunk = 'skip'.*4 step\(s\) was empty "
                                  r"\(4 sample\(s\) of this rank skipped"),
                       ("synthetic", r"every batch of the loader's first epoch was empty.*loader.on_bad_chunk = "
                                     r"'skip', all 8 sample\(s\)")):
        cfg = run_config(tmp_path_factory, data=DataConfig(sampling=dataclasses.replace(sampling(norm), batch_size=1),
                                                           store=bad, mode=mode), loader=loader, steps=4, warmup=1)
        with pytest.raises(StoreError, match=want) as err:
            run(cfg, mode="profile", out=tmp_path / mode, log=lambda msg: None)
        assert "allbad.zarr" in str(err.value)
        assert not (tmp_path / mode / "summary.json").exists()  # no report of a run that trained on nothing


def test_only_ddp_with_skip_on_the_store_loader_sums_sample_counts(tmp_path_factory, monkeypatch):
    """The count all-reduce (a collective per step) only where a rank's batch can be empty: DDP, skip, the
    Multiformer's Loader reading the store; not for the rollout loader (it refuses skip) nor synthetic mode (review
    r5 F2). Elsewhere the counter is this process's: no collective, the loss and gradients unchanged."""
    import torch.distributed as dist

    from profiling import steps

    groups = []
    monkeypatch.setattr(dist, "new_group", lambda **kw: groups.append(kw) or "group")
    cfg = run_config(tmp_path_factory, loader=LoaderConfig(on_bad_chunk="skip"))
    synthetic = dataclasses.replace(cfg, data=dataclasses.replace(cfg.data, mode="synthetic"))
    raising = dataclasses.replace(cfg, loader=LoaderConfig())
    for c, world, forecast in ((cfg, 1, False), (cfg, 2, True), (synthetic, 2, False), (raising, 2, False)):
        counter = steps.sample_counter(c, world, forecast)
        assert counter.group is None
        counter.start(3)
        loss = torch.tensor(2.0)
        p = torch.nn.Parameter(torch.ones(2))
        p.grad = torch.full((2,), 5.0)
        counter.scale_grads([p])
        assert counter.weigh(loss) is loss and counter.total() == 3 and p.grad.tolist() == [5.0, 5.0]
    assert not groups
    assert steps.sample_counter(cfg, 2, False).group == "group" and len(groups) == 1
