"""What the warning for a stopped iteration's reads says each thread does (:func:`fastload.loader._doing`, review
s13 g1 items 3-4): it keyed on ``co_qualname``, which Python 3.10 (``requires-python >= 3.10``) lacks, so there
every thread read 'in _wait_task'; and its ``gather_points`` entry never matched (a Numba kernel has no Python
frame: the innermost fastload frame is its caller, ``gather_field_points``). Stacks are given as frames of the
shape the interpreter has (``f_globals``, ``f_code.co_name``, ``f_lineno``, ``f_back``); a 3.10 code object has
no ``co_qualname``."""

from __future__ import annotations

import sys
import threading
from types import SimpleNamespace

import pytest

from fastload.loader import _doing


def _stack(*frames: tuple[str, str, str | None]):
    """Frames outermost first: (module, co_name, co_qualname or None for a 3.10 code object)."""
    frame = None
    for mod, name, qual in frames:
        code = SimpleNamespace(co_name=name) if qual is None else SimpleNamespace(co_name=name, co_qualname=qual)
        frame = SimpleNamespace(f_globals={"__name__": mod}, f_code=code, f_lineno=7, f_back=frame)
    return frame


@pytest.fixture
def thread():
    done = threading.Event()
    t = threading.Thread(target=done.wait, name="reader-0", daemon=True)
    t.start()
    yield t
    done.set()
    t.join(5)


_OUTER = [("threading", "run", "Thread.run"), ("fastload._loader_iter", "_read", "_Worker._read")]


@pytest.mark.parametrize(("inner", "said"), [
    (("fastload._reader_fetch", "_wait_task"), "waiting for a fetch task of its step: a store request or a decode"),
    (("fastload.cache", "reserve"), "waiting for cache slots"),
    (("fastload.cache", "wait"), "waiting for chunks another step is reading"),
    (("fastload._ring", "acquire"), "waiting for a ring slot's device copy"),
    (("fastload.reader", "await_kernel_warmup"), "waiting for the gather kernels' compile"),
])
def test_a_thread_is_named_on_python_3_10_code_objects(monkeypatch, thread, inner, said):
    """No ``co_qualname`` (Python 3.10): the entry still matches, on (module, co_name)."""
    stack = _stack(*[(m, n, None) for m, n, _ in _OUTER], (*inner, None))
    monkeypatch.setattr(sys, "_current_frames", lambda: {thread.ident: stack})
    assert _doing(thread) == f"reader-0 ({said}, {inner[0]}:7)"


@pytest.mark.parametrize("qual", [None, "gather_field_points"])
def test_a_thread_in_a_point_kernel_is_named_by_its_python_caller(monkeypatch, thread, qual):
    """A Numba point kernel runs under ``gather_field_points`` (no frame of its own): named as gathering."""
    stack = _stack(*_OUTER, ("fastload.sampling.mesh", "gather", "MeshTokenizer.gather"),
                   ("fastload.sampling.points", "gather_field_points", qual))
    monkeypatch.setattr(sys, "_current_frames", lambda: {thread.ident: stack})
    assert _doing(thread) == "reader-0 (gathering its samples (a kernel), fastload.sampling.points:7)"


def test_a_thread_in_a_grid_kernel_and_elsewhere(monkeypatch, thread):
    stack = _stack(*_OUTER, ("fastload.sampling.neighborhood", "gather_field", "gather_field"))
    monkeypatch.setattr(sys, "_current_frames", lambda: {thread.ident: stack})
    assert _doing(thread) == "reader-0 (gathering its samples (a kernel), fastload.sampling.neighborhood:7)"
    stack = _stack(*_OUTER, ("fastload.plan", "steps", "EpochPlan.steps"))
    monkeypatch.setattr(sys, "_current_frames", lambda: {thread.ident: stack})
    assert _doing(thread) == "reader-0 (in steps, fastload.plan:7)"
