"""Checkpoints: bit-exact resume (weights, optimizer, RNG) and assembling coupled models from single-field runs."""

from __future__ import annotations

import dataclasses

import pytest
import torch

from model import (
    Forecaster,
    ForecasterConfig,
    Multiformer,
    MultiformerConfig,
    assemble_multiformer,
    load_checkpoint,
    multiformer_loss,
    save_checkpoint,
)
from model.checkpoint import split_components

from .synthetic import multiformer_batch


def _train(model, opt, cfg, g, steps):
    for _ in range(steps):
        batch = multiformer_batch(cfg, 2, g)
        # the RNG is part of the state to resume: draw from the global generator every step
        for item in batch.values():
            item["tokens"] = item["tokens"] + 0.01 * torch.randn(item["tokens"].shape)
        opt.zero_grad()
        multiformer_loss(model(batch), batch)[0].backward()
        opt.step()


def test_resume_is_bit_exact(tmp_path):
    cfg = MultiformerConfig.tiny()
    torch.manual_seed(0)
    model = Multiformer(cfg)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
    _train(model, opt, cfg, torch.Generator().manual_seed(1), 2)
    path = save_checkpoint(tmp_path / "ckpt" / "step2.pt", model, opt, step=2, extra={"epoch": 0})
    assert [p.name for p in path.parent.iterdir()] == ["step2.pt"]  # no temporary file left behind
    _train(model, opt, cfg, torch.Generator().manual_seed(2), 2)
    straight = {k: v.clone() for k, v in model.state_dict().items()}

    torch.manual_seed(123)  # a different RNG state, restored by the load
    fresh = Multiformer(cfg)
    fresh_opt = torch.optim.AdamW(fresh.parameters(), lr=1e-3)
    info = load_checkpoint(path, fresh, fresh_opt)
    assert info == {"step": 2, "extra": {"epoch": 0}}
    _train(fresh, fresh_opt, cfg, torch.Generator().manual_seed(2), 2)
    resumed = fresh.state_dict()
    assert straight.keys() == resumed.keys()
    for k in straight:
        assert torch.equal(straight[k], resumed[k]), k
    assert str(opt.state_dict()) == str(fresh_opt.state_dict())


def test_load_refuses_a_different_config(tmp_path):
    cfg = MultiformerConfig.tiny()
    path = save_checkpoint(tmp_path / "a.pt", Multiformer(cfg))
    other = Multiformer(dataclasses.replace(cfg, ensemble_size=2))
    with pytest.raises(ValueError, match="ensemble_size"):
        load_checkpoint(path, other)
    with pytest.raises(ValueError, match="no optimizer"):
        load_checkpoint(path, Multiformer(cfg), torch.optim.SGD(Multiformer(cfg).parameters(), lr=0.1))
    with pytest.raises(FileNotFoundError, match="nope.pt"):
        load_checkpoint(tmp_path / "nope.pt", Multiformer(cfg))


def test_resume_refuses_an_optimizer_state_of_other_parameters(tmp_path):
    """A run saved when the model had other parameters (one fewer here, as before the missing-value indicator):
    a clear error naming the counts and what still loads, and the model untouched; its weights load alone."""
    cfg = MultiformerConfig.tiny()
    model = Multiformer(cfg)
    params = list(model.parameters())
    opt = torch.optim.AdamW(params[:-1], lr=1e-3)
    path = save_checkpoint(tmp_path / "old.pt", model, opt, step=3)
    fresh = Multiformer(cfg)
    before = {k: v.clone() for k, v in fresh.state_dict().items()}
    with pytest.raises(ValueError, match=rf"{len(params) - 1} parameter tensor.*has {len(params)}.*without the optimizer"):
        load_checkpoint(path, fresh, torch.optim.AdamW(fresh.parameters(), lr=1e-3))
    assert all(torch.equal(before[k], v) for k, v in fresh.state_dict().items())
    assert load_checkpoint(path, fresh)["step"] == 3


def test_components_are_split_per_field():
    model = Multiformer(MultiformerConfig.tiny())
    comps = split_components(model)
    assert sorted(comps) == ["humidity", "temperature"]
    assert sorted(comps["temperature"]) == ["decoder", "embed", "encoder", "tail"]
    assert "layers.1.cross.humidity.attn.q.weight" in comps["temperature"]["encoder"]
    n = sum(v.numel() for f in comps.values() for sd in f.values() for v in sd.values())
    assert n == model.num_parameters()


def test_assemble_two_field_model_from_single_field_runs(tmp_path):
    two = MultiformerConfig.tiny(num_fields=2)
    singles, paths = {}, {}
    for i, spec in enumerate(two.fields):
        torch.manual_seed(10 + i)
        one = dataclasses.replace(two, fields=(dataclasses.replace(spec, coupled=()),))
        singles[spec.name] = Multiformer(one)
        paths[spec.name] = save_checkpoint(tmp_path / f"{spec.name}.pt", singles[spec.name])
    torch.manual_seed(0)
    coupled = assemble_multiformer(two, paths)
    batch = multiformer_batch(two, 2, torch.Generator().manual_seed(3))
    with torch.no_grad():
        out = coupled(batch)
        for name, single in singles.items():
            # coupling heads start at zero output: the assembled model predicts what the single runs predicted
            assert torch.equal(out[name], single({name: batch[name]})[name])
    # and the coupling heads do train from there
    opt = torch.optim.SGD(coupled.parameters(), lr=0.1)
    for _ in range(2):
        opt.zero_grad()
        multiformer_loss(coupled(batch), batch)[0].backward()
        opt.step()
    assert coupled.encoder.layers[0]["temperature"].cross["humidity"].attn.out.weight.abs().max() > 0


def test_assemble_rejects_mismatched_fields(tmp_path):
    two = MultiformerConfig.tiny(num_fields=2)
    spec = two.fields[0]
    alone = dataclasses.replace(two, fields=(dataclasses.replace(spec, coupled=()),))
    good = save_checkpoint(tmp_path / "good.pt", Multiformer(alone))
    wide = dataclasses.replace(two, fields=(dataclasses.replace(spec, coupled=(), embed_dim=16),))
    bad = save_checkpoint(tmp_path / "wide.pt", Multiformer(wide))
    with pytest.raises(ValueError, match="embed_dim"):
        assemble_multiformer(two, {spec.name: bad, "humidity": good})
    with pytest.raises(ValueError, match="no checkpoint for field"):
        assemble_multiformer(two, {spec.name: good})
    with pytest.raises(ValueError, match="holds no Multiformer field 'humidity'"):
        assemble_multiformer(two, {spec.name: good, "humidity": good})


def test_forecaster_checkpoint_round_trip(tmp_path):
    torch.manual_seed(0)
    mf = Multiformer(MultiformerConfig.tiny(num_fields=1))
    fc = Forecaster(ForecasterConfig.tiny(), mf)
    path = save_checkpoint(tmp_path / "fc.pt", fc, step=7)
    torch.manual_seed(1)
    other = Forecaster(ForecasterConfig.tiny(), Multiformer(MultiformerConfig.tiny(num_fields=1)))
    assert load_checkpoint(path, other)["step"] == 7
    for (k, a), (_, b) in zip(fc.state_dict().items(), other.state_dict().items()):
        assert torch.equal(a, b), k
