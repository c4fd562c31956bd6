"""fastload.Loader in process mode: same batches as the reference, shared memory and processes cleaned up, worker
errors and worker death reach the consumer."""

from __future__ import annotations

import gc
import json
import os
import pickle
import signal
import subprocess
import sys
import textwrap

import numpy as np
import pytest

from fastload.config import FieldConfig, SamplingConfig
from fastload.errors import ChunkReadError, ConfigError, FastloadError, StoreNotFoundError
from fastload.loader import Loader
from fastload.norm import Normalizer
from fastload.stats import compute_stats
from tests.fastload.loader_ref import BOX_TOKENS, build, reference
from tests.fastload.stores import make_per_variable

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def _segments() -> list[str]:
    from fastload._procs import SHM_DIR

    return [n for n in os.listdir(SHM_DIR) if n.startswith(f"fastload-{os.getpid()}-")]


pytestmark = pytest.mark.usefixtures("nothing_left")


@pytest.fixture(autouse=True)
def no_segments_left():
    yield
    gc.collect()
    assert _segments() == []


def test_process_mode_matches_reference_and_cleans_up(tmp_path):
    truth, cfg = build("atmorep", tmp_path / "s.zarr", zarr_format=3, sharded=True, out_dtype="float32")
    kept = []
    with Loader(tmp_path / "s.zarr", cfg, samples_per_epoch=24, workers=2, prefetch=2, mode="process",
                cache_bytes=50_000, seed=4) as loader:
        for epoch in range(2):
            batches = list(loader)
            assert [b.index for b in batches] == list(range(6))
            boxes = np.concatenate([b.boxes.numpy() for b in batches])
            np.testing.assert_array_equal(boxes, loader.epoch_boxes(epoch))
            kept += batches
        assert loader.state_dict()["epoch"] == 2
        it = iter(loader)
        next(it)  # abandon an epoch with reads in flight, then go back to epoch 0
        loader.set_epoch(0)
        again = next(iter(loader))
        for f in cfg.field_names:
            assert np.array_equal(again[f].numpy(), kept[0][f].numpy(), equal_nan=True)
        stats = loader.stats
    assert stats.samples == 56 and stats.hits + stats.misses == stats.chunks
    for b in kept:  # still valid after close: buffers live while referenced
        ref = reference(truth, cfg, b.boxes.numpy(), periodic=True)
        for f in cfg.field_names:
            np.testing.assert_array_equal(b[f].numpy(), ref[f])


def _mapped_segments(pid: int) -> set[str]:
    """Names of this loader's shared-memory buffers that process ``pid`` has mapped (Linux /proc)."""
    with open(f"/proc/{pid}/maps") as fh:
        return {w.rsplit("/", 1)[-1] for line in fh for w in line.split() if f"fastload-{os.getpid()}-" in w}


@pytest.mark.skipif(not os.path.exists("/proc/self/maps"), reason="needs /proc")
def test_kept_batches_do_not_pile_up_buffers_or_names(tmp_path):
    """Each epoch's batches are all kept (so the ring replaces every buffer) and then dropped: the loader and the
    workers hold only the ring's buffers (and those not yet told to let go), and no buffer ever has a name in
    SHM_DIR while the loader runs, so even a SIGKILL of the loader leaves nothing there."""
    truth, cfg = build("per_variable", tmp_path / "s.zarr", nt=20)
    with Loader(tmp_path / "s.zarr", cfg, samples_per_epoch=80, workers=2, prefetch=2, seed=7,
                mode="process") as loader:
        n_slots = loader.loader_config.prefetch + 2
        for _ in range(3):
            kept = []
            for b in loader:
                kept.append(b)
                assert _segments() == []
            for b in kept:
                ref = reference(truth, cfg, b.boxes.numpy(), periodic=True)
                for f in cfg.field_names:
                    np.testing.assert_array_equal(b[f].numpy(), ref[f])
            del kept, b
            gc.collect()
            assert loader._ring.reallocations > 0
            assert len(loader._backend._segments) == n_slots
            for w in loader._backend._workers:  # the ring's buffers, and at most one round of replaced ones
                assert len(_mapped_segments(w.process.pid)) <= 2 * n_slots


def _open_fds() -> int:
    return len(os.listdir("/proc/self/fd"))


