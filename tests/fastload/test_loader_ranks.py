"""Multi-rank rules of fastload.Loader without processes: the rank from the environment when torch.distributed is
not initialised (torchrun before init_process_group), equal batches per rank and the samples that costs (logged,
drop_last honoured), and resume across a moved normalisation store (by its coefficients, not its path)."""

from __future__ import annotations

import logging
import shutil

import numpy as np
import pytest
import torch

from fastload.errors import ConfigError
from fastload.loader import Loader
from fastload.sampling.geometry import GridExtent, random_boxes
from fastload.store import open_store
from tests.fastload.loader_ref import build

pytestmark = pytest.mark.usefixtures("nothing_left")


@pytest.fixture
def store(tmp_path):
    _, cfg = build("per_variable", tmp_path / "s.zarr", nt=20)
    return tmp_path / "s.zarr", cfg


def _rank_boxes(path, cfg, n, rank, world, spw=1, seed=3):
    """This rank's samples straight from random_boxes (the plan's own function, not the loader's bookkeeping)."""
    return random_boxes(n, GridExtent.from_store(open_store(path)), cfg.box, seed=seed, epoch=0,
                        time_step=cfg.time_step, rank=rank, world_size=world, samples_per_window=spw)


# -- M1: rank and world size from the environment ----------------------------------------------------------------
def test_a_loader_built_before_init_process_group_takes_rank_and_world_from_the_environment(store, monkeypatch,
                                                                                              caplog):
    path, cfg = store
    monkeypatch.delenv("LOCAL_RANK", raising=False)
    got = {}
    for r in range(2):
        monkeypatch.setenv("RANK", str(r))
        monkeypatch.setenv("WORLD_SIZE", "2")
        with caplog.at_level(logging.INFO, logger="fastload"), Loader(path, cfg, samples_per_epoch=16,
                                                                      seed=3) as loader:
            assert (loader.rank, loader.world_size) == (r, 2)
            got[r] = loader.epoch_boxes(0)
        said = [m.getMessage() for m in caplog.records if "is rank" in m.getMessage()]
        assert said and f"rank {r} of 2" in said[-1] and "RANK, WORLD_SIZE" in said[-1], said
    for r in range(2):
        np.testing.assert_array_equal(got[r], _rank_boxes(path, cfg, 16, r, 2))
    assert not {tuple(b) for b in got[0]} & {tuple(b) for b in got[1]}  # the ranks read different samples


def test_explicit_rank_wins_over_the_environment_and_half_an_environment_is_ignored(store, monkeypatch):
    path, cfg = store
    monkeypatch.setenv("RANK", "1")
    monkeypatch.setenv("WORLD_SIZE", "2")
    with Loader(path, cfg, samples_per_epoch=16, rank=0, world_size=1) as loader:
        assert (loader.rank, loader.world_size) == (0, 1)
    monkeypatch.delenv("WORLD_SIZE")
    with Loader(path, cfg, samples_per_epoch=16) as loader:
        assert (loader.rank, loader.world_size) == (0, 1)


@pytest.mark.parametrize("rank,world", [("2", "2"), ("x", "2"), ("0", "0")])
def test_a_bad_environment_rank_is_a_config_error_naming_it(store, monkeypatch, rank, world):
    path, cfg = store
    monkeypatch.setenv("RANK", rank)
    monkeypatch.setenv("WORLD_SIZE", world)
    with pytest.raises(ConfigError, match=rf"RANK='{rank}', WORLD_SIZE='{world}'"):
        Loader(path, cfg, samples_per_epoch=16)


# -- M4: equal batches per rank, and what it costs ----------------------------------------------------------------
def _dropped_warnings(caplog):
    return [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING and "not read" in r.getMessage()]


