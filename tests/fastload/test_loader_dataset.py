"""fastload.LoaderDataset under torch's DataLoader: a DataLoader left at its default batch_size=1 (or given any batch
size) fails at its first batch with a ConfigError that says to pass batch_size=None (audit F13: it was torch's
generic default-collate TypeError naming no fix); batch_size=None hands out the Loader's own batches."""

from __future__ import annotations

import pytest
import torch

from fastload.errors import ConfigError
from fastload.loader import Batch, Loader, LoaderDataset
from tests.fastload.loader_ref import build

pytestmark = pytest.mark.usefixtures("nothing_left")


@pytest.mark.parametrize("kwargs", [{}, {"batch_size": 2, "drop_last": True}], ids=["default", "batch_size=2"])
def test_a_dataloader_batch_size_is_refused_with_the_fix(tmp_path, kwargs):
    _, cfg = build("per_variable", tmp_path / "s.zarr")
    with Loader(tmp_path / "s.zarr", cfg, samples_per_epoch=16, seed=1, workers=1) as loader:
        dl = torch.utils.data.DataLoader(LoaderDataset(loader), **kwargs)
        with pytest.raises(ConfigError, match=r"batch_size=None") as err:
            next(iter(dl))
        n = kwargs.get("batch_size", 1)
        assert f"stack {n} fastload Batch" in str(err.value) and "first of 4 samples" in str(err.value)
        # the loader is left usable: batch_size=None hands out its batches as they are
        got = list(torch.utils.data.DataLoader(LoaderDataset(loader), batch_size=None))
        assert got and all(isinstance(b, Batch) and len(b) == 4 for b in got)


def test_other_types_collate_as_before():
    """The registration is keyed on Batch alone: torch's default collate of tensors and dicts is unchanged."""
    out = torch.utils.data.default_collate([{"a": torch.ones(2)}, {"a": torch.zeros(2)}])
    assert torch.equal(out["a"], torch.tensor([[1.0, 1.0], [0.0, 0.0]]))
