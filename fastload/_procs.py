"""Process backend of the loader: worker processes read batches straight into shared-memory ring buffers.

Why this exists: in thread mode all Python work (planning, cache bookkeeping, slot tables) shares one GIL. When
that becomes the limit (many small chunks, many cores), each worker can be a process with its own store handle,
cache (``cache_bytes / workers``) and reader. Batches are dealt round-robin: worker ``c`` reads batches
``start + c, start + c + workers, ...`` and plans only those (its cache evicts by its own future). It writes a
batch into a ring slot that lives in shared memory, so nothing is copied or pickled but a few counters.

Shared memory (:mod:`fastload._shm`): each ring buffer is a ``memfd`` (Linux; elsewhere a file created in
``/dev/shm`` or the temporary directory and unlinked at once), kept by the loader's open descriptor and the
mappings; a worker gets the descriptor over its pipe with the first read into that buffer. So no exit, crash or kill
of the loader or a worker leaves a segment behind: the kernel frees the memory when the last descriptor and mapping
go. When the ring replaces a buffer that the consumer still holds (:mod:`fastload._ring`), the loader drops its
descriptor and the workers that mapped it are told to unmap it (``forget``, with their next read); the consumer's
tensors keep the old memory alive as long as they live. Workers are started with ``spawn`` (no fork of a threaded
process), ignore SIGINT (Ctrl-C reaches the training loop, which closes the loader), and exit when the loader's end
of their pipe closes, so they never outlive it.

Protocol (one duplex pipe per worker; one request at a time)::

    worker -> loader, at its start: ("hello",), which the loader answers with the worker's spec (a dict: store,
                       backend, settings, coefficients); then ("io", described key) before and ("io", None) after
                       each storage request while it opens the store, then ("opened",); or ("fatal", exception)
    loader -> worker:  ("epoch", gen, boxes, first_batch, stride, coefficients or None) -> ("ready", gen)
                       ("read", gen, batch, segment name, forget, fd follows)
                                                                    -> ("done", gen, batch, IOStats, kept, late)
                                                                       or ("error", gen, batch, exception)
       (fd follows: the segment's descriptor comes next, by send_handle; forget: names of segments to unmap;
        late: the read-ahead requests given up when the worker's last batch of the epoch settled its reader,
        ChunkReader.settle_ahead, which the loader names in a warning; that batch's IOStats counts the others;
        a message that comes while it settles, "stop" or "epoch", ends the settle at once and is answered next)
                       ("stop",)

The spec goes over the pipe, not in the spawn payload: that payload is written in one blocking call under
``Process.start()``, and one larger than the pipe's buffer (64 KiB; coefficients of a local normalisation are
more) blocked the loader for ever when the worker died before reading it, as a script without the
``if __name__ == "__main__":`` guard makes every worker die. Now the payload is a few kilobytes, the loader sends
the spec once the worker says "hello" (it is then running fastload's code and reading), and a worker that dies
before, or while unpickling its spec, is noticed by the waits below. A send that something else ends (Ctrl-C, a
spec that does not pickle) kills its worker, and an interrupted start kills those not yet opened (each may wait for
a message that never comes whole); the next iteration replaces them, and starts any worker a Ctrl-C kept from starting.

The loader sends a worker its first epoch only once it has opened the store ("opened"), and waits for that with
``loader.read_timeout_s`` as the limit on each storage request the worker announced: a metadata read that hangs
in a worker fails the iteration with a :class:`WorkerError` naming the worker, the store, the request and the
setting (the worker is killed; the next iteration starts a new one), instead of hanging the loader. Outside those
requests, a worker that says nothing for ``loader.worker_start_timeout_s`` (no hello after its spawn: stuck
importing; nothing after its spec or its last answered request) fails the iteration the same way, with a
``WorkerError`` naming it, what it was doing and that setting. Later waits on a worker end with its answer, its
death, or the consumer's stop; its batch reads are bounded by its reader (``read_timeout_s`` on every request).

This module is the loader's side; the worker's (what a spawned process runs: :func:`_child_main`) is
:mod:`fastload._proc_worker`.
"""

