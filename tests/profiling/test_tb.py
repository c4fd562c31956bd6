"""torch.profiler traces on CPU: the loader's fetch is recorded under the TensorBoard plugin's DataLoader name."""

from __future__ import annotations

import json
import time

import pytest
import torch

from fastload.errors import ConfigError
from profiling.tb import DATALOADER_EVENT, TorchProfilerConfig, build_torch_profiler, record_fetch


def _profile(tmp_path, steps=6, fetch_ms=4.0):
    cfg = TorchProfilerConfig(dir=str(tmp_path / "tb"), wait=1, warmup=1, active=3, worker_name="rank0")
    x = torch.randn(32, 32)
    with build_torch_profiler(cfg) as prof:
        for _ in range(steps):
            with record_fetch():
                time.sleep(fetch_ms / 1e3)
            (x @ x).sum()
            prof.step()
    files = sorted((tmp_path / "tb").glob("rank0.*.pt.trace.json"))
    assert len(files) == 1, files
    with open(files[0]) as f:
        return json.load(f)


def test_trace_contains_dataloader_event(tmp_path):
    trace = _profile(tmp_path)
    assert DATALOADER_EVENT.startswith("enumerate(DataLoader)#") and DATALOADER_EVENT.endswith(".__next__")
    events = [e for e in trace["traceEvents"] if e.get("name") == DATALOADER_EVENT]
    steps = [e for e in trace["traceEvents"] if str(e.get("name", "")).startswith("ProfilerStep#")]
    assert len(steps) == 3 and len(events) == 3  # one per active step
    fast = hasattr(torch._C._profiler, "_RecordFunctionFast")
    assert {e["cat"] for e in events} == ({"cpu_op"} if fast else {"user_annotation"})
    for e in events:
        assert e["dur"] >= 4000 * 0.9  # microseconds: the 4 ms fetch
        assert any(s["ts"] <= e["ts"] and e["ts"] + e["dur"] <= s["ts"] + s["dur"] for s in steps)


def test_tensorboard_plugin_counts_it_as_dataloader_time(tmp_path):
    pytest.importorskip("torch_tb_profiler")
    from torch_tb_profiler.profiler.data import RunProfileData
    from torch_tb_profiler.profiler.event_parser import ProfileRole

    if not hasattr(torch._C._profiler, "_RecordFunctionFast"):
        pytest.skip("this torch writes user_annotation events, which torch-tb-profiler 0.4 ignores")
    data = RunProfileData.from_json("rank0", None, _profile(tmp_path, fetch_ms=6.0))
    data.process()
    costs = data.avg_costs.costs
    assert costs[ProfileRole.DataLoader] >= 6000 * 0.9  # microseconds per step
    assert costs[ProfileRole.DataLoader] < costs[ProfileRole.Total]


def test_config_validation(tmp_path):
    assert TorchProfilerConfig(dir=str(tmp_path)).steps == 5
    for kw in ({"active": 0}, {"wait": -1}, {"repeat": True}, {"dir": ""}):
        with pytest.raises(ConfigError):
            TorchProfilerConfig(**{"dir": str(tmp_path), **kw})
    if not torch.cuda.is_available():
        with pytest.raises(ConfigError, match="CUDA"):
            TorchProfilerConfig(dir=str(tmp_path), cuda=True)
    assert TorchProfilerConfig(dir="x").to_dict()["active"] == 3
