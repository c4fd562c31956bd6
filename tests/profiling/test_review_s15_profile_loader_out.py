"""``fastload profile-loader --out``: a report folder that cannot be one fails before any data is prepared or the
sweep runs (review s15, finding 3: a file given as --out ran the whole sweep, then died with FileExistsError, exit 1)."""

from __future__ import annotations

import os

import pytest

import profiling.loader_profile as lp
import profiling.loop as loop
from fastload.cli import main as cli


@pytest.fixture
def no_work(monkeypatch):
    """The data preparation and the sweep raise if reached: the check must come before both."""
    calls: list[str] = []

    def refuse(name):
        def f(*a, **k):
            calls.append(name)
            raise AssertionError(f"{name} ran before --out was checked")
        return f

    monkeypatch.setattr(loop, "prepare_data", refuse("prepare_data"))
    monkeypatch.setattr(lp, "sweep", refuse("sweep"))
    return calls


@pytest.mark.parametrize("under", [False, True], ids=["a-file", "under-a-file"])
def test_an_out_that_is_a_file_exits_2_naming_it_before_the_sweep(tmp_path, capsys, no_work, under):
    f = tmp_path / "afile.txt"
    f.write_text("keep me")
    out = f / "sub" if under else f
    assert cli(["profile-loader", "--batches", "2", "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert err.startswith("fastload profile-loader: error: --out: ")
    assert repr(str(out)) in err and "is a file" in err and "expected a folder" in err
    assert "Traceback" not in err and len(err.strip().splitlines()) == 1
    assert no_work == [] and f.read_text() == "keep me"


@pytest.mark.skipif(not hasattr(os, "geteuid") or os.geteuid() == 0, reason="root may write anywhere")
def test_an_out_in_a_read_only_folder_exits_2(tmp_path, capsys, no_work):
    ro = tmp_path / "ro"
    ro.mkdir()
    ro.chmod(0o555)
    try:
        assert cli(["profile-loader", "--out", str(ro / "rep")]) == 2
    finally:
        ro.chmod(0o755)
    err = capsys.readouterr().err
    assert "--out" in err and "no write permission" in err and no_work == []


def test_a_usable_out_reaches_the_sweep(tmp_path, no_work):
    """The check lets a folder to create through (the sweep is then reached: the patched one raises)."""
    with pytest.raises(AssertionError, match="prepare_data ran"):
        cli(["profile-loader", "--batches", "2", "--out", str(tmp_path / "new" / "rep")])
    assert no_work == ["prepare_data"]
