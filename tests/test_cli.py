"""The `fastload` command dispatches, prints help, and turns fastload errors into one line and exit code 2."""

from __future__ import annotations

import subprocess
import sys

from fastload import cli


def test_help_lists_every_command(capsys):
    assert cli.main(["--help"]) == 0
    out = capsys.readouterr().out
    for name in cli.COMMANDS:
        assert name in out


def test_unknown_command(capsys):
    assert cli.main(["frobnicate"]) == 2
    assert "unknown command 'frobnicate'" in capsys.readouterr().err


def test_console_script_runs():
    r = subprocess.run([sys.executable, "-m", "fastload.cli", "--help"], capture_output=True, text=True, check=False)
    assert r.returncode == 0 and "profile-loader" in r.stdout


def test_public_api_names_are_the_functions():
    import fastload
    import fastload.extract  # noqa: F401  (importing the submodule must not shadow the function)

    assert callable(fastload.extract) and fastload.extract.__name__ == "extract"
    assert callable(fastload.open_store) and isinstance(fastload.Loader, type)


def test_every_subcommand_help_names_itself(capsys):
    """``fastload <cmd> --help`` prints ``usage: fastload <cmd>`` for every command (rollout said
    ``python -m profiling.rollout``)."""
    for name in cli.COMMANDS:
        try:
            code = cli.main([name, "--help"])  # stats and inspect return; argparse's --help exits
        except SystemExit as e:
            code = e.code
        out = capsys.readouterr().out
        assert code == 0, name
        assert out.startswith(f"usage: fastload {name} "), (name, out.splitlines()[:1])
