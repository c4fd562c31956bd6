"""What ``Loader.load_state_dict`` refuses besides the settings (:mod:`fastload._resume`): a normalisation store
edited only in its local (per grid point) coefficients, a data store replaced at the same path (single store and
each stream), a changed ``drop_last``, masking or explicit plan; and what it still accepts: stores that only moved
(a stream's store included), an edit of coefficients the loader never reads, states saved before these checks.

Each refusal was a silent resume before (the test says what the resumed run would have read instead); each
acceptance is checked batch for batch against the uninterrupted run."""

from __future__ import annotations

import dataclasses
import logging
import re
import shutil

import numpy as np
import pytest
import zarr

from fastload._resume import check_resume, differences, local_digests, norm_fingerprint
from fastload.config import FieldConfig, LoaderConfig, SamplingConfig
from fastload.errors import ConfigError
from fastload.loader import Loader
from fastload.norm import Normalizer
from tests.fastload.loader_ref import build

pytestmark = pytest.mark.usefixtures("nothing_left")

KW = dict(samples_per_epoch=16, workers=1, seed=4, device="cpu")


def _tail(loader, skip=1):
    """(state after ``skip`` batches, the rest of the epoch's fields as numpy)."""
    it = iter(loader)
    for _ in range(skip):
        next(it)
    state = loader.state_dict()
    return state, [{f: b[f].numpy().copy() for f in loader.config.field_names} for b in it]


def _same(got, want):
    assert len(got) == len(want) > 0
    for g, w in zip(got, want):
        for f in w:
            np.testing.assert_array_equal(g[f], w[f], err_msg=f)


# -- local coefficients ----------------------------------------------------------------------------------------------
@pytest.fixture(params=[3, 2], ids=["zarr3", "zarr2"])
def local(tmp_path, request):
    """A store, its coefficients (``n.zarr``), a byte copy elsewhere, and copies edited in one local value: at a
    level the config uses (``edited``) and at one it does not (``unused``, t's 850 hPa)."""
    from fastload.stats import StatsConfig, compute_stats

    build("per_variable", tmp_path / "s.zarr", nt=12)
    compute_stats(str(tmp_path / "s.zarr"), tmp_path / "n.zarr",
                  StatsConfig(progress=False, zarr_format=request.param))
    for name in ("moved/n.zarr", "edited.zarr", "unused.zarr"):
        shutil.copytree(tmp_path / "n.zarr", tmp_path / name)
    norm = Normalizer(tmp_path / "n.zarr")
    for name, level in (("edited.zarr", 1000.0), ("unused.zarr", 850.0)):
        li = int(norm.level_indices("t", [level])[0])
        arr = zarr.open_group(str(tmp_path / name), mode="r+")["t"]["local_mean"]
        arr[0, li, 5, 7] = arr[0, li, 5, 7] + 0.25  # one grid point of January; attrs and globals untouched

    def cfg(name, normalization="local"):
        return build("per_variable", tmp_path / "s.zarr", nt=12, normalization=normalization,
                     norm_path=str(tmp_path / name))[1]
    return tmp_path / "s.zarr", cfg, tmp_path


def test_an_edit_of_one_local_coefficient_is_refused_naming_the_field_and_month(local):
    path, cfg, d = local
    # what the resumed run would have normalised with: the edited value (the globals and attributes are the same)
    a, b = Normalizer(d / "n.zarr"), Normalizer(d / "edited.zarr")
    for x, y in zip(a.coefficients("t", "global", [1000.0], [0]), b.coefficients("t", "global", [1000.0], [0])):
        np.testing.assert_array_equal(x, y)
    assert a.attrs("t") == b.attrs("t")
    ma, mb = a.coefficients("t", "local", [1000.0], [0])[0], b.coefficients("t", "local", [1000.0], [0])[0]
    assert np.argwhere(ma != mb).tolist() == [[0, 0, 5, 7]]
    with Loader(path, cfg("n.zarr"), **KW) as first:
        assert first.state_dict()["norm_local"] == {}  # nothing read yet: nothing to differ from
        state = _tail(first)[0]
    assert sorted(state["norm_local"]) == ["sp/1", "t/1"]  # the fields and the month (January) the run read
    with Loader(path, cfg("edited.zarr"), **KW) as other, pytest.raises(ConfigError) as e:
        other.load_state_dict(state)
    msg = str(e.value)
    assert "in 1 setting(s): the saved norm_local.t/1 'sha256:" in msg, msg
    assert "(the local, per grid point, coefficients of field 't' for Jan differ from those the saved run read)" in msg
    assert "state['norm_local'] = loader.state_dict()['norm_local']" in msg, msg  # how to resume on purpose


