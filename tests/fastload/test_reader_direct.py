"""fastload.reader's direct path: uncompressed chunks of a local store read straight into their cache slots
(``LocalSource.read_into``, ``_codecs.stored_as_is``), checked against the NumPy reference; missing chunks,
files of the wrong size and read errors take the ordinary path (fill value, ChunkReadError naming the chunk)."""

from __future__ import annotations

import os
import time

import numpy as np
import pytest
import zarr

from fastload.errors import ChunkReadError
from fastload.loader import Loader
from fastload.store import LocalSource, _source, open_store
from fastload.store._codecs import stored_as_is
from tests.fastload.loader_ref import build, reference

pytestmark = pytest.mark.usefixtures("nothing_left")


def _batches(store, cfg, **settings):
    with Loader(store, cfg, samples_per_epoch=24, workers=2, prefetch=2, cache_bytes=40_000, seed=3,
                **settings) as loader:
        got = [(b.boxes.numpy().copy(), {f: b[f].numpy().copy() for f in cfg.field_names}) for b in loader]
        return got, loader._backend.reader, loader.stats  # noqa: SLF001 - which arrays took the direct path


@pytest.mark.parametrize("fmt", [2, 3])
def test_uncompressed_chunks_read_into_slots_equal_the_reference(tmp_path, fmt):
    # make_per_variable leaves q's first time chunk unwritten: it must read as the fill value (NaN)
    truth, cfg = build("per_variable", tmp_path / "s.zarr", zarr_format=fmt, codec="none")
    store = open_store(tmp_path / "s.zarr")
    decoded, plain = [], store.decode

    def spy(array, raw, chunk, out=None):
        decoded.append((array, tuple(chunk), raw is None))
        return plain(array, raw, chunk, out)

    store.decode = spy
    got, reader, stats = _batches(store, cfg)
    assert set(reader._direct) == {"t", "q", "sp", "orog"}  # noqa: SLF001
    assert stats.misses > len(decoded) > 0 and stats.bytes_stored > 0
    assert all(a == "q" and c[0] == 0 and missing for a, c, missing in decoded)  # only the missing chunk decodes
    for boxes, fields in got:
        want = reference(truth, cfg, boxes, periodic=True)
        for f in cfg.field_names:
            np.testing.assert_array_equal(fields[f], want[f])
    assert any(np.isnan(fields["q"]).any() for _, fields in got)  # the missing chunk was read


def test_compressed_and_wrapped_sources_take_the_ordinary_path(tmp_path):
    build("per_variable", tmp_path / "c.zarr", zarr_format=2, codec="blosc-lz4")
    assert not any(stored_as_is(info) for info in open_store(tmp_path / "c.zarr").arrays.values())
    _, cfg = build("per_variable", tmp_path / "s.zarr", zarr_format=3, codec="none", sharded=True)
    assert not any(stored_as_is(info) for info in open_store(tmp_path / "s.zarr").arrays.values())
    _, cfg = build("per_variable", tmp_path / "u.zarr", zarr_format=2, codec="none")
    store = open_store(tmp_path / "u.zarr", latency_ms=0.1)  # a LatencySource around the files
    _, reader, stats = _batches(store, cfg)
    assert reader._direct == {} and stats.decode_s > 0  # noqa: SLF001


def test_stored_as_is_needs_native_c_order_bytes(tmp_path):
    root = zarr.open_group(os.fspath(tmp_path / "g.zarr"), mode="w", zarr_format=2)
    data = np.arange(24, dtype=np.float32).reshape(4, 6)
    for name, kw in {"c": {}, "f": {"order": "F"}, "big": {"dtype": ">f4"}}.items():
        a = root.create_array(name, shape=data.shape, chunks=(2, 3), dtype=kw.pop("dtype", "<f4"),
                              compressors=None, **kw)
        a[...] = data
    from fastload.store._meta import load_metadata

    arrays = load_metadata(LocalSource(tmp_path / "g.zarr")).arrays
    assert stored_as_is(arrays["c"]) and not stored_as_is(arrays["f"]) and not stored_as_is(arrays["big"])


