"""Stall analysis: the replayed batch (cloned, no I/O counted) and the split of the data wait into preparation and
fetch, against hand arithmetic."""

from __future__ import annotations

import pytest
import torch

from fastload.config import LoaderConfig
from fastload.errors import ConfigError
from fastload.loader import Loader
from profiling.stall import ReplayLoader, format_stall_table, stall_split
from tests.profiling.loopdata import sampling, tiny_store


def test_replay_hands_out_one_cloned_batch(tmp_path_factory):
    store, norm = tiny_store(tmp_path_factory)
    with Loader(store, sampling(norm), LoaderConfig(workers=1, device="cpu")) as ld:
        first = next(iter(ld))
        replay = ReplayLoader(first)
    it = iter(replay)
    a, b = next(it), next(it)
    assert a is b is replay.batch
    for k, t in first.fields.items():
        assert torch.equal(a.fields[k], t) and a.fields[k].data_ptr() != t.data_ptr()
        for m, v in first.meta[k].items():
            torch.testing.assert_close(a.meta[k][m], v, rtol=0, atol=0, equal_nan=True)  # NaN: no level
    assert len(a) == len(first)
    assert a.stats.samples == len(first) and a.stats.bytes_stored == a.stats.bytes_decoded == 0
    with pytest.raises(ConfigError, match="synthetic"):
        replay.state_dict()


def test_replay_from_an_empty_loader():
    with pytest.raises(ConfigError, match="no batch"):
        ReplayLoader.from_loader([])


def summary(step_ms, wait_ms, samples_per_s=10.0):
    return {"step": {"mean_ms": step_ms}, "phases": {"data_wait": {"mean_ms": wait_ms}},
            "stall_fraction": wait_ms / step_ms, "samples_per_s": samples_per_s}


def test_split_of_three_modes():
    split = stall_split({"cold": summary(150.0, 60.0), "synthetic": summary(100.0, 1.0),
                         "cached": summary(120.0, 21.0)})
    assert list(split["modes"]) == ["synthetic", "cached", "cold"]
    assert split["prep_stall_ms"] == pytest.approx(20.0) and split["prep_stall_fraction"] == pytest.approx(20 / 120)
    assert split["fetch_stall_ms"] == pytest.approx(39.0) and split["fetch_stall_fraction"] == pytest.approx(39 / 150)
    assert split["total_stall_ms"] == pytest.approx(59.0) and split["total_stall_fraction"] == pytest.approx(59 / 150)
    assert split["step_delta_ms"] == {"cached-synthetic": 20.0, "cold-cached": 30.0, "cold-synthetic": 50.0}
    text = format_stall_table(split)
    assert "preparation (cached - synthetic): 20.00 ms" in text and "fetch (cold - cached): 39.00 ms" in text


def test_split_of_two_modes_leaves_the_rest_unknown():
    split = stall_split({"cached": summary(120.0, 21.0), "cold": summary(110.0, 18.0)})
    assert split["prep_stall_ms"] is None and split["prep_stall_fraction"] is None
    assert split["fetch_stall_ms"] == pytest.approx(-3.0)  # noise is shown, not clipped
    assert "preparation" not in format_stall_table(split)


@pytest.mark.parametrize("modes", [{"cached": summary(1, 0)}, {"cached": summary(1, 0), "warm": summary(1, 0)}])
def test_split_needs_two_known_modes(modes):
    with pytest.raises(ConfigError, match="at least two"):
        stall_split(modes)
