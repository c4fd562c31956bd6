"""fastload.Loader (thread mode): batches equal an independent NumPy reference and fastload.extract across layouts,
zarr formats, sharding and grids; exact resume; epochs; buffer lifetime; counters; clean close."""

from __future__ import annotations

import gc
import threading

import numpy as np
import pytest
import torch

from fastload.config import LoaderConfig
from fastload.errors import ConfigError, LoaderClosedError
from fastload.extract import extract
from fastload.loader import Batch, Loader, LoaderDataset
from fastload.store import open_store
from tests.fastload.leaks import fastload_threads
from tests.fastload.loader_ref import build, reference
from tests.fastload.test_reader_direct import _release_and_close


def _same_bits(a: torch.Tensor, b: torch.Tensor) -> bool:
    return a.shape == b.shape and a.dtype == b.dtype and torch.equal(a.view(torch.int16), b.view(torch.int16))


pytestmark = pytest.mark.usefixtures("nothing_left")


@pytest.mark.parametrize(
    "kind,fmt,sharded,regional,codec",
    [
        ("per_variable", 2, False, False, "blosc-lz4"),
        ("per_variable", 3, True, False, "zstd"),
        ("per_variable", 3, False, True, "gzip"),
        ("atmorep", 2, False, True, "lz4"),
        ("atmorep", 3, True, False, "none"),
    ],
)
def test_batches_equal_reference(tmp_path, kind, fmt, sharded, regional, codec):
    truth, cfg = build(kind, tmp_path / "s.zarr", zarr_format=fmt, sharded=sharded, regional=regional, codec=codec)
    store = open_store(tmp_path / "s.zarr")
    # a cache this small forces evictions and splits batches into several steps
    with Loader(store, cfg, samples_per_epoch=24, workers=2, prefetch=2, cache_bytes=40_000, seed=3) as loader:
        assert len(loader) == 6
        n = 0
        for i, batch in enumerate(loader):
            assert isinstance(batch, Batch) and batch.index == i and len(batch) == 4
            ref = reference(truth, cfg, batch.boxes.numpy(), periodic=not regional)
            for f in cfg.field_names:
                assert batch[f].shape == (4, *cfg.field(f).sample_shape)
                np.testing.assert_array_equal(batch[f].numpy(), ref[f])
            if i == 0:
                ext = extract(store, cfg, batch.boxes.numpy())
                for f in cfg.field_names:
                    np.testing.assert_array_equal(batch[f].numpy(), ext[f].data)
                    np.testing.assert_array_equal(batch.meta[f]["lat"].numpy(), ext[f].meta.lat.astype(np.float32))
            n += 1
        assert n == 6
        assert loader.stats.samples == 24 and loader.stats.hits + loader.stats.misses == loader.stats.chunks


def test_boxes_are_this_epochs_plan(tmp_path):
    _, cfg = build("per_variable", tmp_path / "s.zarr")
    with Loader(tmp_path / "s.zarr", cfg, samples_per_epoch=16, seed=5) as loader:
        boxes = np.concatenate([b.boxes.numpy() for b in loader])
        np.testing.assert_array_equal(boxes, loader.epoch_boxes(0))
        assert loader.epoch == 1  # a finished epoch advances
        again = np.concatenate([b.boxes.numpy() for b in loader])
        np.testing.assert_array_equal(again, loader.epoch_boxes(1))
        assert not np.array_equal(again, boxes)
        loader.set_epoch(0)
        np.testing.assert_array_equal(np.concatenate([b.boxes.numpy() for b in loader]), boxes)


def test_time_step_windows_bfloat16(tmp_path):
    truth, cfg = build("atmorep", tmp_path / "s.zarr", nt=12, time_step=2, out_dtype="bfloat16")
    with Loader(tmp_path / "s.zarr", cfg, samples_per_epoch=12, samples_per_window=3, workers=1,
                batch_size=3) as loader:
        for batch in loader:
            b = batch.boxes.numpy()
            assert len(set(b[:, 0].tolist())) == 1  # one time window per batch of 3
            ref = reference(truth, cfg, b, periodic=True)
            for f in cfg.field_names:
                assert batch[f].dtype == torch.bfloat16
                want = torch.from_numpy(ref[f]).to(torch.bfloat16)
                assert torch.equal(batch[f].view(torch.int16), want.view(torch.int16))


