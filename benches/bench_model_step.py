"""One Multiformer training step on a GPU: tokens/s, step time and model FLOP utilisation (MFU).

Why: the loader is only worth its speed if the model step is efficient too; MFU says how much of the GPU's dense
bf16 peak the step uses. FLOPs are counted with :class:`torch.utils.flop_counter.FlopCounterMode` over one eager
forward + backward (the optimizer's few FLOPs are left out, as is usual), and divided by the measured step time
(forward + backward + AdamW, CUDA events around ``steps`` steps after ``warmup`` steps) and the device's dense bf16
peak from :data:`profiling.timers.PEAK_BF16_DENSE` (``FASTLOAD_PEAK_TFLOPS`` overrides it). The batch is synthetic and already
on the device: no data loading is timed here.

Run::

    pytest benches/bench_model_step.py -s                     # GPU only; skipped without CUDA
    python benches/bench_model_step.py --batch 8 --compile    # one configuration, a table on the terminal
    python benches/bench_model_step.py --config tiny --device cpu --steps 2   # a CPU smoke run of this script
"""

from __future__ import annotations

import argparse
import math
import os
import sys
import time
from pathlib import Path
from typing import Any

import pytest
import torch
from torch.utils.flop_counter import FlopCounterMode

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from model import (  # noqa: E402
    Multiformer,
    MultiformerConfig,
    apply_activation_checkpointing,
    apply_compile,
    multiformer_loss,
)
from profiling.timers import peak_flops  # noqa: E402


def peak_tflops(device: torch.device) -> float | None:
    """Dense bf16 peak of ``device`` in TFLOP/s (``FASTLOAD_PEAK_TFLOPS`` overrides it), or None when unknown: a CPU,
    or a GPU not in :data:`profiling.timers.PEAK_BF16_DENSE` (the table ``fastload profile``'s MFU uses)."""
    env = os.environ.get("FASTLOAD_PEAK_TFLOPS")
    if env:
        return float(env)
    if device.type != "cuda":
        return None
    peak = peak_flops(torch.cuda.get_device_name(device), "bf16")
    return None if peak is None else peak / 1e12


def synthetic_batch(cfg: MultiformerConfig, batch_size: int, device: torch.device, seed: int = 0) -> dict:
    """Random normalised tokens, plausible metadata and a 50% mask per field, on ``device``."""
    g = torch.Generator().manual_seed(seed)
    batch = {}
    for f in cfg.fields:
        grid = (batch_size, f.num_levels, *f.num_tokens)
        batch[f.name] = {
            "tokens": torch.randn(batch_size, *f.sample_shape, generator=g),
            "meta": {
                "time_of_day": torch.rand(grid, generator=g) * 24,
                "day_of_year": torch.rand(grid, generator=g) * 365,
                "lat": torch.rand(grid, generator=g) * 180 - 90,
                "lon": torch.rand(grid, generator=g) * 360,
                "level": torch.tensor(f.levels).view(1, -1, 1, 1, 1).expand(grid).contiguous(),
            },
            "mask": torch.rand(grid, generator=g) < 0.5,
        }
    return {f: {k: ({m: t.to(device) for m, t in v.items()} if k == "meta" else v.to(device)) for k, v in item.items()}
            for f, item in batch.items()}  # fmt: skip


def _forward_backward(model: Multiformer, batch: dict, device: torch.device) -> torch.Tensor:
    with torch.autocast(device.type, dtype=torch.bfloat16):
        loss, _ = multiformer_loss(model(batch), batch)
    loss.backward()
    return loss


def count_flops(model: Multiformer, batch: dict, device: torch.device) -> int:
    """FLOPs of one eager forward + backward (matmuls and attention, as FlopCounterMode counts them)."""
    with FlopCounterMode(display=False) as counter:
        _forward_backward(model, batch, device)
    model.zero_grad(set_to_none=True)
    return counter.get_total_flops()


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)  # sync point: timing boundary


