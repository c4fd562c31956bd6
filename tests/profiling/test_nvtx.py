"""NVTX ranges: free when off, balanced push/pop with constant names and step payloads when on; apply_nvtx."""

from __future__ import annotations

import os
import subprocess
import sys
import threading

import pytest
import torch
from torch import nn

from fastload import _nvtx
from fastload.errors import ConfigError
from profiling.nvtx import apply_nvtx


def _balanced(calls, thread=None):
    depth = 0
    for c in calls:
        if thread is not None and c[-1] != thread:
            continue
        depth += {"push": 1, "pop": -1}.get(c[0], 0)
        assert depth >= 0
    return depth == 0


def test_off_hands_out_one_shared_noop():
    assert not _nvtx.is_enabled()
    a = _nvtx.range("forward")
    b = _nvtx.range("anything", category="not-checked-when-off", payload=3)
    assert a is b
    with a:
        pass
    assert _nvtx.start("step") == 0
    _nvtx.end(0)
    _nvtx.mark("x")


def test_env_var_turns_it_on_and_import_needs_no_torch():
    code = ("import sys, fastload._nvtx as n; "
            "print(n.is_enabled(), 'torch' in sys.modules); "
            "r = n.range('decode', payload=1); r.__enter__(); r.__exit__(None, None, None)")
    env = {**os.environ, "FASTLOAD_NVTX": "1"}
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True)
    assert out.stdout.split() == ["True", "False"]
    env["FASTLOAD_NVTX"] = "0"
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True)
    assert out.stdout.split() == ["False", "False"]


def test_enabled_without_tool_is_a_noop():
    _nvtx._reset_for_tests(None)
    _nvtx.enable()  # no Nsight attached: the nvtx package gives its dummy domain
    assert _nvtx.is_enabled() and not _nvtx.tool_attached()
    with _nvtx.range("forward", payload=2):
        pass
    with pytest.raises(ConfigError, match="unknown category 'bogus'"):
        _nvtx.range("forward", category="bogus")
    _nvtx.disable()


def test_ranges_carry_constant_names_categories_and_step_payload(nvtx_domain):
    _nvtx.set_step(7)
    with _nvtx.range("forward"):
        with _nvtx.range("decode", payload=42):
            pass
    with _nvtx.range("data_wait"):
        pass
    with _nvtx.range("custom"):
        pass
    ids = nvtx_domain.categories
    pushes = [c[1:4] for c in nvtx_domain.calls if c[0] == "push"]
    assert pushes == [("forward", ids["forward"], 7), ("decode", ids["decode"], 42),
                      ("data_wait", ids["data"], 7), ("custom", None, 7)]
    assert _balanced(nvtx_domain.calls)
    assert set(ids) == set(_nvtx.CATEGORIES)


def test_range_pops_when_body_raises(nvtx_domain):
    with pytest.raises(KeyError):
        with _nvtx.range("gather"):
            raise KeyError("boom")
    assert [c[0] for c in nvtx_domain.calls] == ["push", "pop"]


def test_start_end_and_mark(nvtx_domain):
    _nvtx.set_step(3)
    rid = _nvtx.start("step")
    _nvtx.mark("fetch", payload=5)
    _nvtx.end(rid)
    assert nvtx_domain.calls == [("start", "step", None, 3, rid), ("mark", "fetch", nvtx_domain.categories["fetch"], 5),
                                 ("end", rid)]
    with pytest.raises(ConfigError, match="category"):
        _nvtx.start("x", category="nope")


