"""``fastload rollout`` compares the normalisation coefficients with those the checkpoint was trained with (review
s11 r2 L6): it read whatever was at ``norm_path`` now, so recomputed statistics silently changed the inputs and the
de-normalised forecast. A copy elsewhere is the same coefficients; an edit is refused unless --allow-other-norm."""

from __future__ import annotations

import shutil
import warnings

import numpy as np
import pytest
import xarray as xr
import zarr

from fastload.errors import ConfigError
from profiling.rollout import load_forecaster, main
from tests.profiling.test_rollout import trained  # noqa: F401  (the module's trained Forecaster fixture)


def _edited(norm, dst, field, array, delta):
    shutil.copytree(norm, dst)
    a = zarr.open_group(str(dst), mode="r+")[field][array]
    at = (0, 0, 1, 2)[:a.ndim]  # January, first level, one grid point (a global array: the level's value)
    a[at] = a[at] + delta
    return dst


def _args(store, ck, out, *more):
    return [store, "--checkpoint", str(ck), "--steps", "1", "--out", str(out), "--device", "cpu",
            "--static-times", "0", *more]


def test_a_moved_copy_of_the_coefficients_rolls_out_the_same(trained, tmp_path):  # noqa: F811
    store, norm, ck = trained
    moved = tmp_path / "elsewhere" / "norm.zarr"
    shutil.copytree(norm, moved)
    with warnings.catch_warnings():
        warnings.simplefilter("error", UserWarning)
        assert main(_args(store, ck, tmp_path / "a.zarr")) == 0
        assert main(_args(store, ck, tmp_path / "b.zarr", "--norm", str(moved))) == 0
    a, b = xr.open_zarr(tmp_path / "a.zarr"), xr.open_zarr(tmp_path / "b.zarr")
    for name in a.data_vars:
        np.testing.assert_array_equal(a[name].values, b[name].values)


@pytest.mark.parametrize("field, array, named", [
    ("t2m", "local_mean", r"the local coefficients of t2m/1"),
    ("temperature", "global_std", r"global mean or std"),
])
def test_other_coefficients_are_refused_unless_allowed(trained, tmp_path, field, array, named):  # noqa: F811
    store, norm, ck = trained
    spec = next(f for f in load_forecaster(ck)[2].fields if f.name == field)
    if array.startswith("local") and spec.normalization != "local":
        pytest.skip(f"{field} is not normalised 'local' in this run")
    other = _edited(norm, tmp_path / "other.zarr", field, array, 0.5)
    out = tmp_path / "f.zarr"
    with pytest.raises(ConfigError, match=rf"differ from those --checkpoint .*{named}.*--allow-other-norm"):
        main(_args(store, ck, out, "--norm", str(other)))
    assert not out.exists()  # refused before any work
    with pytest.warns(UserWarning, match=rf"{named}.*--allow-other-norm"):
        assert main(_args(store, ck, out, "--norm", str(other), "--allow-other-norm")) == 0
    assert out.exists()
