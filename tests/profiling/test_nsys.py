"""nsys stats CSV parsing and folding into the report format, on hand-written fixtures that follow the column
names of the Nsight Systems Analysis Guide; the capture window; nsys_profile.sh driven with a fake nsys."""

from __future__ import annotations

import io
import json
import os
import shutil
import stat
import subprocess
import sys
from pathlib import Path

import pytest

from fastload.errors import ConfigError
from profiling.nsys import REPORTS, CaptureWindow, load_stats, main, read_stats_csv, summarize_nsys

DATA = Path(__file__).parent / "data"
ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture
def prefix(tmp_path):
    for r in REPORTS:
        shutil.copy(DATA / f"nsys_{r}.csv", tmp_path / f"run_{r}.csv")
    return tmp_path / "run"


def test_read_csv_skips_notices_and_converts_units():
    rows = read_stats_csv(DATA / "nsys_nvtx_sum.csv")
    assert len(rows) == 8
    step = rows[0]
    assert step["Range"] == "fastload:step" and step["Style"] == "StartEnd"
    assert step["Total Time"] == pytest.approx(500.0) and step["Time %"] == 50.0
    assert step["Instances"] == 10 and step["Med"] == pytest.approx(49.0) and step["StdDev"] == pytest.approx(4.0)
    text = ("Generating SQLite file run.sqlite from run.nsys-rep\n"
            "Range,Style,Total Proj Time (ms),Total Range Time (us),Range Instances,Proj Avg (s)\n"
            ":forward,PushPop,12.5,13000,5,0.0025\n\n")
    (row,) = read_stats_csv(io.StringIO(text))
    assert row["Total Proj Time"] == 12.5 and row["Total Range Time"] == pytest.approx(13.0)
    assert row["Proj Avg"] == pytest.approx(2.5) and row["Range"] == ":forward"


def test_read_csv_errors(tmp_path):
    with pytest.raises(ConfigError, match="does not exist"):
        read_stats_csv(tmp_path / "missing.csv")
    bad = tmp_path / "bad.csv"
    bad.write_text("NOTICE: nothing to report\n")
    with pytest.raises(ConfigError, match="no CSV header"):
        read_stats_csv(bad)
    with pytest.raises(ConfigError, match="nsys_profile.sh"):
        load_stats(tmp_path / "nothing")


def test_load_stats(prefix):
    stats = load_stats(prefix)
    assert set(stats["files"]) == set(REPORTS)
    host, gpu = stats["host"], stats["gpu"]
    assert host["forward"]["total_ms"] == pytest.approx(100.0)  # other_domain:forward is not ours
    assert set(host) == {"step", "backward", "forward", "data_wait", "optimizer", "fwd/encoder", "h2d"}
    assert gpu["forward"]["total_ms"] == pytest.approx(150.0) and gpu["forward"]["range_ms"] == pytest.approx(100)
    assert gpu["forward"]["gpu_ops"] == 1500 and gpu["backward"]["med_ms"] == pytest.approx(18.8)
    assert [round(k["total_ms"]) for k in stats["kernels"]] == [240, 120, 40]
    assert stats["kernels"][0]["name"].startswith("void cutlass::Kernel2<") and stats["kernels"][1]["instances"] == 2500
    assert stats["memops"]["[CUDA memcpy Host-to-Device]"] == {"total_ms": pytest.approx(18.0), "count": 10,
                                                               "avg_ms": pytest.approx(1.8)}


def test_summary_in_report_format(prefix):
    s = summarize_nsys(load_stats(prefix), samples_per_step=8, config={"run": "x"})
    assert s["source"] == "nsys" and s["steps"] == 10
    ph = s["phases"]
    assert list(ph) == ["data_wait", "h2d", "forward", "backward", "optimizer", "other"]
    expect = {"data_wait": (10.0, 10.0, 0.2, "host"), "h2d": (1.8, 1.8, 0.036, "gpu_projected"),
              "forward": (15.0, 14.9, 0.3, "gpu_projected"), "backward": (19.0, 18.8, 0.38, "gpu_projected"),
              "optimizer": (3.5, 3.5, 0.07, "gpu_projected")}
    for name, (mean, p50, share, basis) in expect.items():
        assert ph[name]["mean_ms"] == pytest.approx(mean) and ph[name]["p50_ms"] == pytest.approx(p50)
        assert ph[name]["share"] == pytest.approx(share) and ph[name]["basis"] == basis
        assert ph[name]["p95_ms"] is None
    assert s["stall_fraction"] == pytest.approx(0.2)
    assert s["samples_per_s"] == pytest.approx(160.0)
    assert s["step"]["mean_ms"] == pytest.approx(50.0) and s["step"]["p50_ms"] == pytest.approx(49.0)
    assert s["gpu_busy_fraction"] == pytest.approx((400 + 20) / 500)
    assert s["h2d_ms"] == pytest.approx(18.0) and s["kernel_ms"] == pytest.approx(400.0)
    assert s["what_if"]["no_data_wait_speedup"] == pytest.approx(1.25)
    assert s["config"] == {"run": "x"}
    json.dumps(s)  # serialisable as it is