from __future__ import annotations

import multiprocessing as mp
import multiprocessing.connection as mp_connection
import sys
import threading
import time
import weakref
from collections.abc import Callable, Mapping, Sequence
from multiprocessing.reduction import send_handle
from typing import Any

import numpy as np

from ._proc_worker import _child_main
from ._ring import FieldSpec, _layout
from ._shm import SHM_DIR, Segment, _register, _unregister, _unregister_quietly, map_shared
from .errors import ConfigError, WorkerError
from .reader import warn_given_up

__all__ = ["SHM_DIR", "ProcessBackend", "Segment", "WorkerError", "map_shared", "storage_options_of"]

_POLL_S = 0.02
_START_TIMEOUT_S = 300.0  # LoaderConfig.worker_start_timeout_s's default


def storage_options_of(store: Any) -> dict[str, Any] | None:
    """The fsspec options a worker process needs to reopen ``store``: the store's own ``storage_options`` where it
    keeps them, else those its fsspec filesystem was made with (``fs.storage_options``); None for local stores."""
    opts = getattr(store, "storage_options", None)
    if opts is None:
        from .store import LatencySource

        src = store.source
        inner = src.inner if isinstance(src, LatencySource) else src
        opts = getattr(getattr(inner, "fs", None), "storage_options", None)
    return dict(opts) if opts else None


def _main_script() -> str:
    """The main script a spawned worker imports, for messages (while a worker imports it, it runs as
    ``__mp_main__``, in a module that has its ``__file__`` before ``__main__`` does)."""
    main = sys.modules.get("__mp_main__") or sys.modules.get("__main__")
    return repr(getattr(main, "__file__", None) or getattr(getattr(main, "__spec__", None), "name", "__main__"))


# -- the loader side -------------------------------------------------------------------------------------------
class _Worker:
    def __init__(self, index: int, process: Any, conn: Any):
        self.index = index
        self.process = process
        self.conn = conn
        self.turn = 0  # the next batch this worker must be sent (batches go in order)
        self.cond = threading.Condition()
        self.forget: list[str] = []  # segments to unmap, sent with the next read (under ProcessBackend._lock)
        self.failed = False  # it died or failed to start: replaced at the next epoch
        self.spoke = False  # it has sent anything (else it died before running fastload's code)
        self.opened = False  # it has opened the store ("opened"): it takes epochs
        self.io_open = 0  # storage requests it announced at its start and has not finished
        self.io_key: str | None = None  # the last one it began
        self.io_since: float | None = None  # when it last began or finished one, while one is open
        self.quiet_since = time.monotonic()  # when it was started or last sent a start-up message (until opened)


def _cleanup(workers: list[_Worker], segments: dict[str, Segment]) -> None:
    for w in workers:
        try:
            w.conn.send(("stop",))
        except (OSError, ValueError):
            pass
    deadline = time.monotonic() + 5.0
    for w in workers:
        w.process.join(max(0.0, deadline - time.monotonic()))
        if w.process.is_alive():
            w.process.terminate()
            w.process.join(2.0)
        if w.process.is_alive():
            w.process.kill()
            w.process.join(2.0)
        w.conn.close()
    workers.clear()
    for seg in list(segments.values()):
        seg.close_fd()
        if seg.registered:
            _unregister(seg)
    segments.clear()