def test_a_copy_an_edit_the_loader_never_reads_and_another_format_resume(local):
    """Only what the loader read is compared, by value: a byte copy; 850 hPa of t (not sampled) edited; the same
    statistics written again in the other zarr format (other chunk bytes, metadata, ``created``) with an attribute
    added to a local array. Each resumes with the uninterrupted run's batches (the last two were refused before)."""
    from fastload.stats import StatsConfig, compute_stats

    path, cfg, d = local
    fmt = zarr.open_group(str(d / "n.zarr"), mode="r").metadata.zarr_format
    compute_stats(str(path), d / "other_format.zarr", StatsConfig(progress=False, zarr_format=5 - fmt))
    zarr.open_group(str(d / "other_format.zarr"), mode="r+")["t"]["local_mean"].attrs["comment"] = "checked"
    with Loader(path, cfg("n.zarr"), **KW) as first:
        state, want = _tail(first)
    for name in ("moved/n.zarr", "unused.zarr", "other_format.zarr"):
        with Loader(path, cfg(name), **KW) as again:
            again.load_state_dict(state)
            _same(_tail(again, 0)[1], want)


def _with_july(src, dst, edit=0.0):
    """A copy of coefficient store ``src`` that also holds July (January's coefficients), July's t edited by
    ``edit`` at one grid point."""
    shutil.copytree(src, dst)
    g = zarr.open_group(str(dst), mode="r+")
    for f in ("t", "sp"):
        for stat in ("local_mean", "local_std", "global_mean", "global_std"):
            g[f][stat][6] = g[f][stat][0]
        g[f].attrs["months_present"] = [1, 7]
    g["t"]["local_mean"][6, 0, 5, 7] = g["t"]["local_mean"][6, 0, 5, 7] + edit


def test_an_edit_in_a_month_the_run_never_read_resumes(local):
    """The store holds January and July; the run (January data) reads January only: a July edit resumes, with the
    same batches (refused before: every month present was digested), a January edit does not."""
    path, cfg, d = local
    _with_july(d / "n.zarr", d / "year.zarr")
    _with_july(d / "n.zarr", d / "july_edit.zarr", 0.25)
    _with_july(d / "edited.zarr", d / "jan_edit.zarr")
    with Loader(path, cfg("year.zarr"), **KW) as first:
        state, want = _tail(first)
    assert sorted(state["norm_local"]) == ["sp/1", "t/1"]
    with Loader(path, cfg("july_edit.zarr"), **KW) as again:
        again.load_state_dict(state)
        _same(_tail(again, 0)[1], want)
    with Loader(path, cfg("jan_edit.zarr"), **KW) as other, pytest.raises(ConfigError, match=r"norm_local\.t/1 "):
        other.load_state_dict(state)


def test_the_digest_describes_what_the_run_read_not_the_store_at_checkpoint_time(local):
    """The coefficients are digested as they are read: a store edited after the run read them is seen on resume
    against the store the run read (r2 M2: the first state_dict digested the store as it was then)."""
    path, cfg, d = local
    shutil.copytree(d / "n.zarr", d / "live.zarr")
    with Loader(path, cfg("live.zarr"), **KW) as first:
        it = iter(first)
        next(it)
        shutil.rmtree(d / "live.zarr")
        shutil.copytree(d / "edited.zarr", d / "live.zarr")  # replaced under the running job
        state = first.state_dict()
    with Loader(path, cfg("n.zarr"), **KW) as again:
        again.load_state_dict(state)  # the coefficients the run read
    with Loader(path, cfg("live.zarr"), **KW) as other, pytest.raises(ConfigError, match=r"norm_local\.t/1 "):
        other.load_state_dict(state)


def test_global_normalisation_digests_no_local_coefficients(local):
    path, cfg, _ = local
    with Loader(path, cfg("n.zarr", "global"), **KW) as first:
        state = _tail(first)[0]
    assert state["norm_local"] == {} and "_" not in state["norm_fingerprint"]
    with Loader(path, cfg("edited.zarr", "global"), **KW) as other:
        other.load_state_dict(state)