@pytest.mark.skipif(not os.path.exists("/proc/self/fd"), reason="needs /proc")
def test_kept_batches_hold_no_file_descriptors(tmp_path):
    """A consumer that keeps every batch (a validation set held in memory) makes the ring replace its buffers again
    and again; the kept buffers stay valid but hold no descriptor (mmap.mmap's duplicate used to keep one open per
    buffer, and about a thousand kept batches hit ulimit -n)."""
    truth, cfg = build("per_variable", tmp_path / "s.zarr", nt=20)
    with Loader(tmp_path / "s.zarr", cfg, samples_per_epoch=80, workers=2, prefetch=2, seed=7,
                mode="process") as loader:
        kept = list(loader)  # starts the workers and maps the ring's buffers
        before = _open_fds()
        replaced = loader._ring.reallocations
        for _ in range(3):
            kept += list(loader)
        assert loader._ring.reallocations - replaced >= 3 * len(kept) // 4 - 4  # most kept batches were replaced
        assert _open_fds() - before <= 2
        for b in kept[-5:]:
            ref = reference(truth, cfg, b.boxes.numpy(), periodic=True)
            for f in cfg.field_names:
                np.testing.assert_array_equal(b[f].numpy(), ref[f])
    del kept, b
    gc.collect()


def test_map_shared_unmaps_after_the_last_view(tmp_path):
    from fastload._procs import map_shared

    fd = os.open(tmp_path / "buf", os.O_RDWR | os.O_CREAT, 0o600)
    os.ftruncate(fd, 1 << 16)
    a = map_shared(fd, 1 << 16)
    os.close(fd)
    view = a[100:108]
    view[:] = 5
    with open(tmp_path / "buf", "rb") as fh:  # shared: written through to the file
        assert fh.read()[100:108] == bytes([5] * 8)
    if os.path.exists("/proc/self/maps"):
        def mapped() -> int:
            with open("/proc/self/maps") as fh:
                return sum(str(tmp_path / "buf") in line for line in fh)

        del a
        gc.collect()
        assert mapped() == 1  # the view keeps the mapping
        del view
        gc.collect()
        assert mapped() == 0
    with pytest.raises(ValueError, match="positive size"):
        map_shared(0, 0)
    fd = os.open(tmp_path / "short", os.O_RDWR | os.O_CREAT, 0o600)
    try:
        os.ftruncate(fd, 100)
        with pytest.raises(ValueError, match="holds 100 bytes, expected at least 4096"):
            map_shared(fd, 4096)
    finally:
        os.close(fd)


def test_replaced_pinned_buffers_are_unpinned_when_the_consumer_lets_go(tmp_path, monkeypatch):
    """With pinning (CUDA host registration, faked here as CUDA behaves: a range that overlaps a registered one is
    refused), a buffer the ring replaces stays registered while the consumer's batch views it and is unregistered
    when the last view goes, so registrations stay at the ring's size and a reused address registers again."""
    import fastload._procs as procs
    import fastload._shm as shm

    reg: dict[int, int] = {}

    def register(seg):
        ptr = seg.array.ctypes.data
        if any(p < ptr + seg.nbytes and ptr < p + n for p, n in reg.items()):
            raise RuntimeError("cudaHostRegister of a shared-memory batch buffer failed (712)")
        reg[ptr] = seg.nbytes
        seg.registered = True

    monkeypatch.setattr(procs, "_register", register)
    monkeypatch.setattr(shm, "_unregister_ptr", lambda ptr: reg.pop(ptr))
    truth, cfg = build("per_variable", tmp_path / "s.zarr", nt=20)
    with Loader(tmp_path / "s.zarr", cfg, samples_per_epoch=80, workers=2, prefetch=2, seed=7,
                mode="process") as loader:
        loader._spec.pin = True
        n_slots = loader.loader_config.prefetch + 2
        for _ in range(3):
            kept = list(loader)
            assert len(reg) > n_slots  # the replaced buffers the kept batches view are still pinned
            b = kept[-1]
            ref = reference(truth, cfg, b.boxes.numpy(), periodic=True)
            np.testing.assert_array_equal(b[cfg.field_names[0]].numpy(), ref[cfg.field_names[0]])
            del kept, b
            gc.collect()
            assert loader._ring.reallocations > 0
            assert len(reg) == n_slots
    assert reg == {}


