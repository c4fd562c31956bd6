"""``--torch-profiler``: the steps whose timing the profiler touches (its start, its traced steps, its trace export)
are left out of the summary, which names the trace folder."""

from __future__ import annotations

import csv
import json

import pytest
import torch

import profiling.tb as tb
from fastload.errors import ConfigError
from profiling.loop import run
from tests.profiling.loopdata import run_config

QUIET = {"log": lambda msg: None}


def _watch_profiler(monkeypatch):
    """Per ``prof.step()`` call (after loop step i, from 0): the profiler's action before it and after it. A
    change of action (start tracing, stop and export) does its work inside that call, in step i's idle; a step
    whose action is not NONE runs traced."""
    calls: list[tuple[object, object]] = []
    build = tb.build_torch_profiler

    def wrapped(cfg):
        prof = build(cfg)
        step = prof.step

        def watched():
            before = prof.current_action
            step()
            calls.append((before, prof.current_action))

        prof.step = watched
        return prof

    monkeypatch.setattr(tb, "build_torch_profiler", wrapped)
    return calls


@pytest.mark.parametrize("steps,warmup", [(12, 2), (5, 1)])
def test_steps_the_profiler_touches_are_left_out_of_the_summary(tmp_path_factory, tmp_path, monkeypatch, steps,
                                                                warmup):
    calls = _watch_profiler(monkeypatch)
    cfg = run_config(tmp_path_factory, steps=steps, warmup=warmup)
    lines: list[str] = []
    s = run(cfg, out=tmp_path / "r", torch_profiler=str(tmp_path / "tb"), log=lines.append)
    none = torch.profiler.ProfilerAction.NONE
    assert len(calls) == steps
    touched = {i + 1 for i, (a, b) in enumerate(calls) if a != b or a != none}  # console numbering, from 1
    assert touched and list((tmp_path / "tb").glob("*.pt.trace.json*"))  # a trace was written
    with open(tmp_path / "r" / "steps.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    kept = [int(r["step"]) for r in rows if r["torch_profiler"] == "0"]
    assert kept and not touched & set(kept)
    assert {int(r["step"]) for r in rows if r["torch_profiler"] == "1"} >= touched
    assert len(rows) == steps - warmup and s["steps"] == len(kept)
    assert s["step"]["mean_ms"] == pytest.approx(sum(float(r["step_ms"]) for r in rows
                                                     if int(r["step"]) in kept) / len(kept))
    summary = json.loads((tmp_path / "r" / "summary.json").read_text())
    assert summary["torch_profiler"]["dir"] == str(tmp_path / "tb")
    lo, hi = summary["torch_profiler"]["left_out_steps"]
    assert set(range(lo, hi + 1)) >= touched and hi == steps
    said = [ln for ln in lines if ln.startswith("torch.profiler trace")]
    assert said and "left out of the numbers above" in said[0]


def test_a_profile_too_short_to_leave_timed_steps_beside_the_trace_is_refused(tmp_path_factory, tmp_path):
    cfg = run_config(tmp_path_factory, steps=3, warmup=1)
    with pytest.raises(ConfigError, match="torch-profiler.*steps >= warmup \\+ 3"):
        run(cfg, out=tmp_path / "r", torch_profiler=str(tmp_path / "tb"), **QUIET)
    assert run(cfg, out=tmp_path / "r2", **QUIET)["steps"] == 2  # without the profiler, the same run is timed


def _traced_steps(folder):
    """The loop steps (from 0 in the run) whose ``ProfilerStep#N`` annotations the trace files in ``folder`` hold."""
    import gzip
    import re

    found = set()
    for path in folder.glob("*.pt.trace.json*"):
        with gzip.open(path, "rt") if path.suffix == ".gz" else open(path) as f:
            text = f.read()
        found |= {int(n) for n in re.findall(r'"name": ?"ProfilerStep#(\d+)"', text)}
    return found


@pytest.mark.parametrize("steps,warmup", [(10, 2), (12, 2)])
def test_the_traced_steps_said_are_the_trace_files(tmp_path_factory, tmp_path, steps, warmup):
    """``summary.json`` ``torch_profiler.traced_steps`` and the console line name the steps whose ProfilerStep#N
    the trace holds (console numbering: #N is step N + 1). Before: the profiler's warm-up step was counted in,
    which it does not record ("trace of steps 6-10" for a trace of ProfilerStep#6..#9, steps 7-10)."""
    cfg = run_config(tmp_path_factory, steps=steps, warmup=warmup)
    lines: list[str] = []
    from profiling.loop import run

    run(cfg, out=tmp_path / "r", torch_profiler=str(tmp_path / "tb"), log=lines.append)
    traced = sorted(n + 1 for n in _traced_steps(tmp_path / "tb"))
    assert traced and traced == list(range(traced[0], traced[-1] + 1)) and traced[-1] == steps
    summary = json.loads((tmp_path / "r" / "summary.json").read_text())
    assert summary["torch_profiler"]["traced_steps"] == [traced[0], traced[-1]]
    said = [ln for ln in lines if ln.startswith("torch.profiler trace")]
    assert said and said[0].startswith(f"torch.profiler trace of steps {traced[0]}-{traced[-1]}: "), said