@pytest.mark.parametrize("preadv", [True, False])
def test_read_into_fills_the_buffer_only_when_the_sizes_agree(tmp_path, monkeypatch, preadv):
    monkeypatch.setattr(_source, "_PREADV", preadv)  # False: the file-object path of systems without preadv
    (tmp_path / "k").write_bytes(bytes(range(16)))
    (tmp_path / "d").mkdir()
    src = LocalSource(tmp_path)
    out = np.zeros(16, np.uint8)
    assert src.read_into("k", out) == 16 and out.tolist() == list(range(16))
    small = np.full(8, 7, np.uint8)
    assert src.read_into("k", small) == 16 and (small == 7).all()  # another size: untouched, size reported
    assert src.read_into("missing", out) is None and src.read_into("d", out) is None
    f32 = np.zeros(4, np.float32)  # any dtype: the bytes land as they are stored
    assert src.read_into("k", f32) == 16 and f32.tobytes() == bytes(range(16))


def test_chunk_files_of_the_wrong_size_raise_naming_the_chunk(tmp_path):
    _, cfg = build("per_variable", tmp_path / "s.zarr", zarr_format=2, codec="none")
    folder = tmp_path / "s.zarr" / "t"
    for name in os.listdir(folder):  # every chunk of t a few bytes short
        if not name.startswith("."):
            with open(folder / name, "r+b") as fh:
                fh.truncate(os.path.getsize(folder / name) - 4)
    store = open_store(tmp_path / "s.zarr")
    with pytest.raises(ChunkReadError, match=r"array 't', chunk \(\d+, \d+, \d+, \d+\) \(.*\): stored \d+ "
                                             r"bytes uncompressed, expected \d+"):
        _batches(store, cfg)
    got, _, stats = _batches(store, cfg, on_bad_chunk="skip")
    assert stats.skipped == 24 and stats.samples == 0


def test_a_read_error_on_the_direct_path_is_retried_the_ordinary_way(tmp_path):
    truth, cfg = build("per_variable", tmp_path / "s.zarr", zarr_format=2, codec="none")
    store = open_store(tmp_path / "s.zarr")
    calls = []
    plain = store.source.read_into

    def flaky(key, out):  # every direct read of one array fails: the ordinary read takes over
        calls.append(key)
        if key.startswith("t/"):
            raise ConnectionError(f"injected failure of {key}")
        return plain(key, out)

    store.source.read_into = flaky
    got, _, stats = _batches(store, cfg)
    assert any(k.startswith("t/") for k in calls) and stats.retries == 0
    for boxes, fields in got:
        want = reference(truth, cfg, boxes, periodic=True)
        for f in cfg.field_names:
            np.testing.assert_array_equal(fields[f], want[f])


def test_a_wrapper_on_the_store_instance_sees_every_read(tmp_path):
    """A ``chunk_bytes`` replaced on the Store instance (counting, checksums, fault injection) turns the direct
    path off: every miss goes through the wrapper, on an uncompressed local store too."""
    from fastload.loader import Loader
    from fastload.store import open_store
    from tests.fastload.loader_ref import build

    _, cfg = build("per_variable", tmp_path / "s.zarr", codec="none")
    store = open_store(tmp_path / "s.zarr")
    reads: dict = {}
    real = store.chunk_bytes

    def counting(array, chunk):
        reads[(array, tuple(chunk))] = reads.get((array, tuple(chunk)), 0) + 1
        return real(array, chunk)

    store.chunk_bytes = counting
    with Loader(store, cfg, samples_per_epoch=40, cache_bytes=64 * 2**20) as loader:
        stats = [b.stats for b in loader]
    misses = sum(s.misses for s in stats)
    assert misses > 0
    assert sum(reads.values()) == misses


