"""A static HTTP file server on 127.0.0.1 with byte ranges, as object stores and web servers serve zarr.

``RangeServer(root)`` serves the files under ``root`` (read-only): GET and HEAD, ``Range: bytes=a-b``
(206 with Content-Range; also ``a-`` and ``-n``), 404 for missing keys, and HTML directory listings
(what fsspec's HTTP filesystem lists a store with when it has no consolidated metadata). It counts
the body bytes it sends and the requests, so a test can compare what a reader says it read.
"""

from __future__ import annotations

import os
import re
import threading
from functools import partial
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path


class _Handler(SimpleHTTPRequestHandler):
    server_version = "RangeServer/1"

    def log_message(self, *args):  # quiet
        pass

    def send_head(self):
        path = Path(self.translate_path(self.path))
        rng = self.headers.get("Range")
        if path.is_dir() or not rng:
            self._range = None
            return super().send_head()
        if not path.is_file():
            self.send_error(404)
            return None
        size = path.stat().st_size
        m = re.fullmatch(r"bytes=(\d*)-(\d*)", rng.strip())
        if m is None or (not m.group(1) and not m.group(2)):
            self.send_error(416)
            return None
        if m.group(1):
            start = int(m.group(1))
            end = min(int(m.group(2)), size - 1) if m.group(2) else size - 1
        else:
            start, end = max(0, size - int(m.group(2))), size - 1
        if start >= size or end < start:
            self.send_response(416)
            self.send_header("Content-Range", f"bytes */{size}")
            self.end_headers()
            return None
        f = open(path, "rb")
        f.seek(start)
        self._range = end - start + 1
        self.send_response(206)
        self.send_header("Content-Type", "application/octet-stream")
        self.send_header("Content-Range", f"bytes {start}-{end}/{size}")
        self.send_header("Content-Length", str(self._range))
        self.send_header("Accept-Ranges", "bytes")
        self.end_headers()
        return f

    def copyfile(self, source, outputfile):
        left = self._range
        while left is None or left > 0:
            buf = source.read(1 << 20 if left is None else min(1 << 20, left))
            if not buf:
                break
            outputfile.write(buf)
            with self.server.lock:
                self.server.bytes_served += len(buf)
            if left is not None:
                left -= len(buf)

    def do_GET(self):
        with self.server.lock:
            self.server.requests += 1
        super().do_GET()


class RangeServer:
    """``with RangeServer(root) as srv: srv.url`` -> 'http://127.0.0.1:PORT'."""

    def __init__(self, root: str | os.PathLike):
        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), partial(_Handler, directory=str(root)))
        self.httpd.daemon_threads = True
        self.httpd.lock = threading.Lock()
        self.httpd.bytes_served = 0
        self.httpd.requests = 0
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.httpd.server_address[1]}"

    @property
    def bytes_served(self) -> int:
        return self.httpd.bytes_served

    @property
    def requests(self) -> int:
        return self.httpd.requests

    def reset(self) -> None:
        with self.httpd.lock:
            self.httpd.bytes_served = 0
            self.httpd.requests = 0

    def __enter__(self) -> RangeServer:
        self.thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()