def test_normalised_fields_match_reference(tmp_path):
    from fastload.norm import Normalizer
    from fastload.stats import compute_stats

    _, cfg0 = build("per_variable", tmp_path / "s.zarr", nt=12)
    compute_stats(str(tmp_path / "s.zarr"), tmp_path / "n.zarr")
    truth, cfg = build("per_variable", tmp_path / "s.zarr", nt=12, normalization="local",
                       norm_path=str(tmp_path / "n.zarr"))
    months = [0]
    norm = Normalizer(tmp_path / "n.zarr")
    coeffs = {f.name: norm.coefficients(f.name, f.normalization, f.levels, months)
              for f in cfg.fields if f.normalization != "none"}
    with Loader(tmp_path / "s.zarr", cfg, samples_per_epoch=8, seed=1) as loader:
        for batch in loader:
            ref = reference(truth, cfg, batch.boxes.numpy(), periodic=True, coefficients=coeffs, months=months)
            for f in cfg.field_names:
                np.testing.assert_array_equal(batch[f].numpy(), ref[f])


def test_resume_is_exact(tmp_path):
    _, cfg = build("per_variable", tmp_path / "s.zarr", zarr_format=3, sharded=True)
    kw = dict(samples_per_epoch=28, workers=2, prefetch=3, cache_bytes=60_000, seed=11)
    with Loader(tmp_path / "s.zarr", cfg, **kw) as full:
        full.set_epoch(2)
        want = [(b.boxes.clone(), {f: b[f].clone() for f in cfg.field_names}) for b in full]
    with Loader(tmp_path / "s.zarr", cfg, **kw) as first:
        first.set_epoch(2)
        it = iter(first)
        for _ in range(3):
            next(it)
        state = first.state_dict()
        assert (state["epoch"], state["batch"]) == (2, 3)
    with Loader(tmp_path / "s.zarr", cfg, **kw) as resumed:
        resumed.load_state_dict(state)
        got = list(resumed)
    assert len(got) == len(want) - 3
    for b, (boxes, fields) in zip(got, want[3:]):
        assert torch.equal(b.boxes, boxes)
        for f in cfg.field_names:
            assert _same_bits(b[f], fields[f])
    with Loader(tmp_path / "s.zarr", cfg, **{**kw, "seed": 12}) as other:
        with pytest.raises(ConfigError, match="seed"):
            other.load_state_dict(state)


def test_kept_batches_stay_valid(tmp_path):
    truth, cfg = build("per_variable", tmp_path / "s.zarr")
    with Loader(tmp_path / "s.zarr", cfg, samples_per_epoch=40, prefetch=1, workers=2) as loader:
        kept = list(loader)  # more batches than ring slots, all alive at once
        assert loader._ring.reallocations > 0
        for batch in kept:
            ref = reference(truth, cfg, batch.boxes.numpy(), periodic=True)
            for f in cfg.field_names:
                np.testing.assert_array_equal(batch[f].numpy(), ref[f])


def test_each_chunk_read_once_with_a_big_cache(tmp_path):
    _, cfg = build("per_variable", tmp_path / "s.zarr")
    store = open_store(tmp_path / "s.zarr")
    reads: dict = {}
    real = store.chunk_bytes

    def counting(array, chunk):
        key = (array, tuple(chunk))
        reads[key] = reads.get(key, 0) + 1
        return real(array, chunk)

    store.chunk_bytes = counting
    with Loader(store, cfg, samples_per_epoch=40, cache_bytes=64 * 2**20) as loader:
        stats = [b.stats for b in loader]
    assert reads and max(reads.values()) == 1
    assert sum(s.misses for s in stats) == len(reads)
    nbytes = {a: store.arrays[a].chunk_nbytes for a in store.arrays}
    assert sum(s.bytes_decoded for s in stats) == sum(nbytes[a] for a, _ in reads)
    assert all(s.hits + s.misses == s.chunks and s.samples == 4 for s in stats)
    assert sum(s.hits for s in stats) > 0


