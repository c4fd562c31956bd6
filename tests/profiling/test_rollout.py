"""``python -m profiling.rollout``: a trained Forecaster rolled out from a store time, stitched global fields written
atomically to a zarr store that xarray opens; a constant read-out stitches back exactly (normalised and physical)."""

from __future__ import annotations

import dataclasses
import os
import subprocess
import sys

import numpy as np
import pandas as pd
import pytest
import torch
import xarray as xr

import fastload
from fastload.errors import ConfigError, StoreError
from fastload.norm import Normalizer, months_of
from profiling.loop import run
from profiling.rollout import main
from tests.profiling.forecastdata import fc_config, time_subset
from tests.profiling.loopdata import run_config, tiny_store

QUIET = {"log": lambda msg: None}
LEAD, TP = 6, 3  # the loop data's window spans 6 hours; one decoded time token is 3 hours


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """(store, norm, checkpoint) of a Forecaster trained for two steps on the loop tests' tiny store."""
    store, norm = tiny_store(tmp_path_factory)
    ck = tmp_path_factory.mktemp("rollout-ck")
    before = torch.get_num_threads()
    run(fc_config(tmp_path_factory, steps=2, warmup=0, checkpoint_dir=str(ck)), mode="train", out=ck / "report",
        **QUIET)
    torch.set_num_threads(before)
    return store, norm, ck / "last.pt"


def _constant_checkpoint(path, out, c):
    """The checkpoint with every read-out tail's output layer zeroed and its bias set to ``c``."""
    payload = torch.load(path, map_location="cpu", weights_only=True)
    for k, v in payload["state"].items():
        if k.startswith("readout.tail.") and k.endswith(".out.weight"):
            v.zero_()
        elif k.startswith("readout.tail.") and k.endswith(".out.bias"):
            v.fill_(c)
    torch.save(payload, out)
    return out


def test_rollout_writes_a_store_xarray_opens(trained, tmp_path):
    store_path, _, ck = trained
    out = tmp_path / "f.zarr"
    assert main([store_path, "--checkpoint", str(ck), "--steps", "3", "--t0", "2", "--out", str(out),
                 "--device", "cpu"]) == 0
    store = fastload.open_store(store_path)
    ds = xr.open_zarr(out)
    assert set(ds.data_vars) == {"temperature", "temperature_spread", "t2m", "t2m_spread"}
    assert ds["temperature"].dims == ("time", "level", "latitude", "longitude")
    assert ds["t2m"].dims == ("time", "latitude", "longitude")
    idx = [2 + k * LEAD + j for k in (1, 2, 3) for j in range(TP)]  # valid times: after the window at t0 = 2
    np.testing.assert_array_equal(ds["time"].values, store.time[idx])
    np.testing.assert_array_equal(ds["latitude"].values, store.grid.lat)
    np.testing.assert_array_equal(ds["longitude"].values, store.grid.lon)
    assert ds["level"].values.tolist() == [96.0, 137.0]
    t = ds["temperature"].values
    assert t.shape == (9, 2, store.grid.ny, store.grid.nx) and np.isfinite(t).all()
    assert 150 < float(np.nanmean(t)) < 350  # physical units (K), not normalised values
    assert (ds["t2m_spread"].values >= 0).all() and ds.attrs["values"] == "physical"
    assert ds.attrs["decoded_steps"] == [1, 2, 3]
    # past the end of the record: valid times continue the store's hourly step; --every keeps every 2nd step
    far = tmp_path / "far.zarr"
    assert main([store_path, "--checkpoint", str(ck), "--steps", "5", "--every", "2", "--t0", "2", "--out",
                 str(far), "--device", "cpu", "--normalised"]) == 0
    ds = xr.open_zarr(far)
    hours = [k * LEAD + j for k in (2, 4, 5) for j in range(TP)]
    want = store.time[2] + np.array(hours) * np.timedelta64(1, "h")
    np.testing.assert_array_equal(ds["time"].values, want)
    assert ds.attrs["decoded_steps"] == [2, 4, 5] and ds.attrs["values"] == "normalised"
    with pytest.raises(StoreError, match="exists"):  # never overwritten by accident
        main([store_path, "--checkpoint", str(ck), "--steps", "1", "--out", str(far), "--device", "cpu"])
    assert xr.open_zarr(far)["time"].size == 9


