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
        if item.get_closest_marker("gpu") is not None:
            item.add_marker(skip)


@pytest.fixture(autouse=True)
def _cpu_unless_marked_gpu(request, monkeypatch):
    """On a machine with a GPU, a test not marked ``gpu`` runs as on the CPU-only CI machine: ``FASTLOAD_DEVICE=cpu``
    makes every fastload device default the CPU (so results compare with NumPy), subprocesses included, while torch
    still sees the GPU (hiding it from torch would cache "no GPU" inside torch for the GPU tests that follow). A test
    that sets the variable itself overrides this."""
    if request.node.get_closest_marker("gpu") is None:
        monkeypatch.setenv("FASTLOAD_DEVICE", "cpu")


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