def test_masking_and_dataset_adapter(tmp_path):
    from fastload.sampling.masking import MaskingConfig

    _, cfg = build("atmorep", tmp_path / "s.zarr")
    loader = Loader(tmp_path / "s.zarr", cfg, LoaderConfig(samples_per_epoch=8, seed=2),
                    masking=MaskingConfig(strategy="forecast"))
    dl = torch.utils.data.DataLoader(LoaderDataset(loader), batch_size=None, num_workers=0)
    assert len(dl) == 2
    batches = list(dl)
    for b in batches:
        for f in cfg.field_names:
            assert b.masks[f].shape == b[f].shape[:5] and b.masks[f][:, :, -1].all()
            assert torch.all(b.sources[f][:, :, -1] == 0)
    loader.close()


@pytest.mark.parametrize("masking", ["BERT", "forecast", {"strategy": "forecast", "forecast_tokens": 1, "synced": True},
                                     {"rate": 0.8, "synced": True}])
def test_masking_given_as_a_strategy_name_or_a_mapping(tmp_path, masking):
    """masking= as a strategy name or a mapping of MaskingConfig fields masks every batch as mask_batch does with the
    equivalent MaskingConfig (the name: that strategy's defaults), seeded by (seed, rank, step)."""
    import fastload
    from fastload.sampling.masking import mask_batch

    _, cfg = build("per_variable", tmp_path / "s.zarr")
    want = fastload.MaskingConfig(**({"strategy": masking} if isinstance(masking, str) else masking))
    with Loader(tmp_path / "s.zarr", cfg, samples_per_epoch=8, seed=3, workers=1, masking=masking) as loader:
        assert loader.masking == want
        for b in loader:
            ref = mask_batch(want, b.fields, seed=3, rank=0, step=b.epoch * len(loader) + b.index)
            for f in cfg.field_names:
                assert torch.equal(b.masks[f], ref[f].mask), f
                assert np.array_equal(b.sources[f].numpy(), ref[f].source.numpy(), equal_nan=True), f  # (q has gaps)
                assert b.masks[f].any() or want.strategy == "BERT"


@pytest.mark.parametrize("device", ["cpu", pytest.param("cuda", marks=pytest.mark.gpu)])
def test_masks_are_drawn_by_the_workers_as_mask_batch_draws_them(tmp_path, monkeypatch, device):
    """The workers draw each batch's masks, on the CPU and on a GPU (there after their own device copy, on the
    side stream): the consumer's next() neither copies nor masks, so a step whose host work paces the GPU does not
    leave it idle meanwhile. With 2 workers reading ahead over two epochs, every batch's masks and sources equal
    mask_batch's on the handed-out fields with (seed, rank, epoch * len + index), and no mask is drawn on the
    consumer's thread."""
    from fastload.sampling import masking as masking_mod

    _, cfg = build("per_variable", tmp_path / "s.zarr")
    want = masking_mod.MaskingConfig(strategy="BERT", rate=0.9, frac_zero=0.3, frac_noise=0.3, frac_coarse=0.3)
    threads = []
    real = masking_mod.mask_batch

    def recording(*args, **kwargs):
        threads.append(threading.current_thread().name)
        return real(*args, **kwargs)

    monkeypatch.setattr(masking_mod, "mask_batch", recording)
    with Loader(tmp_path / "s.zarr", cfg, samples_per_epoch=12, batch_size=3, seed=5, workers=2, prefetch=3,
                masking=want, device=device) as loader:
        got = [(b.epoch, b.index, {f: t.clone() for f, t in b.fields.items()}, b.masks, b.sources, b.stats.copy_s)
               for _ in range(2) for b in loader]
    assert len(threads) == 8 and all(name.startswith("fastload-loader") for name in threads), threads
    assert threading.current_thread().name not in threads
    for epoch, index, fields, masks, sources, copy_s in got:
        assert all(t.device.type == device for t in [*fields.values(), *masks.values(), *sources.values()])
        assert (copy_s > 0) == (device == "cuda")  # the worker's time issuing the copy and masks (GPU only)
        ref = real(want, fields, seed=5, rank=0, step=epoch * 4 + index)
        for f in cfg.field_names:
            assert torch.equal(masks[f], ref[f].mask), (epoch, index, f)
            got_src, ref_src = sources[f], ref[f].source  # (q has gaps: NaN in both at the same places)
            assert torch.equal(got_src.isnan(), ref_src.isnan()), (epoch, index, f)
            assert torch.equal(got_src.nan_to_num(0.0), ref_src.nan_to_num(0.0)), (epoch, index, f)
    assert any(m.any() for *_, masks, _, _ in got for m in masks.values())


