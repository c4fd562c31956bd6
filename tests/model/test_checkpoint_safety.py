"""Checkpoint loading refuses what would load wrongly, and files are written as other files are (review s11 r2:
M2, L7, L10)."""

from __future__ import annotations

import dataclasses
import os
import stat

import pytest
import torch

from model import (
    Forecaster,
    ForecasterConfig,
    Multiformer,
    MultiformerConfig,
    load_checkpoint,
    save_checkpoint,
)


def _forecaster(mc: MultiformerConfig, **kw) -> Forecaster:
    torch.manual_seed(0)
    return Forecaster(ForecasterConfig.tiny(**kw), Multiformer(mc))


@pytest.mark.parametrize("change, named", [
    (lambda f: dataclasses.replace(f, levels=(1000.0, 200.0)), "levels"),
    (lambda f: dataclasses.replace(f, levels=tuple(reversed(f.levels))), "levels"),
    (lambda f: dataclasses.replace(f, loss_weight=5.0), "loss_weight"),
    (lambda f: dataclasses.replace(f, coupled=tuple(reversed(f.coupled))), "coupled"),
])
def test_forecaster_with_another_multiformer_config_is_refused(tmp_path, change, named):
    mc = MultiformerConfig.tiny(num_fields=3)
    path = save_checkpoint(tmp_path / "fc.pt", _forecaster(mc))
    other = _forecaster(dataclasses.replace(mc, fields=tuple(change(f) for f in mc.fields)))
    before = {k: v.clone() for k, v in other.state_dict().items()}
    with pytest.raises(ValueError, match=rf"multiformer_config differs .*fields\.temperature\.{named}: saved"):
        load_checkpoint(path, other)
    assert all(torch.equal(before[k], v) for k, v in other.state_dict().items())  # nothing loaded
    load_checkpoint(path, _forecaster(mc))  # the same config loads


def test_reversed_coupling_order_cannot_mix_up_adam_state(tmp_path):
    """The reviewer's r9: coupling heads in the other order have the same shapes and keys, and Adam state is loaded
    by position, so it went to the wrong heads; now the load is refused."""
    mc = MultiformerConfig.tiny(num_fields=3)
    fc = _forecaster(mc, freeze_encoder=False)
    opt = torch.optim.AdamW(fc.trainable_parameters())
    for p in fc.trainable_parameters():
        p.grad = torch.randn_like(p)
    opt.step()
    path = save_checkpoint(tmp_path / "fc3.pt", fc, opt)
    rev = tuple(dataclasses.replace(f, coupled=tuple(reversed(f.coupled))) for f in mc.fields)
    fc2 = _forecaster(dataclasses.replace(mc, fields=rev), freeze_encoder=False)
    opt2 = torch.optim.AdamW(fc2.trainable_parameters())
    with pytest.raises(ValueError, match="coupled"):
        load_checkpoint(path, fc2, opt2)
    assert not opt2.state


@pytest.mark.parametrize("umask", [0o022, 0o027, 0o077])
def test_checkpoint_file_mode_honours_the_umask(tmp_path, umask):
    """As ``open`` creates files: 0o666 less the umask (mkstemp made every checkpoint 0o600)."""
    old = os.umask(umask)
    try:
        path = save_checkpoint(tmp_path / "m.pt", Multiformer(MultiformerConfig.tiny(num_fields=1)))
        ref = tmp_path / "ref"
        ref.write_bytes(b"")  # the mode the umask gives a file made by open()
    finally:
        os.umask(old)
    assert stat.S_IMODE(os.stat(path).st_mode) == stat.S_IMODE(os.stat(ref).st_mode) == 0o666 & ~umask
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m.pt", "ref"]  # no temporary left


def test_directory_is_fsynced_after_the_rename(tmp_path, monkeypatch):
    events = []
    real_fsync, real_replace = os.fsync, os.replace

    def fsync(fd):
        events.append(("fsync", stat.S_ISDIR(os.fstat(fd).st_mode)))
        return real_fsync(fd)

    def replace(a, b):
        events.append(("replace", str(b)))
        return real_replace(a, b)

    monkeypatch.setattr(os, "fsync", fsync)
    monkeypatch.setattr(os, "replace", replace)
    path = save_checkpoint(tmp_path / "m.pt", Multiformer(MultiformerConfig.tiny(num_fields=1)))
    assert events == [("fsync", False), ("replace", str(path)), ("fsync", True)]