class ProcessBackend:
    """Reads batches in ``spec.workers`` worker processes (see the module notes); same interface as
    :class:`fastload._backend.ThreadBackend`."""

    def __init__(self, store: Any, config: Any, spec: Any, fields: Sequence[FieldSpec], *,
                 coefficients: Mapping[str, tuple[np.ndarray, np.ndarray]] | None, tokenizer: Any = None):
        from ._cache_sizing import sample_need, warn_process_share
        from .store import LatencySource, LocalSource

        src = store.source
        inner = src.inner if isinstance(src, LatencySource) else src
        backend = getattr(store, "backend", "auto")  # workers reopen the store as it was opened (make_source)
        if "://" in store.path and not store.path.startswith("file://"):
            if store.path.startswith("memory://"):
                raise ConfigError("loader.mode = 'process' cannot share an in-memory (memory://) store with worker "
                                  "processes; use mode = 'thread'")
        elif not isinstance(inner, LocalSource) and "://" not in store.path and backend == "auto":
            raise ConfigError(f"loader.mode = 'process': cannot reopen {store.path!r} in a worker process (its "
                              f"source is a {type(inner).__name__}, not a LocalSource)")
        self.spec = spec
        if tokenizer is None:  # (the Loader passes its own)
            from ._backend import make_tokenizer

            tokenizer = make_tokenizer(store, config)
        bound = tokenizer.sample_chunk_bound() if hasattr(tokenizer, "sample_chunk_bound") else None
        # each worker's cache is its share of cache_bytes, raised to one sample's chunks: warned here, once, with the
        # setting (the workers size theirs quietly)
        warn_process_share(spec.cache_bytes, spec.workers,
                           sample_need(store, tokenizer.layouts, config.box, config.time_step, bound))
        offsets, nbytes = _layout(fields)
        self._child_spec = {
            "path": store.path, "storage_options": storage_options_of(store), "backend": backend,
            "allow_unsafe": bool(getattr(store, "_allow_unsafe", False)),
            "latency_ms": src.ms if isinstance(src, LatencySource) else 0.0, "config": config.to_dict(),
            "cache_bytes": max(1, spec.cache_bytes // spec.workers), "fetch_concurrency": spec.fetch_concurrency,
            "read_ahead_bytes": None if spec.read_ahead_bytes is None else spec.read_ahead_bytes // spec.workers,
            "retries": spec.retries, "on_bad_chunk": spec.on_bad_chunk, "read_timeout_s": spec.read_timeout_s,
            "coefficients": dict(coefficients) if coefficients else None, "months": spec.months,
            "useful": spec.useful_bytes_per_sample, "jit": spec.jit, "batch_size": spec.batch_size,
            "drop_last": spec.drop_last, "prefetch": spec.prefetch, "nbytes": nbytes,
            "fields": [(f.name, f.shape, f.np_dtype.str, off, f.nbytes) for f, off in zip(fields, offsets)],
        }
        self._nbytes = nbytes
        self._coef_update: tuple[Any, Any] | None = None  # sent to every worker with the next epoch
        self._segments: dict[str, Segment] = {}  # the ring's live buffers
        self._lock = threading.Lock()  # _segments, _Worker.forget (the ring allocates on pump threads)
        self._workers: list[_Worker] = []
        self._start_timeout: float | None = getattr(spec, "worker_start_timeout_s", _START_TIMEOUT_S)
        self._gen = 0
        self._start = 0
        self._finalizer = weakref.finalize(self, _cleanup, self._workers, self._segments)

    # -- shared-memory allocation (the ring's allocator) ----------------------------------------------------------
    def alloc(self, nbytes: int) -> tuple[np.ndarray, Segment]:
        assert nbytes == self._nbytes
        seg = Segment.create(nbytes)
        with self._lock:
            self._segments[seg.name] = seg
        if self.spec.pin:
            _register(seg)
        return seg.array, seg

    def retire(self, seg: Segment) -> None:
        """The ring replaced ``seg`` (the consumer still holds tensors of it): drop the loader's descriptor and have
        the workers that mapped it unmap it with their next read; its memory lives while those tensors do."""
        with self._lock:
            if self._segments.pop(seg.name, None) is None:
                return
            for w in self._workers:
                if w.index in seg.mapped_by:
                    w.forget.append(seg.name)
        seg.close_fd()
        if seg.registered:  # un-pin when the consumer's last view of it goes, not now (a copy may still read it);
            # the array's finalizer runs before the array lets go of the mapping
            weakref.finalize(seg.array, _unregister_quietly, seg.array.ctypes.data)
            seg.registered = False

    # -- workers --------------------------------------------------------------------------------------------------
    def _ensure_workers(self) -> None:
        for c in range(len(self._workers), self.spec.workers):  # (an interrupted start may have left only some)
            self._workers.append(self._spawn(c))

    def _spawn(self, c: int) -> _Worker:
        if getattr(mp.current_process(), "_inheriting", False):  # (multiprocessing's own test, spawn.py)
            raise ConfigError(
                f"loader.mode = 'process': this process is a spawned worker that is still importing the main script "
                f"({_main_script()}), and that script builds and iterates a Loader with mode='process' as it is "
                f"imported: a spawned worker first imports the main script, so put the code that builds and "
                f"iterates the Loader under `if __name__ == '__main__':`")
        ctx = mp.get_context("spawn")
        parent, child = ctx.Pipe(duplex=True)
        # the spawn payload carries the pipe only: the spec follows over it (see the module notes)
        p = ctx.Process(target=_child_main, args=(child,), name=f"fastload-proc-{c}", daemon=True)
        p.start()
        child.close()
        return _Worker(c, p, parent)

    def _recv(self, w: _Worker, should_stop: Callable[[], bool] | None) -> Any:
        """The worker's next answer (its start-up messages are taken on the way, :meth:`_take`)."""
        while True:
            try:
                while not w.conn.poll(_POLL_S):
                    if not w.process.is_alive() and not w.conn.poll(0):  # (its last words may have come meanwhile)
                        raise EOFError
                    if should_stop is not None and should_stop():
                        raise InterruptedError("stopped while waiting for a loader worker process")
                    self._check_stuck(w)
            except (EOFError, OSError) as e:  # the pipe broke: the worker died
                if isinstance(e, InterruptedError):
                    raise
                raise self._died(w) from None
            msg = self._take(w)
            if msg is not None:
                return msg

    def _take(self, w: _Worker) -> Any:
        """Receive one message (one is waiting): an answer is returned; a start-up message is noted (None)."""
        try:
            msg = w.conn.recv()
        except (EOFError, OSError):  # the pipe broke: the worker died
            raise self._died(w) from None
        w.spoke = True
        w.quiet_since = time.monotonic()  # (progress of its start: worker_start_timeout_s counts from here)
        if msg[0] == "hello":  # it runs fastload's code and reads its pipe: send its spec (the current one)
            self._send(w, self._child_spec, "its spec (store, storage_options, settings, coefficients)")
            return None
        if msg[0] == "fatal":  # it failed to start (and exits): its own exception, with who it was
            w.failed = True
            err = msg[1]
            if hasattr(err, "add_note"):  # Python >= 3.11
                err.add_note(f"(in loader worker process {w.index}, pid {w.process.pid}, at its start)")
            raise err
        if msg[0] == "io":  # a storage request of its start began (a key) or ended (None)
            w.io_open += 1 if msg[1] is not None else -1
            w.io_key = msg[1] if msg[1] is not None else w.io_key
            w.io_since = time.monotonic() if w.io_open > 0 else None  # any answer is progress
            return None
        if msg[0] == "opened":
            w.opened = True
            w.io_open, w.io_since = 0, None
            return None
        return msg

    def _send(self, w: _Worker, msg: Any, what: str) -> None:
        """Send ``msg`` to ``w``; a worker that died is a WorkerError. Anything else that ends the send (Ctrl-C, a
        message that does not pickle) leaves the worker waiting for a message that may never come whole: it is
        killed, and replaced at the next epoch."""
        try:
            w.conn.send(msg)
        except OSError:  # it died before reading it all
            raise self._died(w) from None
        except BaseException as e:
            w.failed = True
            w.process.kill()
            if isinstance(e, Exception) and hasattr(e, "add_note"):  # (Python >= 3.11)
                e.add_note(f"(while sending loader worker process {w.index} {what}: mode = 'process' pickles it)")
            raise

    def _check_stuck(self, w: _Worker) -> None:
        """Raise (and kill the worker) when its start has stalled: a storage request of its start unanswered for
        ``read_timeout_s``, or, outside such requests, no start-up message for ``worker_start_timeout_s``."""
        if w.opened:
            return
        limit = self._child_spec["read_timeout_s"]
        now = time.monotonic()
        if limit is not None and w.io_since is not None and now - w.io_since > limit:
            self._stop_stuck(w)
            raise WorkerError(
                f"loader worker process {w.index} (pid {w.process.pid}) could not open the store "
                f"{self._child_spec['path']!r}: its request for {w.io_key!r} got no answer for {limit:g} s "
                f"(loader.read_timeout_s = {limit:g}; None waits for ever); the worker was stopped, the next "
                f"iteration starts a new one"
            )
        start = self._start_timeout
        if start is None or w.io_open > 0 or now - w.quiet_since <= start:
            return
        quiet = now - w.quiet_since
        if not w.spoke:
            doing = (f"it has not said hello in the {quiet:.3g} s since it was started: it is still starting Python "
                     f"and importing the main script ({_main_script()}) and fastload, or is stuck there")
        elif w.io_key is None:
            doing = (f"it was sent its spec {quiet:.3g} s ago and has not begun opening the store "
                     f"{self._child_spec['path']!r} (it is unpickling the spec, or stuck before the store)")
        else:
            doing = (f"it was opening the store {self._child_spec['path']!r} and has said nothing for {quiet:.3g} s "
                     f"since its request for {w.io_key!r} was answered (reading the layout, building its tokenizer "
                     f"and cache)")
        self._stop_stuck(w)
        raise WorkerError(
            f"loader worker process {w.index} (pid {w.process.pid}) did not start within loader."
            f"worker_start_timeout_s = {start:g} s: {doing}; the worker was stopped, the next iteration starts a new "
            f"one (raise loader.worker_start_timeout_s where starting a process is slow, e.g. Python and its "
            f"packages on a cold network filesystem; None waits for ever)"
        )

    @staticmethod
    def _stop_stuck(w: _Worker) -> None:
        """Kill a worker stuck in its start (no clean way out of a request or an import that may never return);
        it has mapped no batch buffer yet (a descriptor goes with its first read, after it opened the store)."""
        w.failed = True
        w.process.kill()
        w.process.join(2.0)

    def _await_open(self) -> BaseException | None:
        """Wait until every worker has opened the store, reading all their pipes at once (so that each request's
        time counts from when it began); returns the first error (a worker that failed, died or is stuck in a
        storage request for ``read_timeout_s``), after every worker answered or failed."""
        error: BaseException | None = None
        waiting = [w for w in self._workers if not w.opened]
        while waiting:
            ready = mp_connection.wait([w.conn for w in waiting], _POLL_S)
            for w in list(waiting):
                try:
                    if w.conn in ready:
                        self._take(w)
                    elif not w.process.is_alive() and not w.conn.poll(0):
                        raise self._died(w)
                    else:
                        self._check_stuck(w)
                except Exception as e:  # noqa: BLE001 - raised by the caller once every worker is done
                    error = error or e
                    waiting.remove(w)
                    continue
                if w.opened:
                    waiting.remove(w)
        return error

    @staticmethod
    def _died(w: _Worker) -> WorkerError:
        w.failed = True
        w.process.join(1.0)
        deadline = time.monotonic() + 1.0
        while w.process.exitcode is None and time.monotonic() < deadline:  # another thread may be reaping it
            time.sleep(0.01)  # (its waitpid wins, ours sees no child and returns early): its code lands shortly
        hint = "" if w.spoke or w.process.exitcode != 1 else (
            f" before it ran fastload's code, most likely because the main script ({_main_script()}) builds and "
            f"iterates a Loader with mode='process' when it is imported: a spawned worker first imports the main "
            f"script, so put that code under `if __name__ == '__main__':` (the worker's traceback is on stderr)")
        return WorkerError(f"loader worker process {w.index} (pid {w.process.pid}) exited unexpectedly with code "
                           f"{w.process.exitcode}{hint}; the next iteration starts a new one")

    def _respawn_dead(self) -> None:
        """Replace the worker processes that are gone (killed, crashed, failed at start) by new ones."""
        for i, w in enumerate(self._workers):
            if not w.failed and w.process.is_alive():
                continue
            w.conn.close()  # one that failed to start exits by itself (and at the latest when its pipe closes)
            w.process.join(5.0)
            if w.process.is_alive():
                w.process.kill()
                w.process.join(2.0)
            with self._lock:  # the new process has mapped nothing yet
                for seg in self._segments.values():
                    seg.mapped_by.discard(i)
                w.forget = []
            self._workers[i] = self._spawn(i)

    def set_coefficients(self, coefficients: Mapping[str, tuple[np.ndarray, np.ndarray]] | None,
                         months: np.ndarray | None) -> None:
        """Normalisation coefficients (covering ``months``) for the epochs started from now on (sent to the workers
        with the next epoch)."""
        coef = dict(coefficients) if coefficients else None
        if self._workers:
            self._coef_update = (coef, months)
        # workers started from now on (the first ones, or one that replaces a dead worker) get them in their spec
        self._child_spec["coefficients"], self._child_spec["months"] = coef, months

    def start(self, boxes: np.ndarray, start_batch: int) -> None:
        """Begin an epoch in every worker (a worker that died since the last epoch is replaced first); an error of
        a worker's epoch set-up is raised here, after every worker answered."""
        self._ensure_workers()
        self._respawn_dead()
        self._gen += 1
        self._start = int(start_batch)
        n = self.spec.workers
        coef, self._coef_update = self._coef_update, None
        error: BaseException | None = None
        try:
            error = self._await_open()  # (an epoch's boxes may fill the pipe of a worker that never reads it)
            if error is not None:
                raise error
            for w in self._workers:
                self._send(w, ("epoch", self._gen, boxes, self._start + w.index, n, coef), "an epoch")
            for w in self._workers:  # every worker answers (ready, error, or its death) before anything is raised
                try:
                    while True:  # replies of abandoned reads come first: skip them
                        msg = self._recv(w, None)
                        if msg[1] == self._gen and msg[0] in ("ready", "error"):
                            break
                except Exception as e:  # noqa: BLE001 - it died, or failed to start (its own error): raised below
                    error = error or e
                    continue
                if msg[0] == "error":
                    error = error or msg[3]
                with w.cond:
                    w.turn = self._start + w.index
        except BaseException:
            if coef is not None:  # workers that missed them get them with the next epoch
                self._coef_update = self._coef_update or coef
            for w in self._workers:  # (Ctrl-C) one that has not opened may wait for a spec it was never sent: the
                if not w.opened and not w.failed:  # next epoch starts a new one
                    w.failed = True
                    w.process.kill()
            raise
        if error is not None:
            raise error

    def read(self, batch: int, arrays: Mapping[str, np.ndarray], segment: Segment,
             should_stop: Callable[[], bool]) -> tuple[Any, np.ndarray]:
        w = self._workers[(batch - self._start) % self.spec.workers]
        gen = self._gen
        with w.cond:
            while w.turn != batch:  # an earlier batch of this worker is still on its way
                if should_stop():
                    raise InterruptedError("stopped while waiting for a loader worker process")
                w.cond.wait(_POLL_S)
            try:
                with self._lock:
                    forget, w.forget = w.forget, []
                    send_fd = w.index not in segment.mapped_by
                    segment.mapped_by.add(w.index)
                try:
                    w.conn.send(("read", gen, batch, segment.name, forget, send_fd))
                    if send_fd:  # the ring's buffers have no name: the worker maps the descriptor
                        send_handle(w.conn, segment.fd, w.process.pid)
                except OSError:
                    raise self._died(w) from None
                while True:
                    msg = self._recv(w, should_stop)
                    if msg[1] == gen and msg[2] == batch:
                        break
            finally:
                w.turn = batch + self.spec.workers
                w.cond.notify_all()
        if msg[0] == "error":
            raise msg[3]
        _, _, _, stats, kept, late = msg
        if late:
            warn_given_up(late, self._child_spec["read_timeout_s"],
                          f"batch {batch}, the last of loader worker process {w.index} (pid {w.process.pid}) this epoch")
        return stats, kept

    def close(self) -> None:
        self._finalizer()
