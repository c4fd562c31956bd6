"""Resume on a data store whose irregular time axis (calendar months) grew (:mod:`fastload._resume`): the saved
state records the axis' length with the digest of its stamps, and a resume digests as many leading stamps of the
store as the saved run had, so a store that only grew resumes an explicit plan batch for batch, and one whose
stamps changed within the saved run's is refused naming the time stamps. States saved before the length was
recorded still resume on the same store. The reference for every resume is the uninterrupted run."""

from __future__ import annotations

import numpy as np
import pytest

from fastload.config import FieldConfig, SamplingConfig
from fastload.errors import ConfigError
from fastload.loader import Loader
from tests.fastload.test_streams_edges import GLOBAL10, make_ll

pytestmark = pytest.mark.usefixtures("nothing_left")

CFG = SamplingConfig(fields=(FieldConfig(name="a", num_tokens=(1, 2, 2), token_size=(1, 2, 2),
                                         normalization="none"),))
BOXES = np.array([[0, 2, 3], [5, 4, 30], [10, 6, 10], [7, 8, 0], [3, 1, 20], [9, 10, 33]], np.int64)
KW = dict(batch_size=2, workers=1, device="cpu", seed=1, boxes=BOXES)


def _months(first, stop):
    return np.arange(first, stop, dtype="datetime64[M]").astype("datetime64[ns]")


@pytest.fixture(scope="module")
def stores(tmp_path_factory):
    """``m12``: January to December 2000; ``m13``: the same with January 2001 appended; ``moved``: 13 months, the
    first 12 as ``m12`` but May on the 2nd; ``m11``: the first 11 months of ``m12``."""
    d = tmp_path_factory.mktemp("monthly")
    rng = np.random.default_rng(0)
    data = rng.standard_normal((13, 19, 36)).astype(np.float32)
    t13 = _months("2000-01", "2001-02")
    moved = t13.copy()
    moved[4] += np.timedelta64(1, "D")
    for name, t in (("m12", t13[:12]), ("m13", t13), ("moved", moved), ("m11", t13[:11])):
        make_ll(d / f"{name}.zarr", *GLOBAL10, t, "a", data=data[:t.size])
    return d


def _run(path):
    """(state after one batch, the rest of the epoch's field values)."""
    with Loader(path, CFG, **KW) as ld:
        it = iter(ld)
        next(it)
        state = ld.state_dict()
        return state, [b["a"].numpy().copy() for b in it]


def _resumed(path, state):
    with Loader(path, CFG, **KW) as ld:
        ld.load_state_dict(state)
        return [b["a"].numpy().copy() for b in ld]


def test_the_state_records_the_length_and_digest_of_an_irregular_axis(stores):
    import hashlib

    state, _ = _run(stores / "m12.zarr")
    t = state["store_fingerprint"]["time"]
    want = hashlib.sha256(_months("2000-01", "2001-01").astype(np.int64).tobytes()).hexdigest()[:32]
    assert t == {"start": "2000-01-01T00:00:00.000000000", "length": 12, "irregular": "sha256:" + want}


def test_a_monthly_store_that_grew_resumes_an_explicit_plan(stores):
    """January 2001 appended: the same stamps at the same steps, so the explicit plan reads the same samples and
    resumes, batch for batch (refused before: 'its time axis starts or steps elsewhere')."""
    state, want = _run(stores / "m12.zarr")
    got = _resumed(stores / "m13.zarr", state)
    assert len(got) == len(want) == 2
    for g, w in zip(got, want):
        np.testing.assert_array_equal(g, w)


def test_a_changed_stamp_within_the_saved_length_is_refused(stores):
    """May 2nd instead of May 1st (and January 2001 appended): refused, naming the time stamps."""
    state, _ = _run(stores / "m12.zarr")
    with pytest.raises(ConfigError) as e:
        _resumed(stores / "moved.zarr", state)
    msg = str(e.value)
    assert "in 1 setting(s): the saved store_fingerprint.time.irregular 'sha256:" in msg, msg
    assert "other time stamps than the saved run's, among as many leading stamps as it had" in msg, msg


def test_a_store_with_fewer_stamps_is_refused_naming_the_length(stores):
    state, _ = _run(stores / "m12.zarr")
    with pytest.raises(ConfigError, match=r"in 1 setting\(s\): the saved store_fingerprint\.time\.length 12, "
                                          r"this loader's 11 \(the data store differs from the saved run's: its "
                                          r"time axis has fewer"):
        _resumed(stores / "m11.zarr", state)


def test_a_state_saved_without_the_length_resumes_on_the_same_store_only(stores):
    """A state of the format before (time part ``{start, irregular}``, the digest of every stamp) resumes on the
    same store; on the grown one it is refused, saying that it records no length."""
    state, want = _run(stores / "m12.zarr")
    old = {**state, "store_fingerprint": {**state["store_fingerprint"], "time": {
        k: v for k, v in state["store_fingerprint"]["time"].items() if k != "length"}}}
    for g, w in zip(_resumed(stores / "m12.zarr", old), want):
        np.testing.assert_array_equal(g, w)
    with pytest.raises(ConfigError, match="the saved state records no length of its irregular time axis"):
        _resumed(stores / "m13.zarr", old)


def test_each_stream_of_a_multi_stream_fingerprint_is_compared_over_its_own_saved_stamps():
    """Per stream, the grown axis of that stream's own store is digested (not another stream's, not none)."""
    from types import SimpleNamespace

    from fastload._resume import _stores_against, _time

    t12, t13 = _months("2000-01", "2001-01"), _months("2000-01", "2001-02")
    hourly = np.arange("2000-01-01", "2000-01-03", dtype="datetime64[h]").astype("datetime64[ns]")
    saved = {"m": {"format": 1, "time": _time(t12)}, "h": {"format": 1, "time": _time(hourly)}}
    mine = {"m": {"format": 1, "time": _time(t13)}, "h": {"format": 1, "time": _time(hourly)}}
    ms = SimpleNamespace(streams=[SimpleNamespace(name="h", store=SimpleNamespace(time=hourly)),
                                  SimpleNamespace(name="m", store=SimpleNamespace(time=t13))])
    assert _stores_against(saved, mine, ms) == saved  # the grown monthly stream compares equal over 12 stamps
    assert _stores_against(saved, mine, None)["m"] == mine["m"]  # without the stores: compared whole
    swapped = SimpleNamespace(streams=[SimpleNamespace(name="m", store=SimpleNamespace(time=hourly))])
    assert _stores_against(saved, mine, swapped)["m"] == mine["m"]  # an axis mine was not made of: not used
