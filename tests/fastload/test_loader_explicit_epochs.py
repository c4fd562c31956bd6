"""An explicit plan (``boxes=`` a function of the epoch) whose size changes between epochs: the error names the
epochs whose plans differ (review s13 r4 item 4: it named the current epoch as the one with the other count)."""

from __future__ import annotations

import numpy as np
import pytest

from fastload.errors import ConfigError
from fastload.loader import Loader
from tests.fastload.loader_ref import build, reference

pytestmark = pytest.mark.usefixtures("nothing_left")


@pytest.mark.parametrize("first", [0, 3])
def test_a_changed_explicit_plan_size_names_the_epoch_that_set_the_count(tmp_path, first):
    truth, cfg = build("per_variable", tmp_path / "s.zarr", zarr_format=2, nt=20, codec="zstd")
    rng = np.random.default_rng(5)
    base = np.stack([rng.integers(0, 20 - 4 + 1, 12), rng.integers(0, 14 - 6 + 1, 12), rng.integers(0, 20, 12)],
                    axis=1)

    def plan(epoch):  # 12 samples for the first two epochs, then 8
        return base if epoch < first + 2 else base[:8]

    with Loader(tmp_path / "s.zarr", cfg, boxes=plan, epoch=first, device="cpu") as loader:
        for e in (first, first + 1):  # iterated to the end: the epoch advances
            got = [b for b in loader]
            assert len(got) == 3 and loader.epoch == e + 1
            boxes = np.concatenate([b.boxes.numpy() for b in got])
            assert np.array_equal(boxes, base)
            want = reference(truth, cfg, boxes, periodic=True)
            assert np.array_equal(np.concatenate([b["t"].numpy() for b in got]), want["t"])
        with pytest.raises(ConfigError) as err:
            iter(loader)
    msg = str(err.value)
    # epoch first + 2 asked for 8 where the plan of epoch `first` (when the loader was built) gave 12; the
    # loader's current epoch (first + 2) is not the one that had 12
    assert f"boxes({first + 2}) gave 8 samples but boxes({first}) gave 12" in msg, msg
    assert f"epoch {first + 2} had" not in msg
