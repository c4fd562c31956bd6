"""NVTX for the training loop: the shared ranges of :mod:`fastload._nvtx`, plus labels on model submodules.

Why this module exists: model code knows nothing of profiling (STYLE.md, rule 9), so submodule labels are put
on from outside with :func:`apply_nvtx`, through forward hooks, the way ``apply_compile`` changes a model in
place. In Nsight Systems the forward of each labelled submodule shows as a push/pop range ``fwd/<name>``
(category ``forward``) and its backward as a start/end range ``bwd/<name>`` (category ``backward``); payload is
the step number set by the training loop (:func:`set_step`).

How to run it::

    from profiling.nvtx import apply_nvtx, enable
    enable()                      # or FASTLOAD_NVTX=1 in the environment
    hooks = apply_nvtx(model, depth=2)
    ...                           # train under `nsys profile --trace=cuda,nvtx ...`
    hooks.remove()

Backward ranges come from tensor hooks: a module's backward range starts when the gradient of its output
arrives and ends when the gradients of all its inputs that need one have arrived. A module none of whose inputs
needs a gradient (the first layer after the data) gets no backward range: autograd gives no signal when its
backward ends. With an input also used outside the module (a residual connection) the range ends once the
input's total gradient is known, which is right after the module's own backward in the usual block layout.
While NVTX is off, or on with no tool attached, every hook returns at its first line.
"""

from __future__ import annotations

import re
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

import torch

from fastload import _nvtx
from fastload._nvtx import (
    CATEGORIES,
    DOMAIN,
    ENV_VAR,
    current_step,
    disable,
    enable,
    end,
    is_enabled,
    mark,
    range,  # the DESIGN's `nvtx.range(...)`; shadows the builtin in this module, which does not use it
    set_step,
    start,
    tool_attached,
)
from fastload._nvtx import range as nvtx_range
from fastload.errors import ConfigError

__all__ = [
    "CATEGORIES",
    "DOMAIN",
    "ENV_VAR",
    "NvtxHooks",
    "apply_nvtx",
    "current_step",
    "disable",
    "enable",
    "end",
    "is_enabled",
    "mark",
    "nvtx_range",
    "range",
    "set_step",
    "start",
    "tool_attached",
]


@dataclass
class NvtxHooks:
    """The hooks :func:`apply_nvtx` put on a model; :meth:`remove` takes them all off again."""

    names: list[str]
    """Qualified names of the labelled submodules, in registration order."""
    _handles: list[Any] = field(default_factory=list, repr=False)

    def remove(self) -> None:
        """Remove every hook (safe to call twice)."""
        for h in self._handles:
            h.remove()
        self._handles.clear()


def _tensors(obj: Any, depth: int = 0) -> Iterator[torch.Tensor]:
    """Tensors in a module's inputs or outputs: tensors, and tuples/lists/dicts of them (two levels deep)."""
    if isinstance(obj, torch.Tensor):
        yield obj
    elif depth < 2 and isinstance(obj, (tuple, list)):
        for x in obj:
            yield from _tensors(x, depth + 1)
    elif depth < 2 and isinstance(obj, dict):
        for x in obj.values():
            yield from _tensors(x, depth + 1)


class _BackwardRange:
    """One forward call's backward range: starts at the first output gradient, ends at the last input one."""

    __slots__ = ("name", "payload", "pending", "range_id", "lock")

    def __init__(self, name: str, payload: int, n_inputs: int):
        self.name = name
        self.payload = payload
        self.pending = n_inputs
        self.range_id = 0
        self.lock = threading.Lock()  # autograd may run hooks of one graph on several device threads

    def on_output_grad(self, grad: torch.Tensor) -> None:
        with self.lock:
            if self.range_id == 0 and self.pending > 0:
                self.range_id = start(self.name, "backward", self.payload) or -1

    def on_input_grad(self, grad: torch.Tensor) -> None:
        with self.lock:
            self.pending -= 1
            if self.pending == 0 and self.range_id:
                if self.range_id > 0:
                    end(self.range_id)
                self.range_id = 0