def test_a_hung_direct_read_is_given_up_and_its_slot_stays_out_of_use_until_it_returns(tmp_path, caplog):
    """A direct read that hangs (a stuck NFS mount) is given up after loader.read_timeout_s like any store request
    (the step waited for ever: the read into the slot was never timed). Its slot stays pinned until the read
    returns, so the late bytes land in no chunk's slot: the batches read meanwhile (the rest of the epoch, through
    the ordinary path, and the next epoch, whose plan starts while the read still hangs) and the epoch after it
    equal the reference, and every chunk left in the cache equals its file."""
    import logging
    import threading

    truth, cfg = build("per_variable", tmp_path / "s.zarr", zarr_format=2, codec="none")
    store = open_store(tmp_path / "s.zarr")
    plain = store.source.read_into
    release, entered, lock = threading.Event(), threading.Event(), threading.Lock()
    hung: list = []  # the slot buffer of the one read that hangs

    def hanging(key, out):
        with lock:
            first = not hung and key.startswith("t/")
            if first:
                hung.append(out)
        if not first:
            return plain(key, out)
        entered.set()
        release.wait(30)
        view = np.asarray(out).view(np.uint8)
        view[:] = 0x7F  # the late read lands in its slot, whole
        return view.nbytes

    store.source.read_into = hanging
    caplog.set_level(logging.WARNING, logger="fastload")
    loader = Loader(store, cfg, samples_per_epoch=24, workers=2, prefetch=2, cache_bytes=40_000, seed=3,
                    retries=0, read_timeout_s=1.5, on_bad_chunk="skip")  # (healthy reads: room on a loaded box)

    def epoch(e: int) -> list:
        loader.set_epoch(e)
        return [(b.boxes.numpy().copy(), {f: b[f].numpy().copy() for f in cfg.field_names}) for b in loader]

    def check(got) -> None:
        for boxes, fields in got:
            want = reference(truth, cfg, boxes, periodic=True)
            for f in cfg.field_names:
                np.testing.assert_array_equal(fields[f], want[f])

    try:
        got: dict = {}
        def first() -> None:
            try:
                got["first"] = epoch(0)
            except BaseException as e:  # noqa: BLE001 - looked at below
                got["error"] = e

        runner = threading.Thread(target=first, daemon=True)
        runner.start()
        runner.join(20)
        assert entered.is_set()
        assert not runner.is_alive(), "the epoch still waits for a direct read that never returns"
        assert "first" in got, got
        assert sum(len(b) for b, _ in got["first"]) < 24  # the hung chunk's samples were skipped ...
        assert any("timed out" in r.getMessage() for r in caplog.records)  # ... as timed out
        check(got["first"])
        reader, cache = loader._backend.reader, loader._backend.cache  # noqa: SLF001
        arena = cache.arena("t")
        slot = (np.asarray(hung[0]).ctypes.data - arena.ctypes.data) // arena.strides[0]
        assert cache._arenas["t"].pins[slot] == 1 and reader._direct_holds  # noqa: SLF001 - kept out of use
        during = epoch(1)  # a new plan while the read still hangs (its set-aside pin no longer stops the reset)
        assert sum(len(b) for b, _ in during) == 24  # the chunk is fetched again, the ordinary way
        check(during)
        assert cache._arenas["t"].pins[slot] == 1 and reader._direct_holds  # noqa: SLF001 - still out of use
        release.set()  # the late read writes into its slot, then lets it go
        deadline = time.monotonic() + 10
        while reader._direct_holds:  # noqa: SLF001
            assert time.monotonic() < deadline
            time.sleep(0.01)
        assert cache._arenas["t"].pins[slot] == 0  # noqa: SLF001
        again = epoch(2)
        assert sum(len(b) for b, _ in again) == 24 and not reader._direct_holds  # noqa: SLF001
        check(again)
        for a, cid in cache.resident():  # no slot holds the late bytes instead of its chunk
            s = int(cache._arenas[a].lookup(np.array([cid]))[0])  # noqa: SLF001
            chunk = tuple(int(i) for i in np.unravel_index(cid, store.arrays[a].grid_shape))
            path = os.path.join(tmp_path / "s.zarr", *store.arrays[a].key(chunk).split("/"))
            if os.path.exists(path):  # (q's missing chunk holds the fill value)
                with open(path, "rb") as fh:
                    assert cache.arena(a)[s].tobytes() == fh.read(), (a, chunk)
    finally:
        _release_and_close(release, loader)


def _hang_reads(store, hang):
    """Make ``store``'s direct reads of keys ``hang(key, n)`` says (n: reads of the array so far, counting this one)
    wait until the returned event is set (a hung NFS mount), then read the file. Returns (release, hung keys)."""
    import threading

    plain = store.source.read_into
    release, lock, hung, counts = threading.Event(), threading.Lock(), [], {}

    def read_into(key, out):
        with lock:
            a = key.split("/")[0]
            counts[a] = counts.get(a, 0) + 1
            stuck = hang(key, counts[a], hung)
            if stuck:
                hung.append(key)
        if stuck:
            release.wait(60)
        return plain(key, out)

    store.source.read_into = read_into
    return release, hung