@pytest.mark.parametrize("masking,named", [
    ("bert", r"masking: unknown strategy 'bert'; expected a fastload.MaskingConfig, a mapping .* or a strategy name"),
    (3, r"masking: expected a fastload.MaskingConfig, a mapping of its fields .* got int 3"),
    (True, r"masking: expected a fastload.MaskingConfig, .* got bool True"),
    (["BERT"], r"masking: expected a fastload.MaskingConfig, .* got list"),
    ({"strategy": "forecast", "tokens": 2}, r"masking: unknown key\(s\) 'tokens'; MaskingConfig fields are"),
    ({"rate": 2}, r"masking.rate: expected a number in \[0, 1\], got 2"),
    ({"synced": "yes"}, r"masking.synced: expected true or false, got 'yes'"),
    ({"strategy": "forecast", "forecast_tokens": 3}, r"masking.forecast_tokens = 3 > nt = 2 of field 't'"),
    ("temporal_interpolation", r"masking.interp_tokens = 1 leaves no context in nt = 2 time tokens of field 't'"),
], ids=["bad-name", "int", "bool", "list", "unknown-key", "bad-rate", "bad-synced", "forecast-too-long",
        "interp-no-context"])
def test_bad_masking_is_a_config_error_at_construction(tmp_path, masking, named):
    """Anything masking= cannot be (or masks that do not fit the fields' tokens) fails when the Loader is built,
    naming masking and what is accepted, not with an AttributeError at the first batch."""
    _, cfg = build("per_variable", tmp_path / "s.zarr")
    assert cfg.fields[0].num_tokens[0] == 2
    with pytest.raises(ConfigError, match=named):
        Loader(tmp_path / "s.zarr", cfg, samples_per_epoch=8, workers=1, masking=masking)


@pytest.mark.parametrize("device", ["gpu", "cuda:x", "tpu", "mps", -1, True, 1.0],
                         ids=lambda d: f"device={d!r}")  # (an id 'gpu' would be the gpu mark's keyword: skipped)
def test_a_device_other_than_cpu_or_cuda_is_a_config_error(tmp_path, device):
    """device= names loader.device and what it accepts (torch's own RuntimeError listed every device type)."""
    _, cfg = build("per_variable", tmp_path / "s.zarr")
    with pytest.raises(ConfigError, match=r"loader.device: expected 'cuda', 'cuda:N', a CUDA device index N or "
                       r"'cpu', got"):
        Loader(tmp_path / "s.zarr", cfg, samples_per_epoch=8, device=device)


def test_a_device_index_means_that_cuda_device_as_in_torch(tmp_path, monkeypatch):
    """device=N (DDP code passes its local rank) is cuda:N, as torch.device(N) is; without CUDA it says so."""
    _, cfg = build("per_variable", tmp_path / "s.zarr")
    with pytest.raises(ConfigError, match=r"loader.device = 'cuda:1' but CUDA is not available"):
        monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
        Loader(tmp_path / "s.zarr", cfg, samples_per_epoch=8, device=1)


def test_close_is_idempotent_and_final(tmp_path):
    _, cfg = build("per_variable", tmp_path / "s.zarr")
    loader = Loader(tmp_path / "s.zarr", cfg, samples_per_epoch=40, prefetch=2)
    it = iter(loader)
    next(it)
    assert fastload_threads()
    loader.set_epoch(3)  # stops this iteration
    with pytest.raises(LoaderClosedError, match="stopped"):
        next(it)
    it = iter(loader)
    next(it)
    loader.close()
    loader.close()
    assert fastload_threads() == []
    with pytest.raises(LoaderClosedError):
        iter(loader)


def test_abandoned_iterator_and_loader_are_collected(tmp_path):
    _, cfg = build("per_variable", tmp_path / "s.zarr")
    loader = Loader(tmp_path / "s.zarr", cfg, samples_per_epoch=40)
    next(iter(loader))  # the iterator is dropped at once
    gc.collect()
    assert not [n for n in fastload_threads() if n.startswith("fastload-loader")]
    del loader


