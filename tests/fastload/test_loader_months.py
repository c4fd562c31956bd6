"""The loader loads normalisation coefficients of only the calendar months an epoch's samples use (local
coefficients are ``(months, levels, NY, NX)`` per field), reloads them when the next epoch needs other months, and
does so in process mode too, where workers reopen a URL store with its storage options."""

from __future__ import annotations

import numpy as np
import pytest

from fastload.errors import ConfigError
from fastload.loader import Loader
from fastload.norm import Normalizer
from fastload.stats import StatsConfig, compute_stats
from fastload.store import open_store
from tests.fastload.loader_ref import build, reference
from tests.fastload.stores import make_per_variable

NT = 260  # 6-hourly from 2000-01-01: January (0..123), February (124..239), March (240..259)


class SpyNormalizer(Normalizer):
    """A Normalizer that records the months each ``coefficients`` call asks for."""

    def __init__(self, path):
        super().__init__(path)
        self.asked: list[tuple[str, tuple[int, ...]]] = []

    def coefficients(self, field, mode, levels=None, months=None):
        self.asked.append((field, tuple(months)))
        return super().coefficients(field, mode, levels, months)


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    d = tmp_path_factory.mktemp("months")
    _, cfg = build("per_variable", d / "tiny.zarr", nt=2, normalization="local", norm_path=str(d / "n.zarr"))
    truth = make_per_variable(d / "s.zarr", nt=NT, levels=(500.0, 850.0, 1000.0), ny=14, nx=20, zarr_format=3,
                              chunks=(40, 1, 7, 10), missing_chunk=False)  # bigger chunks: a quick set-up
    compute_stats(str(d / "s.zarr"), d / "n.zarr")
    return d, truth, cfg


pytestmark = pytest.mark.usefixtures("nothing_left")


def _plan(epoch: int) -> np.ndarray:
    """Epoch 0: February only; epoch 1: January and March (the same number of samples)."""
    rng = np.random.default_rng(epoch)
    t0 = rng.integers(124, 236, 8) if epoch % 2 == 0 else np.r_[rng.integers(0, 120, 4), rng.integers(240, 256, 4)]
    return np.stack([t0, rng.integers(0, 14 - 6 + 1, 8), rng.integers(0, 20, 8)], axis=1)


def _check_epoch(loader, norm, truth, cfg, epoch, months):
    loader.set_epoch(epoch)
    norm.asked.clear()
    batches = list(loader)
    normed = [f for f in cfg.fields if f.normalization != "none"]
    assert sorted(norm.asked) == sorted((f.name, months) for f in normed)
    assert np.asarray(loader.coefficient_months).tolist() == list(months)
    coeffs = {f.name: Normalizer(cfg.norm_path).coefficients(f.name, f.normalization, f.levels, list(months))
              for f in normed}
    for b in batches:
        ref = reference(truth, cfg, b.boxes.numpy(), periodic=True, coefficients=coeffs, months=list(months))
        for f in cfg.field_names:
            np.testing.assert_array_equal(b[f].numpy(), ref[f])
    return batches


def test_local_coefficients_of_only_the_epochs_months(store):
    d, truth, cfg = store
    norm = SpyNormalizer(d / "n.zarr")
    with Loader(d / "s.zarr", cfg, normalizer=norm, boxes=_plan, batch_size=4, workers=2, device="cpu") as loader:
        assert norm.asked == []  # nothing read when the loader opens
        _check_epoch(loader, norm, truth, cfg, 0, (1,))
        _check_epoch(loader, norm, truth, cfg, 1, (0, 2))
        norm.asked.clear()
        list(loader)  # epoch 2 uses the same months as epoch 0: loaded again (epoch 1 replaced them)
        assert sorted({m for _, m in norm.asked}) == [(1,)]
        loader.set_epoch(2)
        norm.asked.clear()
        list(loader)  # the same epoch again: the same months, nothing reloaded
        assert norm.asked == []
    # random placement: the months the epoch's windows touch
    with Loader(d / "s.zarr", cfg, normalizer=norm, samples_per_epoch=40, batch_size=8, seed=5,
                device="cpu") as loader:
        boxes = loader.epoch_boxes(0)
        next(iter(loader))
        cal = truth["time"][boxes[:, :1] + np.arange(4)].astype("datetime64[M]").astype(int) % 12
        assert np.asarray(loader.coefficient_months).tolist() == np.unique(cal).tolist()


def test_months_without_coefficients_fail_when_the_loader_opens(store, tmp_path):
    d, truth, cfg = store
    compute_stats(str(d / "s.zarr"), tmp_path / "jan.zarr", StatsConfig(time_range=("2000-01-01", "2000-01-31")))
    with pytest.raises(ConfigError, match=r"the data store has times in \['Feb', 'Mar'\] but the normalisation store"):
        Loader(d / "s.zarr", cfg, normalizer=tmp_path / "jan.zarr")


def test_process_workers_reopen_a_url_store_and_get_each_epochs_coefficients(store):
    from fastload._procs import storage_options_of

    d, truth, cfg = store
    url = open_store(f"file://{d / 's.zarr'}", storage_options={"auto_mkdir": False})
    assert storage_options_of(url) == {"auto_mkdir": False} and storage_options_of(open_store(d / "s.zarr")) is None
    norm = SpyNormalizer(d / "n.zarr")
    with Loader(url, cfg, normalizer=norm, boxes=_plan, batch_size=4, workers=2, mode="process",
                device="cpu") as loader:
        _check_epoch(loader, norm, truth, cfg, 0, (1,))
        assert loader._backend._child_spec["storage_options"] == {"auto_mkdir": False}
        _check_epoch(loader, norm, truth, cfg, 1, (0, 2))  # sent to the running workers with the epoch