def test_a_constant_readout_stitches_exactly(trained, tmp_path):
    store_path, norm, ck = trained
    c = 0.1234567
    const = _constant_checkpoint(ck, tmp_path / "const.pt", c)
    out = tmp_path / "n.zarr"
    assert main([store_path, "--checkpoint", str(const), "--steps", "2", "--out", str(out), "--normalised",
                 "--device", "cpu"]) == 0
    ds = xr.open_zarr(out)
    for name in ("temperature", "t2m"):
        assert (ds[name].values == np.float32(c)).all(), name  # every point of the blended globe, bit for bit
        assert (ds[f"{name}_spread"].values == 0).all()
    phys = tmp_path / "p.zarr"
    assert main([store_path, "--checkpoint", str(const), "--steps", "2", "--out", str(phys), "--device", "cpu"]) == 0
    ds = xr.open_zarr(phys)
    months = months_of(ds["time"].values)
    coef = Normalizer(norm)
    for name, levels in (("temperature", (96.0, 137.0)), ("t2m", None)):
        mean, std = coef.coefficients(name, "local", levels, [int(m) for m in months])  # (Tt, L, NY, NX)
        want = np.float32(c) * std + mean  # float32, as the gather's normalisation runs backwards
        got = ds[name].values
        got = got[:, None] if levels is None else got
        np.testing.assert_array_equal(got, want.astype(np.float32))


def test_points_the_store_has_no_value_for_stay_missing(trained, tmp_path):
    """A region of t2m that is NaN at every time (land of an ocean field) is NaN in the forecast, at every step and
    in the spread; every other point, and the field without gaps, is a finite forecast."""
    import shutil

    import zarr

    store_path, _, ck = trained
    holed = tmp_path / "holed.zarr"
    shutil.copytree(store_path, holed)
    arr = zarr.open_array(str(holed / "t2m"), mode="r+")
    yx = (slice(10, 16), slice(4, 13))  # rows and columns of the gap (the grid is 31 x 60)
    arr[(slice(None), *yx)] = np.nan
    out = tmp_path / "h.zarr"
    assert main([str(holed), "--checkpoint", str(ck), "--steps", "2", "--out", str(out), "--device", "cpu"]) == 0
    ds = xr.open_zarr(out)
    gap = np.zeros(ds["t2m"].shape[1:], bool)
    gap[yx] = True
    for name in ("t2m", "t2m_spread"):
        v = ds[name].values
        assert np.isnan(v[:, gap]).all() and np.isfinite(v[:, ~gap]).all(), name
    assert np.isfinite(ds["temperature"].values).all()


