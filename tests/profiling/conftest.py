"""Shared fixtures: a recording NVTX domain that stands in for an attached Nsight Systems."""

from __future__ import annotations

import threading

import pytest

from fastload import _nvtx


class _Attrs:
    def __init__(self, message, category):
        self.message = message
        self.category = category
        self.payload = None


class RecordingDomain:
    """Implements the part of ``nvtx.Domain`` fastload uses and logs every call as a tuple."""

    def __init__(self):
        self.calls: list[tuple] = []
        self.categories: dict[str, int] = {}
        self._ids = 0
        self._lock = threading.Lock()

    def get_category_id(self, name):
        return self.categories.setdefault(name, len(self.categories) + 1)

    def get_event_attributes(self, message=None, color=None, category=None, payload=None):
        return _Attrs(message, category)

    def _log(self, *call):
        with self._lock:
            self.calls.append(call)

    def push_range(self, attrs):
        self._log("push", attrs.message, attrs.category, attrs.payload, threading.get_ident())

    def pop_range(self):
        self._log("pop", threading.get_ident())

    def start_range(self, attrs):
        with self._lock:
            self._ids += 1
            rid = self._ids
        self._log("start", attrs.message, attrs.category, attrs.payload, rid)
        return rid

    def end_range(self, rid):
        self._log("end", rid)

    def mark(self, attrs):
        self._log("mark", attrs.message, attrs.category, attrs.payload)


@pytest.fixture
def nvtx_domain():
    """NVTX on, with a recording domain in place of a tool; restored (off, no domain) afterwards."""
    dom = RecordingDomain()
    _nvtx._reset_for_tests(dom)
    _nvtx.enable()
    _nvtx.set_step(0)
    yield dom
    _nvtx._reset_for_tests(None)
    _nvtx.set_step(0)


@pytest.fixture(autouse=True)
def _nvtx_off_by_default():
    """Every test starts with NVTX off, whatever the environment says."""
    before = _nvtx.is_enabled()
    _nvtx.disable()
    yield
    _nvtx.enable(before)