def _in_thread(fn, seconds: float = 30.0) -> dict:
    """Run ``fn()`` on a thread for at most ``seconds``: ``{"result": ...}``, ``{"error": ...}`` or ``{}`` (still
    running: it waits for ever)."""
    import threading

    got: dict = {}

    def run() -> None:
        try:
            got["result"] = fn()
        except BaseException as e:  # noqa: BLE001 - looked at by the caller
            got["error"] = e

    t = threading.Thread(target=run, daemon=True)
    t.start()
    t.join(seconds)
    return got


def _release_and_close(release, loader) -> None:
    import threading

    release.set()
    loader.close()
    for t in threading.enumerate():
        if t.name.startswith("fastload"):
            t.join(30)


@pytest.mark.parametrize("on_bad_chunk", ["skip", "raise"])
def test_a_step_that_needs_the_slot_of_a_hung_direct_read_fails_after_the_read_timeout(tmp_path, caplog,
                                                                                         on_bad_chunk):
    """A cache sized for one step (workers=1, cache_bytes=1: what process mode always has) cannot reserve a step
    that needs every slot of an array while the slot of a given-up direct read stays set aside: the step waited
    for ever in ChunkCache.reserve, read_timeout_s notwithstanding. Now it waits for the set-aside slot at most
    read_timeout_s; then with on_bad_chunk='skip' its samples are dropped with a warning (the epoch ends, the
    batches equal the reference), and with 'raise' a ChunkTimeoutError names the hung read and the setting
    (here: the next epoch, started after the first raised the hung chunk's own timeout)."""
    import logging

    from fastload.errors import ChunkTimeoutError

    truth, cfg = build("per_variable", tmp_path / "s.zarr", zarr_format=2, codec="none")
    store = open_store(tmp_path / "s.zarr")
    release, hung = _hang_reads(store, lambda key, n, hung: key.startswith("t/") and not hung)
    caplog.set_level(logging.WARNING, logger="fastload")
    loader = Loader(store, cfg, samples_per_epoch=48, workers=1, prefetch=1, cache_bytes=1, seed=3, retries=0,
                    read_timeout_s=2.0, on_bad_chunk=on_bad_chunk)  # (healthy reads: room on a loaded box)

    def epoch(e: int) -> list:
        loader.set_epoch(e)
        return [(b.boxes.numpy().copy(), {f: b[f].numpy().copy() for f in cfg.field_names}) for b in loader]

    try:
        if on_bad_chunk == "skip":
            got = _in_thread(lambda: epoch(0))
            assert got, "the epoch waits for ever for the slot of a hung read"
            assert "result" in got, got
            assert hung and loader._backend.reader._direct_holds  # noqa: SLF001 - it still hangs
            backend = loader._backend  # noqa: SLF001
            assert backend.cache.n_slots("t") == backend.capacity["t"]  # a step may need every slot
            msgs = [r.getMessage() for r in caplog.records]
            dropped = [m for m in msgs if "cannot be given cache slots" in m]
            assert dropped and hung[0] in dropped[0] and "loader.read_timeout_s = 2" in dropped[0], msgs
            assert sum(len(b) for b, _ in got["result"]) < 48
            for boxes, fields in got["result"]:
                want = reference(truth, cfg, boxes, periodic=True)
                for f in cfg.field_names:
                    np.testing.assert_array_equal(fields[f], want[f])
        else:
            first = _in_thread(lambda: epoch(0))
            assert isinstance(first.get("error"), ChunkTimeoutError), first  # the hung chunk's own timeout
            assert hung and store.arrays["t"].key(first["error"].chunk) == hung[0]
            again = _in_thread(lambda: [epoch(e) for e in (1, 2)])
            assert again, "a later epoch waits for ever for the slot of a hung read"
            e = again.get("error")
            assert isinstance(e, ChunkTimeoutError), again
            assert "set aside" in str(e) and hung[0] in str(e) and "loader.read_timeout_s = 2" in str(e), str(e)
            assert store.arrays["t"].key(e.chunk) == hung[0]
    finally:
        _release_and_close(release, loader)