def test_errors_name_the_problem(trained, tmp_path_factory, tmp_path):
    store_path, _, ck = trained
    with pytest.raises(ConfigError, match=r"valid initial indices 0\.\.18"):
        main([store_path, "--checkpoint", str(ck), "--steps", "1", "--t0", "19", "--out", str(tmp_path / "a.zarr")])
    with pytest.raises(ConfigError, match="not a time"):
        main([store_path, "--checkpoint", str(ck), "--steps", "1", "--time", "1999-01-01", "--out",
              str(tmp_path / "b.zarr")])
    mf = tmp_path_factory.mktemp("mf")
    run(dataclasses.replace(run_config(tmp_path_factory, steps=1, warmup=0), checkpoint_dir=str(mf)), mode="train",
        out=mf / "r", **QUIET)
    with pytest.raises(ConfigError, match="not a Forecaster checkpoint"):
        main([store_path, "--checkpoint", str(mf / "last.pt"), "--steps", "1", "--out", str(tmp_path / "c.zarr")])
    proc = subprocess.run([sys.executable, "-m", "profiling.rollout", store_path, "--checkpoint",
                           str(tmp_path / "missing.pt"), "--steps", "1", "--out", str(tmp_path / "d.zarr")],
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 2 and "no file" in proc.stderr
    assert not list(tmp_path.glob("*.zarr*"))  # nothing half written
    with pytest.raises(ConfigError, match="inside the source"):  # --overwrite never replaces the data store
        main([store_path, "--checkpoint", str(ck), "--steps", "1", "--out", store_path, "--overwrite"])
    assert os.path.isdir(store_path)


def _copy_store(src, dst, *, shift_hours=0):
    """A copy of a store, its times moved by ``shift_hours``."""
    import shutil

    import zarr

    shutil.copytree(src, dst)
    if shift_hours:
        t = zarr.open_array(str(dst / "time"), mode="r+")  # "hours since 1979-01-01", int64
        t[:] = t[:] + shift_hours
    return dst


def test_a_month_without_coefficients_fails_before_the_first_step(trained, tmp_path, monkeypatch, capsys):
    """The store moved to Jan 31 (coefficients: January only): steps 1-3 end on Jan 31, step 4 on Feb 1. The
    rollout refuses before any step runs (the model's rollout is never called), with de-normalising's error, and
    leaves nothing behind; with --every 4 only step 4 is written, and it is refused the same way."""
    from model import Forecaster

    store_path, _, ck = trained
    late = _copy_store(store_path, tmp_path / "late.zarr", shift_hours=30 * 24)
    store = fastload.open_store(late)
    assert str(store.time[0]).startswith("2021-01-31T00") and str(store.time[-1]).startswith("2021-01-31T23")
    calls = []
    real = Forecaster.rollout

    def spy(self, *args, **kwargs):
        calls.append(args)
        return real(self, *args, **kwargs)

    monkeypatch.setattr(Forecaster, "rollout", spy)
    for extra in ([], ["--every", "4"]):
        out = tmp_path / f"f{len(extra)}.zarr"
        with pytest.raises(ConfigError, match=r"has no data for month\(s\) \['Feb'\]"):
            main([str(late), "--checkpoint", str(ck), "--steps", "4", "--t0", "2", "--out", str(out),
                  "--device", "cpu", *extra])
        assert calls == [] and "written" not in capsys.readouterr().out
        assert not list(tmp_path.glob("f*.zarr*"))
    # the same rollout stopping on Jan 31 runs (the check asks only for the months written), and so does step 4
    # with --normalised (nothing to de-normalise)
    assert main([str(late), "--checkpoint", str(ck), "--steps", "3", "--t0", "2", "--out", str(tmp_path / "ok.zarr"),
                 "--device", "cpu"]) == 0
    assert main([str(late), "--checkpoint", str(ck), "--steps", "4", "--t0", "2", "--out", str(tmp_path / "n.zarr"),
                 "--device", "cpu", "--normalised"]) == 0
    assert len(calls) == 3 + 4  # one call per written step
    assert xr.open_zarr(tmp_path / "n.zarr")["time"].values[-1] == np.datetime64("2021-02-01T04:00", "ns")


def test_a_gap_at_the_input_times_only_is_forecast(trained, tmp_path):
    """t2m NaN in one region at every time (land) and in another at the first 10 hours only (a transient gap over
    the whole input window at t0 = 2, hours 2-7): the land stays NaN, the transient gap is forecast, since the
    static mask (hours 0-5, 6-11, 12-17, 18-23) has values there. With --static-times 0 both are NaN."""
    import zarr

    store_path, _, ck = trained
    holed = _copy_store(store_path, tmp_path / "holed.zarr")
    arr = zarr.open_array(str(holed / "t2m"), mode="r+")
    land = (slice(10, 16), slice(4, 13))
    gap = (slice(20, 26), slice(30, 42))
    arr[(slice(None), *land)] = np.nan
    arr[(slice(0, 10), *gap)] = np.nan
    ny, nx = arr.shape[1:]
    is_land, is_gap = np.zeros((ny, nx), bool), np.zeros((ny, nx), bool)
    is_land[land], is_gap[gap] = True, True
    for k, gap_nan in ((4, False), (0, True)):
        out = tmp_path / f"h{k}.zarr"
        assert main([str(holed), "--checkpoint", str(ck), "--steps", "2", "--t0", "2", "--out", str(out),
                     "--device", "cpu", "--static-times", str(k)]) == 0
        v = xr.open_zarr(out)["t2m"].values  # (time, lat, lon)
        assert np.isnan(v[:, is_land]).all(), k
        assert np.isnan(v[:, is_gap]).all() if gap_nan else np.isfinite(v[:, is_gap]).all(), k
        assert np.isfinite(v[:, ~(is_land | is_gap)]).all(), k
    with pytest.raises(ConfigError, match="--static-times: expected an integer >= 0"):
        main([str(holed), "--checkpoint", str(ck), "--steps", "1", "--out", str(tmp_path / "x.zarr"),
              "--static-times", "-1"])


GAP_KEEP = np.r_[0:6, 10:24]  # the tiny store without hours 6-9: 20 times


def _hours_after(t0: str, hours) -> np.ndarray:
    """The independent reference: ``t0`` plus whole hours, by pandas."""
    import pandas as pd

    return (pd.Timestamp(t0) + pd.to_timedelta(np.asarray(hours), unit="h")).to_numpy().astype("datetime64[ns]")


def test_a_gap_changes_neither_valid_times_nor_lead(trained, tmp_path, monkeypatch):
    """The tiny store without hours 6-9, rolled out from t0 = 0 (inputs at hours 0-5, no gap): steps 1-2 are valid at
    hours 6-8 and 12-14 (not at the store's indices 6-8 and 12-14, hours 10-12 and 16-18), the lead is 6 h (not 10),
    and the model is conditioned on 6 h; 4 steps run past the record's end (a store with a gap is extrapolated on its
    own step). The forecast equals the gapless store's bit for bit: the same inputs and lead."""
    from model import Forecaster

    store_path, _, ck = trained
    gap = time_subset(store_path, tmp_path / "gap.zarr", GAP_KEEP)
    leads = []
    real = Forecaster.rollout

    def spy(self, *args, **kwargs):
        leads.append(kwargs["lead_time"])
        return real(self, *args, **kwargs)

    monkeypatch.setattr(Forecaster, "rollout", spy)
    for steps in (2, 4):
        got = {}
        for name, src in (("full", store_path), ("gap", gap)):
            out = tmp_path / f"{name}{steps}.zarr"
            torch.manual_seed(0)
            assert main([str(src), "--checkpoint", str(ck), "--steps", str(steps), "--t0", "0", "--out", str(out),
                         "--device", "cpu", "--normalised", "--static-times", "0"]) == 0
            got[name] = xr.open_zarr(out).load()
        want = _hours_after("2021-01-01T00", [k * LEAD + j for k in range(1, steps + 1) for j in range(TP)])
        for name, ds in got.items():
            np.testing.assert_array_equal(ds["time"].values, want, err_msg=name)
            assert ds.attrs["lead_hours"] == LEAD, name
        for v in ("temperature", "t2m"):
            np.testing.assert_array_equal(got["gap"][v].values, got["full"][v].values, err_msg=v)
    assert leads and all(lead == LEAD for lead in leads)


def test_input_windows_across_a_gap_are_refused_naming_it(trained, tmp_path):
    store_path, _, ck = trained
    gap = time_subset(store_path, tmp_path / "gap.zarr", GAP_KEEP)
    with pytest.raises(ConfigError, match=r"--t0/--time: the 1 input window\(s\) from index 3 \(2021-01-01T03:00, "
                                          r"6 time steps\) cross a gap .* 2021-01-01T05:00 -> 2021-01-01T10:00 \(time "
                                          r"indices 5 -> 6\) is 5 h; .*nearest that do: \[0, 6, 7, 8\]"):
        main([str(gap), "--checkpoint", str(ck), "--steps", "1", "--t0", "3", "--out", str(tmp_path / "f.zarr"),
              "--device", "cpu"])
    assert not list(tmp_path.glob("f.zarr*"))


def test_static_mask_windows_cross_no_gap(trained, tmp_path, capsys):
    """Default --static-times 4 on the store without hours 6-9: the evenly spread windows would start at indices
    0, 5, 9, 14, and 5 (hours 5, 10-14) crosses the gap; the nearest gapless start (6) is read instead."""
    store_path, _, ck = trained
    gap = time_subset(store_path, tmp_path / "gap.zarr", GAP_KEEP)
    capsys.readouterr()
    assert main([str(gap), "--checkpoint", str(ck), "--steps", "1", "--t0", "0", "--out", str(tmp_path / "f.zarr"),
                 "--device", "cpu"]) == 0
    line = next(x for x in capsys.readouterr().out.splitlines() if "static missing-value mask" in x)
    refs = [int(v) for v in line.split("[")[1].rstrip("]").split(",")]
    assert refs == [0, 6, 9, 14]
    time = fastload.open_store(gap).time
    for r in refs:  # each window's 6 hours are an hour apart (pandas as the reference)
        import pandas as pd

        assert (pd.DatetimeIndex(time[r:r + 6]).to_series().diff().dropna() == pd.Timedelta(hours=1)).all(), r


def test_reference_times_none_left_names_the_setting():
    import types

    from profiling.rollout import reference_times

    hours = np.cumsum(np.r_[0, np.tile([1, 2], 12)])  # every other step a missing hour: no 6-point window is regular
    store = types.SimpleNamespace(time=_hours_after("2021-01-01", hours), path="x.zarr")
    with pytest.raises(ConfigError, match=r"--static-times 4: every window of 6 time steps of x\.zarr crosses a gap"
                                          r".*pass --static-times 0"):
        reference_times(store, 6, 1, 4)
    store.time = _hours_after("2021-01-01", np.arange(24))  # regular: evenly spread, as before gaps were handled
    assert reference_times(store, 6, 1, 4).tolist() == [0, 6, 12, 18]


def test_a_store_with_another_time_step_is_refused(trained, tmp_path):
    """Training records the store's step (1 h) with the checkpoint; a 3-hourly copy is refused naming both (lead 6
    steps would be 18 h, 3-hour tokens 9 h). A checkpoint without the record warns and runs."""
    store_path, _, ck = trained
    payload = torch.load(ck, map_location="cpu", weights_only=True)
    assert [s["time_step_hours"] for s in payload["extra"]["loader"]] == [1.0]
    three = time_subset(store_path, tmp_path / "three.zarr", np.arange(0, 24, 3))
    with pytest.raises(ConfigError, match=r"three\.zarr steps every 3 h .* trained on a store stepping every 1 h"):
        main([str(three), "--checkpoint", str(ck), "--steps", "1", "--out", str(tmp_path / "f.zarr"),
              "--device", "cpu", "--static-times", "0"])
    for s in payload["extra"]["loader"]:
        del s["time_step_hours"]
    old = tmp_path / "old.pt"
    torch.save(payload, old)
    with pytest.warns(UserWarning, match="does not record its training store's time step"):
        assert main([store_path, "--checkpoint", str(old), "--steps", "1", "--out", str(tmp_path / "o.zarr"),
                     "--device", "cpu", "--static-times", "0"]) == 0


def test_valid_times_past_the_record_follow_a_fixed_step_and_refuse_calendar_months():
    """Past the record's end the step is extrapolated (pandas' date arithmetic is the reference); an axis whose
    regular steps vary in length (calendar months) has no fixed step to extrapolate, so that is refused."""
    from profiling.rollout import same_step, valid_times

    hourly = pd.date_range("2021-01-01", periods=10, freq="1h").values
    got = valid_times(hourly, 7, np.array([1, 2, 4]))
    assert list(got) == list((pd.Timestamp("2021-01-01T07") + pd.to_timedelta([1, 2, 4], "h")).values)
    monthly = pd.date_range("2001-01-01", periods=6, freq="MS").values  # 31, 28, 31, 30, 31 days
    assert list(valid_times(monthly, 2, np.array([1, 3]))) == [monthly[3], monthly[5]]  # inside the record: its times
    with pytest.raises(ConfigError, match=r"steps vary from 28 ?d.* to 31 ?d.*calendar months"):
        valid_times(monthly, 2, np.array([4]))
    assert same_step(1.0, 1.0111) and same_step(1.0111, 1.0)  # minutes of jitter, either way round
    assert not same_step(1.0, 3.0) and not same_step(6.0, 3.0) and not same_step(None, 1.0)


def test_a_float16_forecaster_rolls_out_without_its_raw_reads_in_float16(tmp_path_factory, tmp_path):
    """The static mask reads raw values through a derived config: it must read them as float32 (a pressure in Pa
    is inf in float16 and would count as missing), and so not warn of float16's range (review r2 #1)."""
    store, _ = tiny_store(tmp_path_factory)
    cfg = fc_config(tmp_path_factory, steps=2, warmup=0, checkpoint_dir=str(tmp_path / "ck"))
    assert all(f.normalization != "none" for f in cfg.data.sampling.fields)
    cfg = dataclasses.replace(cfg, data=dataclasses.replace(
        cfg.data, sampling=dataclasses.replace(cfg.data.sampling, out_dtype="float16")))
    n = torch.get_num_threads()
    run(cfg, mode="train", out=tmp_path / "report", log=lambda m: None)
    torch.set_num_threads(n)
    assert main([store, "--checkpoint", str(tmp_path / "ck" / "last.pt"), "--steps", "1", "--out",
                 str(tmp_path / "f.zarr"), "--device", "cpu"]) == 0
