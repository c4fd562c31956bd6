"""A local HTTP server that serves a store folder and waits ``latency_ms`` before answering each request.

Why this exists: the remote-like scenarios add a fixed delay per storage request. zarr-python peers get it from
zarr's own ``LatencyStore``; tensorstore reads through its own C++ I/O layer, so it gets the delay the way a remote
object store would give it: over HTTP, here from 127.0.0.1. Requests are served on threads, so concurrent
requests overlap their delays as they would against object storage. GET with a single ``Range: bytes=a-b`` (or
``bytes=-n``) is supported, as sharded reads need; HEAD too. Paths outside the folder are refused.
"""

from __future__ import annotations

import os
import re
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import unquote, urlsplit

__all__ = ["DelayingHTTPServer"]

_RANGE = re.compile(r"bytes=(\d*)-(\d*)$")


class _Handler(BaseHTTPRequestHandler):
    server: _Server
    protocol_version = "HTTP/1.1"

    def log_message(self, format: str, *args: object) -> None:  # noqa: A002 - silence the per-request log
        pass

    def _resolve(self) -> str | None:
        rel = unquote(urlsplit(self.path).path).lstrip("/")
        full = os.path.realpath(os.path.join(self.server.root, rel))
        if not (full == self.server.root or full.startswith(self.server.root + os.sep)) or not os.path.isfile(full):
            return None
        return full

    def _answer(self, body: bool) -> None:
        time.sleep(self.server.delay_s)
        path = self._resolve()
        if path is None:
            self.send_response(404)
            self.send_header("Content-Length", "0")
            self.end_headers()
            return
        size = os.path.getsize(path)
        start, end, status = 0, size, 200
        rng = self.headers.get("Range")
        if rng:
            m = _RANGE.match(rng.strip())
            if m is None or (not m.group(1) and not m.group(2)):
                self.send_response(416)
                self.send_header("Content-Length", "0")
                self.end_headers()
                return
            if m.group(1):
                start = int(m.group(1))
                end = min(size, int(m.group(2)) + 1) if m.group(2) else size
            else:
                start = max(0, size - int(m.group(2)))
            status = 206
        self.send_response(status)
        self.send_header("Content-Length", str(max(0, end - start)))
        self.send_header("Accept-Ranges", "bytes")
        if status == 206:
            self.send_header("Content-Range", f"bytes {start}-{end - 1}/{size}")
        self.end_headers()
        if body and end > start:
            with open(path, "rb") as fh:
                fh.seek(start)
                self.wfile.write(fh.read(end - start))

    def do_GET(self) -> None:  # noqa: N802 - http.server's naming
        self._answer(body=True)

    def do_HEAD(self) -> None:  # noqa: N802
        self._answer(body=False)


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    root: str
    delay_s: float


class DelayingHTTPServer:
    """Serve ``root`` on ``127.0.0.1`` (a free port) with ``latency_ms`` of delay per request.

    Use as a context manager or call :meth:`close`. :attr:`url` is the base URL (no trailing slash).
    """

    def __init__(self, root: str, *, latency_ms: float):
        self._server = _Server(("127.0.0.1", 0), _Handler)
        self._server.root = os.path.realpath(root)
        self._server.delay_s = float(latency_ms) / 1000.0
        self.url = f"http://127.0.0.1:{self._server.server_address[1]}"
        self._thread = threading.Thread(target=self._server.serve_forever, name="delaying-http", daemon=True)
        self._thread.start()

    def close(self) -> None:
        """Stop serving and free the port; safe to call twice."""
        if self._thread is not None:
            self._server.shutdown()
            self._server.server_close()
            self._thread.join()
            self._thread = None  # type: ignore[assignment]

    def __enter__(self) -> DelayingHTTPServer:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
