"""BERT masking of a batch: the gathering way (CPU) against the dense way (every token, selected by ``where``).

The loader masks each batch where its tensors are: on an accelerator in the consumer's ``next()`` after the copy,
on the CPU in the worker that read it (RESULTS 19.1). On the CPU the gathering way corrupts only the chosen tokens;
on an accelerator the dense way computes every token and selects, so no tensor's shape depends on the mask and the
host never waits for the device (RESULTS 17.3: the gathering way made 32
synchronizing operations per ``small_h100`` batch, each waiting for the queued training step).

- ``test_mask_batch[<geometry>-<way>-<device>]``: :func:`fastload.sampling.masking.mask_batch` with AtmoRep's BERT
  settings on the batch of the ``small_h100`` preset (4 fields x 5 levels, batch 32, 6 x 6 x 8 tokens of 3 x 6 x 6)
  and of ``atmorep_h100`` (1 field x 5 levels, batch 16, 12 x 6 x 12 tokens of 3 x 9 x 9); both ways on the CPU
  and, with a GPU, on it (time per call with a synchronize after it).
- ``test_host_time_behind_queued_work[<way>]`` (GPU only): the host time of one ``mask_batch`` call issued behind
  queued matrix products, the training loop's situation: the gathering way waits for them, the dense way does not.

Run::

    pytest benches/bench_masking.py -s            # quick mode: the small batch halved
    pytest benches/bench_masking.py -s --full
"""

from __future__ import annotations

import time

import pytest
import torch

import fastload.sampling.masking as mk
from fastload.sampling.masking import MaskingConfig, mask_batch

BERT = MaskingConfig(strategy="BERT", rate=0.9, frac_zero=0.8, frac_noise=0.1, frac_coarse=0.1, coarse_factor=3)
GEOMETRIES = {  # name: (fields, batch, levels, num_tokens, token_size)
    "small_h100": (4, 32, 5, (6, 6, 8), (3, 6, 6)),
    "atmorep_h100": (1, 16, 5, (12, 6, 12), (3, 9, 9)),
}
DEVICES = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])
WAYS = {"gathering": mk._apply_bert_sparse, "dense": mk._apply_bert_dense}


def _batch(geometry: str, device: str, quick: bool) -> dict[str, torch.Tensor]:
    n_fields, batch, levels, nt, tok = GEOMETRIES[geometry]
    if quick:
        batch = max(1, batch // 2)
    g = torch.Generator().manual_seed(0)
    shape = (batch, levels, *nt, *tok)
    return {f"f{i}": torch.randn(shape, generator=g).to(device) for i in range(n_fields)}


def _sync(device: str) -> None:
    if device == "cuda":
        torch.cuda.synchronize()  # sync point: timing boundary


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("way", list(WAYS))
@pytest.mark.parametrize("geometry", list(GEOMETRIES))
def test_mask_batch(benchmark, report, bench_quick, monkeypatch, geometry, way, device):
    monkeypatch.setattr(mk, "_apply_bert", WAYS[way])
    fields = _batch(geometry, device, bench_quick)
    steps = iter(range(10**9))

    def call():
        out = mask_batch(BERT, fields, seed=0, rank=0, step=next(steps))
        _sync(device)
        return out

    out = benchmark.pedantic(call, rounds=3 if bench_quick else 10, warmup_rounds=1)
    assert out.keys() == fields.keys()
    stats = getattr(benchmark, "stats", None)  # None with --benchmark-disable (the CI smoke run)
    if stats is not None:
        values = sum(t.numel() for t in fields.values())
        report(benchmark, ms_per_batch=stats.stats.median * 1e3, gb_per_s=values * 4 / stats.stats.median / 1e9)


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
@pytest.mark.parametrize("way", list(WAYS))
def test_host_time_behind_queued_work(benchmark, report, bench_quick, monkeypatch, way):
    monkeypatch.setattr(mk, "_apply_bert", WAYS[way])
    fields = _batch("small_h100", "cuda", bench_quick)
    a = torch.randn(8192, 8192, device="cuda")
    mask_batch(BERT, fields, seed=0, rank=0, step=0)  # first call: cached tap tables, generator set-up
    host = []

    def call():
        for _ in range(20):  # about 0.1-0.2 s of queued work on an H100
            a @ a
        t = time.perf_counter()
        mask_batch(BERT, fields, seed=0, rank=0, step=1)
        host.append(time.perf_counter() - t)
        torch.cuda.synchronize()  # sync point: drain before the next round

    benchmark.pedantic(call, rounds=3 if bench_quick else 5, warmup_rounds=1)
    report(benchmark, host_ms_median=sorted(host)[len(host) // 2] * 1e3, host_ms_max=max(host) * 1e3)