def measure(
    cfg: MultiformerConfig,
    batch_size: int,
    device: torch.device,
    *,
    compiled: bool = False,
    checkpointing: bool = False,
    steps: int = 10,
    warmup: int = 3,
) -> dict[str, Any]:
    """Build the model and a batch on ``device``, count FLOPs, time ``steps`` training steps; return the figures."""
    torch.manual_seed(0)
    model = Multiformer(cfg).to(device)
    fused = device.type == "cuda"
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4, fused=fused)
    batch = synthetic_batch(cfg, batch_size, device)
    flops = count_flops(model, batch, device)
    if checkpointing:
        apply_activation_checkpointing(model)
    if compiled:
        apply_compile(model)

    def step() -> torch.Tensor:
        loss = _forward_backward(model, batch, device)
        opt.step()
        opt.zero_grad(set_to_none=True)
        return loss

    t0 = time.perf_counter()
    for _ in range(warmup):
        loss = step()
    _sync(device)
    warmup_s = time.perf_counter() - t0
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        for _ in range(steps):
            loss = step()
        end.record()
        _sync(device)
        step_s = start.elapsed_time(end) / 1e3 / steps
        peak_mem = torch.cuda.max_memory_allocated(device) / 2**30
    else:
        t0 = time.perf_counter()
        for _ in range(steps):
            loss = step()
        step_s = (time.perf_counter() - t0) / steps
        peak_mem = float("nan")
    if not math.isfinite(loss.item()):  # sync point: once, after timing
        raise RuntimeError(f"bench_model_step: non-finite loss {loss.item()}")
    tokens = batch_size * sum(f.seq_len for f in cfg.fields)
    peak = peak_tflops(device)
    achieved = flops / step_s / 1e12
    return {
        "device": torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu",
        "params_M": model.num_parameters() / 1e6,
        "batch": batch_size,
        "compiled": compiled,
        "checkpointing": checkpointing,
        "tokens_per_step": tokens,
        "step_ms": step_s * 1e3,
        "tokens_per_s": tokens / step_s,
        "samples_per_s": batch_size / step_s,
        "tflop_per_step": flops / 1e12,
        "tflops": achieved,
        "peak_tflops": peak,
        "mfu": None if peak is None else achieved / peak,
        "peak_mem_gib": peak_mem,
        "warmup_s": warmup_s,
    }


def format_table(rows: list[dict[str, Any]]) -> str:
    cols = ["device", "batch", "compiled", "checkpointing", "step_ms", "tokens_per_s", "tflops", "mfu",
            "peak_mem_gib", "params_M"]  # fmt: skip

    def cell(v: Any) -> str:
        if isinstance(v, float):
            return f"{v:.3g}" if abs(v) < 1e4 else f"{v:,.0f}"
        return str(v)

    lines = ["| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
    lines += ["| " + " | ".join(cell(r[c]) for c in cols) + " |" for r in rows]
    return "\n".join(lines)


# ----------------------------------------------------------------------------------------------------- pytest

pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device"),
]


@pytest.mark.parametrize(("batch_size", "compiled"), [(4, False), (8, False), (8, True)])
def test_model_step_atmorep(benchmark, report, batch_size, compiled):
    """AtmoRep-sized single-field Multiformer (5 levels x [12, 6, 12] tokens of [3, 9, 9], 1024 wide, 6 + 6)."""
    cfg = MultiformerConfig.atmorep()
    device = torch.device("cuda")
    result = benchmark.pedantic(
        lambda: measure(cfg, batch_size, device, compiled=compiled), rounds=1, iterations=1, warmup_rounds=0
    )
    assert result["tflop_per_step"] > 0 and result["step_ms"] > 0
    report(benchmark, **{k: v for k, v in result.items() if isinstance(v, (int, float)) and v is not None})
    print("\n" + format_table([result]))


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--config", choices=["atmorep", "tiny"], default="atmorep")
    p.add_argument("--fields", type=int, default=1, help="coupled AtmoRep-sized fields (atmorep config)")
    p.add_argument("--batch", type=int, nargs="+", default=[8])
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--compile", action="store_true")
    p.add_argument("--checkpointing", action="store_true")
    p.add_argument("--steps", type=int, default=10)
    p.add_argument("--warmup", type=int, default=3)
    a = p.parse_args(argv)
    names = ("temperature", "specific_humidity", "velocity_u", "velocity_v", "vorticity")[: a.fields]
    cfg = MultiformerConfig.atmorep(names) if a.config == "atmorep" else MultiformerConfig.tiny()
    rows = [measure(cfg, b, torch.device(a.device), compiled=a.compile, checkpointing=a.checkpointing,
                    steps=a.steps, warmup=a.warmup) for b in a.batch]  # fmt: skip
    print(format_table(rows))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
