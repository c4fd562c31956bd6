"""Apply ``torch.compile`` and activation checkpointing to a model from outside (torchtitan's ``apply_*`` style).

Why from outside: the model files stay plain single-device PyTorch; a training script decides what to compile and
what to recompute. Both functions change the model in place and keep its state-dict keys (``nn.Module.compile``
and a flag on each block, no wrapper modules), so checkpoints load the same before and after.

Usage::

    model = Multiformer(MultiformerConfig.atmorep())
    apply_activation_checkpointing(model)       # recompute each layer in the backward pass
    apply_compile(model)                        # compile each repeated layer, the embeddings and the tails
"""

from __future__ import annotations

from typing import Any

from torch import nn

from .layers import Checkpointable

__all__ = ["apply_compile", "apply_activation_checkpointing", "compile_units"]


def _outermost(model: nn.Module) -> list[nn.Module]:
    """Checkpointable blocks of ``model`` that are not inside another checkpointable block."""
    found: list[nn.Module] = []

    def walk(m: nn.Module) -> None:
        for child in m.children():
            if isinstance(child, Checkpointable):
                found.append(child)
            else:
                walk(child)

    walk(model)
    return found


def apply_activation_checkpointing(model: nn.Module, enabled: bool = True) -> int:
    """Recompute every layer (encoder/decoder layer, adapter/tail/read-out block) in the backward pass.

    Returns the number of blocks switched. Only the outermost blocks are flagged (a block inside a checkpointed
    block is recomputed anyway).
    """
    blocks = _outermost(model)
    for b in blocks:
        b.checkpointing = enabled
    return len(blocks)


def compile_units(model: nn.Module) -> list[nn.Module]:
    """What :func:`apply_compile` compiles: each repeated block, and each entry of a ``embed`` or ``tail`` dict."""
    units = _outermost(model)
    for name in ("embed", "tail"):
        sub = getattr(model, name, None)
        if isinstance(sub, nn.ModuleDict):
            units.extend(sub.values())
    return units


def apply_compile(model: nn.Module, **compile_kwargs: Any) -> int:
    """Compile each unit of :func:`compile_units` in place (``nn.Module.compile``); returns how many.

    ``compile_kwargs`` go to ``torch.compile`` (``mode="max-autotune"``, ``fullgraph=True``, ``dynamic=False``...).
    Compiling per layer keeps compile time flat in depth and lets identical layers share one graph.
    """
    units = compile_units(model)
    for u in units:
        u.compile(**compile_kwargs)
    return len(units)
