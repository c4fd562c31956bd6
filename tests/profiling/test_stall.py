"""Stall analysis: the replayed batch (cloned, no I/O counted) and the split of the data wait into preparation and
fetch, against hand arithmetic."""

from __future__ import annotations

import csv

import numpy as np
import pytest
import torch

from fastload.config import LoaderConfig
from fastload.errors import ConfigError
from fastload.loader import Loader
from profiling.report import summarize, summarize_ranks
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


def _ddp_summary(waits, steps, rank=0):
    """Rank ``rank``'s summary of a 2-rank run whose per-rank step times and data waits are ``steps[r]``,
    ``waits[r]`` (rank 0's own records, a step's time outside its data wait booked as backward), with the run's
    figures over both ranks as the loop writes them (``run``)."""
    def recs(w, t):
        return [{"step": i + 2, "step_ms": ti, "data_wait_ms": wi, "h2d_ms": 0.0, "forward_ms": 0.0,
                 "backward_ms": ti - wi, "optimizer_ms": 0.0, "other_ms": 0.0, "idle_ms": 0.0, "samples": 2}
                for i, (wi, ti) in enumerate(zip(w, t))]

    per_rank = [recs(w, t) for w, t in zip(waits, steps)]
    s = summarize(per_rank[rank], samples_counted=True, machine={})
    s.update(rank=rank, world_size=2, run=summarize_ranks(per_rank))
    return s


def test_split_under_ddp_is_of_every_ranks_wait():
    """Two ranks; in the cached run rank 1's data takes 50 ms a step and rank 0 waits for it in the all-reduce
    (its backward). Rank 0's own data wait shows no stall; the split takes, per step, the longest wait and step of
    any rank (review s13 r1 item 2: the split said 1.8 % while the run's stall fraction was 0.776)."""
    rng = np.random.default_rng(0)
    syn_w, cached_w0 = rng.uniform(0.05, 0.2, (2, 8)), rng.uniform(0.5, 1.5, 8)
    cached_w1 = 50 + rng.uniform(0, 2, 8)
    syn_t = 20 + rng.uniform(0, 1, (2, 8))
    cached_t = np.stack([cached_w1 + 20.5, cached_w1 + 20.0])  # rank 0's step ends with rank 1's
    syn = _ddp_summary(syn_w, syn_t)
    cached = _ddp_summary(np.stack([cached_w0, cached_w1]), cached_t)
    split = stall_split({"cached": cached, "synthetic": syn})
    want = cached_w1.mean() - syn_w.max(axis=0).mean()  # the longest wait of a step is rank 1's
    assert split["prep_stall_ms"] == pytest.approx(want, rel=1e-12)
    assert split["prep_stall_fraction"] == pytest.approx(want / cached_t.max(axis=0).mean(), rel=1e-12)
    assert split["prep_stall_fraction"] > 0.6  # rank 0's own: about 1 / 71
    assert split["modes"]["cached"]["stall_fraction"] == pytest.approx(cached["run"]["stall_fraction"])
    assert split["modes"]["cached"]["step_ms"] == pytest.approx(cached_t.max(axis=0).mean(), rel=1e-12)
    assert split["modes"]["synthetic"]["samples_per_s"] == pytest.approx(syn["run"]["samples_per_s"])
    assert split["ranks"] == "all 2 ranks" and "figures of all 2 ranks" in format_stall_table(split)
    # a DDP summary without the run's figures is rank 0's own, and the table says so; modes of mixed ranks refused
    own = {k: v for k, v in cached.items() if k != "run"}
    alone = stall_split({"cached": own, "synthetic": {k: v for k, v in syn.items() if k != "run"}})
    assert alone["prep_stall_ms"] == pytest.approx(cached_w0.mean() - syn_w[0].mean(), rel=1e-12)
    assert "figures of rank 0 of 2 only" in format_stall_table(alone)
    with pytest.raises(ConfigError, match=r"\(synthetic: all 2 ranks, cached: rank 0 of 2 only\)"):
        stall_split({"cached": own, "synthetic": syn})
    assert stall_split({"cached": summary(120.0, 21.0), "cold": summary(110.0, 18.0)})["ranks"] == "one process"


_SPLIT_SLOW_RANK = '''
import sys
import profiling.loop as loop
from tests.profiling.ranks import Slow  # rank 1's batches come 30 ms late (in the cached run)

plain = loop.run


def run(cfg, **kw):
    return plain(cfg, **kw, **({"wrap_loader": Slow} if cfg.data.mode == "cached" else {}))


loop.run = run
sys.exit(loop.main(["profile", "--config", sys.argv[1], "--data", "synthetic,cached", "--out", sys.argv[2],
                    "--steps", "6", "--warmup", "1", "--device", "cpu"]))
'''


@pytest.mark.dist
@pytest.mark.slow
def test_ddp_stall_split_of_every_rank(tmp_path_factory, tmp_path):
    """``fastload profile --data synthetic,cached`` under torchrun, 2 gloo ranks, rank 1's data 30 ms late in the
    cached run: the split's figures are, per step, the longest data wait and step of any rank, from both ranks'
    steps.csv here (review s13 r1 item 2: the split used rank 0's own wait, which the slow rank hides)."""
    import json

    from tests.profiling.ranks import Slow, torchrun_on_tiny_store

    said, out = torchrun_on_tiny_store(_SPLIT_SLOW_RANK, tmp_path_factory, tmp_path)
    split = json.loads((out / "stall.json").read_text())
    assert split["ranks"] == "all 2 ranks" and "figures of all 2 ranks" in said
    for mode in ("synthetic", "cached"):
        cols = {}
        for r in (0, 1):
            with open(out / mode / f"rank{r}" / "steps.csv", newline="") as f:
                rows = list(csv.DictReader(f))
            for k in ("step", "step_ms", "data_wait_ms"):
                cols.setdefault(k, []).append([float(x[k]) for x in rows])
        assert cols["step"][0] == cols["step"][1] and len(cols["step"][0]) == 5
        got = split["modes"][mode]
        assert got["data_wait_ms"] == pytest.approx(np.max(cols["data_wait_ms"], axis=0).mean(), rel=1e-9)
        assert got["step_ms"] == pytest.approx(np.max(cols["step_ms"], axis=0).mean(), rel=1e-9)
    # rank 1 slept Slow.LATE_S (30 ms) in every step's data wait
    assert split["modes"]["cached"]["data_wait_ms"] >= 1e3 * Slow.LATE_S
    assert split["prep_stall_ms"] == pytest.approx(split["modes"]["cached"]["data_wait_ms"]
                                                   - split["modes"]["synthetic"]["data_wait_ms"])