def test_once_a_direct_read_is_given_up_no_further_direct_read_starts(tmp_path):
    """A mount that stops answering: after the 6th direct read of array t every read of it hangs. Once the first
    hung read is given up, the reader takes the ordinary path (which reads into buffers of its own) at once, not
    only after the step released its slots: with one I/O thread, one slot stays pinned by a hung read, not one
    per replacement thread and later task (3 before)."""
    import threading

    _, cfg = build("per_variable", tmp_path / "s.zarr", zarr_format=2, codec="none")
    store = open_store(tmp_path / "s.zarr")
    dead = threading.Event()

    def hang(key, n, hung):
        if key.startswith("t/") and n >= 6:
            dead.set()
        return dead.is_set() and key.startswith("t/")

    release, hung = _hang_reads(store, hang)
    plain_get = store.source.get

    def get(key):  # the ordinary path's reads of t hang too (they hold no slot)
        if key.startswith("t/") and dead.is_set():
            release.wait(60)
        return plain_get(key)

    store.source.get = get
    loader = Loader(store, cfg, samples_per_epoch=48, workers=2, prefetch=2, cache_bytes=40_000, seed=3,
                    fetch_concurrency=1, retries=0, read_timeout_s=1.5, on_bad_chunk="skip")
    try:
        got = _in_thread(lambda: sum(len(b) for b in loader))
        assert got, "the epoch still waits"
        reader, cache = loader._backend.reader, loader._backend.cache  # noqa: SLF001
        assert len(hung) == 1, hung
        # slots set aside for hung direct reads (steps' own pins may still be held while the stuck ordinary reads
        # time out on a slow machine: those are released with their steps, not counted here)
        assert len(cache._orphans) == 1 and len(reader._direct_holds) == 1  # noqa: SLF001
    finally:
        _release_and_close(release, loader)


@pytest.mark.parametrize("path", ["direct", "ordinary"])
def test_the_timeout_error_names_the_chunk_whose_request_hung(tmp_path, monkeypatch, path):
    """A task of several chunks whose third read hangs: the error raised names that chunk ('no answer to the
    request for <its file>'), not the task's first chunk; the task's other chunks say they were not read because
    of it."""
    import threading

    from fastload.errors import ChunkTimeoutError
    from fastload.reader import ChunkReader

    _, cfg = build("per_variable", tmp_path / "s.zarr", zarr_format=2, codec="none" if path == "direct" else "zstd")
    store = open_store(tmp_path / "s.zarr")
    if path == "direct":
        release, hung = _hang_reads(store, lambda key, n, hung: key.startswith("t/") and n == 3)
    else:
        release, lock, hung, seen = threading.Event(), threading.Lock(), [], []
        plain = store.chunk_bytes

        def chunk_bytes(array, c):
            with lock:
                seen.append(array)
                me = array == "t" and seen.count("t") == 3
                if me:
                    hung.append(store.arrays[array].key(c))
            if me:
                release.wait(60)
            return plain(array, c)

        store.chunk_bytes = chunk_bytes
    loader = Loader(store, cfg, samples_per_epoch=8, workers=1, prefetch=1, seed=3, retries=0, read_timeout_s=2.0)
    given_up: list = []
    plain_given_up = ChunkReader._given_up  # noqa: SLF001

    def record(self, *args, **kwargs):
        d = plain_given_up(self, *args, **kwargs)
        given_up.append(d.errors)
        return d

    monkeypatch.setattr(ChunkReader, "_given_up", record)
    try:
        got = _in_thread(lambda: next(iter(loader)))
        e = got.get("error")
        assert isinstance(e, ChunkTimeoutError), got
        assert hung and store.arrays["t"].key(e.chunk) == hung[0], (e, hung)
        assert "no answer to the request for" in str(e) and hung[0] in str(e), str(e)
        errs = [x for d in given_up for x in d.values()]
        assert len(errs) > 1 and sum(x.chunk == e.chunk for x in errs) == 1
        for x in errs:
            if x.chunk != e.chunk:
                assert f"not read: the task was given up while chunk {e.chunk} hung" in str(x), str(x)
    finally:
        _release_and_close(release, loader)