def test_a_temporary_loader_in_a_for_loop_reads_every_batch_and_leaves_no_thread(tmp_path):
    truth, cfg = build("per_variable", tmp_path / "s.zarr", nt=20)
    n = 0
    for batch in Loader(tmp_path / "s.zarr", cfg, samples_per_epoch=40, workers=2, prefetch=2, seed=11):
        gc.collect()  # nothing but the iterator keeps the loader: it must stay open
        ref = reference(truth, cfg, batch.boxes.numpy(), periodic=True)
        for f in cfg.field_names:
            np.testing.assert_array_equal(batch[f].numpy(), ref[f])
        n += 1
    assert n == 10
    loader = Loader(tmp_path / "s.zarr", cfg, samples_per_epoch=40, workers=2, seed=11)
    it = iter(loader)
    del loader
    gc.collect()
    assert len(next(it)) == 4
    del it, batch
    gc.collect()  # the abandoned iterator stops its pump, then the loader closes; the fixture checks threads


def test_bad_settings(tmp_path):
    _, cfg = build("per_variable", tmp_path / "s.zarr")
    with pytest.raises(ConfigError, match="unknown setting"):
        Loader(tmp_path / "s.zarr", cfg, batchsize=3)
    with pytest.raises(ConfigError, match="prefetch"):
        Loader(tmp_path / "s.zarr", cfg, prefetch=0)
    if not torch.cuda.is_available():
        with pytest.raises(ConfigError, match="CUDA"):
            Loader(tmp_path / "s.zarr", cfg, device="cuda")
    with pytest.raises(ConfigError, match="normalise"):
        Loader(tmp_path / "s.zarr", build("per_variable", tmp_path / "s.zarr", normalization="global")[1])


def _first_request_hangs(store):
    """Make the first chunk request of all (batch 0's) on ``store`` hang until the test sets ``release``; returns
    ``(entered, release)`` events."""
    orig = store.chunk_bytes
    entered, release, lock, armed = threading.Event(), threading.Event(), threading.Lock(), [True]

    def chunk_bytes(array, chunk):
        with lock:
            hang, armed[0] = armed[0], False
        if hang:
            entered.set()
            release.wait(60)
        return orig(array, chunk)

    store.chunk_bytes = chunk_bytes
    return entered, release


def _short_stop_grace(monkeypatch) -> None:
    """Stop an iteration's reads after 0.2 s instead of the 5 s stop grace (defined in fastload._loader_iter, read
    there at each call by the loader and its epoch iterator)."""
    import fastload._loader_iter as fi

    monkeypatch.setattr(fi, "_STOP_GRACE_S", 0.2)


def test_a_new_iteration_while_a_read_hangs_gets_a_fresh_backend(tmp_path, monkeypatch):
    """Restarting while a store request hangs: no wait for it beyond the stop grace, no error, every batch right;
    the hung read's backend and ring (its cache pins, its slot) are never reused (they are closed at once: the test
    below)."""
    _short_stop_grace(monkeypatch)
    truth, cfg = build("per_variable", tmp_path / "s.zarr")
    store = open_store(tmp_path / "s.zarr")
    entered, release = _first_request_hangs(store)
    loader = Loader(store, cfg, samples_per_epoch=24, workers=2, prefetch=2, seed=7, cache_bytes=40_000)
    try:
        it = iter(loader)
        assert entered.wait(30)
        old_ring = loader._ring
        batches = list(loader)  # stops `it` (its batch 0 read still hangs) and reads the epoch again
        assert loader._ring is not old_ring
        assert [b.index for b in batches] == list(range(6))
        for b in batches:
            ref = reference(truth, cfg, b.boxes.numpy(), periodic=True)
            for f in cfg.field_names:
                np.testing.assert_array_equal(b[f].numpy(), ref[f])
        with pytest.raises(LoaderClosedError, match="stopped"):
            next(it)
    finally:
        _release_and_close(release, loader)  # the hung read returns, its threads end


