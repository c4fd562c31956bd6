"""Stand-ins for a loader worker process's entry point (``fastload._procs._child_main``) that start but never finish
their start: for tests of ``loader.worker_start_timeout_s``. Imports nothing heavy (the spawned child imports this
module to find its target)."""

from __future__ import annotations

import time


def silent(conn) -> None:
    """Never says hello (as a worker stuck importing the main script or fastload)."""
    time.sleep(600)


def after_spec(conn) -> None:
    """Says hello, takes its spec, then says nothing (as a worker stuck before it opens the store)."""
    conn.send(("hello",))
    conn.recv()
    time.sleep(600)


def after_request(conn) -> None:
    """Says hello, takes its spec, announces a storage request and its answer, then says nothing (as a worker
    stuck between the requests that open the store, outside any of them)."""
    conn.send(("hello",))
    spec = conn.recv()
    conn.send(("io", f"{spec['path']}/.zgroup"))
    conn.send(("io", None))
    time.sleep(600)
