"""A small store, its coefficients and a run config for the training-loop tests (built once per test session).

Sizes keep a CPU run to seconds: a 31 x 60 grid (6 degrees), 24 hours, temperature on two levels and t2m; samples
of 2 x 2 x 3 tokens of 3 h x 3 x 3 points; batch 2; a width-16 Multiformer with one encoder and one decoder layer.
"""

from __future__ import annotations

import time
from pathlib import Path

import torch

from fastload.config import FieldConfig, LoaderConfig, SamplingConfig
from profiling.presets import DataConfig, ModelConfig, OptimConfig, RunConfig

_BUILT: dict[str, tuple[str, str]] = {}

FIELDS = ("temperature", "t2m")
LEVELS = (96, 137)
NUM_TOKENS = (2, 2, 3)
TOKEN_SIZE = (3, 3, 3)
BATCH = 2


def tiny_store(tmp_path_factory) -> tuple[str, str]:
    """(store path, coefficient store path), written once per session under pytest's base temp folder."""
    root = tmp_path_factory.getbasetemp() / "loop-data"
    key = str(root)
    if key not in _BUILT:
        from fastload.stats import StatsConfig, compute_stats
        from fastload.synth import SynthConfig, synthesize

        root.mkdir(parents=True, exist_ok=True)
        cfg = SynthConfig(name="looptest", resolution=6.0, hours=24, levels=(96, 137), level_fields=("temperature",),
                          surface_fields=("t2m",), static_fields=(), chunks=(6, 1, 16, 32))
        store = synthesize(root / "store.zarr", cfg, seed=3, progress=False)
        norm = compute_stats(str(store), str(root / "norm.zarr"), StatsConfig(progress=False))
        _BUILT[key] = (str(store), str(norm))
    return _BUILT[key]


def sampling(norm: str) -> SamplingConfig:
    fields = (FieldConfig(name="temperature", levels=LEVELS, num_tokens=NUM_TOKENS, token_size=TOKEN_SIZE),
              FieldConfig(name="t2m", num_tokens=NUM_TOKENS, token_size=TOKEN_SIZE))
    return SamplingConfig(fields=fields, batch_size=BATCH, norm_path=norm)


def run_config(tmp_path_factory, **overrides) -> RunConfig:
    """A RunConfig on the tiny store; keyword arguments replace top-level settings."""
    store, norm = tiny_store(tmp_path_factory)
    kw = dict(
        name="looptest",
        data=DataConfig(sampling=sampling(norm), store=store),
        loader=LoaderConfig(workers=1, prefetch=2, samples_per_epoch=16),
        model=ModelConfig(embed_dim=16, num_heads=2, encoder_layers=1, decoder_layers=1, ensemble_size=2),
        optim=OptimConfig(lr=1e-3, min_lr=1e-4, warmup_steps=1),
        steps=6, warmup=1, log_every=100, device="cpu", threads=1,
    )
    kw.update(overrides)
    return RunConfig(**kw)


def run_toml(tmp_path: Path, store: str, norm: str, **top) -> Path:
    """A run file for the command line (the store and coefficients given as absolute paths)."""
    lines = [f"{k} = {v!r}" if not isinstance(v, str) else f'{k} = "{v}"' for k, v in top.items()]
    lines += ["[data]", f'store = "{store}"', "[data.sampling]", f"batch_size = {BATCH}", f'norm_path = "{norm}"',
              "[data.sampling.fields.temperature]", f"levels = {list(LEVELS)}", f"num_tokens = {list(NUM_TOKENS)}",
              f"token_size = {list(TOKEN_SIZE)}", "[data.sampling.fields.t2m]", f"num_tokens = {list(NUM_TOKENS)}",
              f"token_size = {list(TOKEN_SIZE)}",
              "[loader]", "workers = 1", "prefetch = 2", "samples_per_epoch = 16",
              "[model]", "embed_dim = 16", "num_heads = 2", "encoder_layers = 1", "decoder_layers = 1",
              "ensemble_size = 2"]
    p = tmp_path / "run.toml"
    p.write_text("\n".join(lines) + "\n")
    return p


class DelayedLoader:
    """Wraps a batch iterable; every ``next`` sleeps ``delay_ms`` first and logs what it really took (ms)."""

    def __init__(self, inner, delay_ms: float):
        self.inner = iter(inner)
        self.delay_ms = delay_ms
        self.took: list[float] = []

    def __iter__(self):
        return self

    def __next__(self):
        t0 = time.perf_counter()
        time.sleep(self.delay_ms / 1e3)
        batch = next(self.inner)
        self.took.append((time.perf_counter() - t0) * 1e3)
        return batch


class SlowModel(torch.nn.Module):
    """A model whose forward costs ``cost_ms`` more (a sleep); otherwise ``inner``'s. Logs what the sleep took
    (``took``) and what the whole forward took (``took_total``), in ms."""

    def __init__(self, inner: torch.nn.Module, cost_ms: float):
        super().__init__()
        self.inner = inner
        self.config = inner.config
        self.cost_ms = cost_ms
        self.took: list[float] = []
        self.took_total: list[float] = []

    def forward(self, batch):
        t0 = time.perf_counter()
        time.sleep(self.cost_ms / 1e3)
        self.took.append((time.perf_counter() - t0) * 1e3)
        out = self.inner(batch)
        self.took_total.append((time.perf_counter() - t0) * 1e3)
        return out
