"""Rollout training data (fastload.rollout_data): tiles and targets against the store's own values, the epoch plan
(seeded, disjoint ranks), exact resume, I/O counters, the model's batch layout, errors."""

from __future__ import annotations

import dataclasses
import gc
import threading
import time

import numpy as np
import pandas as pd
import pytest
import torch
import xarray as xr

import fastload
from fastload.config import FieldConfig, LoaderConfig, SamplingConfig
from fastload.errors import ConfigError, LoaderClosedError
from fastload.extract import extract
from fastload.rollout_data import RolloutConfig, RolloutLoader
from fastload.sampling.tiles import global_tiles
from tests.fastload.stores import make_per_variable

NT = 12


pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture
def store(tmp_path):
    truth = make_per_variable(tmp_path / "s.zarr", nt=NT, ny=9, nx=16, missing_chunk=False, static=False)
    return str(tmp_path / "s.zarr"), truth


def _sampling(normalization="none", norm_path=None):
    kw = dict(num_tokens=(2, 2, 2), token_size=(1, 2, 3), normalization=normalization)
    return SamplingConfig(fields=(FieldConfig(name="t", levels=(500.0, 850.0), **kw), FieldConfig(name="sp", **kw)),
                          batch_size=1, norm_path=norm_path)


def _loader(path, rollout=None, **loader):
    cfg = dict(workers=1, prefetch=2, seed=5)
    cfg.update(loader)
    return RolloutLoader(path, _sampling(), rollout or RolloutConfig(steps=2, batch_size=2), LoaderConfig(**cfg))


def _global(truth, name, t0, n):
    """(L, n, NY, NX) of a field at store times t0 .. t0 + n - 1 (a surface field gets L = 1)."""
    x = truth[name][t0:t0 + n]
    return x.transpose(1, 0, 2, 3) if x.ndim == 4 else x[None]


def test_inputs_and_targets_are_the_store_values_at_the_right_times(store):
    path, truth = store
    roll = RolloutConfig(steps=2, lead=3, input_window=2, batch_size=2, readout_time_tokens=1, neighbors=3)
    with _loader(path, roll) as data:
        assert data.lead == 3 and data.t_bounds == (0, NT - (3 + 2 * 3 + 1))
        batch = next(iter(data))
        tiles = data.tiles
        full = global_tiles(data.store, data.config, overlap=roll.overlap, neighbors=0)  # nt time tokens
        assert len(batch) == 2 and batch.index == 0 and batch.epoch == 0
        for b, t0 in enumerate(batch.t0.tolist()):
            assert t0 in data.epoch_times(0)[:2]
            for name in ("t", "sp"):
                idx = tiles.fields[name].index  # (T, L, 1, ...) for one time token
                for w in range(2):  # input windows t0 and t0 + lead, 2 time tokens of 1 step each
                    g = _global(truth, name, t0 + 3 * w, 2).reshape(-1)
                    want = g[full.fields[name].index]
                    np.testing.assert_array_equal(batch.fields[name][b, w].numpy(), want)
                for k in range(2):  # targets: one time token at (t0 + lead) + (k + 1) * lead
                    g = _global(truth, name, t0 + 3 + 3 * (k + 1), 1).reshape(-1)
                    np.testing.assert_array_equal(batch.targets[k][name][b].numpy(), g[idx])
        assert torch.equal(batch.lead_hours, torch.tensor([18.0, 18.0]))  # 3 steps of 6 h
        assert batch.boxes.shape == (2, 2, tiles.num_tiles, 3)
        assert torch.equal(batch.boxes[:, 1, :, 0], batch.t0[:, None].expand(2, tiles.num_tiles) + 3)
        m = batch.meta["t"]
        assert m["hour"].shape == (2, 2, tiles.num_tiles, 2) and m["lat"].shape == (2, tiles.num_tiles, 2, 2)
        assert torch.equal(m["level"], torch.tensor([500.0, 850.0]))
        assert batch.levelled == ("t",)