def test_same_name_on_two_threads_keeps_each_payload(nvtx_domain):
    barrier = threading.Barrier(2)

    def work(payload):
        barrier.wait()
        for _ in range(200):
            with _nvtx.range("decode", payload=payload):
                pass

    threads = [threading.Thread(target=work, args=(p,)) for p in (1, 2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    by_thread: dict[int, set] = {}
    for c in nvtx_domain.calls:
        if c[0] == "push":
            by_thread.setdefault(c[4], set()).add(c[3])
    assert sorted(by_thread.values(), key=min) == [{1}, {2}]
    for tid in by_thread:
        assert _balanced(nvtx_domain.calls, tid)


class _Block(nn.Module):
    def __init__(self, n):
        super().__init__()
        self.lin = nn.Linear(n, n)
        self.act = nn.ReLU(inplace=True)

    def forward(self, x):
        return x + self.act(self.lin(x))


def _model():
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(4, 8), _Block(8), _Block(8), nn.Linear(8, 1))


def test_apply_nvtx_labels_forward_and_backward(nvtx_domain):
    model = _model()
    hooks = apply_nvtx(model, depth=1)
    assert hooks.names == ["0", "1", "2", "3"]
    _nvtx.set_step(5)
    x = torch.randn(3, 4)
    model(x).sum().backward()
    calls = nvtx_domain.calls
    fwd = [c[1] for c in calls if c[0] == "push"]
    assert fwd == ["fwd/0", "fwd/1", "fwd/2", "fwd/3"]
    assert _balanced(calls)
    starts = {c[4]: c[1] for c in calls if c[0] == "start"}
    ends = [c[1] for c in calls if c[0] == "end"]
    # module 0's input (the data) needs no gradient: autograd gives no end signal, so it gets no range
    assert list(starts.values()) == ["bwd/3", "bwd/2", "bwd/1"]
    assert sorted(ends) == sorted(starts)  # every backward range is closed
    assert all(c[2] == nvtx_domain.categories["backward"] and c[3] == 5 for c in calls if c[0] == "start")
    assert all(c[2] == nvtx_domain.categories["forward"] and c[3] == 5 for c in calls if c[0] == "push")
    # gradients are those of the unlabelled model
    ref = _model()
    ref(x).sum().backward()
    for p, q in zip(model.parameters(), ref.parameters()):
        torch.testing.assert_close(p.grad, q.grad, rtol=0, atol=0)
    hooks.remove()
    nvtx_domain.calls.clear()
    model(torch.randn(3, 4)).sum().backward()
    assert nvtx_domain.calls == []


def test_apply_nvtx_depth_include_types(nvtx_domain):
    model = _model()
    assert apply_nvtx(model, depth=2).names == ["0", "1", "1.lin", "1.act", "2", "2.lin", "2.act", "3"]
    model(torch.randn(3, 4)).sum().backward()  # in-place ReLU inside labelled modules: no autograd error
    assert _balanced(nvtx_domain.calls)
    assert len({c[4] for c in nvtx_domain.calls if c[0] == "start"}) == len([c for c in nvtx_domain.calls
                                                                               if c[0] == "end"])
    model = _model()
    assert apply_nvtx(model, depth=2, include=r"\.lin$").names == ["1.lin", "2.lin"]
    model = _model()
    assert apply_nvtx(model, depth=3, types=(_Block,), backward=False).names == ["1", "2"]
    with pytest.raises(ConfigError, match="depth"):
        apply_nvtx(model, depth=0)
    with pytest.raises(ConfigError, match="regular expression"):
        apply_nvtx(model, include="(")


def test_apply_nvtx_no_grad_and_off(nvtx_domain):
    model = _model()
    apply_nvtx(model, depth=1)
    with torch.no_grad():
        model(torch.randn(2, 4))
    assert not any(c[0] == "start" for c in nvtx_domain.calls)
    assert _balanced(nvtx_domain.calls) and len(nvtx_domain.calls) == 8
    nvtx_domain.calls.clear()
    _nvtx.disable()
    model(torch.randn(2, 4)).sum().backward()
    assert nvtx_domain.calls == []


def test_apply_nvtx_forward_range_closed_on_exception(nvtx_domain):
    class Bad(nn.Module):
        def forward(self, x):
            raise RuntimeError("bad forward")

    model = nn.Sequential(nn.Linear(2, 2), Bad())
    apply_nvtx(model, depth=1)
    with pytest.raises(RuntimeError, match="bad forward"):
        model(torch.randn(1, 2))
    assert _balanced(nvtx_domain.calls)
