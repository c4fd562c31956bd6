"""multiformer_loss: each field's weight (FieldSpec.loss_weight), batches of 0 samples, and "as_given" masking
without a target (review s11 r2: M1, L2, L9). References are NumPy means over the masked tokens."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch

from model import Multiformer, MultiformerConfig, multiformer_loss

from .synthetic import multiformer_batch


def _numpy_mse(ens: torch.Tensor, item: dict) -> float:
    """Mean over masked tokens of the members' mean squared error, from NumPy."""
    b, e = ens.shape[:2]
    s = int(np.prod(ens.shape[2:6]))
    x = ens.detach().double().numpy().reshape(b, e, s, -1)
    t = item.get("target", item["tokens"]).double().numpy().reshape(b, s, -1)
    m = item["mask"].numpy().reshape(b, s)
    return float(((x - t[:, None]) ** 2).mean(1).mean(-1)[m].mean())


def _weighted_config() -> MultiformerConfig:
    cfg = MultiformerConfig.tiny()
    a, b = cfg.fields
    return dataclasses.replace(cfg, fields=(dataclasses.replace(a, loss_weight=5.0), dataclasses.replace(b, loss_weight=0.25)))


def test_loss_weight_of_the_config_weighs_each_field():
    torch.manual_seed(0)
    cfg = _weighted_config()
    net = Multiformer(cfg)
    batch = multiformer_batch(cfg, 2, torch.Generator().manual_seed(0))
    out = net(batch)
    ref = {f.name: _numpy_mse(out[f.name], batch[f.name]) for f in cfg.fields}
    total, per_field = multiformer_loss(out, batch, config=cfg)
    for f in cfg.fields:
        assert per_field[f.name].item() == pytest.approx(ref[f.name], rel=1e-5)
    want = sum(f.loss_weight * ref[f.name] for f in cfg.fields)
    assert total.item() == pytest.approx(want, rel=1e-5)
    # explicit field_weights win for the fields they name; the others keep their loss_weight
    name0, name1 = cfg.field_names
    total2, _ = multiformer_loss(out, batch, config=cfg, field_weights={name0: 2.0})
    assert total2.item() == pytest.approx(2.0 * ref[name0] + 0.25 * ref[name1], rel=1e-5)
    # without a config (and no field_weights) every field weighs 1, as documented
    total3, _ = multiformer_loss(out, batch)
    assert total3.item() == pytest.approx(ref[name0] + ref[name1], rel=1e-5)


def test_multiformer_step_weighs_fields_by_loss_weight_as_the_rollout_loss_does():
    from profiling.steps import MultiformerStep

    torch.manual_seed(0)
    cfg = _weighted_config()
    net = Multiformer(cfg)
    batch = multiformer_batch(cfg, 2, torch.Generator().manual_seed(1))

    class Wrapper(torch.nn.Module):  # as profiling's SlowModel wraps the net: the config is found through it
        def __init__(self, inner):
            super().__init__()
            self.inner = inner

        def forward(self, x):
            return self.inner(x)

    for wrapped in (net, Wrapper(net)):
        loss = MultiformerStep(wrapped, {"mse": 1.0})(batch)
        out = net(batch)
        want = sum(f.loss_weight * _numpy_mse(out[f.name], batch[f.name]) for f in cfg.fields)
        assert loss.item() == pytest.approx(want, rel=1e-5)


def test_a_batch_of_0_samples_scores_a_connected_zero():
    torch.manual_seed(0)
    cfg = _weighted_config()
    net = Multiformer(cfg)
    batch = multiformer_batch(cfg, 2, torch.Generator().manual_seed(2))
    empty = {f: {k: ({m: x[:0] for m, x in v.items()} if k == "meta" else v[:0]) for k, v in it.items()}
             for f, it in batch.items()}
    out = net(empty)
    total, per_field = multiformer_loss(out, empty, kinds={"mse": 1.0, "crps": 1.0, "stats": 1.0, "lat_mse": 1.0},
                                        config=cfg)
    assert total.item() == 0.0 and all(v.item() == 0.0 for v in per_field.values())
    total.backward()  # connected to the outputs: every parameter that made them gets a (zero) gradient
    grads = [p.grad for p in net.parameters() if p.grad is not None]
    assert grads and all(not g.any() for g in grads)


def test_as_given_masking_without_a_target_is_refused():
    cfg = MultiformerConfig.tiny(mask_input="as_given")
    torch.manual_seed(0)
    net = Multiformer(cfg)
    batch = multiformer_batch(cfg, 2, torch.Generator().manual_seed(3))
    out = net(batch)
    name = cfg.field_names[0]
    with pytest.raises(ValueError, match=rf"batch\['{name}'\] has a 'mask' but no 'target'.*'as_given'"):
        multiformer_loss(out, batch, config=cfg)
    # with the truth as target it scores against the target, not the (zeroed) inputs
    given = {f: {**it, "target": it["tokens"], "tokens": torch.where(it["mask"][..., None, None, None], 0.0,
                                                                      it["tokens"])} for f, it in batch.items()}
    out = net(given)
    total, per_field = multiformer_loss(out, given, config=cfg)
    for f in cfg.fields:
        assert per_field[f.name].item() == pytest.approx(_numpy_mse(out[f.name], given[f.name]), rel=1e-5)
    # "learned" masking replaces the inputs itself: tokens are the truth, no target needed
    learned = MultiformerConfig.tiny()
    multiformer_loss(Multiformer(learned)(batch), batch, config=learned)
