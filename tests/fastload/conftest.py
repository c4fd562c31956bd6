"""Fixtures the fastload tests share (opt in with ``pytestmark = pytest.mark.usefixtures("nothing_left")``)."""

from __future__ import annotations

import gc

import pytest

from tests.fastload.leaks import fastload_processes, fastload_threads


@pytest.fixture
def nothing_left():
    """After the test, once garbage is collected: no fastload thread or worker process is left running."""
    yield
    gc.collect()
    assert fastload_threads() == []
    assert fastload_processes() == []
