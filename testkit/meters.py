"""What a run reads, measured outside the code under test: S3 requests and bytes at a real S3
server (moto behind a counting WSGI layer), and opens of local files as the kernel reports them
(inotify). The scale benchmark and the re-run tests share them.
"""

from __future__ import annotations

import ctypes
import os
import struct
import threading
from collections import Counter
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any


@dataclass
class S3Traffic:
    """Requests by (method, bucket/key) and the body bytes sent for each GET."""

    requests: Counter = field(default_factory=Counter)
    sent: Counter = field(default_factory=Counter)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def gets(self, prefix: str) -> int:
        """GET requests of objects whose path (``bucket/key``) starts with ``prefix``."""
        return sum(n for (method, path), n in self.requests.items() if method == "GET" and path.startswith(prefix))

    def bytes_sent(self, prefix: str) -> int:
        """Body bytes of the GET responses for objects under ``prefix``."""
        return sum(n for path, n in self.sent.items() if path.startswith(prefix))

    def reset(self) -> None:
        with self.lock:
            self.requests.clear()
            self.sent.clear()


class MeteredS3Server:
    """moto's S3 server (the app ``ThreadedMotoServer`` runs) on loopback, every request counted (port 0: any free one)."""

    def __init__(self, port: int = 0) -> None:
        self.port = port
        self.traffic = S3Traffic()
        self._server: Any = None
        self._thread: threading.Thread | None = None

    @property
    def endpoint(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def _app(self, app: Any) -> Any:
        traffic = self.traffic

        def metered(environ: dict[str, Any], start_response: Any) -> Iterable[bytes]:
            method, path = environ["REQUEST_METHOD"], environ.get("PATH_INFO", "").lstrip("/")
            if environ.get("QUERY_STRING", "").startswith(("list-type", "prefix")) or "/" not in path:
                path = f"{path.rstrip('/')}/?list"  # a listing or a bucket call, not an object
            with traffic.lock:
                traffic.requests[(method, path)] += 1
            body = app(environ, start_response)
            if method != "GET":
                return body
            return _counted(body, path, traffic)

        return metered

    def start(self) -> None:
        from moto.server import DomainDispatcherApplication, create_backend_app
        from werkzeug.serving import WSGIRequestHandler, make_server

        class Quiet(WSGIRequestHandler):
            def log_request(self, *args: Any, **kwargs: Any) -> None:  # the counts are the record, not a line per request
                pass

        self._server = make_server("127.0.0.1", self.port, self._app(DomainDispatcherApplication(create_backend_app)),
                                   threaded=True, request_handler=Quiet)
        self.port = self._server.server_port
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._server.shutdown()
        if self._thread:
            self._thread.join()


def _counted(body: Iterable[bytes], path: str, traffic: S3Traffic) -> Iterator[bytes]:
    for chunk in body:
        with traffic.lock:
            traffic.sent[path] += len(chunk)
        yield chunk


# --- local file opens, from the kernel (inotify) --------------------------------------------

IN_ACCESS, IN_OPEN, IN_ISDIR, IN_NONBLOCK = 0x1, 0x20, 0x40000000, 0o4000
_EVENT = struct.Struct("iIII")


@contextmanager
def file_opens(path: str | Path) -> Iterator[Counter]:
    """Count the opens and reads of ``path`` (a file, or the files directly in a folder) by any process
    while the block runs: {"open": n, "access": n}, filled in when the block ends. ``stat`` is not an open,
    nor is listing the folder."""
    libc = ctypes.CDLL("libc.so.6", use_errno=True)
    fd = libc.inotify_init1(IN_NONBLOCK)
    if fd < 0:
        raise OSError(ctypes.get_errno(), "inotify_init1")
    counts: Counter = Counter()
    try:
        if libc.inotify_add_watch(fd, str(path).encode(), IN_OPEN | IN_ACCESS) < 0:
            raise OSError(ctypes.get_errno(), f"inotify_add_watch {path}")
        yield counts
        while True:  # the kernel queued every event before the processes that caused them returned
            try:
                data = os.read(fd, 1 << 16)
            except BlockingIOError:
                break
            at = 0
            while at < len(data):
                _, mask, _, size = _EVENT.unpack_from(data, at)
                if not mask & IN_ISDIR:  # a file, not the folder's own listing (opendir)
                    counts["open"] += bool(mask & IN_OPEN)
                    counts["access"] += bool(mask & IN_ACCESS)
                at += _EVENT.size + size
    finally:
        os.close(fd)
