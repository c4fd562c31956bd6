"""A batch whose every sample was skipped for bad chunks (``on_bad_chunk="skip"``) is still handed out, with 0
samples: every epoch gives exactly ``len(loader)`` batches (it used to drop such a batch, so ranks of a distributed
run took different step counts and hung in the next collective). The empty batches are where the plan says, with
consistent 0-length tensors, metadata, masks and counters; the other batches are the samples' true values."""

from __future__ import annotations

import itertools
import logging
import os
import shutil

import numpy as np
import pytest
import torch

from fastload.loader import Loader
from fastload.store import open_store
from tests.fastload.loader_ref import build, reference

pytestmark = pytest.mark.usefixtures("nothing_left")


def corrupt_time_chunk(path, k: int, seed: int = 0) -> list[str]:
    """Overwrite with random bytes every chunk file at time-chunk index ``k`` of every array of the (zarr v2) store
    at ``path`` whose first axis is time (a chunk never written, all fill value, is written as garbage too).
    Returns the keys overwritten."""
    store = open_store(path)
    rng = np.random.default_rng(seed)
    keys = []
    for info in store.arrays.values():
        if not info.dims or info.dims[0] != "time":
            continue
        for rest in itertools.product(*(range(g) for g in info.grid_shape[1:])):
            key = info.key((k, *rest))
            with open(os.path.join(path, *key.split("/")), "wb") as fh:
                fh.write(rng.bytes(200))
            keys.append(key)
    return keys


@pytest.fixture(scope="module")
def bad_store(tmp_path_factory):
    """The per-variable test store (10 times, time chunks of 2) with every chunk of times 0-1 corrupt: a sample
    (4 times from t0) needs one iff t0 <= 1."""
    path = tmp_path_factory.mktemp("skip") / "s.zarr"
    truth, cfg = build("per_variable", path, zarr_format=2, nt=10)
    good = path.with_name("good.zarr")
    shutil.copytree(path, good)
    assert corrupt_time_chunk(path, 0)
    return path, good, truth, cfg


@pytest.mark.parametrize("masking", [None, "BERT"])
@pytest.mark.parametrize("mode", ["thread", "process"])
def test_every_batch_is_handed_out_empty_ones_where_every_sample_was_bad(bad_store, mode, masking, caplog):
    path, _, truth, cfg = bad_store
    caplog.set_level(logging.ERROR, logger="fastload")  # (each skipped batch warns)
    kw = dict(samples_per_epoch=16, seed=7, batch_size=1, workers=2, mode=mode, device="cpu", retries=0,
              masking=masking)
    with Loader(open_store(path), cfg, on_bad_chunk="skip", **kw) as loader:
        assert len(loader) == 16
        for epoch in (0, 1):
            planned = loader.epoch_boxes(epoch)
            bad = planned[:, 0] <= 1  # the sample's 4 times touch time chunk 0
            assert 0 < bad.sum() < len(planned)  # the plan has both kinds (seed 7), else the test proves little
            got = list(loader)
            assert len(got) == len(loader) == 16
            assert [b.index for b in got] == list(range(16)) and all(b.epoch == epoch for b in got)
            assert [len(b) == 0 for b in got] == bad.tolist()
            for i, b in enumerate(got):
                assert b.stats.samples == len(b) and b.stats.skipped == int(bad[i])
                if bad[i]:
                    _check_empty(b, cfg)
                    continue
                np.testing.assert_array_equal(b.boxes.numpy(), planned[i:i + 1])
                ref = reference(truth, cfg, planned[i:i + 1], periodic=True)
                for f in cfg.field_names:
                    np.testing.assert_array_equal(b[f].numpy(), ref[f])
                if masking:
                    assert all(b.masks[f].shape == b[f].shape[:5] for f in cfg.field_names)
        assert loader.stats.skipped == sum(int((loader.epoch_boxes(e)[:, 0] <= 1).sum()) for e in (0, 1))
        assert loader.state_dict()["epoch"] == 2 and loader.state_dict()["batch"] == 0


def _check_empty(b, cfg) -> None:
    """A 0-sample batch: every per-sample tensor has a leading 0, the rest of its shape as a full batch's."""
    assert tuple(b.boxes.shape) == (0, 3) and b.boxes.dtype == torch.int64
    for f in cfg.fields:
        assert tuple(b[f.name].shape) == (0, *f.sample_shape)
        m = b.meta[f.name]
        nt, nlat, nlon = f.num_tokens
        assert tuple(m["t_index"].shape) == tuple(m["hour"].shape) == tuple(m["time"].shape) == (0, nt)
        assert tuple(m["lat"].shape) == tuple(m["lon"].shape) == (0, nlat, nlon)
        assert tuple(m["level"].shape) == (len(f.levels) if f.levels else 1,)  # not per sample
        if b.masks is not None:
            assert tuple(b.masks[f.name].shape) == (0, *f.sample_shape[:4]) and b.masks[f.name].dtype == torch.bool
            assert tuple(b.sources[f.name].shape) == tuple(b[f.name].shape)
    assert "samples=0" in repr(b)


