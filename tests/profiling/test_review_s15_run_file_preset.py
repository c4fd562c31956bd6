"""A run file that names no preset (review s15, finding 9a): ``--help`` said the preset defaults to cpu_tiny, but a
file without ``preset`` and without ``[data]`` failed with "missing the [data] section" only. The default is for runs
without --config; the error and the help now say so and what to give."""

from __future__ import annotations

import pytest

from fastload.cli import main as cli
from fastload.errors import ConfigError
from profiling.loop import _parser
from profiling.presets import PRESETS, get_preset, load_run_config


def test_the_error_names_the_data_section_and_the_preset_to_give(tmp_path):
    f = tmp_path / "run.toml"
    f.write_text("steps = 4\n")
    with pytest.raises(ConfigError) as e:
        load_run_config(f)
    msg = str(e.value)
    assert msg.startswith(f"{f}: run config: missing the [data] section")
    assert 'preset = "cpu_tiny"' in msg and "--preset cpu_tiny" in msg and str(list(PRESETS)) in msg
    assert "without --config" in msg


def test_the_cli_exits_2_with_that_line(tmp_path, capsys):
    f = tmp_path / "run.toml"
    f.write_text("steps = 4\n")
    assert cli(["train", "--config", str(f)]) == 2
    err = capsys.readouterr().err
    assert len(err.strip().splitlines()) == 1 and 'preset = "cpu_tiny"' in err and "[data]" in err


@pytest.mark.parametrize("how", ["file", "flag"])
def test_either_fix_the_error_names_loads_the_preset_data(tmp_path, how):
    """What the message tells the user to do works: the preset's data, the file's steps (reference: get_preset)."""
    f = tmp_path / "run.toml"
    f.write_text(('preset = "cpu_tiny"\n' if how == "file" else "") + "steps = 4\n")
    cfg = load_run_config(f, preset="cpu_tiny" if how == "flag" else None)
    want = get_preset("cpu_tiny")
    assert cfg.steps == 4 and cfg.data.to_dict() == want.data.to_dict() and cfg.model == want.model


@pytest.mark.parametrize("mode", ["train", "profile"])
def test_the_help_says_the_default_preset_is_for_runs_without_a_run_file(mode):
    text = " ".join(_parser(mode).format_help().split())
    assert "run preset (default: cpu_tiny, without --config;" in text
    assert "with none, the file needs a [data] section with sampling" in text