def test_summary_without_step_range(tmp_path):
    (tmp_path / "p_nvtx_sum.csv").write_text(
        "Time (%),Total Time (ns),Instances,Avg (ns),Med (ns),Min (ns),Max (ns),StdDev (ns),Style,Range\n"
        "75.0,30000000,10,3000000,3000000,3000000,3000000,0,PushPop,forward\n"
        "25.0,10000000,10,1000000,1000000,1000000,1000000,0,PushPop,data_wait\n")
    s = summarize_nsys(load_stats(tmp_path / "p"))  # unprefixed names (no domain column): all rows count
    assert s["steps"] == 10 and s["stall_fraction"] == pytest.approx(0.25)
    assert s["phases"]["forward"]["share"] == pytest.approx(0.75) and s["phases"]["forward"]["basis"] == "host"
    assert s["gpu_busy_fraction"] is None and s["samples_per_s"] is None
    (tmp_path / "q_nvtx_sum.csv").write_text(
        "Time (%),Total Time (ns),Instances,Avg (ns),Med (ns),Min (ns),Max (ns),StdDev (ns),Style,Range\n"
        "100.0,30000000,10,3000000,3000000,3000000,3000000,0,PushPop,other:forward\n")
    with pytest.raises(ConfigError, match="FASTLOAD_NVTX=1"):
        summarize_nsys(load_stats(tmp_path / "q"))


def test_main_prints_table_and_writes_json(prefix, capsys):
    assert main([str(prefix), "--samples-per-step", "8"]) == 0
    out = capsys.readouterr().out
    assert "data_wait" in out and "stall fraction 20.0%" in out and "GPU busy" in out and "cutlass" in out
    summary = json.loads((prefix.parent / "nsys_summary.json").read_text())
    assert summary["phases"]["forward"]["mean_ms"] == pytest.approx(15.0)
    assert main([str(prefix.parent / "absent")]) == 2


def test_capture_window():
    for start, stop in ((-1, 3), (3, 3), (True, 4), (0, 2.5)):
        with pytest.raises(ConfigError, match="capture window"):
            CaptureWindow(start, stop)
    w = CaptureWindow(2, 5, enabled=False)
    for step in range(8):
        w.step(step)
    w.close()
    assert not w.active


@pytest.mark.skipif(shutil.which("bash") is None, reason="needs bash")
def test_nsys_profile_script_with_fake_nsys(tmp_path):
    """The script's nsys command lines, and its hand-off to python -m profiling.nsys."""
    log = tmp_path / "calls.log"
    fake = tmp_path / "nsys"
    fake.write_text(f"""#!/usr/bin/env bash
printf '%s\\n' "FASTLOAD_NVTX=${{FASTLOAD_NVTX:-}} $*" >> {log}
if [ "$1" = stats ]; then
  while [ $# -gt 0 ]; do [ "$1" = --output ] && out=$2; shift; done
  for r in {' '.join(REPORTS)}; do cp {DATA}/nsys_$r.csv "${{out}}_$r.csv"; done
fi
""")
    fake.chmod(fake.stat().st_mode | stat.S_IXUSR)
    out = tmp_path / "runs" / "prof"
    env = {**os.environ, "NSYS": str(fake), "PYTHON": sys.executable}
    res = subprocess.run(["bash", str(ROOT / "profiling" / "nsys_profile.sh"), str(out), "--samples-per-step", "8",
                          "--", "python", "train.py", "--steps", "30"], env=env, capture_output=True, text=True)
    assert res.returncode == 0, res.stderr
    profile, stats = log.read_text().splitlines()
    assert profile.startswith("FASTLOAD_NVTX=1 profile ")
    for opt in ("--trace=cuda,nvtx", "--capture-range=cudaProfilerApi", "--capture-range-end=stop",
                f"--output={out}"):
        assert opt in profile.split()
    assert profile.endswith("python train.py --steps 30")
    assert f"--report {','.join(REPORTS)} --format csv" in stats and stats.endswith(f"{out}.nsys-rep")
    assert "samples/s 160.0" in res.stdout
    assert json.loads((out.parent / "nsys_summary.json").read_text())["steps"] == 10
    res = subprocess.run(["bash", str(ROOT / "profiling" / "nsys_profile.sh"), str(out), "--", "true"],
                         env={**env, "NSYS": str(tmp_path / "absent")}, capture_output=True, text=True)
    assert res.returncode == 127 and "not found" in res.stderr


def test_shares_name_their_clock_and_host_shares_add_up_with_other(prefix):
    """GPU-projected phase times and host times are different clocks: each phase says which its share is on; the
    host times of the phases and ``other`` (host step time outside every phase range) add up to the host step."""
    from profiling.report import format_table

    s = summarize_nsys(load_stats(prefix))
    ph = s["phases"]
    host = {"data_wait": 100.0, "h2d": 20.0, "forward": 100.0, "backward": 200.0, "optimizer": 40.0}  # the CSV's ms
    other = 500.0 - sum(host.values())
    assert ph["other"]["mean_ms"] == pytest.approx(other / 10) and ph["other"]["basis"] == "host"
    for name, ms in host.items():
        assert ph[name]["host_share"] == pytest.approx(ms / 500.0)
    assert sum(v["host_share"] for v in ph.values()) == pytest.approx(1.0)
    mixed = sum(v["share"] for v in ph.values())
    assert mixed == pytest.approx((100 + 18 + 150 + 190 + 35 + other) / 500.0) and mixed > 1.0  # two clocks
    text = format_table(s)
    rows = {ln.split()[0]: ln.split() for ln in text.splitlines() if ln.split()}
    assert rows["phase"][-1] == "basis" and rows["forward"][-1] == "gpu" and rows["data_wait"][-1] == "host"
    assert rows["other"][-1] == "host" and rows["step"][-1] == "host"
    assert f"they add up to {100 * mixed:.1f}%, not 100%" in text
