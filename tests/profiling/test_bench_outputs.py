"""``fastload bench``: the output files are checked before the run, and results are printed as they come (review
s13 r2 item 4: ``--json /nonexistent_dir/x.json`` was a FileNotFoundError and ``--json era.zarr`` an
IsADirectoryError after the whole run; a default run killed before its end had printed no figure)."""

from __future__ import annotations

import json
import math
import re

import pytest

from fastload.cli import main as cli
from fastload.errors import ConfigError
from profiling import bench
from profiling.bench_report import format_table
from tests.fastload.stores import make_per_variable


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    path = tmp_path_factory.mktemp("bench") / "tiny.zarr"
    make_per_variable(path, zarr_format=3, nt=8, ny=12, nx=20, chunks=(2, 1, 6, 8))
    return str(path)


@pytest.fixture
def no_run(monkeypatch):
    """run_bench replaced by one that fails the test: a refusal must come before any work."""
    calls = []

    def run_bench(*args, **kwargs):
        calls.append(args)
        raise AssertionError("the bench ran before its output paths were checked")

    monkeypatch.setattr(bench, "run_bench", run_bench)
    return calls


def test_outputs_that_cannot_be_written_are_refused_before_the_run(tiny, tmp_path, no_run):
    a_file = tmp_path / "a_file"
    a_file.write_text("x")
    cases = [
        (["--json", str(tmp_path / "nonexistent_dir" / "x.json")],
         rf"bench --json .*x\.json: the folder {re.escape(str(tmp_path / 'nonexistent_dir'))} does not exist"),
        (["--json", tiny], rf"bench --json {re.escape(tiny)}: is a folder; expected the path of a file"),
        (["--plot", str(tmp_path / "nonexistent_dir" / "x.png")], r"bench --plot .*x\.png: the folder .* not exist"),
        (["--plot", str(tmp_path)], r"bench --plot .*: is a folder"),
        (["--json", str(a_file / "x.json")], rf"bench --json .*: {re.escape(str(a_file))} is not a folder"),
        (["--json", str(tmp_path / "r.out"), "--plot", str(tmp_path / "r.out")], r"--json and --plot: both name"),
    ]
    for extra, words in cases:
        with pytest.raises(ConfigError, match=words):
            bench.main([tiny, "--quick", *extra])
    assert no_run == []


def test_the_cli_prints_the_refusal_not_a_traceback(tiny, tmp_path, capsys, no_run):
    assert cli(["bench", tiny, "--quick", "--json", tiny]) == 2
    err = capsys.readouterr().err
    assert f"fastload bench: error: bench --json {tiny}: is a folder" in err and "Traceback" not in err
    assert no_run == []


def test_a_latency_that_is_not_finite_is_refused(tiny, no_run):
    for v in ("nan", "inf", "-1"):
        with pytest.raises(ConfigError, match=r"bench --latency-ms: expected finite numbers >= 0"):
            bench.main([tiny, "--quick", "--latency-ms", v])
    assert no_run == []


def test_results_are_printed_as_they_come_and_add_up_to_the_table(tiny, tmp_path, capsys, monkeypatch):
    """Two groups (latency 0 and 1 ms), two rounds: the start line says what will run; each timed pass logs its
    samples/s as it ends (the figures the JSON's samples_per_s_rounds hold); each group's table is printed when the
    group is done, before the next group starts; stdout is format_table of the JSON result (as before)."""
    out = tmp_path / "r.json"
    events: list[tuple[str, str]] = []
    real_group, real_format_group = bench._group, bench.format_group

    def group(*args, **kwargs):  # where each group starts
        events.append(("start", ""))
        return real_group(*args, **kwargs)

    def format_group(rows, roof):  # when each group's table is printed
        events.append(("table", rows[0]["scenario"]))
        return real_format_group(rows, roof)

    monkeypatch.setattr(bench, "_group", group)
    monkeypatch.setattr(bench, "format_group", format_group)
    rc = bench.main([tiny, "--peers", "fastload", "fastload.extract", "--batches", "2", "--batch-size", "2",
                     "--rounds", "2", "--workers", "1", "--latency-ms", "0", "1", "--no-roofs", "--json", str(out)])
    assert rc == 0
    captured = capsys.readouterr()
    res = json.loads(out.read_text())
    assert captured.out == format_table(res) + "\n"  # the same text as when it was printed at the end
    assert events == [("start", ""), ("table", "as-is warm w1"), ("start", ""), ("table", "as-is warm w1 1ms")]
    err = captured.err.splitlines()
    assert err[0].startswith("bench: 2 loader(s) (fastload, fastload.extract) in 2 scenario group(s)")
    assert "2 interleaved round(s) of 2 batches x 2 samples per loader" in err[0]
    assert len(res["rows"]) == 4
    for row in res["rows"]:
        assert row["status"] == "ok" and len(row["samples_per_s_rounds"]) == 2
        for r, sps in enumerate(row["samples_per_s_rounds"]):
            prefix = f"[{row['scenario']}] round {r + 1}/2: {row['loader']}: "
            lines = [x for x in err if x.startswith(prefix)]
            assert len(lines) == 1 and lines[0].startswith(f"{prefix}{sps:.1f} samples/s, first batch "), lines
            assert math.isfinite(sps) and sps > 0


def test_a_loader_that_is_not_installed_is_logged_when_found(tiny, capsys, monkeypatch):
    monkeypatch.setattr(bench, "_all_status", lambda latency_ms: {"fastload.extract": "not installed (test)"})
    assert bench.main([tiny, "--peers", "fastload", "fastload.extract", "--batches", "1", "--batch-size", "2",
                       "--rounds", "1", "--workers", "1", "--no-roofs"]) == 0
    err = capsys.readouterr().err.splitlines()
    assert "[as-is warm w1] fastload.extract: skipped (not installed (test))" in err
