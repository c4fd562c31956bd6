"""MFU's FLOPs are the model's: counted without activation checkpointing's recompute in the backward pass."""

from __future__ import annotations

import dataclasses

import torch

from model.layers import Checkpointable
from profiling.loop import _dummy_inputs, build_model, count_flops
from tests.profiling.loopdata import run_config


def test_flops_of_a_checkpointed_model_leave_out_the_recompute(tmp_path_factory):
    cfg = run_config(tmp_path_factory)
    ck = dataclasses.replace(cfg, model=dataclasses.replace(cfg.model, activation_checkpointing=True))
    sampling, cpu = cfg.data.sampling, torch.device("cpu")
    levelled = [f.name for f in sampling.fields if f.levels is not None]
    plain, checkpointed = build_model(cfg, sampling), build_model(ck, sampling)
    flags = [m.checkpointing for m in checkpointed.modules() if isinstance(m, Checkpointable)]
    assert any(flags)
    inputs = _dummy_inputs(sampling, 2, levelled, cpu)
    reference = count_flops(plain, inputs, cfg.model.loss, False, cpu)
    # the reference is the plain model's count; recompute would add a forward of every checkpointed block
    assert count_flops(checkpointed, inputs, cfg.model.loss, False, cpu) == reference > 0
    assert [m.checkpointing for m in checkpointed.modules() if isinstance(m, Checkpointable)] == flags  # restored
    from torch.utils.flop_counter import FlopCounterMode

    with FlopCounterMode(display=False) as c:  # (the count would differ with the recompute: the test can fail)
        from model import multiformer_loss

        loss, _ = multiformer_loss(checkpointed(inputs), inputs, kinds={cfg.model.loss: 1.0})
        loss.backward()
    assert c.get_total_flops() > reference
