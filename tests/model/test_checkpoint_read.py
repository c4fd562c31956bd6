"""A file that is no checkpoint is refused by name, whatever torch.load makes of it (review s13 r2 item 1: a TOML
file gave ``IndexError: pop from empty list``, a truncated ``.pt`` ``RuntimeError: PytorchStreamReader ...``, a
folder ``IsADirectoryError``)."""

from __future__ import annotations

import pytest
import torch

from model import Multiformer, MultiformerConfig, load_checkpoint, save_checkpoint
from model.checkpoint import read_checkpoint


def _not_checkpoints(tmp_path):
    """``{name: path}`` of files a user may give by mistake; a real checkpoint beside them (``good``)."""
    torch.manual_seed(0)
    good = save_checkpoint(tmp_path / "last.pt", Multiformer(MultiformerConfig.tiny()))
    whole = good.read_bytes()
    (tmp_path / "sample.toml").write_text('preset = "cpu_tiny"\n[data]\nstore = "x.zarr"\n')
    (tmp_path / "trunc.pt").write_bytes(whole[: len(whole) // 2])
    (tmp_path / "empty.pt").write_bytes(b"")
    torch.save([1, 2, 3], tmp_path / "list.pt")  # a torch file, but no checkpoint
    torch.save({"format": 99}, tmp_path / "other.pt")
    (tmp_path / "folder").mkdir()
    names = ("sample.toml", "trunc.pt", "empty.pt", "list.pt", "other.pt")
    return good, {n: tmp_path / n for n in names}


@pytest.mark.parametrize("name", ["sample.toml", "trunc.pt", "empty.pt", "list.pt", "other.pt"])
def test_a_file_that_is_no_checkpoint_is_a_value_error_naming_it(tmp_path, name):
    good, paths = _not_checkpoints(tmp_path)
    path = paths[name]
    with pytest.raises(ValueError, match=rf"^--resume '{path}': not a .*expected a \.pt file written by fastload"):
        read_checkpoint(path, "--resume")
    net = Multiformer(MultiformerConfig.tiny())
    before = {k: v.clone() for k, v in net.state_dict().items()}
    with pytest.raises(ValueError, match=rf"^checkpoint '{path}': not a "):
        load_checkpoint(path, net)
    assert all(torch.equal(before[k], v) for k, v in net.state_dict().items())  # nothing loaded
    assert read_checkpoint(good)["format"] == 1  # the real one beside them reads


def test_a_folder_or_no_file_is_a_file_not_found_error_naming_it(tmp_path):
    (tmp_path / "runs").mkdir()
    with pytest.raises(FileNotFoundError, match=rf"^--checkpoint: '{tmp_path / 'runs'}' is a folder; expected a "
                                                rf"checkpoint file \(e\.g\. '{tmp_path / 'runs' / 'last.pt'}'"):
        read_checkpoint(tmp_path / "runs", "--checkpoint")
    with pytest.raises(FileNotFoundError, match=rf"^checkpoint: no file '{tmp_path / 'nope.pt'}'"):
        load_checkpoint(tmp_path / "nope.pt", Multiformer(MultiformerConfig.tiny()))