def test_states_of_the_earlier_formats_compare_the_global_part(local, caplog):
    """A state saved before ``norm_local`` existed: its normalisation fingerprint is ``sha256:<global>`` (before
    b1d0075) or ``sha256:<global>_<digest of stored bytes>`` (b1d0075..): both resume by their global part (the
    same computation then as now), logged; a global difference is still refused."""
    path, cfg, d = local
    with Loader(path, cfg("n.zarr"), **KW) as first:
        state, want = _tail(first)
    new = ("norm_local", "drop_last", "masking", "mask_device", "store_fingerprint", "plan")
    for fp, said in ((state["norm_fingerprint"], "predates"), (state["norm_fingerprint"] + "_" + "ab" * 16,
                                                               "stored bytes")):
        old = {**{k: v for k, v in state.items() if k not in new}, "norm_fingerprint": fp}
        caplog.clear()
        with Loader(path, cfg("moved/n.zarr"), **KW) as again, caplog.at_level(logging.WARNING, logger="fastload"):
            again.load_state_dict(old)
            _same(_tail(again, 0)[1], want)
        assert [r.getMessage() for r in caplog.records if said in r.getMessage()], caplog.text
        with pytest.raises(ConfigError, match="now holds other coefficients"):
            check_resume({**old, "norm_fingerprint": "sha256:" + "0" * 32}, state, ("seed",))


def test_no_warning_about_old_formats_when_the_mode_changed(local, caplog):
    """r2 L4: a global-mode state resumed with local normalisation is refused naming the mode, with no warning
    that the saved fingerprint 'predates the local coefficients' (it has none to have)."""
    path, cfg, _ = local
    with Loader(path, cfg("n.zarr", "global"), **KW) as first:
        state = _tail(first)[0]
    old = {k: v for k, v in state.items() if k != "norm_local"}
    with Loader(path, cfg("n.zarr"), **KW) as other, caplog.at_level(logging.WARNING, logger="fastload"):
        with pytest.raises(ConfigError, match=r"sampling\.fields\.t\.normalization 'global', this loader's 'local'"):
            other.load_state_dict(old)
    assert not [r for r in caplog.records if "predates" in r.getMessage() or "stored bytes" in r.getMessage()]


def test_a_normaliser_without_slab_digests_digests_its_decoded_local_coefficients(local):
    _, cfg, d = local

    class Plain:  # the Normalizer's public methods only
        def __init__(self, norm):
            self.n = norm

        def __getattr__(self, k):
            if k == "slab_digests":
                raise AttributeError(k)
            return getattr(self.n, k)

    c = cfg("n.zarr")
    a, b, e = (local_digests(Plain(Normalizer(d / n)), c) for n in ("n.zarr", "moved/n.zarr", "edited.zarr"))
    assert sorted(a) == ["sp/1", "t/1"] and a == b and a["sp/1"] == e["sp/1"] and a["t/1"] != e["t/1"]


# -- the data store, drop_last, masking, plan (single store) --------------------------------------------------------
@pytest.fixture
def plain(tmp_path):
    _, cfg = build("per_variable", tmp_path / "s.zarr", nt=12)
    return tmp_path / "s.zarr", cfg


def test_another_store_at_the_same_path_is_refused_naming_the_part_that_differs(plain, tmp_path):
    """A record that grew (the same first time and step) draws other placements: refused naming the plan; a time
    axis shifted by an hour (the same steps, other times) or a field of another dtype: named by their part."""
    path, cfg = plain
    with Loader(path, cfg, **KW) as first:
        state = first.state_dict()
        before = first.epoch_boxes(0)
    shutil.copytree(path, tmp_path / "orig.zarr")
    shutil.rmtree(path)
    build("per_variable", path, nt=14)  # the record grew by two steps: other placements, other data
    with Loader(path, cfg, **KW) as other:
        assert not np.array_equal(other.epoch_boxes(0), before)  # what a silent resume would have read
        with pytest.raises(ConfigError, match=r"in 1 setting\(s\): the saved plan 'sha256:\w+', this loader's "):
            other.load_state_dict(state)
    shutil.rmtree(path)
    shutil.copytree(tmp_path / "orig.zarr", path)
    tm = zarr.open_group(str(path), mode="r+")["time"]
    tm[:] = tm[:] + 1  # an hour later (hours since the epoch): the same placements, other times
    with Loader(path, cfg, **KW) as other, pytest.raises(ConfigError) as e:
        other.load_state_dict(state)
    msg = str(e.value)
    assert "in 1 setting(s): the saved store_fingerprint.time.start '2000-01-01T00:00:00.000000000', this " \
           "loader's '2000-01-01T01:00:00.000000000' (the data store differs from the saved run's: its time axis " \
           "starts or steps elsewhere" in msg, msg
    assert "state['store_fingerprint'] = loader.state_dict()['store_fingerprint']" in msg, msg
    resumed = {**state, "store_fingerprint": other.state_dict()["store_fingerprint"]}  # on purpose, as it says
    with Loader(path, cfg, **KW) as other:
        other.load_state_dict(resumed)