PIPE_BUFFER = 1 << 16  # Linux's pipe buffer: a spawn payload larger than this blocked for ever on a dead worker


@pytest.fixture(scope="module")
def big_spec_store(tmp_path_factory):
    """A store with local normalisation on a 64 x 128 grid: the coefficients make a worker's spec (~200 KB) larger
    than a pipe's buffer. Returns (dir, truth, config)."""
    d = tmp_path_factory.mktemp("bigspec")
    truth = make_per_variable(d / "s.zarr", zarr_format=3, nt=6, levels=(500.0, 850.0, 1000.0), ny=64, nx=128,
                              chunks=(2, 1, 32, 64), missing_chunk=False)
    compute_stats(str(d / "s.zarr"), d / "n.zarr")
    fields = (FieldConfig(name="t", levels=(1000.0, 500.0), normalization="local", **BOX_TOKENS),
              FieldConfig(name="sp", normalization="local", **BOX_TOKENS),
              FieldConfig(name="q", levels=(850.0,), normalization="none", **BOX_TOKENS))
    return d, truth, SamplingConfig(fields=fields, batch_size=2, norm_path=str(d / "n.zarr"))


def _spec_bytes(loader) -> int:
    loader._ensure_backend()
    loader._epoch_coefficients(loader.epoch_boxes(0))  # what the first iteration sends its workers
    return len(pickle.dumps(loader._backend._child_spec))


def test_a_script_without_a_main_guard_fails_at_once_naming_the_guard(tmp_path, big_spec_store):
    """Spawned workers import the main script first; one that builds and iterates a process-mode Loader at import
    time makes them die before they run fastload's code. The script fails within the time limit (it hung for ever
    when the worker's spec, here larger than a pipe's buffer, went in the spawn payload: the parent blocked writing
    it to a worker that had died) with a WorkerError naming the missing guard, and each worker's own traceback says
    the same (a ConfigError raised where it tried to start workers of its own)."""
    d, _, cfg = big_spec_store
    with Loader(d / "s.zarr", cfg, workers=2, mode="process", samples_per_epoch=4) as loader:
        assert _spec_bytes(loader) > 2 * PIPE_BUFFER  # (what made the old start block)
    script = tmp_path / "train.py"
    script.write_text(textwrap.dedent(f"""
        import json
        from fastload.config import SamplingConfig
        from fastload.loader import Loader
        cfg = SamplingConfig.from_dict(json.loads({json.dumps(cfg.to_dict())!r}))
        loader = Loader({str(d / "s.zarr")!r}, cfg, workers=2, mode="process", samples_per_epoch=4)
        next(iter(loader))
    """))
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([REPO, os.environ.get("PYTHONPATH", "")]))
    try:  # a hang is a failure, not a stuck test run
        proc = subprocess.run([sys.executable, str(script)], capture_output=True, text=True, timeout=240, env=env)
    except subprocess.TimeoutExpired as e:
        pytest.fail(f"the script without a main guard still ran after {e.timeout} s (it hangs)")
    assert proc.returncode != 0
    last = proc.stderr.strip().splitlines()[-1]  # the parent's error, the last thing it printed
    assert last.startswith("fastload.errors.WorkerError: loader worker process"), proc.stderr[-3000:]
    assert "if __name__ == '__main__':" in last and str(script) in last
    assert "ConfigError: loader.mode = 'process': this process is a spawned worker" in proc.stderr


def _fail_in_worker(how: str) -> None:
    """Unpickled in a worker with its spec: fails there, as ``how`` says."""
    if how == "raise":
        raise ValueError("cannot rebuild this part of the spec")
    os._exit(3)


class _Poison:
    def __init__(self, how: str):
        self.how = how

    def __reduce__(self):
        return (_fail_in_worker, (self.how,))