def test_a_retired_backend_is_closed_at_once_even_if_its_read_never_returns(tmp_path, monkeypatch, caplog):
    """A new iteration while a read hangs retires the old backend and ring; they used to be closed only once the read
    returned, so a request that never answers (no read timeout) kept them, and the closing thread, for ever. Now they
    are closed at once (bounded), and the read still running is named in a warning as a daemon thread left behind."""
    import logging

    _short_stop_grace(monkeypatch)
    truth, cfg = build("per_variable", tmp_path / "s.zarr")
    store = open_store(tmp_path / "s.zarr")
    entered, release = _first_request_hangs(store)
    caplog.set_level(logging.WARNING, logger="fastload")
    loader = Loader(store, cfg, samples_per_epoch=24, workers=2, prefetch=2, seed=7, cache_bytes=40_000,
                    read_timeout_s=None)  # nothing gives the hung read up
    try:
        it = iter(loader)  # noqa: F841 - kept: its read of batch 0 hangs
        assert entered.wait(30)
        old_backend, old_ring = loader._backend, loader._ring
        batches = list(loader)  # retires the old backend (its batch 0 read still hangs), reads the epoch again
        assert [b.index for b in batches] == list(range(6)) and loader._backend is not old_backend
        for b in batches:
            ref = reference(truth, cfg, b.boxes.numpy(), periodic=True)
            for f in cfg.field_names:
                np.testing.assert_array_equal(b[f].numpy(), ref[f])
        closers = [t for t in threading.enumerate() if t.name == "fastload-loader-retire"]
        for t in closers:
            t.join(10)
        assert closers and not any(t.is_alive() for t in closers), "the retired backend waits for the hung read"
        assert old_backend.reader._closed and all(s.raw is None for s in old_ring.slots)  # closed, memory let go
        stuck = [t.name for t in threading.enumerate() if t.name.startswith("fastload-loader-worker") and t.daemon]
        said = " ".join(r.getMessage() for r in caplog.records if r.levelno == logging.WARNING)
        assert stuck and all(name in said for name in stuck) and "daemon" in said, said
    finally:
        _release_and_close(release, loader)


@pytest.mark.parametrize("settings,named", [
    (dict(samples_per_epoch=10, samples_per_window=4, rank=1, world_size=4), "samples_per_window=4"),
    (dict(samples_per_epoch=3, drop_last=True), "drop_last=True"),
    (dict(boxes=np.zeros((0, 3), np.int64)), "explicit plan has 0 samples"),
])
def test_settings_that_leave_no_batch_are_a_config_error(tmp_path, settings, named):
    """Not a silent zero-batch loader (whose empty pass also moved the epoch on by two)."""
    _, cfg = build("per_variable", tmp_path / "s.zarr", nt=20)
    with pytest.raises(ConfigError, match=rf"no batch per epoch.*{named}") as e:
        Loader(tmp_path / "s.zarr", cfg, seed=3, **settings)
    if "boxes" not in settings:
        assert "samples_per_epoch" in str(e.value) and "batch_size=4" in str(e.value)


def test_explicit_plan(tmp_path):
    truth, cfg = build("atmorep", tmp_path / "s.zarr", regional=True)
    rng = np.random.default_rng(0)
    plans = {e: np.stack([rng.integers(0, 7, 8), rng.integers(0, 9, 8), rng.integers(0, 13, 8)], axis=1)
             for e in range(2)}
    with Loader(tmp_path / "s.zarr", cfg, boxes=lambda e: plans[e], batch_size=3, drop_last=False) as loader:
        assert len(loader) == 3
        for epoch in range(2):
            got = list(loader)
            assert [len(b) for b in got] == [3, 3, 2]
            np.testing.assert_array_equal(np.concatenate([b.boxes.numpy() for b in got]), plans[epoch])
            for b in got:
                ref = reference(truth, cfg, b.boxes.numpy(), periodic=False)
                for f in cfg.field_names:
                    np.testing.assert_array_equal(b[f].numpy(), ref[f])
    with pytest.raises(ConfigError, match="boxes"):
        Loader(tmp_path / "s.zarr", cfg, boxes=np.array([[0, 0, 19]]))  # reaches past a regional edge