def test_a_store_that_grew_resumes_an_unchanged_explicit_plan(plain, tmp_path):
    """Steps appended along time: the same time stamps at the same steps, so an explicit plan reads the same samples
    and resumes, batch for batch (refused before: the fingerprint hashed the time axis and the array shapes)."""
    path, cfg = plain
    with Loader(path, cfg, **KW) as ref:
        boxes = ref.epoch_boxes(0)
    shutil.copytree(path, tmp_path / "grown.zarr")
    g = zarr.open_group(str(tmp_path / "grown.zarr"), mode="r+")
    for k in ("t", "q", "sp"):
        g[k].resize((16,) + g[k].shape[1:])
        g[k][12:] = 1.0
    g["time"].resize((16,))
    g["time"][12:] = g["time"][11] + 6 * np.arange(1, 5)  # hours since the epoch, 6-hourly
    with Loader(path, cfg, boxes=boxes, **KW) as first:
        state, want = _tail(first)
    with Loader(tmp_path / "grown.zarr", cfg, boxes=boxes, **KW) as again:
        again.load_state_dict(state)
        _same(_tail(again, 0)[1], want)


def test_coordinates_one_ulp_apart_and_an_xarray_rewrite_resume(plain, tmp_path):
    """Latitudes one float64 ulp apart (another tool's linspace), and the store rewritten by xarray in zarr v3 (it
    adds a _FillValue attribute, NaN, base64, equal to the fill value): the same samples; both resume."""
    import warnings

    import xarray as xr

    path, cfg = plain
    shutil.copytree(path, tmp_path / "ulp.zarr")
    lat = zarr.open_group(str(tmp_path / "ulp.zarr"), mode="r+")["latitude"]
    lat[:] = np.nextafter(lat[:], 0)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        ds = xr.open_zarr(str(path), consolidated=False)
        for v in ds.variables.values():
            v.encoding = {}
        ds.to_zarr(str(tmp_path / "xr.zarr"), zarr_format=3, consolidated=False)
    assert "_FillValue" in zarr.open_group(str(tmp_path / "xr.zarr"), mode="r")["t"].attrs
    with Loader(path, cfg, **KW) as first:
        state, want = _tail(first)
    for name in ("ulp.zarr", "xr.zarr"):
        with Loader(tmp_path / name, cfg, **KW) as again:
            again.load_state_dict(state)
            _same(_tail(again, 0)[1], want)


def test_fingerprints_hash_values_not_numpy_reprs(plain, tmp_path):
    """NumPy 1 printed a float32 NaN fill value as ``nan``, NumPy 2 as ``np.float32(nan)`` (``legacy="1.25"`` prints
    as NumPy 1): the same store and coefficients, resumed under either, have the same fingerprints (r2 H1)."""
    from fastload._resume import store_fingerprint
    from fastload.stats import StatsConfig, compute_stats
    from fastload.store import open_store

    path, cfg = plain
    store = open_store(path)
    compute_stats(str(path), tmp_path / "n.zarr", StatsConfig(progress=False))
    ncfg = build("per_variable", path, nt=12, normalization="local", norm_path=str(tmp_path / "n.zarr"))[1]
    assert any(np.isnan(a.fill_value) for a in store.arrays.values() if a.fill_value is not None)
    want = (store_fingerprint(store, cfg), norm_fingerprint(Normalizer(tmp_path / "n.zarr"), ncfg))
    with np.printoptions(legacy="1.25"):
        assert repr(np.float32("nan")) == "nan"  # what the fingerprint hashed on NumPy 1
        got = (store_fingerprint(store, cfg), norm_fingerprint(Normalizer(tmp_path / "n.zarr"), ncfg))
        assert differences(got, want) == [] and got == want  # (a NaN fill value is recorded as "nan": == works)
        with Loader(path, cfg, **KW) as first:
            state = first.state_dict()
    with Loader(path, cfg, **KW) as again:
        again.load_state_dict(state)


