"""The README's "Several GPUs or nodes" commands run as written (CPU, gloo) beside the walk-through's store,
coefficients, ``sample.toml`` and ``run.toml``: one node's ``torchrun ... --no-python fastload train`` stopped at step
10 and resumed to the end, and the several-node command run twice at once (two "nodes" on this machine, each with
its own working folder and cache; only ``HOST``, the port and ``/shared`` filled in)."""

from __future__ import annotations

import os
import re
import shlex
import shutil
import socket
import subprocess
from pathlib import Path

import pytest
import torch

from profiling.presets import load_run_config

ROOT = Path(__file__).resolve().parents[2]
README = ROOT / "README.md"

pytestmark = [pytest.mark.dist, pytest.mark.slow,
              pytest.mark.skipif(shutil.which("fastload") is None, reason="no fastload command on PATH")]


def _section() -> str:
    text = README.read_text()
    start = text.index("### Several GPUs or nodes")
    return text[start:text.index("\n### ", start + 1)]


def _commands(block: str) -> list[str]:
    return [line for line in block.replace("\\\n", " ").splitlines() if line.strip()]


def _walkthrough(folder: Path) -> None:
    """era.zarr, norm.zarr (``fastload synth``/``stats`` of the walk-through), sample.toml and run.toml as the
    README gives them."""
    from fastload.stats import StatsConfig, compute_stats
    from fastload.synth import synthesize

    blocks = re.findall(r"^```toml\n(.*?)^```$", README.read_text(), re.M | re.S)
    sample = [b for b in blocks if "[fields.temperature]" in b]
    run = [b for b in blocks if b.startswith("# run.toml\n")]
    assert len(sample) == 1 and len(run) == 1, "README: the sampling config or the run.toml example is gone"
    folder.mkdir(parents=True, exist_ok=True)
    synthesize(folder / "era.zarr", "tiny", hours=24, progress=False)
    compute_stats(str(folder / "era.zarr"), str(folder / "norm.zarr"), StatsConfig(progress=False))
    (folder / "sample.toml").write_text(sample[0])
    (folder / "run.toml").write_text(run[0])


def _env(home: Path) -> dict[str, str]:
    home.mkdir(parents=True, exist_ok=True)
    return {**os.environ, "PYTHONPATH": str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", ""),
            "HOME": str(home), "FASTLOAD_CACHE": str(home / "cache")}


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_the_timeout_setting_the_readme_gives_parses(tmp_path):
    sec = _section()
    assert "--set dist_timeout_s=300" in sec and "`dist_timeout_s = 300` in the run file" in sec
    assert load_run_config(preset="cpu_tiny", overrides=["dist_timeout_s=300"]).dist_timeout_s == 300
    (tmp_path / "run.toml").write_text('preset = "cpu_tiny"\ndist_timeout_s = 300\n')
    assert load_run_config(tmp_path / "run.toml").dist_timeout_s == 300
    assert "TORCH_NCCL_ASYNC_ERROR_HANDLING" in sec and "TORCH_NCCL_BLOCKING_WAIT" in sec


def test_one_node_two_ranks_stop_and_resume_as_written(tmp_path):
    blocks = re.findall(r"^```bash\n(.*?)^```$", _section(), re.M | re.S)
    first, second = _commands(blocks[0])
    assert first.startswith("torchrun --standalone --nproc_per_node 2 --no-python fastload train")
    assert first.endswith("--stop-at 10") and second.endswith("--resume")
    _walkthrough(tmp_path)
    env = _env(tmp_path / "home")
    for cmd, step in ((first, 10), (second, 20)):
        p = subprocess.run(shlex.split(cmd), cwd=tmp_path, env=env, capture_output=True, text=True, timeout=280)
        assert p.returncode == 0, cmd + "\n" + p.stdout[-3000:] + p.stderr[-3000:]
        payload = torch.load(tmp_path / "runs" / "ddp" / "last.pt", weights_only=True)
        assert payload["step"] == step and payload["extra"]["world_size"] == 2, cmd
    assert "resumed from runs/ddp/last.pt at step 10" in p.stdout and "step 20/20" in p.stdout


def test_two_nodes_two_ranks_each_as_written(tmp_path):
    blocks = re.findall(r"^```bash\n(.*?)^```$", _section(), re.M | re.S)
    (cmd,) = _commands(blocks[1])
    assert "--rdzv-backend c10d --rdzv-endpoint HOST:29500" in cmd and "/shared/run.toml" in cmd
    shared = tmp_path / "shared"
    _walkthrough(shared)
    cmd = cmd.replace("HOST:29500", f"127.0.0.1:{_free_port()}").replace("/shared", str(shared))
    nodes = []
    for n in (0, 1):  # every node runs the same command, in its own folder with its own HOME
        cwd = tmp_path / f"node{n}"
        cwd.mkdir()
        nodes.append(subprocess.Popen(shlex.split(cmd), cwd=cwd, env=_env(cwd / "home"), stdout=subprocess.PIPE,
                                      stderr=subprocess.STDOUT, text=True))
    try:
        outs = [p.communicate(timeout=280)[0] for p in nodes]
    finally:
        for p in nodes:
            if p.poll() is None:
                p.kill()
    for p, out in zip(nodes, outs):
        assert p.returncode == 0, out[-4000:]
    assert any("rank=0/4" in out for out in outs), outs
    payload = torch.load(shared / "runs" / "ddp" / "last.pt", weights_only=True)
    assert payload["step"] == 20 and payload["extra"]["world_size"] == 4
    assert [s["rank"] for s in payload["extra"]["loader"]] == [0, 1, 2, 3]
