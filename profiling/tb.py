"""torch.profiler traces for TensorBoard, with the loader's fetch shown as DataLoader time.

Why this module exists: the TensorBoard profiler plugin (``torch-tb-profiler``) splits each step into kernel,
memcpy, CPU and *DataLoader* time, but it recognises DataLoader time only by the name of the event that
``torch.utils.data.DataLoader`` records around ``__next__``: a CPU-op event whose name starts with
``enumerate(DataLoader)#`` and ends with ``.__next__`` (``torch_tb_profiler/profiler/event_parser.py``). The
fastload Loader is not a torch DataLoader, so :func:`record_fetch` records the consumer's wait for a batch
under :data:`DATALOADER_EVENT`, and the plugin's overview shows the data-loading share correctly.

The plugin (0.4.3) keeps only ``cpu_op`` events for this; ``torch.profiler.record_function`` now writes
``user_annotation`` events, which the plugin drops. :func:`record_fetch` therefore uses torch's
``_RecordFunctionFast`` (a ``cpu_op`` event) where it exists and falls back to ``record_function``.

How to run it::

    prof = build_torch_profiler(TorchProfilerConfig(dir="runs/tb", wait=1, warmup=1, active=3))
    with prof:
        for step in range(n):
            with record_fetch():
                batch = next(it)
            ...                                  # forward, backward, optimizer
            prof.step()

then ``tensorboard --logdir runs/tb`` (with ``pip install torch-tb-profiler``) and open the PyTorch Profiler
tab; the trace files (``<worker>.<time>.pt.trace.json``) also open in https://ui.perfetto.dev.
"""

from __future__ import annotations

import dataclasses
import os
from typing import Any

import torch

from fastload.errors import ConfigError

__all__ = ["DATALOADER_EVENT", "TorchProfilerConfig", "build_torch_profiler", "record_fetch"]

DATALOADER_EVENT = "enumerate(DataLoader)#FastloadLoader.__next__"
"""Event name the TensorBoard profiler plugin counts as DataLoader time (``enumerate(DataLoader)#*.__next__``)."""

_FAST = getattr(getattr(torch._C, "_profiler", None), "_RecordFunctionFast", None)


def record_fetch() -> Any:
    """Context manager recording its body as DataLoader time for torch.profiler / TensorBoard.

    Costs about a microsecond when no profiler is running.
    """
    if _FAST is not None:
        return _FAST(DATALOADER_EVENT)
    return torch.profiler.record_function(DATALOADER_EVENT)


@dataclasses.dataclass(frozen=True, kw_only=True, slots=True)
class TorchProfilerConfig:
    """What torch.profiler records and where TensorBoard traces go."""

    dir: str
    """Directory the trace files are written to (``tensorboard --logdir`` it)."""
    wait: int = 1
    """Steps skipped at the start of each cycle."""
    warmup: int = 1
    """Steps traced but discarded (the profiler's own warm-up)."""
    active: int = 3
    """Steps recorded per cycle."""
    repeat: int = 1
    """Cycles; 0 repeats until the profiler is stopped."""
    record_shapes: bool = False
    """Record input shapes of operators."""
    profile_memory: bool = False
    """Track tensor memory allocation and release."""
    with_stack: bool = False
    """Record Python stacks (large traces)."""
    cuda: bool | None = None
    """Record CUDA activity; None: when CUDA is available."""
    worker_name: str | None = None
    """Trace file prefix; None: torch's default (``<host>_<pid>``)."""

    def __post_init__(self) -> None:
        if not isinstance(self.dir, (str, os.PathLike)) or not str(self.dir):
            raise ConfigError(f"torch_profiler.dir: expected a directory path, got {self.dir!r}")
        for key, lo in (("wait", 0), ("warmup", 0), ("active", 1), ("repeat", 0)):
            v = getattr(self, key)
            if isinstance(v, bool) or not isinstance(v, int) or v < lo:
                raise ConfigError(f"torch_profiler.{key}: expected an integer >= {lo}, got {v!r}")
        if self.cuda and not torch.cuda.is_available():
            raise ConfigError("torch_profiler.cuda: CUDA activity asked for but CUDA is not available")

    def to_dict(self) -> dict[str, Any]:
        return {f.name: getattr(self, f.name) for f in dataclasses.fields(self)}

    @property
    def steps(self) -> int:
        """Steps one cycle spans (wait + warmup + active)."""
        return self.wait + self.warmup + self.active


def build_torch_profiler(config: TorchProfilerConfig) -> torch.profiler.profile:
    """A ``torch.profiler.profile`` with a wait/warmup/active schedule writing TensorBoard traces.

    Use it as a context manager and call ``.step()`` once per training step.
    """
    activities = [torch.profiler.ProfilerActivity.CPU]
    cuda = torch.cuda.is_available() if config.cuda is None else config.cuda
    if cuda:
        activities.append(torch.profiler.ProfilerActivity.CUDA)
    os.makedirs(config.dir, exist_ok=True)
    return torch.profiler.profile(
        activities=activities,
        schedule=torch.profiler.schedule(wait=config.wait, warmup=config.warmup, active=config.active,
                                         repeat=config.repeat),
        on_trace_ready=torch.profiler.tensorboard_trace_handler(str(config.dir), worker_name=config.worker_name),
        record_shapes=config.record_shapes,
        profile_memory=config.profile_memory,
        with_stack=config.with_stack,
    )