def test_slow_remote_like_store(tmp_path):
    truth, cfg = build("per_variable", tmp_path / "s.zarr", zarr_format=3, sharded=True)
    store = open_store(tmp_path / "s.zarr", latency_ms=2.0)  # batched requests, as against an object store
    with Loader(store, cfg, samples_per_epoch=8, fetch_concurrency=4) as loader:
        for batch in loader:
            ref = reference(truth, cfg, batch.boxes.numpy(), periodic=True)
            for f in cfg.field_names:
                np.testing.assert_array_equal(batch[f].numpy(), ref[f])


@pytest.mark.gpu
def test_cuda_batches_arrive_on_the_device(tmp_path):
    truth, cfg = build("atmorep", tmp_path / "s.zarr", out_dtype="bfloat16")
    with Loader(tmp_path / "s.zarr", cfg, samples_per_epoch=40, prefetch=1, device="cuda") as loader:
        assert loader._pin
        seen = 0
        for batch in loader:  # more batches than ring slots: slots are reused after their copy's event
            ref = reference(truth, cfg, batch.boxes.numpy(), periodic=True)
            for f in cfg.field_names:
                assert batch[f].is_cuda and batch.meta[f]["lat"].is_cuda
                want = torch.from_numpy(ref[f]).to(torch.bfloat16)
                assert torch.equal(batch[f].cpu().view(torch.int16), want.view(torch.int16))
            seen += 1
        assert seen == len(loader) and loader._ring.reallocations == 0


def test_closing_waits_by_the_stop_grace_set_at_the_time(monkeypatch):
    """The loader reads the stop grace from fastload._loader_iter when it closes (it imported the value once, so
    a grace set later, as tests do, was not seen: close waited 5 s); None still means no limit."""
    from unittest import mock

    import fastload._loader_iter as fi
    from fastload._backend import ThreadBackend
    from fastload.loader import _close_all

    monkeypatch.setattr(fi, "_STOP_GRACE_S", 0.2)
    backend = mock.create_autospec(ThreadBackend, instance=True)
    _close_all([backend])
    backend.close.assert_called_once_with(0.2)
    backend.close.reset_mock()
    _close_all([backend], None)
    backend.close.assert_called_once_with(None)


def test_a_thread_waiting_for_a_batch_gets_loader_closed_when_another_closes_the_loader(tmp_path, monkeypatch):
    """Audit F10: close() from another thread while one waits in next(it) gives the waiter LoaderClosedError (a
    FastloadError), not the pump's internal PumpClosedError; the next call says the same."""
    _short_stop_grace(monkeypatch)
    _, cfg = build("per_variable", tmp_path / "s.zarr")
    store = open_store(tmp_path / "s.zarr")
    entered, release = _first_request_hangs(store)
    loader = Loader(store, cfg, samples_per_epoch=8, workers=1, seed=7)
    caught: list[BaseException] = []
    it = iter(loader)

    def consume():
        try:
            next(it)
        except BaseException as e:  # noqa: BLE001 - the test looks at what it is
            caught.append(e)

    t = threading.Thread(target=consume, daemon=True)
    try:
        t.start()
        assert entered.wait(30)
        loader.close(timeout=1.0)
        t.join(30)
        assert not t.is_alive()
        assert len(caught) == 1 and isinstance(caught[0], LoaderClosedError), repr(caught)
        with pytest.raises(LoaderClosedError):
            next(it)
    finally:
        _release_and_close(release, loader)


def test_a_batch_is_a_mapping_of_its_fields(tmp_path):
    """Audit: ``"t" in batch`` and ``for name in batch`` go over the field names (they called batch[0]: KeyError)."""
    _, cfg = build("per_variable", tmp_path / "s.zarr")
    with Loader(tmp_path / "s.zarr", cfg, samples_per_epoch=4, workers=1, seed=1) as loader:
        b = next(iter(loader))
        assert list(b) == list(cfg.field_names) == list(b.fields)
        assert all(name in b for name in cfg.field_names) and "no such field" not in b


def test_repr_names_the_worker_kind(tmp_path):
    _, cfg = build("per_variable", tmp_path / "s.zarr")
    with Loader(tmp_path / "s.zarr", cfg, samples_per_epoch=4, workers=2, seed=1) as loader:
        assert "workers=2 threads," in repr(loader)
    with Loader(tmp_path / "s.zarr", cfg, samples_per_epoch=4, workers=2, mode="process", seed=1) as loader:
        assert "workers=2 processes," in repr(loader)  # it said "processs"