@pytest.mark.parametrize("n,spw,world,bs,fits", [(1024, 1, 48, 8, "768 or 1152"), (40, 8, 3, 8, "24 or 48")])
def test_samples_left_out_for_equal_batches_are_counted_in_one_warning_on_rank_0(store, caplog, n, spw, world, bs,
                                                                                 fits):
    path, cfg = store
    counts = [len(_rank_boxes(path, cfg, n, r, world, spw)) for r in range(world)]
    assert sum(counts) == n
    n_batches = min(counts) // bs
    read = world * n_batches * bs  # 768 of 1024 (2 batches of 8 per rank), 24 of 40 (16, 16, 8 per rank)
    for rank in (0, world - 1):
        caplog.clear()
        with caplog.at_level(logging.INFO, logger="fastload"):
            loader = Loader(path, cfg, samples_per_epoch=n, samples_per_window=spw, batch_size=bs, rank=rank,
                            world_size=world)
        assert len(loader) == n_batches
        said = _dropped_warnings(caplog)
        if rank == 0:
            assert len(said) == 1, said
            beyond, partial = n - world * min(counts), world * (min(counts) - n_batches * bs)
            why = ", ".join(w for w in (f"{beyond} beyond the fewest samples a rank has" if beyond else "",
                                        f"{partial} in partial batches (drop_last=True)" if partial else "") if w)
            assert said[0].startswith(f"fastload: {n - read} of the {n} samples per epoch are not read ({why}):"), said
            assert f"samples_per_epoch={fits} " in said[0] and f"world_size={world}" in said[0], said
        else:
            assert said == []
        loader.close()


def test_drop_last_false_with_several_ranks_is_honoured_with_equal_batch_counts(store, caplog):
    """1024 samples on 48 ranks in batches of 8: each rank reads its 21 or 22 samples in 3 batches, none dropped."""
    path, cfg = store
    kw = dict(samples_per_epoch=1024, batch_size=8, world_size=48, seed=3, drop_last=False, workers=1)
    caplog.set_level(logging.WARNING, logger="fastload")
    lens = []
    for rank in (0, 47):
        want = _rank_boxes(path, cfg, 1024, rank, 48)
        assert len(want) == (22 if rank == 0 else 21)
        with Loader(path, cfg, rank=rank, **kw) as loader:
            batches = list(loader)
            lens.append(len(loader))
        assert [len(b) for b in batches] == [8, 8, len(want) - 16]
        np.testing.assert_array_equal(torch.cat([b.boxes for b in batches]).numpy(), want)
    assert lens == [3, 3] and _dropped_warnings(caplog) == []


def test_drop_last_false_warns_with_what_it_still_drops(store, caplog):
    """40 samples in windows of 8 on 3 ranks: 16, 16, 8; one batch of 8 each even without drop_last."""
    path, cfg = store
    with caplog.at_level(logging.WARNING, logger="fastload"):
        with Loader(path, cfg, samples_per_epoch=40, samples_per_window=8, batch_size=8, rank=0, world_size=3,
                    drop_last=False) as loader:
            assert len(loader) == 1
    said = _dropped_warnings(caplog)
    assert len(said) == 1 and said[0].startswith("fastload: 16 of the 40 samples per epoch are not read (16 beyond "
                                                 "the fewest samples a rank has):"), said


def test_one_rank_logs_nothing_about_dropped_samples(store, caplog):
    path, cfg = store
    with caplog.at_level(logging.WARNING, logger="fastload"):
        with Loader(path, cfg, samples_per_epoch=10, rank=0, world_size=1) as loader:
            assert len(loader) == 2
    assert _dropped_warnings(caplog) == []


# -- M2: resume across a moved normalisation store ----------------------------------------------------------------
@pytest.fixture
def normalised(tmp_path):
    from fastload.stats import StatsConfig, compute_stats

    build("per_variable", tmp_path / "s.zarr", nt=12)
    compute_stats(str(tmp_path / "s.zarr"), tmp_path / "n.zarr", StatsConfig(progress=False))
    shutil.copytree(tmp_path / "n.zarr", tmp_path / "moved" / "n.zarr")  # the job moved to another scratch dir
    # another statistics pass: the first 12 hours only (same months, other counts and coefficients)
    compute_stats(str(tmp_path / "s.zarr"), tmp_path / "other.zarr",
                  StatsConfig(progress=False, time_range=("2000-01-01T00", "2000-01-01T12")))

    def cfg(name):
        return build("per_variable", tmp_path / "s.zarr", nt=12, normalization="local",
                     norm_path=str(tmp_path / name))[1]
    return tmp_path / "s.zarr", cfg


def test_resume_with_the_normalisation_store_moved_reads_the_same_batches(normalised):
    path, cfg = normalised
    kw = dict(samples_per_epoch=16, workers=1, seed=4)
    with Loader(path, cfg("n.zarr"), **kw) as first:
        it = iter(first)
        next(it)
        state = first.state_dict()
        rest = [{f: b[f].clone() for f in first.config.field_names} for b in it]
    assert state["norm_fingerprint"].startswith("sha256:")
    with Loader(path, cfg("moved/n.zarr"), **kw) as moved:
        moved.load_state_dict(state)  # refused before: the saved sampling's norm_path differed
        got = list(moved)
    assert len(got) == len(rest) == 3
    for b, want in zip(got, rest):
        for f, x in want.items():
            np.testing.assert_array_equal(b[f].numpy(), x.numpy(), err_msg=f)  # NaN where the store has none


