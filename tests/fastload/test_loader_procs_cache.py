"""Process mode's cache warning (review s13 r4 item 5): each worker gets ``cache_bytes / workers``, raised to one
sample's chunks. The loader warns once, naming the setting, the share and the need, and only when the share is
below the need; the workers used to warn each, calling their share the setting ("cache_bytes=15000 is below the
21600 bytes" for cache_bytes=30000 on 2 workers)."""

from __future__ import annotations

import logging

import numpy as np
import pytest

from fastload.loader import Loader
from tests.fastload.loader_ref import build, reference

pytestmark = pytest.mark.usefixtures("nothing_left")

# one sample of the per_variable test store touches at most 112 chunks (worst alignment) of 192 bytes (2 x 4 x 6
# float32) and 6 chunks of the static orog (4 x 6 float32, 96 bytes): 21600 bytes
NEED = 21600


def _warnings(caplog) -> list[str]:
    return [r.getMessage() for r in caplog.records
            if r.levelno >= logging.WARNING and "sample needs" in r.getMessage()]


@pytest.mark.slow
@pytest.mark.parametrize(("cache_bytes", "warned"), [(30000, True), (2 * NEED, False)])
def test_process_mode_warns_once_with_the_setting_share_and_need(tmp_path, caplog, capfd, cache_bytes, warned):
    truth, cfg = build("per_variable", tmp_path / "s.zarr", zarr_format=2, nt=20, codec="zstd")
    caplog.set_level(logging.WARNING, logger="fastload")
    with Loader(tmp_path / "s.zarr", cfg, samples_per_epoch=8, mode="process", workers=2, cache_bytes=cache_bytes,
                device="cpu", seed=1) as loader:
        for b in loader:  # (a cache of one sample per worker still reads right)
            ref = reference(truth, cfg, b.boxes.numpy(), periodic=True)
            assert all(np.array_equal(b[f].numpy(), ref[f], equal_nan=True) for f in cfg.field_names)
    said = _warnings(caplog)
    err = capfd.readouterr().err
    assert "is below the" not in err, err  # no worker warns (each did, on its own stderr)
    if not warned:  # 21600 bytes each: exactly one sample's need, nothing to warn of
        assert said == []
        return
    assert len(said) == 1, said
    assert (f"loader.cache_bytes=30000 is shared by 2 worker processes, 15000 bytes each, below the {NEED} bytes "
            f"of decoded chunks one sample needs: each worker's cache holds {NEED} bytes") in said[0], said[0]


def test_thread_mode_still_warns_of_a_setting_below_one_sample(tmp_path, caplog):
    _, cfg = build("per_variable", tmp_path / "s.zarr", zarr_format=2, nt=20, codec="zstd")
    caplog.set_level(logging.WARNING, logger="fastload")
    with Loader(tmp_path / "s.zarr", cfg, samples_per_epoch=8, workers=2, cache_bytes=15000, device="cpu") as loader:
        next(iter(loader))
    assert _warnings(caplog) == [f"fastload: cache_bytes=15000 is below the {NEED} bytes of decoded chunks one "
                                 f"sample needs; using {NEED}"]


def test_the_share_said_is_the_share_given(caplog):
    """cache_bytes = 0 in process mode: each worker's share is 0 bytes; the warning said 1 (reviewer R3, s16)."""
    from fastload._cache_sizing import warn_process_share

    caplog.set_level(logging.WARNING, logger="fastload")
    assert warn_process_share(0, 3, 100) is True
    assert warn_process_share(7, 3, 2) is False  # 2 bytes each: one sample's need
    (said,) = _warnings(caplog)
    assert said.startswith("fastload: loader.cache_bytes=0 is shared by 3 worker processes, 0 bytes each, below "
                           "the 100 bytes"), said
