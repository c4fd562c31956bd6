"""``fastload train`` writes no checkpoint before the run's first update: with ``loader.on_bad_chunk = "skip"`` a
run whose batches so far were all empty holds an untrained (or merely resumed) model, which a checkpoint would
label with a later step and write over a good ``last.pt``. A run that never updates ends in check_trained's error
with the previous ``last.pt`` untouched; one whose first batches are empty checkpoints from its first update on."""

from __future__ import annotations

import dataclasses
import logging

import pytest

from fastload.config import LoaderConfig
from fastload.errors import StoreError
from profiling.presets import DataConfig
from tests.profiling.loopdata import run_config, sampling
from tests.profiling.test_train_skip import _all_bad, bad_copy, empty_steps


def _cfg(tmp_path_factory, tmp_path, store, norm, loader, steps):
    return run_config(tmp_path_factory, data=DataConfig(sampling=dataclasses.replace(sampling(norm), batch_size=1),
                                                        store=store), loader=loader, steps=steps, warmup=1,
                      checkpoint_dir=str(tmp_path / "ck"), checkpoint_every=1)


def test_a_run_that_trains_on_nothing_leaves_the_previous_checkpoint(tmp_path_factory, tmp_path, caplog):
    from profiling.loop import run

    bad, norm = _all_bad(tmp_path_factory, tmp_path)
    loader = LoaderConfig(workers=1, prefetch=2, samples_per_epoch=8, on_bad_chunk="skip", retries=0)
    cfg = _cfg(tmp_path_factory, tmp_path, bad, norm, loader, steps=3)
    (tmp_path / "ck").mkdir()
    good = tmp_path / "ck" / "last.pt"
    good.write_bytes(b"a good checkpoint of an earlier run")
    caplog.set_level(logging.ERROR, logger="fastload")
    lines: list[str] = []
    with pytest.raises(StoreError, match=r"trained on 0 samples"):
        run(cfg, mode="train", out=tmp_path / "out", log=lines.append)
    assert good.read_bytes() == b"a good checkpoint of an earlier run"
    assert sorted(p.name for p in (tmp_path / "ck").iterdir()) == ["last.pt"]
    assert [ln for ln in lines if ln.startswith("checkpoint")] == [
        f"checkpoint: none at step {k}: no step of this run has updated the model yet" for k in (1, 2, 3)]


def test_checkpoints_start_at_the_first_update(tmp_path_factory, tmp_path, monkeypatch, caplog):
    """Seed 11: the first two batches are empty, the third has its sample: checkpoints at steps 3 and 4 only,
    each of a model AdamW has stepped."""
    import profiling.loop as loop

    bad, norm = bad_copy(tmp_path_factory, tmp_path)
    loader = LoaderConfig(workers=1, prefetch=2, samples_per_epoch=8, on_bad_chunk="skip", retries=0, seed=11)
    empty = empty_steps(bad, norm, loader, epochs=1)[:4]
    assert empty[:3] == [True, True, False]
    saved = []
    real = loop.save_run

    def spy(path, net, opt, step, *a):
        saved.append((step, {int(v["step"]) for v in opt.state_dict()["state"].values()}))
        return real(path, net, opt, step, *a)

    monkeypatch.setattr(loop, "save_run", spy)
    caplog.set_level(logging.ERROR, logger="fastload")
    loop.run(_cfg(tmp_path_factory, tmp_path, bad, norm, loader, steps=4), mode="train", out=tmp_path / "out",
             log=lambda msg: None)
    updates = [sum(not e for e in empty[:k]) for k in (3, 4)]
    assert saved == [(3, {updates[0]}), (4, {updates[1]})]
    assert (tmp_path / "ck" / "last.pt").is_file()