def test_resume_with_other_coefficients_is_refused_naming_the_fingerprint(normalised):
    path, cfg = normalised
    with Loader(path, cfg("n.zarr"), samples_per_epoch=16) as first:
        state = first.state_dict()
    with Loader(path, cfg("other.zarr"), samples_per_epoch=16) as other:
        with pytest.raises(ConfigError, match=r"the saved norm_fingerprint 'sha256:\w+', this loader's "
                                              r"'sha256:\w+' \(the normalisation store now holds other"):
            other.load_state_dict(state)


def test_a_state_without_a_fingerprint_needs_the_same_path_as_before(normalised):
    path, cfg = normalised
    with Loader(path, cfg("n.zarr"), samples_per_epoch=16) as first:
        state = first.state_dict()
    del state["norm_fingerprint"]  # saved by an older fastload
    with Loader(path, cfg("n.zarr"), samples_per_epoch=16) as same:
        same.load_state_dict(state)
    with Loader(path, cfg("moved/n.zarr"), samples_per_epoch=16) as moved:
        with pytest.raises(ConfigError, match=r"the saved sampling\.norm_path '.*/n\.zarr', this loader's "
                                              r"'.*/moved/n\.zarr' \(the saved state records no fingerprint"):
            moved.load_state_dict(state)


def test_a_refused_resume_names_only_the_settings_that_differ(store):
    path, cfg = store
    with Loader(path, cfg, samples_per_epoch=16, seed=1) as a:
        state = a.state_dict()
    t = dict(state["sampling"]["fields"]["t"], normalization="global")
    state["sampling"] = {**state["sampling"], "fields": {**state["sampling"]["fields"], "t": t}}
    with Loader(path, cfg, samples_per_epoch=16, seed=2) as b, pytest.raises(ConfigError) as e:
        b.load_state_dict(state)
    msg = str(e.value)
    assert "in 2 setting(s): the saved sampling.fields.t.normalization 'global', this loader's 'none'; " \
           "the saved seed 1, this loader's 2; resume needs the same settings" in msg, msg
    assert len(msg) < 300, msg  # not two whole sampling dicts


def test_a_multi_stream_state_fingerprints_each_streams_coefficients(tmp_path):
    """The era5 stream's normalisation store moved: resumes; its state holds one fingerprint per normalised stream."""
    import dataclasses

    from fastload.stats import StatsConfig, compute_stats
    from tests.fastload.stores_multi import make_atmosphere, make_mesh, make_ocean
    from tests.fastload.test_streams import BOXES, config

    paths = {"era5": tmp_path / "a.zarr", "ocean": tmp_path / "o.zarr", "fesom": tmp_path / "m.zarr"}
    make_atmosphere(paths["era5"]), make_ocean(paths["ocean"]), make_mesh(paths["fesom"])
    compute_stats(str(paths["era5"]), tmp_path / "n.zarr", StatsConfig(progress=False, fields=("t",)))
    shutil.copytree(tmp_path / "n.zarr", tmp_path / "moved" / "n.zarr")

    def cfg(norm):
        c = config(paths)
        flds = tuple(dataclasses.replace(f, normalization="global" if f.name == "t" else "none") for f in c.fields)
        streams = tuple(dataclasses.replace(s, norm_path=str(tmp_path / norm)) if s.name == "era5" else s
                        for s in c.streams)
        return dataclasses.replace(c, fields=flds, streams=streams)

    kw = dict(boxes=BOXES, batch_size=2, workers=1, device="cpu")
    with Loader(None, cfg("n.zarr"), **kw) as a:
        it = iter(a)
        next(it)
        state = a.state_dict()
        want = next(it)
    assert set(state["norm_fingerprint"]) == {"era5"} and state["norm_fingerprint"]["era5"].startswith("sha256:")
    with Loader(None, cfg("moved/n.zarr"), **kw) as b:
        b.load_state_dict(state)
        got = next(iter(b))
    assert got.index == want.index
    np.testing.assert_array_equal(got["t"].numpy(), want["t"].numpy())