def test_a_big_spec_starts_the_workers(big_spec_store):
    """Workers whose spec (normalisation coefficients of a 64 x 128 grid) is larger than a pipe's buffer start and
    read batches equal to the NumPy reference with those coefficients."""
    d, truth, cfg = big_spec_store
    with Loader(d / "s.zarr", cfg, workers=2, prefetch=2, mode="process", samples_per_epoch=8, seed=2) as loader:
        assert _spec_bytes(loader) > 2 * PIPE_BUFFER
        batches = list(loader)
        months = np.asarray(loader.coefficient_months).tolist()
    assert len(batches) == 4
    norm = Normalizer(cfg.norm_path)
    coeffs = {f.name: norm.coefficients(f.name, f.normalization, f.levels, months)
              for f in cfg.fields if f.normalization != "none"}
    for b in batches:
        ref = reference(truth, cfg, b.boxes.numpy(), periodic=True, coefficients=coeffs, months=months)
        for f in cfg.field_names:
            np.testing.assert_array_equal(b[f].numpy(), ref[f])


def test_a_worker_that_fails_or_dies_unpickling_its_spec_is_reported(tmp_path):
    """A spec the worker cannot unpickle: its own error reaches the consumer (with a note naming the worker); a
    worker that dies while unpickling it is a WorkerError with its exit code that does not blame a main guard
    (both used to look like a missing guard: the spec was unpickled before any fastload code ran). The next
    iteration starts new workers, which read correct batches."""
    from fastload.errors import WorkerError

    truth, cfg = build("per_variable", tmp_path / "s.zarr", nt=20)
    with Loader(tmp_path / "s.zarr", cfg, workers=2, mode="process", samples_per_epoch=8, seed=1) as loader:
        loader._ensure_backend()
        spec = loader._backend._child_spec
        spec["poison"] = _Poison("raise")
        with pytest.raises(ValueError, match="cannot rebuild this part of the spec") as e:
            iter(loader)
        assert "loader worker process" in "".join(getattr(e.value, "__notes__", []))
        spec["poison"] = _Poison("exit")
        with pytest.raises(WorkerError, match="exited unexpectedly with code 3") as e:
            iter(loader)
        assert "__main__" not in str(e.value)
        del spec["poison"]
        _check(truth, cfg, list(loader))


