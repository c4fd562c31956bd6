"""The model side of :mod:`profiling.loop`: the Multiformer a run trains, its FLOPs per step, its learning rate.

Why this exists: the loop builds the Multiformer from the sampling config's fields (:func:`build_model`), counts the
FLOPs of one step once, on zeros of a batch's shapes, for MFU (:func:`count_flops`, with activation checkpointing's
recompute left out by :func:`without_recompute`), and sets each step's learning rate (:func:`lr_at`).
:mod:`profiling.forecast` builds a Forecaster on a Multiformer from :func:`build_model`. :mod:`profiling.loop`
re-exports these names.
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Sequence
from typing import Any

import torch

from fastload.errors import ConfigError

from .presets import RunConfig

__all__ = ["build_model", "dummy_inputs", "without_recompute", "count_flops", "lr_at"]


def build_model(cfg: RunConfig, sampling: Any) -> torch.nn.Module:
    """The Multiformer whose fields, levels and token geometry are the sampling config's (seeded by ``cfg.seed``)."""
    from model import FieldSpec, Multiformer, MultiformerConfig

    m = cfg.model
    names = [f.name for f in sampling.fields]
    try:
        specs = tuple(FieldSpec(name=f.name, levels=tuple(float(v) for v in f.levels) if f.levels else (0.0,),
                                num_tokens=f.num_tokens, token_size=f.token_size, embed_dim=m.embed_dim,
                                num_heads=m.num_heads,
                                coupled=tuple(g for g in names if g != f.name) if m.coupled else ())
                      for f in sampling.fields)
        mcfg = MultiformerConfig(fields=specs, num_encoder_layers=m.encoder_layers,
                                 num_decoder_layers=m.decoder_layers, mlp_ratio=m.mlp_ratio,
                                 ensemble_size=m.ensemble_size, mask_input=m.mask_input)
    except ValueError as e:  # model/ raises its own ValueError subclass (it cannot import fastload)
        raise ConfigError(f"model: {e}") from None
    torch.manual_seed(cfg.seed)
    net = Multiformer(mcfg)
    if m.activation_checkpointing:
        from model import apply_activation_checkpointing

        apply_activation_checkpointing(net)
    return net


def dummy_inputs(sampling: Any, batch_size: int, levelled: Sequence[str], device: torch.device) -> dict:
    out = {}
    for f in sampling.fields:
        grid = (batch_size, f.num_levels, *f.num_tokens)
        meta = {k: torch.zeros(grid, device=device) for k in ("time_of_day", "day_of_year", "lat", "lon")}
        if f.name in levelled:
            meta["level"] = torch.tensor(f.levels, dtype=torch.float32, device=device)[None, :, None, None,
                                                                                     None].expand(grid)
        tokens = torch.zeros((*grid, *f.token_size), device=device)
        out[f.name] = {"tokens": tokens, "target": tokens, "meta": meta,
                       "mask": torch.ones(grid, dtype=torch.bool, device=device)}
    return out


@contextlib.contextmanager
def without_recompute(net: torch.nn.Module) -> Any:
    """``net`` with activation checkpointing off inside the block (restored after, whatever happens): FLOPs
    counted inside are the model's (MFU), not the hardware's with the backward's recompute (HFU)."""
    from model.layers import Checkpointable

    blocks = [m for m in net.modules() if isinstance(m, Checkpointable)]
    flags = [m.__dict__.get("checkpointing") for m in blocks]  # None: the class default
    try:
        for m in blocks:
            m.checkpointing = False
        yield net
    finally:
        for m, f in zip(blocks, flags):
            if f is None:
                m.__dict__.pop("checkpointing", None)
            else:
                m.checkpointing = f


def count_flops(net: torch.nn.Module, inputs: dict, loss_kind: str, bf16: bool, device: torch.device) -> int:
    """Matmul/attention FLOPs of one forward + loss + backward (``torch.utils.flop_counter``); grads cleared.

    Counted with activation checkpointing off (:func:`without_recompute`): the model's FLOPs, so MFU counts no
    recompute."""
    from torch.utils.flop_counter import FlopCounterMode

    from model import multiformer_loss

    with without_recompute(net), FlopCounterMode(display=False) as counter:
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=bf16):
            loss, _ = multiformer_loss(net(inputs), inputs, kinds={loss_kind: 1.0})
        loss.backward()
    net.zero_grad(set_to_none=True)
    return int(counter.get_total_flops())


def lr_at(step: int, cfg: RunConfig) -> float:
    """Learning rate of ``step``: linear warm-up, then constant or cosine decay to ``min_lr`` at ``cfg.steps``."""
    o = cfg.optim
    if step < o.warmup_steps:
        return o.lr * (step + 1) / o.warmup_steps
    if o.schedule == "constant":
        return o.lr
    span = max(1, cfg.steps - o.warmup_steps)
    frac = min(1.0, (step - o.warmup_steps) / span)
    return o.min_lr + 0.5 * (1.0 + math.cos(math.pi * frac)) * (o.lr - o.min_lr)