def test_normalised_batches_equal_extract(store, tmp_path):
    from fastload.stats import StatsConfig, compute_stats

    path, _ = store
    norm = compute_stats(path, str(tmp_path / "norm.zarr"), StatsConfig(progress=False))
    sampling = _sampling("local", str(norm))
    with RolloutLoader(path, sampling, RolloutConfig(steps=1, batch_size=1), LoaderConfig(workers=2)) as data:
        batch = next(iter(data))
        t0 = int(batch.t0[0])
        ref = extract(fastload.open_store(path), sampling, data.tiles.boxes(t0))
        for name in ("t", "sp"):
            np.testing.assert_array_equal(batch.fields[name][0, 0].numpy(), ref[name].data)
            np.testing.assert_array_equal(batch.meta[name]["lat"][0].numpy(), ref[name].meta.lat.astype(np.float32))
        assert torch.isfinite(batch.targets[0]["t"]).all()


def test_resume_across_a_moved_normalisation_store_and_refused_with_other_coefficients(store, tmp_path):
    """The saved state compares the coefficients (a fingerprint), not the normalisation store's absolute path: a
    copy elsewhere resumes to the same batch; another statistics pass is refused by name; a state saved without a
    fingerprint still needs the same path (the error says why)."""
    import shutil

    from fastload.stats import StatsConfig, compute_stats

    path, _ = store
    compute_stats(path, str(tmp_path / "n.zarr"), StatsConfig(progress=False))
    shutil.copytree(tmp_path / "n.zarr", tmp_path / "moved" / "n.zarr")
    compute_stats(path, str(tmp_path / "other.zarr"),
                  StatsConfig(progress=False, time_range=("2000-01-01T00", "2000-01-01T12")))

    def data(name):
        return RolloutLoader(path, _sampling("local", str(tmp_path / name)), RolloutConfig(steps=1, batch_size=1),
                             LoaderConfig(workers=1, seed=2))

    with data("n.zarr") as a:
        it = iter(a)
        next(it)
        state = a.state_dict()
        want = next(it)
    with data("moved/n.zarr") as b:
        b.load_state_dict(state)  # refused before: the saved sampling's norm_path differed
        got = next(iter(b))
    assert (got.epoch, got.index) == (want.epoch, want.index) and torch.equal(got.t0, want.t0)
    for name in ("t", "sp"):
        assert torch.equal(got.fields[name], want.fields[name]) and torch.equal(got.targets[0][name],
                                                                                want.targets[0][name])
    assert sorted(state["norm_local"]) == ["sp/1", "t/1"]  # the local coefficients read: January's
    import zarr

    shutil.copytree(tmp_path / "n.zarr", tmp_path / "edited.zarr")
    arr = zarr.open_group(str(tmp_path / "edited.zarr"), mode="r+")["sp"]["local_mean"]
    arr[0, 0, 1, 2] = arr[0, 0, 1, 2] + 1.0  # one January value of sp: globals and attributes as they were
    with data("edited.zarr") as f, pytest.raises(ConfigError, match=r"in 1 setting\(s\): the saved norm_local\.sp/1 "):
        f.load_state_dict(state)
    with data("other.zarr") as c, pytest.raises(ConfigError, match=r"the saved norm_fingerprint 'sha256:\w+', "
                                                                     r"this loader's 'sha256:\w+' \(the normalisation"):
        c.load_state_dict(state)
    old = {k: v for k, v in state.items() if k != "norm_fingerprint"}  # saved by an older fastload
    with data("n.zarr") as d:
        d.load_state_dict(old)
    with data("moved/n.zarr") as e, pytest.raises(ConfigError, match=r"the saved sampling\.norm_path .* \(the saved "
                                                                        r"state records no fingerprint"):
        e.load_state_dict(old)