def test_a_moved_store_resumes(plain, tmp_path):
    path, cfg = plain
    with Loader(path, cfg, **KW) as first:
        state, want = _tail(first)
    shutil.copytree(path, tmp_path / "elsewhere" / "s.zarr")
    with Loader(tmp_path / "elsewhere" / "s.zarr", cfg, **KW) as again:
        again.load_state_dict(state)
        _same(_tail(again, 0)[1], want)


@pytest.mark.parametrize("change,named", [
    ({"drop_last": False}, "the saved drop_last True, this loader's False"),
    ({"masking": {"strategy": "BERT", "rate": 0.3}}, "the saved masking.rate 0.5, this loader's 0.3"),
])
def test_a_changed_drop_last_or_masking_is_refused_by_name(plain, change, named):
    path, cfg = plain
    kw = {**KW, "samples_per_epoch": 18, "masking": "BERT"}
    with Loader(path, cfg, **kw) as first:
        state = first.state_dict()
    with Loader(path, cfg, **{**kw, **change}) as other, pytest.raises(ConfigError) as e:
        other.load_state_dict(state)
    assert f"in 1 setting(s): {named}; resume" in str(e.value), str(e.value)


def test_masks_drawn_on_another_device_type_are_refused(plain):
    """Masks come from a generator on the batch's device (a CUDA one draws other masks): a state saved on a GPU
    (its mask_device 'cuda') does not resume masking on the CPU; without masking the device does not matter."""
    path, cfg = plain
    with Loader(path, cfg, masking="BERT", **KW) as first:
        state = first.state_dict()
    assert state["mask_device"] == "cpu"
    with Loader(path, cfg, masking="BERT", **KW) as other, pytest.raises(ConfigError) as e:
        other.load_state_dict({**state, "mask_device": "cuda"})
    assert "in 1 setting(s): the saved mask_device 'cuda', this loader's 'cpu' (masks are drawn on the batch's " \
           "device" in str(e.value), str(e.value)
    with Loader(path, cfg, **KW) as first:
        state = first.state_dict()
    assert state["mask_device"] is None


def test_a_changed_explicit_plan_is_refused_naming_the_plan(plain):
    path, cfg = plain
    with Loader(path, cfg, **KW) as ref:
        boxes = ref.epoch_boxes(0)
    with Loader(path, cfg, boxes=boxes, **KW) as first:
        it = iter(first)
        next(it)
        state = first.state_dict()
        want = [b.boxes.numpy().copy() for b in it]
    with Loader(path, cfg, boxes=boxes[::-1].copy(), **KW) as other, pytest.raises(ConfigError) as e:
        other.load_state_dict(state)  # resumed silently before, reading other samples
    assert "in 1 setting(s): the saved plan 'sha256:" in str(e.value) and "explicit plan (boxes=)" in str(e.value)
    with Loader(path, cfg, boxes=lambda epoch: boxes, **KW) as same:  # the same plan given another way
        same.load_state_dict(state)
        got = [b.boxes.numpy() for b in same]
    assert len(got) == len(want) == 3 and all(np.array_equal(g, w) for g, w in zip(got, want))


_KEYS_BEFORE_B1D0075 = ("version", "epoch", "batch", "seed", "rank", "world_size", "batch_size", "samples_per_epoch",
                        "samples_per_window", "sampling", "norm_fingerprint")
"""The keys of a Loader state saved before b1d0075 (r2 L7: the test kept mask_device, so it saved no old state)."""


