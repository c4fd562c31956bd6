"""Shared test set-up: GPU tests skip without CUDA, and the others run as on a CPU-only machine even where there is
a GPU; Numba caches stay inside the checkout; torch on one thread for the tests that ask (``one_torch_thread``)."""

from __future__ import annotations

import os

import pytest

os.environ.setdefault("NUMBA_CACHE_DIR", os.path.join(os.path.dirname(os.path.dirname(__file__)), ".numba-cache"))


def pytest_collection_modifyitems(config, items):
    import torch

    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason="needs a CUDA device")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip)


@pytest.fixture(autouse=True)
def _cpu_unless_marked_gpu(request, monkeypatch):
    """On a machine with a GPU, a test not marked ``gpu`` runs as on the CPU-only CI machine: ``torch.cuda.
    is_available()`` says False (so device defaults such as the Loader's pick the CPU and results compare with
    NumPy) and subprocesses see no GPU. The ``gpu``-marked tests are the GPU tests."""
    if "gpu" in request.keywords:
        return
    import torch

    if torch.cuda.is_available():
        monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
        monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "")


@pytest.fixture
def one_torch_thread():
    """Run the test with torch on one thread: tiny models on a shared machine, where OpenMP threads spinning
    against other processes turn a 5 ms step into seconds. Opt in with
    ``pytestmark = pytest.mark.usefixtures("one_torch_thread")``."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)
