"""The default device (``fastload._device.default_device``): the GPU when there is one, ``FASTLOAD_DEVICE`` first."""

from __future__ import annotations

import pytest
import torch

from fastload._device import default_device
from fastload.errors import ConfigError
from fastload.loader import Loader


def test_unset_means_the_gpu_when_there_is_one(monkeypatch):
    monkeypatch.delenv("FASTLOAD_DEVICE", raising=False)
    assert default_device() == torch.device("cuda" if torch.cuda.is_available() else "cpu")
    assert Loader._device(None) == default_device()


def test_cpu_is_honoured_by_every_default(monkeypatch):
    from profiling.distributed import init_distributed
    from profiling.presets import cpu_tiny
    from profiling.timers import _resolve_device

    monkeypatch.setenv("FASTLOAD_DEVICE", " cpu ")
    monkeypatch.delenv("WORLD_SIZE", raising=False)
    assert default_device() == torch.device("cpu")
    assert init_distributed(cpu_tiny()) == (0, 1, torch.device("cpu"))
    assert Loader._device(None) == torch.device("cpu")
    assert _resolve_device(None) == "cpu"
    assert Loader._device("cpu") == torch.device("cpu")  # a device given is used as given


@pytest.mark.parametrize("bad", ["gpu", "cuda:x", "mps", "cpu:0:1", "CUDA"])
def test_a_bad_value_is_refused_naming_the_variable(monkeypatch, bad):
    monkeypatch.setenv("FASTLOAD_DEVICE", bad)
    with pytest.raises(ConfigError, match=r"FASTLOAD_DEVICE='.*': expected 'cpu', 'cuda' or 'cuda:N'"):
        default_device()
    with pytest.raises(ConfigError, match="FASTLOAD_DEVICE"):
        Loader._device(None)


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks a machine without CUDA")
def test_cuda_without_a_gpu_is_refused(monkeypatch):
    monkeypatch.setenv("FASTLOAD_DEVICE", "cuda:0")
    with pytest.raises(ConfigError, match="FASTLOAD_DEVICE='cuda:0' but CUDA is not available"):
        default_device()


def test_an_index_is_kept_and_one_beyond_the_devices_is_refused(monkeypatch):
    """FASTLOAD_DEVICE=cuda:N reaches every default with its index (StepTimer's too), and an N the machine does not
    have is refused naming the variable (a 1-GPU machine is simulated)."""
    from profiling.timers import _resolve_device

    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    monkeypatch.setenv("FASTLOAD_DEVICE", "cuda:1")
    assert default_device() == torch.device("cuda:1") and _resolve_device(None) == "cuda:1"
    monkeypatch.setenv("FASTLOAD_DEVICE", "cuda:2")
    with pytest.raises(ConfigError, match=r"FASTLOAD_DEVICE='cuda:2' but this machine has 2 CUDA device\(s\)"):
        default_device()


def test_rollout_help_and_an_explicit_device_work_with_a_bad_variable(monkeypatch, capsys):
    """The rollout CLI resolves its default device only when it runs without --device (it was computed when the
    parser was built, so a bad FASTLOAD_DEVICE broke --help)."""
    from profiling.rollout import main

    monkeypatch.setenv("FASTLOAD_DEVICE", "gpu")
    with pytest.raises(SystemExit) as e:
        main(["--help"])
    assert e.value.code == 0 and "FASTLOAD_DEVICE" in capsys.readouterr().out


def test_cpu_with_an_index_is_the_cpu(monkeypatch):
    """cpu:0 is the one CPU device: StepTimer compared its device with "cpu" and built a CUDA clock for "cpu:0"
    (review r3 M1)."""
    from profiling.timers import StepTimer

    monkeypatch.setenv("FASTLOAD_DEVICE", "cpu:0")
    assert default_device() == torch.device("cpu")
    assert StepTimer().device == "cpu"


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks a machine without CUDA")
@pytest.mark.parametrize("env,device", [("gpu", None), ("cuda", None), (None, "cuda")])
def test_ddp_on_a_machine_without_cuda_refuses_a_cuda_or_bad_device(monkeypatch, env, device):
    """Under DDP the device was decided by torch.cuda.is_available() first, so FASTLOAD_DEVICE=gpu (a typo) or an
    explicit cuda device ran on the CPU in silence (review r3 L2); refused before any process group starts."""
    import dataclasses

    from profiling.distributed import init_distributed
    from profiling.presets import cpu_tiny

    monkeypatch.setenv("WORLD_SIZE", "2")
    if env is None:
        monkeypatch.delenv("FASTLOAD_DEVICE", raising=False)
    else:
        monkeypatch.setenv("FASTLOAD_DEVICE", env)
    with pytest.raises(ConfigError, match="FASTLOAD_DEVICE|CUDA is not available"):
        init_distributed(dataclasses.replace(cpu_tiny(), device=device))