def test_a_good_store_gives_the_same_batches_with_skip(bad_store):
    """Nothing skipped: on_bad_chunk="skip" hands out the batches "raise" does (no empty one)."""
    _, good, truth, cfg = bad_store
    kw = dict(samples_per_epoch=8, seed=7, batch_size=1, workers=1, device="cpu")
    with Loader(open_store(good), cfg, on_bad_chunk="skip", **kw) as loader:
        got = list(loader)
        planned = loader.epoch_boxes(0)
    assert [len(b) for b in got] == [1] * 8 and loader.stats.skipped == 0
    np.testing.assert_array_equal(np.concatenate([b.boxes.numpy() for b in got]), planned)


def test_empty_metadata_of_point_streams_has_a_leading_zero(tmp_path):
    """The metadata of 0 samples for a multi-stream config (point samplers included, which once could not take 0
    boxes): every array with a sample axis in the metadata of the planned boxes comes with length 0, ``level`` as
    it is."""
    from tests.fastload.stores_multi import make_atmosphere, make_mesh, make_ocean
    from tests.fastload.test_streams import config

    paths = {"era5": tmp_path / "a.zarr", "ocean": tmp_path / "o.zarr", "fesom": tmp_path / "m.zarr"}
    make_atmosphere(paths["era5"])
    make_ocean(paths["ocean"])
    make_mesh(paths["fesom"])
    with Loader(None, config(paths), batch_size=3, samples_per_epoch=9, device="cpu", workers=1) as loader:
        planned = loader.epoch_boxes(0)[:3]
        full = loader.tokenizer.meta(planned)
        empty = loader.tokenizer.meta(planned[:0])
    assert set(empty) == set(full) and {type(m) for m in empty.values()} == {type(m) for m in full.values()}
    kinds = set()
    for name, m in empty.items():
        got, want = m.to_torch(), full[name].to_torch()
        assert set(got) == set(want)
        kinds.update(got)
        for k, v in got.items():
            assert tuple(v.shape) == (tuple(want[k].shape) if k == "level" else (0, *want[k].shape[1:])), (name, k)
            assert v.dtype == want[k].dtype
    assert {"valid", "points", "t_steps"} <= kinds  # the point streams' slots were cut too


@pytest.mark.gpu
def test_empty_batches_on_the_gpu(bad_store):
    """The device path (pinned metadata, side-stream copy, masking on the device) with 0-sample batches."""
    path, _, truth, cfg = bad_store
    with Loader(open_store(path), cfg, on_bad_chunk="skip", samples_per_epoch=16, seed=7, batch_size=1, workers=2,
                device="cuda", retries=0, masking="BERT") as loader:
        planned = loader.epoch_boxes(0)
        got = list(loader)
    assert [len(b) for b in got] == [0 if t0 <= 1 else 1 for t0 in planned[:, 0]]
    for i, b in enumerate(got):
        assert all(t.device.type == "cuda" for t in [*b.fields.values(), *b.masks.values()])
        if len(b) == 0:
            _check_empty(b, cfg)
        else:
            ref = reference(truth, cfg, planned[i:i + 1], periodic=True)
            for f in cfg.field_names:
                np.testing.assert_array_equal(b[f].cpu().numpy(), ref[f])


@pytest.mark.parametrize("kind", ["latlon", "curvilinear", "mesh"])
def test_every_single_store_tokenizer_gives_metadata_of_zero_samples(tmp_path, kind):
    """The worker asks the tokenizer for the metadata of a batch whose every sample was skipped: 0 boxes give every
    per-sample array with a leading 0 and the rest of its shape, ``level`` as it is."""
    from fastload._backend import make_tokenizer
    from fastload.config import FieldConfig, SamplingConfig
    from tests.fastload.stores import make_curvilinear, make_per_variable
    from tests.fastload.stores_multi import make_mesh

    kw = dict(num_tokens=(2, 2, 2), normalization="none")
    if kind == "latlon":
        make_per_variable(tmp_path / "s.zarr", nt=8, ny=9, nx=16, missing_chunk=False, static=False)
        fields = [FieldConfig(name="t", levels=(500.0, 850.0), token_size=(1, 2, 3), **kw)]
    elif kind == "curvilinear":
        make_curvilinear(tmp_path / "s.zarr", nt=4, ny=7, nx=10)
        fields = [FieldConfig(name="thetao", levels=(50.0, 5.0), token_size=(1, 3, 3), **kw)]
    else:
        make_mesh(tmp_path / "s.zarr", nt=4)
        fields = [FieldConfig(name="temp", levels=(5.0, 100.0), token_size=(1, 3, 2), **kw)]
    store = open_store(tmp_path / "s.zarr")
    tok = make_tokenizer(store, SamplingConfig(fields=fields))
    full = tok.meta(np.zeros((2, 3), np.int64))
    empty = tok.meta(np.zeros((0, 3), np.int64))
    for name, m in empty.items():
        got, want = m.to_torch(), full[name].to_torch()
        assert set(got) == set(want)
        for k, v in got.items():
            assert tuple(v.shape) == (tuple(want[k].shape) if k == "level" else (0, *want[k].shape[1:])), (name, k)
            assert v.dtype == want[k].dtype
