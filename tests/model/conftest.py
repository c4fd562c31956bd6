"""Model tests run torch on one thread: the models are tiny, and on a shared 2-core machine OpenMP threads
spinning against other processes make a 5 ms step take seconds."""

from __future__ import annotations

import pytest
import torch


@pytest.fixture(autouse=True)
def _one_thread():
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)