def test_several_ranks_honour_drop_last_false_and_count_the_unread_initial_times(store, caplog):
    """drop_last=False was ignored with world_size > 1 (each rank's partial batch dropped, unannounced): every rank
    has as many initial times, so it can keep its partial batch; what is still unread is one WARNING on rank 0."""
    import logging

    path, _ = store
    roll = RolloutConfig(steps=1, batch_size=2)
    with _loader(path, roll) as one:
        n_valid = len(one.epoch_times(0))
    per = n_valid // 3
    assert per % 2 == 1  # a partial batch on every rank (9 valid times: 3 per rank)
    caplog.set_level(logging.WARNING, logger="fastload")
    for drop_last in (True, False):
        caplog.clear()
        with _loader(path, roll, rank=0, world_size=3, drop_last=drop_last) as d:
            assert len(d) == (per // 2 if drop_last else per // 2 + 1)
            got = [b.t0 for b in d]
            assert torch.cat(got).tolist() == d.epoch_times(0)[: len(d) * 2].tolist()
        read = 3 * (per - per % 2 if drop_last else per)
        said = [r.getMessage() for r in caplog.records if "not read" in r.getMessage()]
        assert len(said) == (1 if read < n_valid else 0), said
        if said:
            assert said[0].startswith(f"fastload: {n_valid - read} of the {n_valid} initial times"), said


def test_epoch_plan_is_seeded_and_ranks_are_disjoint(store):
    path, _ = store
    roll = RolloutConfig(steps=1, batch_size=1)
    one = _loader(path, roll)
    n_valid = one.t_bounds[1] - one.t_bounds[0] + 1
    assert sorted(one.epoch_times(0).tolist()) == list(range(n_valid))  # an epoch: every valid time once
    assert np.array_equal(one.epoch_times(3), _loader(path, roll).epoch_times(3))
    assert not np.array_equal(one.epoch_times(0), one.epoch_times(1))
    ranks = [_loader(path, roll, rank=r, world_size=3) for r in range(3)]
    shares = [r.epoch_times(2) for r in ranks]
    assert len({len(s) for s in shares}) == 1 and len(shares[0]) == n_valid // 3
    flat = np.concatenate(shares)
    assert len(set(flat.tolist())) == flat.size  # disjoint
    assert set(flat.tolist()) <= set(one.epoch_times(2).tolist())
    capped = _loader(path, roll, samples_per_epoch=4)
    assert len(capped) == 4 and np.array_equal(capped.epoch_times(0), one.epoch_times(0)[:4])
    for d in (one, capped, *ranks):
        d.close()


def test_resume_continues_with_exactly_the_next_batch_across_epochs(store):
    path, _ = store
    roll = RolloutConfig(steps=1, batch_size=2)
    with _loader(path, roll) as a:
        n = len(a)
        straight, it = [], iter(a)
        for _ in range(n + 2):  # past the end of epoch 0
            try:
                b = next(it)
            except StopIteration:
                it = iter(a)
                b = next(it)
            straight.append((b.epoch, b.index, b.t0.clone(), b.fields["t"].clone()))
    with _loader(path, roll) as b_:
        it = iter(b_)
        for _ in range(n - 1):
            next(it)
        state = b_.state_dict()
    assert state["epoch"] == 0 and state["batch"] == n - 1
    with _loader(path, roll) as c:
        c.load_state_dict(state)
        got, it = [], iter(c)
        for _ in range(3):
            try:
                b = next(it)
            except StopIteration:
                it = iter(c)
                b = next(it)
            got.append((b.epoch, b.index, b.t0, b.fields["t"]))
    for (e1, i1, t1, f1), (e2, i2, t2, f2) in zip(straight[n - 1:], got):
        assert (e1, i1) == (e2, i2) and torch.equal(t1, t2) and torch.equal(f1, f2)
    assert got[1][0] == 1  # the resumed run crossed into epoch 1
    with _loader(path, dataclasses.replace(roll, steps=2)) as other, pytest.raises(ConfigError, match="rollout"):
        other.load_state_dict(state)


def test_io_counters(store):
    path, _ = store
    data = _loader(path, RolloutConfig(steps=1, batch_size=1))
    batch = next(iter(data))
    s = batch.stats
    assert s.batches == 1 and s.samples == 1 and s.chunks == s.misses > 0 and s.hits == 0
    st = fastload.open_store(path)
    sizes = {st.arrays[a].chunk_nbytes for a in ("t", "sp")}
    assert s.bytes_decoded >= s.chunks * min(sizes) and s.bytes_decoded <= s.chunks * max(sizes)
    assert 0 < s.bytes_stored and s.fetch_s >= 0 and s.decode_s > 0 and s.wait_s >= 0
    tiles = data.tiles.num_tiles
    per_tile_in = (2 + 1) * 2 * 4 * 6 * 4  # levels (t: 2, sp: 1) x box points x float32
    per_tile_out = (2 + 1) * 1 * 4 * 6 * 4
    assert s.bytes_useful == tiles * (per_tile_in + per_tile_out)
    data.close()
    data.close()  # idempotent
    assert not _pump_threads()
    with pytest.raises(LoaderClosedError):
        iter(data)
    abandoned = _loader(path, RolloutConfig(steps=1, batch_size=1))
    next(iter(abandoned))
    assert _pump_threads()
    del abandoned  # never closed: garbage collection stops its threads (once a batch in progress finishes)
    deadline = time.monotonic() + 30
    while _pump_threads() and time.monotonic() < deadline:
        gc.collect()
        time.sleep(0.05)
    assert not _pump_threads()


def _pump_threads():
    return [t for t in threading.enumerate() if t.name.startswith("fastload-rollout") and t.is_alive()]


def test_model_inputs_feed_the_forecaster(store):
    from model import FieldSpec, Forecaster, ForecasterConfig, Multiformer, MultiformerConfig, TileGeometry

    path, _ = store
    with _loader(path, RolloutConfig(steps=2, batch_size=2, input_window=1, neighbors=3)) as data:
        batch = next(iter(data))
        windows, targets = batch.model_inputs("cpu")
    assert len(windows) == 1 and len(targets) == 2
    specs = tuple(FieldSpec(name=f.name, levels=tuple(f.levels or (0.0,)), num_tokens=f.num_tokens,
                            token_size=f.token_size, embed_dim=16, num_heads=2) for f in data.config.fields)
    mf = Multiformer(MultiformerConfig(fields=specs, num_encoder_layers=1, num_decoder_layers=1, ensemble_size=2))
    model = Forecaster(ForecasterConfig.tiny(overlap=data.tiles.ramp), mf)
    geo = TileGeometry(lat=torch.from_numpy(data.tiles.lat), lon=torch.from_numpy(data.tiles.lon),
                       neighbors=torch.from_numpy(data.tiles.neighbors))
    state = model.initial_state(model.encode(windows[0]))
    loss, per_step = model.rollout_loss(state, targets, lead_time=batch.lead_hours, geometry=geo,
                                        kinds={"lat_mse": 1.0})
    assert torch.isfinite(loss) and len(per_step) == 2
    assert windows[0]["t"]["meta"]["level"].shape == windows[0]["t"]["tokens"].shape[:6]
    assert "level" not in windows[0]["sp"]["meta"]


def test_errors_name_the_setting(store, tmp_path):
    path, _ = store
    with pytest.raises(ConfigError, match="spans .* time steps"):
        _loader(path, RolloutConfig(steps=20))
    with pytest.raises(ConfigError, match="batch_size"):
        _loader(path, RolloutConfig(steps=1, batch_size=50))
    with pytest.raises(ConfigError, match="readout_time_tokens"):
        _loader(path, RolloutConfig(readout_time_tokens=3))
    with pytest.raises(ConfigError, match="rollout.lead"):
        RolloutConfig(lead=0)
    with pytest.raises(ConfigError, match="rollout.t_range"):
        RolloutConfig(t_range=(5, 2))
    with pytest.raises(ConfigError, match="unknown"):
        RolloutConfig.from_dict({"step": 2})
    assert RolloutConfig.from_dict(RolloutConfig(t_range=(0, 8)).to_dict()) == RolloutConfig(t_range=(0, 8))
    with pytest.raises(ConfigError, match="norm"):
        RolloutLoader(path, _sampling("local"), RolloutConfig())
    ranged = _loader(path, RolloutConfig(steps=1, t_range=(4, 10)))
    assert ranged.t_bounds == (4, 10 - 3)
    ranged.close()
    for bad in ((4, NT + 1), (NT + 2, NT + 8)):  # past the axis: refused naming it (was clamped, or "has only -5")
        with pytest.raises(ConfigError, match=rf"rollout.t_range: \[{bad[0]}, {bad[1]}\] ends past .* <= {NT} "):
            _loader(path, RolloutConfig(steps=1, t_range=bad))
    whole = _loader(path, RolloutConfig(steps=1, t_range=(0, NT)))  # the whole axis is a valid range
    assert whole.t_bounds == (0, NT - 3)
    whole.close()


# -- a store with a gap in its time axis ------------------------------------------------------------------------------

STEP = pd.Timedelta("6h")
EPOCH0 = pd.Timestamp("2000-01-01")


def _hours_store(path, times, ny=8, nx=12):
    """``tas`` (time, lat, lon) whose every value is its time in hours since 2000-01-01 (exact in float32): the
    values read back say which time was read."""
    hours = ((times - EPOCH0) / pd.Timedelta("1h")).to_numpy().astype("f4")
    tas = np.broadcast_to(hours[:, None, None], (len(times), ny, nx)).copy()
    xr.Dataset({"tas": (("time", "latitude", "longitude"), tas)},
               coords={"time": times, "latitude": np.linspace(60, -60, ny), "longitude": np.arange(nx) * 30.0}
               ).to_zarr(str(path), mode="w", zarr_format=2, consolidated=False)
    return str(path)


def _tas(tt):
    return SamplingConfig(fields=(FieldConfig(name="tas", num_tokens=(1, 2, 3), token_size=(tt, 2, 2),
                                              normalization="none"),))


def _sample_offsets(roll, tt):
    """Store index offsets from t0 of a sample's input points (W, tt) and target points (S, tt)."""
    w = np.arange(roll.input_window)[:, None] * roll.lead + np.arange(tt)
    k = (roll.input_window - 1 + np.arange(1, roll.steps + 1))[:, None] * roll.lead + np.arange(tt)
    return w, k


def _on_cadence(times, t0, roll, tt):
    """pandas: every input and target point of the sample from t0 is (its offset) x 6 h after times[t0]."""
    w, k = _sample_offsets(roll, tt)
    offs = np.concatenate([w.ravel(), k.ravel()])
    return all(times[t0 + o] == times[t0] + int(o) * STEP for o in offs)


@pytest.mark.parametrize("tt", [2, 1], ids=["windows-cross-the-gap", "gap-between-input-and-target"])
def test_a_gap_in_the_time_axis_is_never_drawn_and_the_epoch_completes(tmp_path, tt):
    # 48 six-hourly times less one: 2000-01-03T12:00 (index 10) is missing. With tt=2 the old plan drew windows
    # across the gap and extract refused them part way through the epoch; with tt=1 every box passed on its own
    # and the targets of samples straddling the gap were silently 6 h late (lead_hours 24 instead of 18).
    times = pd.date_range("2000-01-01", periods=48, freq=STEP).delete(10)
    path = _hours_store(tmp_path / "gap.zarr", times)
    roll = RolloutConfig(steps=2, input_window=2, lead=3, batch_size=4)
    span = roll.lead * (roll.input_window - 1 + roll.steps) + tt
    want = {t0 for t0 in range(len(times) - span + 1) if _on_cadence(times, t0, roll, tt)}
    assert len(want) < len(times) - span + 1  # the gap removes some initial times
    w_off, k_off = _sample_offsets(roll, tt)
    with RolloutLoader(path, _tas(tt), roll, LoaderConfig(workers=2, seed=3, samples_per_epoch=1000, drop_last=False,
                                                          device="cpu")) as data:
        seen = []
        for batch in data:  # the whole epoch: no ConfigError from a worker
            for b, t0 in enumerate(batch.t0.tolist()):
                seen.append(t0)
                x = batch.fields["tas"][b]  # (W, T, 1, 1, 2, 3, tt, 2, 2)
                for w in range(roll.input_window):
                    hours = x[w].amax(dim=(0, 1, 2, 3, 4, 6, 7)).numpy()  # (tt,): the time of each point
                    want_h = [(times[t0] + int(o) * STEP - EPOCH0) / pd.Timedelta("1h") for o in w_off[w]]
                    np.testing.assert_array_equal(hours, want_h)
                    np.testing.assert_array_equal(x[w].amin(dim=(0, 1, 2, 3, 4, 6, 7)).numpy(), want_h)
                for k in range(roll.steps):
                    y = batch.targets[k]["tas"][b]  # (T, 1, 1, 2, 3, tt, 2, 2)
                    hours = y.amax(dim=(0, 1, 2, 3, 4, 6, 7)).numpy()
                    want_h = [(times[t0] + int(o) * STEP - EPOCH0) / pd.Timedelta("1h") for o in k_off[k]]
                    np.testing.assert_array_equal(hours, want_h)
                    np.testing.assert_array_equal(y.amin(dim=(0, 1, 2, 3, 4, 6, 7)).numpy(), want_h)
            assert torch.equal(batch.lead_hours, torch.full((len(batch),), roll.lead * 6.0))
        assert sorted(seen) == sorted(want)  # an epoch: every valid initial time once
        assert set(data.valid_t0.tolist()) == want
        ranks = [RolloutLoader(path, _tas(tt), roll, LoaderConfig(seed=3, rank=r, world_size=2, device="cpu"))
                 for r in range(2)]
        shares = [set(d.epoch_times(1).tolist()) for d in ranks]
        assert not shares[0] & shares[1] and shares[0] | shares[1] <= want
        for d in ranks:
            d.close()


def test_the_draw_on_a_regular_axis_is_unchanged(tmp_path):
    # Stored from the commit before the gap fix (9f85ccf): the same seed draws the same initial times.
    path = _hours_store(tmp_path / "reg.zarr", pd.date_range("2000-01-01", periods=40, freq=STEP))
    cases = [
        (RolloutConfig(steps=2, input_window=2, lead=3, batch_size=2), dict(seed=7), (0, 29),
         [[12, 14, 4, 28, 22, 24, 17, 3, 27, 19, 18, 13, 0, 25, 23, 10, 8, 7, 1, 15, 6, 16, 20, 5, 29, 26, 2, 21, 9,
           11],
          [25, 27, 0, 6, 17, 15, 22, 2, 19, 10, 24, 23, 28, 11, 26, 1, 5, 9, 14, 8, 7, 16, 20, 3, 4, 18, 29, 12, 21,
           13]]),
        (RolloutConfig(steps=1, batch_size=1, t_range=(5, 33)), dict(seed=11, samples_per_epoch=9, rank=1,
                                                                     world_size=2), (5, 29),
         [[22, 26, 6, 20], [6, 27, 23, 14]]),
    ]
    for roll, cfg, bounds, epochs in cases:
        with RolloutLoader(path, _tas(2), roll, LoaderConfig(device="cpu", workers=1, **cfg)) as data:
            assert data.t_bounds == bounds
            assert [data.epoch_times(e).tolist() for e in (0, 1)] == epochs


def test_a_store_with_no_initial_time_on_the_regular_step_is_an_error(tmp_path):
    # Runs of three six-hourly times 24 h apart: the median step is 6 h but no four consecutive times are regular.
    times = pd.DatetimeIndex([EPOCH0 + pd.Timedelta(hours=24 * d + 6 * i) for d in range(4) for i in range(3)])
    path = _hours_store(tmp_path / "runs.zarr", times)
    roll = RolloutConfig(steps=1, lead=2, batch_size=1)  # points t0, t0 + 1 and t0 + 2, t0 + 3
    with pytest.raises(ConfigError, match=r"runs\.zarr") as err:
        RolloutLoader(path, _tas(2), roll, LoaderConfig(device="cpu"))
    msg = str(err.value)
    assert "1 input window(s) of 2 point(s)" in msg and "lead 2" in msg
    assert "first gap is 2000-01-01T12:00 -> 2000-01-02T00:00 (time indices 2 -> 3), 12 h" in msg
    with RolloutLoader(path, _tas(1), RolloutConfig(steps=1, lead=1, batch_size=1),
                       LoaderConfig(device="cpu")) as ok:  # two points one step apart fit inside each run
        assert ok.valid_t0.tolist() == [0, 1, 3, 4, 6, 7, 9, 10]


def test_process_mode_is_refused_not_silently_threads(store):
    """The rollout loader extracts its tiles in the calling process: loader.mode = 'process' was ignored without a
    word; it is refused, naming the setting."""
    path, _ = store
    with pytest.raises(ConfigError, match=r"loader.mode = 'process'.*threads only"):
        _loader(path, mode="process")


def test_on_bad_chunk_skip_is_refused_not_ignored(store):
    """The rollout loader raises on a bad chunk whatever loader.on_bad_chunk said: 'skip' was ignored without a word
    (and the training step's 0-sample branch for it was dead); it is refused, naming the setting (review r5 F2)."""
    path, _ = store
    with pytest.raises(ConfigError, match=r"loader.on_bad_chunk = 'skip'.*leave loader.on_bad_chunk = 'raise'"):
        _loader(path, on_bad_chunk="skip")


def test_loader_read_timeout_s_reaches_every_extract(store, monkeypatch):
    """loader.read_timeout_s bounds the rollout loader's store requests too (review r3: it always used 300 s)."""
    import importlib

    fx = importlib.import_module("fastload.extract")  # (the package's attribute `extract` is the function)
    path, _ = store
    seen = []
    real = fx.read_plan
    monkeypatch.setattr(fx, "read_plan", lambda *a, **k: seen.append(k.get("read_timeout_s")) or real(*a, **k))
    data = _loader(path, RolloutConfig(steps=1, batch_size=1), read_timeout_s=7.5)
    next(iter(data))
    data.close()
    assert seen and set(seen) == {7.5}, seen


def test_resume_compares_the_data_store_by_content_and_the_plan(tmp_path):
    """Another store at the same path is refused naming store_fingerprint; a moved copy resumes; a state saved
    before the store fingerprint and plan existed compares neither (as before)."""
    import shutil

    path = tmp_path / "a.zarr"
    make_per_variable(path, nt=NT, ny=9, nx=16, missing_chunk=False, static=False)
    roll = RolloutConfig(steps=1, batch_size=2)
    with _loader(str(path), roll) as a:
        next(iter(a))
        state = a.state_dict()
    assert sorted(state["store_fingerprint"]) == ["fields", "format", "grid", "time"] and state["plan"].startswith(
        "sha256:")
    shutil.copytree(path, tmp_path / "moved.zarr")
    with _loader(str(tmp_path / "moved.zarr"), roll) as moved:
        moved.load_state_dict(state)  # same content elsewhere: the path is not compared
    shutil.rmtree(path)
    make_per_variable(path, nt=NT, ny=11, nx=16, missing_chunk=False, static=False)  # another grid, same path
    with _loader(str(path), roll) as other:
        with pytest.raises(ConfigError, match=r"the saved store_fingerprint\.grid\.lat\.shape \[9\], this loader's \[11\]"):
            other.load_state_dict(state)
        old = {k: v for k, v in state.items() if k not in ("store_fingerprint", "plan")}
        other.load_state_dict(old)  # an older state: no data-store fingerprint to compare
    with _loader(str(tmp_path / "moved.zarr"), roll, seed=6) as reseeded:
        with pytest.raises(ConfigError, match="seed"):
            reseeded.load_state_dict(state)
