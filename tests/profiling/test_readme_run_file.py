"""The README's run file for your own store ("Profiling a training run", "Your own store") parses and runs, as
written, beside the walk-through's store, coefficients and ``sample.toml`` (the README's sampling config): its
``fastload profile`` and ``fastload train`` commands run for two steps each (steps cut, CPU)."""

from __future__ import annotations

import json
import re
import shlex
from pathlib import Path

from fastload.cli import main as cli
from profiling.presets import load_run_config

README = Path(__file__).resolve().parents[2] / "README.md"
SHORT = ["--steps", "2", "--warmup", "0", "--device", "cpu"]


def _blocks(lang: str) -> list[str]:
    return re.findall(rf"^```{lang}\n(.*?)^```$", README.read_text(), re.M | re.S)


def _readme_files() -> tuple[str, str, list[list[str]]]:
    """(sample.toml, run.toml, the fastload commands shown right after run.toml)."""
    sample = [b for b in _blocks("toml") if "[fields.temperature]" in b]
    run = [b for b in _blocks("toml") if b.startswith("# run.toml\n")]
    assert len(sample) == 1 and len(run) == 1, "README: the sampling config or the run.toml example is gone"
    text = README.read_text()
    after = text[text.index(run[0]) + len(run[0]):]
    bash = re.search(r"```bash\n(.*?)```", after, re.S).group(1)
    commands = [shlex.split(line)[1:] for line in bash.splitlines() if line.startswith("fastload ")]
    return sample[0], run[0], commands


def test_the_readme_run_file_samples_your_own_store(tmp_path, monkeypatch):
    from fastload.stats import StatsConfig, compute_stats
    from fastload.synth import synthesize

    sample, run, commands = _readme_files()
    assert [c[0] for c in commands] == ["profile", "train"]
    synthesize(tmp_path / "era.zarr", "tiny", hours=24, progress=False)  # fastload synth era.zarr --preset tiny
    compute_stats(str(tmp_path / "era.zarr"), str(tmp_path / "norm.zarr"), StatsConfig(progress=False))
    (tmp_path / "sample.toml").write_text(sample)
    (tmp_path / "run.toml").write_text(run)
    cfg = load_run_config(tmp_path / "run.toml")
    assert cfg.name == "cpu_tiny" and cfg.data.store == str(tmp_path / "era.zarr")
    assert [f.name for f in cfg.data.sampling.fields] == ["temperature", "t2m"]
    assert cfg.data.sampling.norm_path == str(tmp_path / "norm.zarr")
    monkeypatch.chdir(tmp_path)
    for cmd in commands:
        out = tmp_path / f"report-{cmd[0]}"
        assert cli([*cmd, *SHORT, "--out", str(out)]) == 0, cmd
        s = json.loads((out / "summary.json").read_text())
        assert s["store"] == str(tmp_path / "era.zarr") and s["steps"] == 2, cmd
        assert list(s["config"]["data"]["sampling"]["fields"]) == ["temperature", "t2m"], cmd
    assert (tmp_path / "runs" / "mine" / "last.pt").is_file()  # train's --checkpoint-dir, relative to the cwd