@pytest.mark.parametrize("masking", [None, "BERT"])
def test_states_saved_by_earlier_versions_resume_as_they_did(plain, masking, caplog):
    """A state with only the keys fastload wrote before b1d0075, and one as b1d0075 wrote it (a data-store
    fingerprint of one digest, no norm_local): both resume with the same batches; the second says its store
    fingerprint is not compared."""
    path, cfg = plain
    with Loader(path, cfg, masking=masking, **KW) as first:
        state, want = _tail(first)
    before = {k: state[k] for k in _KEYS_BEFORE_B1D0075}
    b1d = {**{k: v for k, v in state.items() if k != "norm_local"}, "store_fingerprint": "sha256:" + "5" * 32}
    for old, said in ((before, None), (b1d, "data-store fingerprint is of an older format")):
        caplog.clear()
        with Loader(path, cfg, masking=masking, **KW) as again, caplog.at_level(logging.WARNING, logger="fastload"):
            again.load_state_dict(old)
            got = _tail(again, 0)[1]
        _same(got, want)  # (masked: the same masks too)
        assert said is None or said in caplog.text, caplog.text


def test_masking_turned_off_is_one_difference(plain):
    """r2 L5: the saved masking table against None was one difference per masking setting ("5 setting(s)")."""
    path, cfg = plain
    with Loader(path, cfg, masking="BERT", **KW) as first:
        state = first.state_dict()
    with Loader(path, cfg, **KW) as other, pytest.raises(ConfigError) as e:
        other.load_state_dict(state)
    msg = str(e.value)
    assert "in 1 setting(s): the saved masking {'strategy': 'BERT', 'rate': 0.5," in msg, msg
    assert "this loader's None; resume needs the same settings" in msg, msg


# -- streams: compared by content, not path --------------------------------------------------------------------------
@pytest.fixture
def streams(tmp_path):
    from tests.fastload.stores_multi import make_atmosphere, make_mesh, make_ocean

    paths = {"era5": tmp_path / "a.zarr", "ocean": tmp_path / "o.zarr", "fesom": tmp_path / "m.zarr"}
    make_atmosphere(paths["era5"]), make_ocean(paths["ocean"]), make_mesh(paths["fesom"])
    return paths, tmp_path


def _stream_cfg(paths, **moved):
    from tests.fastload.test_streams import config

    c = config(paths)
    return dataclasses.replace(c, streams=tuple(dataclasses.replace(s, path=str(moved.get(s.name, s.path)))
                                                for s in c.streams))


SKW = dict(batch_size=2, samples_per_epoch=8, workers=1, device="cpu", seed=5)


def test_a_stream_store_moved_elsewhere_resumes_with_the_same_batches(streams):
    paths, d = streams
    with Loader(None, _stream_cfg(paths), **SKW) as first:
        state, want = _tail(first)
    assert set(state["store_fingerprint"]) == {"era5", "ocean", "fesom"}
    shutil.copytree(paths["ocean"], d / "node-local" / "o.zarr")
    with Loader(None, _stream_cfg(paths, ocean=d / "node-local" / "o.zarr"), **SKW) as again:
        again.load_state_dict(state)  # refused before: the saved sampling.streams.ocean.path differed
        _same(_tail(again, 0)[1], want)


def test_another_stream_store_at_the_same_path_is_refused_naming_the_stream(streams):
    from tests.fastload.stores_multi import OCEAN_T0, make_ocean

    paths, _ = streams
    with Loader(None, _stream_cfg(paths), **SKW) as first:
        state, want = _tail(first)
    shutil.rmtree(paths["ocean"])
    make_ocean(paths["ocean"], nt=6, t0=OCEAN_T0 - np.timedelta64(1, "D"))  # a day earlier: other ocean steps
    with Loader(None, _stream_cfg(paths), **SKW) as other:
        with pytest.raises(ConfigError) as e:
            other.load_state_dict(state)  # accepted before: the same path
        other.set_epoch(0)
        got = _tail(other)[1]
    msg = str(e.value)
    assert "in 1 setting(s): the saved store_fingerprint.ocean.time.start '1999-12-31T00:00:00.000000000', this " \
           "loader's '1999-12-30T00:00:00.000000000' (the data store differs from the saved run's: its time axis" \
           in msg, msg
    assert not np.array_equal(got[0]["thetao"], want[0]["thetao"], equal_nan=True)  # a silent resume's data
    np.testing.assert_array_equal(got[0]["t"], want[0]["t"])  # the other streams read the same


