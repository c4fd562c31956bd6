"""Model tests run torch on one thread: the models are tiny, and on a shared 2-core machine OpenMP threads
spinning against other processes make a 5 ms step take seconds."""

from __future__ import annotations

import pytest


@pytest.fixture(autouse=True)
def _one_thread(one_torch_thread):
    """Every model test (tests/conftest.py's ``one_torch_thread``)."""