def _select(model: torch.nn.Module, depth: int, include: str | None,
            types: tuple[type, ...] | None) -> list[tuple[str, torch.nn.Module]]:
    pattern = re.compile(include) if include is not None else None
    out = []
    for name, module in model.named_modules():
        if not name or name.count(".") + 1 > depth:
            continue
        if pattern is not None and not pattern.search(name):
            continue
        if types is not None and not isinstance(module, types):
            continue
        out.append((name, module))
    return out


def apply_nvtx(model: torch.nn.Module, *, depth: int = 2, include: str | None = None,
               types: tuple[type, ...] | None = None, backward: bool = True) -> NvtxHooks:
    """Label the forward (and backward) of a model's submodules with NVTX ranges, in place.

    Parameters
    ----------
    model : torch.nn.Module
        The model; the root itself is not labelled (the loop's ``forward`` phase covers it).
    depth : int
        Label submodules nested at most this deep (1: direct children; ``blocks.0`` is depth 2).
    include : str, optional
        Regular expression; only submodules whose qualified name matches (``re.search``) are labelled.
    types : tuple of type, optional
        Only submodules of these classes are labelled.
    backward : bool
        Also label each submodule's backward (a start/end range ``bwd/<name>``).

    Returns
    -------
    NvtxHooks
        The names labelled and the hook handles (``.remove()`` undoes everything).

    Raises
    ------
    ConfigError
        If ``depth`` is not a positive integer or ``include`` is not a valid regular expression.

    Notes
    -----
    Range names are constants (``fwd/encoder.blocks.0``); the step goes into the payload, so
    ``nsys stats --report nvtx_sum`` gives one row per submodule. Hooks make ``torch.compile`` break the graph
    at each labelled module: label an eager model when profiling.
    """
    if isinstance(depth, bool) or not isinstance(depth, int) or depth < 1:
        raise ConfigError(f"apply_nvtx depth: expected an integer >= 1, got {depth!r}")
    if include is not None:
        try:
            re.compile(include)
        except re.error as e:
            raise ConfigError(f"apply_nvtx include: not a regular expression: {include!r} ({e})") from None
    hooks = NvtxHooks(names=[])
    for name, module in _select(model, depth, include, types):
        hooks.names.append(name)
        pre, post = _make_hooks(f"fwd/{name}", f"bwd/{name}" if backward else None)
        hooks._handles.append(module.register_forward_pre_hook(pre))
        hooks._handles.append(module.register_forward_hook(post, with_kwargs=True, always_call=True))
    return hooks


def _make_hooks(fwd_name: str, bwd_name: str | None) -> tuple[Callable[..., None], Callable[..., None]]:
    # Per module and thread: the forward ranges entered but not yet left (a module may be re-entered recursively).
    local = threading.local()

    def pre(module: torch.nn.Module, args: tuple[Any, ...]) -> None:
        if not (_nvtx.is_enabled() and _nvtx.tool_attached()):
            return
        r = nvtx_range(fwd_name, "forward")
        r.__enter__()
        stack = getattr(local, "stack", None)
        if stack is None:
            stack = local.stack = []
        stack.append(r)

    def post(module: torch.nn.Module, args: tuple[Any, ...], kwargs: dict[str, Any], output: Any) -> None:
        stack = getattr(local, "stack", None)
        if not stack:  # NVTX was off when this forward began
            return
        stack.pop().__exit__(None, None, None)
        if bwd_name is None or not torch.is_grad_enabled():
            return
        inputs = [t for t in (*_tensors(args), *_tensors(kwargs)) if t.requires_grad]
        outputs = [t for t in _tensors(output) if t.requires_grad]
        if not inputs or not outputs:
            return
        rng = _BackwardRange(bwd_name, current_step(), len(inputs))
        for t in outputs:
            t.register_hook(rng.on_output_grad)
        for t in inputs:
            t.register_hook(rng.on_input_grad)

    return pre, post