def test_a_stream_state_without_store_fingerprints_still_needs_the_paths(streams):
    paths, d = streams
    with Loader(None, _stream_cfg(paths), **SKW) as first:
        state = first.state_dict()
    old = {k: v for k, v in state.items() if k != "store_fingerprint"}
    shutil.copytree(paths["ocean"], d / "node-local" / "o.zarr")
    with Loader(None, _stream_cfg(paths, ocean=d / "node-local" / "o.zarr"), **SKW) as again:
        with pytest.raises(ConfigError, match=r"the saved sampling\.streams\.ocean\.path '.*/o\.zarr', this loader's "
                                              r"'.*/node-local/o\.zarr' \(the saved state records no fingerprint of "
                                              r"the data stores"):
            again.load_state_dict(old)


def test_streams_record_and_compare_the_local_coefficients_each_stream_read(streams):
    """Every stream's local coefficients are digested per (field, month) it read: copies elsewhere resume with the
    same batches; one edited value of the ocean's coefficients in a month it read is refused naming the stream."""
    from fastload.stats import StatsConfig, compute_stats
    from tests.fastload.test_streams import config, fields

    paths, d = streams
    for name, p in paths.items():
        compute_stats(str(p), d / f"{name}-n.zarr", StatsConfig(progress=False))
        shutil.copytree(d / f"{name}-n.zarr", d / "moved" / f"{name}-n.zarr")

    def cfg(where, ocean="ocean-n.zarr"):
        c = config(paths, flds=fields("local"))
        norm = {n: where / (ocean if n == "ocean" else f"{n}-n.zarr") for n in paths}
        return dataclasses.replace(c, streams=tuple(dataclasses.replace(s, norm_path=str(norm[s.name]))
                                                    for s in c.streams))

    with Loader(None, cfg(d), **SKW) as first:
        state, want = _tail(first)
    read = state["norm_local"]
    assert sorted(read) == ["era5", "fesom", "ocean"] and all(read.values()), read
    month = int(sorted(read["ocean"])[0].split("/")[1]) - 1
    with Loader(None, cfg(d / "moved"), **SKW) as again:
        again.load_state_dict(state)
        _same(_tail(again, 0)[1], want)
    shutil.copytree(d / "ocean-n.zarr", d / "edited-n.zarr")
    arr = zarr.open_group(str(d / "edited-n.zarr"), mode="r+")["thetao"]["local_mean"]
    arr[month, 0, 1, 1] = arr[month, 0, 1, 1] + 0.5
    with Loader(None, cfg(d, "edited-n.zarr"), **SKW) as other, pytest.raises(ConfigError) as e:
        other.load_state_dict(state)
    assert f"in 1 setting(s): the saved norm_local.ocean.thetao/{month + 1} 'sha256:" in str(e.value), str(e.value)


@pytest.mark.parametrize("key,value", [("epoch", "1"), ("epoch", -1), ("batch", None), ("batch", 2.5),
                                       ("batch", 10**6), ("epoch", True)])
def test_a_malformed_position_is_refused_naming_the_key(tmp_path, key, value):
    """A state's epoch and batch are checked before anything uses them: a string epoch gave a TypeError from the
    plan's seed (review r3 L6); a batch past the epoch's end is named after the settings are compared."""
    from fastload.rollout_data import RolloutConfig, RolloutLoader
    from tests.fastload.stores import make_per_variable

    make_per_variable(tmp_path / "s.zarr", nt=12, ny=9, nx=16, missing_chunk=False, static=False)
    f = FieldConfig(name="t", levels=(500.0, 850.0), num_tokens=(2, 2, 2), token_size=(1, 2, 3), normalization="none")
    cfg = SamplingConfig(fields=(f,), batch_size=1)
    with RolloutLoader(str(tmp_path / "s.zarr"), cfg, RolloutConfig(steps=1, batch_size=2), LoaderConfig(workers=1)) as r:
        state = {**r.state_dict(), key: value}
        with pytest.raises(ConfigError, match=rf"state\['{key}'\] = {re.escape(repr(value))}; expected an integer"):
            r.load_state_dict(state)
    with Loader(str(tmp_path / "s.zarr"), cfg, samples_per_epoch=4, device="cpu", workers=1) as ld:
        state = {**ld.state_dict(), key: value}
        with pytest.raises(ConfigError, match=rf"state\['{key}'\] = {re.escape(repr(value))}; expected an integer"):
            ld.load_state_dict(state)