def test_process_worker_errors_reach_the_consumer(tmp_path):
    _, cfg = build("per_variable", tmp_path / "s.zarr", zarr_format=2)
    loader = Loader(tmp_path / "s.zarr", cfg, samples_per_epoch=40, workers=2, mode="process", seed=7)
    boxes = loader.epoch_boxes(0)
    t0, y0, x0 = boxes[0].tolist()
    chunk = (t0 // 2, 2, y0 // 4, x0 // 6)  # field t, level index 2 (1000 hPa), first sample's first chunk
    path = os.path.join(tmp_path / "s.zarr", *loader.store.arrays["t"].key(chunk).split("/"))
    with open(path, "rb") as fh:
        raw = fh.read()
    with open(path, "wb") as fh:
        fh.write(raw[:10])
    with pytest.raises(ChunkReadError) as e:
        next(iter(loader))
    assert e.value.array == "t" and e.value.chunk == chunk
    with open(path, "wb") as fh:
        fh.write(raw)
    it = iter(loader)
    next(it)
    victim = loader._backend._workers[1].process
    os.kill(victim.pid, signal.SIGKILL)
    with pytest.raises(RuntimeError, match="exited"):
        for _ in it:
            pass
    loader.close()


def _check(truth, cfg, batches) -> None:
    for b in batches:
        ref = reference(truth, cfg, b.boxes.numpy(), periodic=True)
        for f in cfg.field_names:
            np.testing.assert_array_equal(b[f].numpy(), ref[f])


def test_a_dead_worker_is_a_fastload_error_and_the_next_iteration_replaces_it(tmp_path):
    truth, cfg = build("per_variable", tmp_path / "s.zarr", nt=20)
    with Loader(tmp_path / "s.zarr", cfg, samples_per_epoch=40, workers=2, prefetch=2, mode="process",
                seed=7) as loader:
        it = iter(loader)
        _check(truth, cfg, [next(it)])
        victim = loader._backend._workers[1].process
        os.kill(victim.pid, signal.SIGKILL)
        victim.join(10)
        with pytest.raises(FastloadError, match=rf"worker process 1 \(pid {victim.pid}\) exited unexpectedly with "
                                                r"code -9"):
            for _ in it:
                pass
        rest = list(loader)  # the rest of the epoch, with a new worker 1
        assert rest and loader._backend._workers[1].process.pid != victim.pid
        _check(truth, cfg, rest)
        assert [b.index for b in rest] == list(range(rest[0].index, len(loader)))


def test_a_workers_start_and_epoch_errors_reach_the_consumer(tmp_path):
    truth, cfg = build("per_variable", tmp_path / "s.zarr", nt=20)
    with Loader(tmp_path / "s.zarr", cfg, samples_per_epoch=8, workers=2, mode="process", seed=1) as loader:
        good = loader.epoch_boxes(0)
        loader.epoch_boxes = lambda epoch: np.full_like(good, 10**6)  # the workers' plans reject them
        with pytest.raises(ConfigError, match="outside"):
            iter(loader)
        del loader.epoch_boxes
        _check(truth, cfg, list(loader))  # the same workers go on
    store = tmp_path / "s.zarr"
    with Loader(store, cfg, samples_per_epoch=8, workers=2, mode="process", seed=1) as loader:
        os.rename(store, tmp_path / "moved.zarr")  # the workers (started by the first iter) cannot open it
        with pytest.raises(StoreNotFoundError) as e:
            iter(loader)
        assert "loader worker process" in "".join(getattr(e.value, "__notes__", []))
        os.rename(tmp_path / "moved.zarr", store)
        _check(truth, cfg, list(loader))  # new workers in place of those that failed


def test_ctrl_c_in_the_training_loop_leaves_no_process_or_segment(tmp_path):
    _, cfg = build("per_variable", tmp_path / "s.zarr")

    def train():
        loader = Loader(tmp_path / "s.zarr", cfg, samples_per_epoch=40, workers=2, mode="process")
        for i, _ in enumerate(loader):
            if i == 1:
                raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        train()
    # the fixture checks (after gc) for worker processes, threads and /dev/shm segments


def _fifos_for_chunks(store_path, array):
    """Replace every chunk file of ``array`` by a named pipe with no writer: opening one blocks (a store request
    that never answers); returns them, for :func:`_release`."""
    fifos = []
    for root, _, files in os.walk(os.path.join(store_path, array)):
        for f in files:
            if f not in ("zarr.json", ".zarray", ".zattrs"):
                path = os.path.join(root, f)
                os.remove(path)
                os.mkfifo(path)
                fifos.append(path)
    assert fifos
    return fifos


def _release(fifos):
    """Answer every request blocked on one of the pipes (an empty file)."""
    for path in fifos:
        try:
            os.close(os.open(path, os.O_WRONLY | os.O_NONBLOCK))  # ENXIO where no one waits on it
        except OSError:
            pass


def test_process_workers_give_up_a_store_request_after_the_read_timeout(tmp_path):
    """Process mode takes loader.read_timeout_s (it was refused: the workers did not pass it to their readers): a
    store whose chunk requests never answer (named pipes, put in after the loader opened the store), read with
    read_timeout_s = 1, fails the batch with a ChunkReadError naming the chunk and the setting."""
    from fastload.store import open_store

    _, cfg = build("per_variable", tmp_path / "s.zarr")
    store = open_store(tmp_path / "s.zarr")
    fifos = _fifos_for_chunks(tmp_path / "s.zarr", "t") + _fifos_for_chunks(tmp_path / "s.zarr", "q")
    try:
        with Loader(store, cfg, mode="process", workers=1, samples_per_epoch=4, retries=0, seed=1,
                    read_timeout_s=1.0) as loader:
            with pytest.raises(ChunkReadError, match=r"no answer (from the store|to the request for)") as info:
                next(iter(loader))
    finally:
        _release(fifos)
    assert "read_timeout_s = 1" in str(info.value) and info.value.array in ("t", "q")


def test_a_worker_whose_store_metadata_hangs_is_given_up_after_the_read_timeout(tmp_path):
    """A worker whose metadata request never answers (the store's requests sleep 10**4 s in the workers, which
    reopen it with the latency put on after the loader opened it) fails the iteration after read_timeout_s with a
    WorkerError naming the worker, the store, the request and the setting; the loader hung for ever (it waited for
    the worker's answer with no limit). The thread and the join only guard against that hang."""
    import threading

    from fastload.errors import WorkerError
    from fastload.store import LatencySource, open_store

    _, cfg = build("per_variable", tmp_path / "s.zarr", zarr_format=2)
    store = open_store(tmp_path / "s.zarr")
    store.source = LatencySource(store.source, 10**7)
    loader = Loader(store, cfg, mode="process", workers=2, samples_per_epoch=4, seed=1, read_timeout_s=1.0)
    got = []

    def first_batch():
        try:
            next(iter(loader))
        except BaseException as e:  # noqa: BLE001 - checked below
            got.append(e)

    t = threading.Thread(target=first_batch, name="test-first-batch", daemon=True)
    t.start()
    t.join(120)
    hung = t.is_alive()
    loader.close()  # (frees a hung wait: the workers are stopped)
    t.join(30)
    assert not hung, "the loader still waits for its workers"
    assert len(got) == 1 and isinstance(got[0], WorkerError), got
    msg = str(got[0])
    assert "loader worker process" in msg and repr(store.path) in msg and "read_timeout_s = 1" in msg
    assert f"request for '{store.path}/" in msg  # the metadata request it hung in


def _maps_obstore(pid: int) -> bool:
    """Whether process ``pid`` has obstore's native module loaded (it does once it made an ObstoreSource: nothing
    else in a worker imports obstore)."""
    with open(f"/proc/{pid}/maps") as fh:
        return any("_obstore" in line and "/obstore/" in line for line in fh)


@pytest.mark.skipif(not os.path.exists("/proc/self/maps"), reason="needs /proc")
def test_workers_reopen_the_store_with_its_backend(tmp_path):
    """A store opened with backend="obstore" (a local path, or a file:// URL) is reopened with obstore in the
    worker processes, which read the batches of thread mode and of the NumPy reference (before, the loader refused
    such a local path, and its workers reopened such a URL with fsspec); a store opened with the default backend
    is reopened without obstore (so the check tells the two apart)."""
    pytest.importorskip("obstore")
    from fastload.store import ObstoreSource, open_store

    truth, cfg = build("per_variable", tmp_path / "s.zarr", nt=20)
    local = str(tmp_path / "s.zarr")
    for where, backend in ((local, "obstore"), (f"file://{local}", "obstore"), (local, "auto")):
        store = open_store(where, backend=backend)
        assert isinstance(store.source, ObstoreSource) == (backend == "obstore")
        with Loader(store, cfg, mode="process", workers=2, samples_per_epoch=16, seed=3) as loader:
            got = list(loader)
            assert [_maps_obstore(w.process.pid) for w in loader._backend._workers] == [backend == "obstore"] * 2
        with Loader(store, cfg, mode="thread", workers=2, samples_per_epoch=16, seed=3) as loader:
            want = list(loader)
        assert len(got) == len(want) == 4
        for g, w in zip(got, want):
            np.testing.assert_array_equal(g.boxes.numpy(), w.boxes.numpy())
            for f in cfg.field_names:
                np.testing.assert_array_equal(g[f].numpy(), w[f].numpy())
        _check(truth, cfg, got)


class _FailsToPickleOnce:
    """A part of the spec whose first pickling raises ``error`` (as a Ctrl-C there, or an unpicklable storage
    option, ends the send); then it pickles (as 0)."""

    def __init__(self, error: BaseException):
        self.error = error

    def __reduce__(self):
        error, self.error = self.error, None
        if error is not None:
            raise error
        return (int, ())


def _epoch_within(loader, timeout: float = 120.0) -> list:
    """The batches of one iteration over ``loader``, read on a thread: one that is still waiting after ``timeout``
    seconds fails the test (the loader is closed, which frees the wait) instead of hanging the test run."""
    import threading

    got: list = []

    def epoch() -> None:
        try:
            got.append(list(loader))
        except BaseException as e:  # noqa: BLE001 - raised below, on the test's thread
            got.append(e)

    t = threading.Thread(target=epoch, name="test-epoch", daemon=True)
    t.start()
    t.join(timeout)
    if t.is_alive():
        loader.close()
        t.join(30)
        pytest.fail(f"the iteration still waits for its workers after {timeout:g} s")
    if isinstance(got[0], BaseException):
        raise got[0]
    return got[0]


@pytest.mark.parametrize("error", [KeyboardInterrupt(), TypeError("cannot pickle 'SSLContext' object")],
                         ids=["ctrl-c", "unpicklable"])
def test_an_interrupted_spec_send_does_not_hang_the_next_iteration(tmp_path, error):
    """An exception that ends the send of a worker's spec (Ctrl-C, or a part that does not pickle) reaches the
    consumer; the worker, which had said hello and waited for its spec, is stopped, and the next iteration starts a
    new one and reads correct batches (it waited for the old worker's "opened" for ever, read_timeout_s or not)."""
    error = type(error)(*error.args)  # a fresh one: the parametrized instance would keep its traceback (and so
    # this test's loader and its shared-memory buffers) alive for the rest of the session
    truth, cfg = build("per_variable", tmp_path / "s.zarr", nt=20)
    with Loader(tmp_path / "s.zarr", cfg, workers=2, mode="process", samples_per_epoch=8, seed=1,
                read_timeout_s=5.0) as loader:
        loader._ensure_backend()
        loader._backend._child_spec["x"] = _FailsToPickleOnce(error)
        with pytest.raises(type(error)) as e:
            iter(loader)
        old = list(loader._backend._workers)
        assert len(old) == 2
        batches = _epoch_within(loader)
        assert len(batches) == len(loader) == 2
        _check(truth, cfg, batches)
        assert all(w.opened for w in loader._backend._workers)
        assert any(w is not o for w, o in zip(loader._backend._workers, old))  # the one interrupted was replaced
    if isinstance(error, TypeError):  # the error names the worker and what was sent
        assert "while sending loader worker process" in "".join(getattr(e.value, "__notes__", []))


def test_ctrl_c_after_a_workers_hello_does_not_hang_the_next_iteration(tmp_path, monkeypatch):
    """A Ctrl-C that lands after the loader took a worker's hello but before it sent the spec leaves that worker
    waiting for a spec that never comes: the next iteration replaces every worker that had not opened the store
    (it waited for ever) and reads correct batches."""
    from fastload._procs import ProcessBackend

    truth, cfg = build("per_variable", tmp_path / "s.zarr", nt=20)
    take = ProcessBackend._take
    armed = [True]

    def take_then_interrupt(self, w):
        if not armed[0]:
            return take(self, w)
        armed[0] = False
        assert w.conn.recv() == ("hello",)  # taken, and then Ctrl-C
        raise KeyboardInterrupt

    monkeypatch.setattr(ProcessBackend, "_take", take_then_interrupt)
    with Loader(tmp_path / "s.zarr", cfg, workers=2, mode="process", samples_per_epoch=8, seed=1) as loader:
        with pytest.raises(KeyboardInterrupt):
            iter(loader)
        assert not armed[0]
        batches = _epoch_within(loader)
        assert len(batches) == len(loader) == 2
        _check(truth, cfg, batches)


@pytest.mark.parametrize("error", [KeyboardInterrupt(), BlockingIOError(11, "Resource temporarily unavailable")],
                         ids=["ctrl-c", "eagain"])
def test_an_interrupted_worker_start_is_completed_by_the_next_iteration(tmp_path, monkeypatch, error):
    """Ctrl-C, or EAGAIN at the process limit, while the loader starts its second worker reaches the consumer; the
    next iteration starts the missing worker and reads every batch correctly (every later iteration failed with an
    IndexError: the loader kept one worker of two)."""
    from fastload._procs import ProcessBackend

    error = type(error)(*error.args)  # a fresh one: the parametrized instance would keep its traceback (and so
    # this test's loader and its shared-memory buffers) alive for the rest of the session
    truth, cfg = build("per_variable", tmp_path / "s.zarr", nt=20)
    spawn = ProcessBackend._spawn
    calls = []

    def spawn_failing_once(self, c):
        calls.append(c)
        if len(calls) == 2:
            raise error
        return spawn(self, c)

    monkeypatch.setattr(ProcessBackend, "_spawn", spawn_failing_once)
    with Loader(tmp_path / "s.zarr", cfg, workers=2, mode="process", samples_per_epoch=8, seed=1) as loader:
        with pytest.raises(type(error)):
            iter(loader)
        assert len(loader._backend._workers) == 1
        batches = _epoch_within(loader)
        assert [w.index for w in loader._backend._workers] == [0, 1]
    assert [b.index for b in batches] == list(range(len(loader))) and len(batches) == 2
    _check(truth, cfg, batches)


def _shared_memory() -> set[str]:
    """Names of fastload's shared-memory buffers (memfds) this process holds a descriptor or a mapping of."""
    import re

    links = []
    for fd in os.listdir("/proc/self/fd"):
        try:
            links.append(os.readlink(f"/proc/self/fd/{fd}"))
        except OSError:  # (closed meanwhile: the listing's own descriptor)
            pass
    with open("/proc/self/maps") as fh:
        links += fh.readlines()
    return {m for line in links for m in re.findall(r"memfd:(fastload-[0-9a-f-]+)", line)}


@pytest.mark.skipif(not os.path.exists("/proc/self/maps"), reason="needs /proc")
@pytest.mark.parametrize("stage,said", [
    ("silent", "has not said hello in the"),
    ("after_spec", "was sent its spec"),
    ("after_request", "since its request for '"),
])
def test_a_worker_stuck_in_its_start_is_stopped_after_worker_start_timeout_s(tmp_path, monkeypatch, stage, said):
    """Both workers start but never finish their start (never say hello; or go quiet after their spec, or after an
    answered storage request of their start, outside any request): the iteration fails with a WorkerError naming a
    worker, what it was doing and loader.worker_start_timeout_s, both stuck workers are killed, the next iteration
    starts new ones and reads correct batches, and no process or shared memory is left after close. The loader
    polled for ever (Ctrl-C only); the thread in _epoch_within only guards against that hang."""
    import fastload._procs as procs
    from fastload.errors import WorkerError
    from tests.fastload import _stuck_workers

    truth, cfg = build("per_variable", tmp_path / "s.zarr", nt=20)
    gc.collect()
    before = _shared_memory()  # (earlier tests' buffers that something still views are not this test's)
    real = procs._child_main
    with Loader(tmp_path / "s.zarr", cfg, workers=2, mode="process", samples_per_epoch=8, seed=1) as loader:
        loader._ensure_backend()
        backend = loader._backend
        assert backend._start_timeout == 300.0  # loader.worker_start_timeout_s's default
        backend._start_timeout = 1.0  # (as loader.worker_start_timeout_s = 1 sets it)
        monkeypatch.setattr(procs, "_child_main", getattr(_stuck_workers, stage))
        with pytest.raises(WorkerError) as info:
            _epoch_within(loader, 60)
        msg = str(info.value)
        assert "loader worker process " in msg and "(pid " in msg and said in msg, msg
        assert "loader.worker_start_timeout_s = 1 s" in msg and "next iteration starts a new one" in msg, msg
        stuck = list(backend._workers)
        assert [w.failed for w in stuck] == [True, True]
        assert [w.process.is_alive() for w in stuck] == [False, False]  # both killed, not only the one named
        monkeypatch.setattr(procs, "_child_main", real)
        backend._start_timeout = 120.0  # (a real worker's start on this busy machine)
        batches = _epoch_within(loader)
        assert all(w is not o for w, o in zip(backend._workers, stuck))
        assert len(batches) == len(loader) == 2
        _check(truth, cfg, batches)
        del batches
    gc.collect()
    assert _shared_memory() <= before  # (and the fixtures: no worker process, no named segment left)


def test_worker_start_timeout_s_is_a_checked_loader_setting():
    from fastload.config import LoaderConfig

    assert LoaderConfig().worker_start_timeout_s == 300.0
    assert LoaderConfig(worker_start_timeout_s=None).worker_start_timeout_s is None
    for bad in (0, -1.0, float("nan"), float("inf"), True, "5"):
        with pytest.raises(ConfigError, match="worker_start_timeout_s"):
            LoaderConfig(worker_start_timeout_s=bad)


def test_worker_start_timeout_s_reaches_the_worker_processes(tmp_path):
    _, cfg = build("per_variable", tmp_path / "s.zarr")
    with Loader(tmp_path / "s.zarr", cfg, mode="process", workers=1, worker_start_timeout_s=7.5) as loader:
        loader._ensure_backend()
        assert loader._backend._start_timeout == 7.5
