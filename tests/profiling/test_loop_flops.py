"""MFU's FLOPs are the model's: counted without activation checkpointing's recompute in the backward pass."""

from __future__ import annotations

import csv
import dataclasses

import pytest
import torch

from model.layers import Checkpointable
from profiling.loop import _dummy_inputs, build_model, count_flops, run
from profiling.report import format_table
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


@pytest.mark.parametrize("bf16", [False, True])
def test_mfu_is_against_the_peak_of_the_steps_precision(tmp_path_factory, tmp_path, monkeypatch, bf16):
    """The loop asks for the peak of its precision (review s13 r1 item 3: a float32 run was measured against the
    bf16 peak) and the summary and table say which peak MFU is of; MFU from steps.csv here."""
    import profiling.timers

    peaks = {"bf16": 8e12, "fp32": 0.5e12}  # a CPU run has no peak: this one is given one per precision
    asked = []

    def step_peak(device, bf16):
        asked.append(bf16)
        precision = "bf16" if bf16 else "fp32"
        return peaks[precision], precision

    monkeypatch.setattr(profiling.timers, "step_peak", step_peak)
    cfg = run_config(tmp_path_factory, steps=3, warmup=1, bf16=bf16)
    s = run(cfg, out=tmp_path, log=lambda msg: None)
    precision = "bf16" if bf16 else "fp32"
    assert asked == [bf16] and s["peak_precision"] == precision and s["peak_flops"] == peaks[precision]
    with open(tmp_path / "steps.csv") as fh:
        rows = list(csv.DictReader(fh))
    done = sum(s["flops_per_step"] * int(r["samples"]) / s["batch_size"] for r in rows)
    seconds = sum(float(r["step_ms"]) for r in rows) / 1e3
    assert s["mfu"] == pytest.approx(done / seconds / peaks[precision], rel=1e-9)
    peak_text = "8 TFLOP/s" if bf16 else "0.5 TFLOP/s"
    assert f"FLOP/step, {precision} peak {peak_text})" in format_table(s)
