"""Checkpoint loading refuses what would load wrongly, and files are written as other files are (review s11 r2:
M2, L7, L10)."""

from __future__ import annotations

import dataclasses
import os
import stat
import warnings

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


def _trained_adamw(**settings):
    torch.manual_seed(0)
    net = Multiformer(MultiformerConfig.tiny(num_fields=1))
    opt = torch.optim.AdamW(net.parameters(), **settings)
    for p in net.parameters():
        p.grad = torch.randn_like(p)
    opt.step()
    return net, opt


def test_the_optimizer_settings_of_the_resuming_run_win_with_a_warning(tmp_path):
    net, opt = _trained_adamw(lr=1e-3, betas=(0.9, 0.999), weight_decay=0.01, eps=1e-8)
    opt.param_groups[0]["lr"] = 5e-4  # where a schedule had taken it
    path = save_checkpoint(tmp_path / "m.pt", net, opt)
    net2 = Multiformer(MultiformerConfig.tiny(num_fields=1))
    opt2 = torch.optim.AdamW(net2.parameters(), lr=1e-3, betas=(0.8, 0.99), weight_decay=0.1, eps=1e-8)
    with pytest.warns(UserWarning, match=r"betas: saved \(0\.9, 0\.999\), now \(0\.8, 0\.99\); weight_decay: saved "
                                         r"0\.01, now 0\.1"):
        load_checkpoint(path, net2, opt2)
    g = opt2.param_groups[0]
    assert g["betas"] == (0.8, 0.99) and g["weight_decay"] == 0.1 and g["eps"] == 1e-8
    assert g["lr"] == 5e-4  # schedule state: as saved
    for p, p2 in zip(net.parameters(), net2.parameters()):  # the moments are the saved run's
        assert torch.equal(opt.state[p]["exp_avg"], opt2.state[p2]["exp_avg"])
        assert torch.equal(opt.state[p]["exp_avg_sq"], opt2.state[p2]["exp_avg_sq"])
    # the same settings: no warning, and everything as saved
    net3 = Multiformer(MultiformerConfig.tiny(num_fields=1))
    opt3 = torch.optim.AdamW(net3.parameters(), lr=1e-3, betas=(0.9, 0.999), weight_decay=0.01, eps=1e-8)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        load_checkpoint(path, net3, opt3)
    assert opt3.state_dict()["param_groups"] == opt.state_dict()["param_groups"]


@pytest.mark.parametrize("saved, visible", [(2, 1), (1, 2), (3, 3)])
def test_cuda_rng_states_restore_onto_the_gpus_there_are(tmp_path, monkeypatch, saved, visible):
    """Resuming with fewer visible GPUs than the run saved RNG states for raised IndexError in set_rng_state_all;
    now as many as fit are restored, with a warning when the counts differ (CPU test: torch.cuda faked)."""
    path = save_checkpoint(tmp_path / "m.pt", Multiformer(MultiformerConfig.tiny(num_fields=1)))
    payload = torch.load(path, weights_only=True)
    states = [torch.full((16,), i, dtype=torch.uint8) for i in range(saved)]
    payload["rng"]["cuda"] = states
    torch.save(payload, path)
    got = {}
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: visible)
    monkeypatch.setattr(torch.cuda, "set_rng_state", lambda s, device="cuda": got.__setitem__(device, s))
    net = Multiformer(MultiformerConfig.tiny(num_fields=1))
    if saved == visible:
        with warnings.catch_warnings():
            warnings.simplefilter("error")
            load_checkpoint(path, net)
    else:
        with pytest.warns(UserWarning, match=rf"RNG states of {saved} GPU\(s\), this process sees {visible}"):
            load_checkpoint(path, net)
    assert sorted(got) == list(range(min(saved, visible)))
    assert all(torch.equal(got[i], states[i]) for i in got)


@pytest.mark.gpu
def test_cuda_rng_state_round_trip(tmp_path):
    torch.cuda.manual_seed_all(5)
    path = save_checkpoint(tmp_path / "m.pt", Multiformer(MultiformerConfig.tiny(num_fields=1)))
    want = torch.rand(4, device="cuda")
    load_checkpoint(path, Multiformer(MultiformerConfig.tiny(num_fields=1)))
    assert torch.equal(torch.rand(4, device="cuda"), want)
