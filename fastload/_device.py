"""The default device: the one place that decides where tensors go when the caller names no device.

The Loader, the RolloutLoader, ``fastload train``/``profile``, ``fastload rollout`` and the StepTimer all ask
:func:`default_device`, so "the GPU when there is one, else the CPU" means the same everywhere, and
``FASTLOAD_DEVICE=cpu`` keeps all of them on the CPU of a GPU machine (the test suite does that for its tests not
marked ``gpu``) without hiding the GPU from torch.
"""

from __future__ import annotations

import os

import torch

from .errors import ConfigError

ENV = "FASTLOAD_DEVICE"


def default_device() -> torch.device:
    """``$FASTLOAD_DEVICE`` when set (``cpu``, ``cuda`` or ``cuda:N``), else ``cuda`` when CUDA is available, else
    ``cpu``. Under DDP (``fastload train`` with several ranks) each rank takes its ``LOCAL_RANK``'s GPU; the variable
    then only chooses between the CPU and the GPUs."""
    want = os.environ.get(ENV, "").strip()
    if not want:
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    expected = f"{ENV}={want!r}: expected 'cpu', 'cuda' or 'cuda:N' (or unset: the GPU when there is one)"
    if want.split(":")[0] not in ("cpu", "cuda"):
        raise ConfigError(expected)  # before torch.device, whose own error lists every device type torch knows
    try:
        d = torch.device(want)
    except RuntimeError:
        raise ConfigError(expected) from None
    if d.type == "cpu":
        return torch.device("cpu")  # "cpu:0" too: one CPU device, and callers compare with "cpu"
    if not torch.cuda.is_available():
        raise ConfigError(f"{ENV}={want!r} but CUDA is not available on this machine")
    if d.index is not None and d.index >= torch.cuda.device_count():
        raise ConfigError(f"{ENV}={want!r} but this machine has {torch.cuda.device_count()} CUDA device(s)")
    return d
