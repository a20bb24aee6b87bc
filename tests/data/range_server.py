"""A static HTTP file server on 127.0.0.1 with byte ranges, as object stores and web servers serve zarr.

``RangeServer(root)`` serves the files under ``root`` (read-only): GET and HEAD, ``Range: bytes=a-b``
(206 with Content-Range; also ``a-`` and ``-n``), 404 for missing keys, and HTML directory listings
(what fsspec's HTTP filesystem lists a store with when it has no consolidated metadata). It counts
the body bytes it sends and the requests, so a test can compare what a reader says it read.

It can also behave like a distant, loaded object store:

- ``rtt_s``: every answer waits one round trip before its first byte;
- ``bandwidth``: bytes per second over all connections together (one link), paced in 256 KiB steps;
- ``fail_fraction``: that fraction of GET requests (drawn with ``seed``) answers ``fail_status``
  (503 Service Unavailable, as object stores do under load) instead of the data;
- :meth:`storm`: the next ``n`` GET requests (of one path, or any) fail (an HTTP status, or
  ``"reset"``: the connection is closed without an answer, as a reset or a dropped load balancer does);
- ``deny``: paths (relative to ``root``) answered 403 Forbidden.

It records the requests in flight at once (``max_in_flight``) and the paths asked for (``paths``).
"""

from __future__ import annotations

import os
import random
import re
import socket
import threading
import time
from collections import Counter
from functools import partial
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

_STEP = 256 * 1024  # bytes sent between two pacing decisions


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
            buf = source.read(_STEP if left is None else min(_STEP, left))
            if not buf:
                break
            self.server.pace(len(buf))
            outputfile.write(buf)
            with self.server.lock:
                self.server.bytes_served += len(buf)
            if left is not None:
                left -= len(buf)

    def do_GET(self):
        srv = self.server
        rel = self.path.split("?", 1)[0].lstrip("/")
        with srv.lock:
            srv.requests += 1
            srv.paths[rel] += 1
            srv.in_flight += 1
            srv.max_in_flight = max(srv.max_in_flight, srv.in_flight)
            fault = srv.next_fault(rel)
        try:
            if srv.rtt_s:
                time.sleep(srv.rtt_s)
            if fault == "reset":
                # SO_LINGER 0: close sends a TCP RST, the client sees a connection reset.
                self.connection.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, b"\x01\x00\x00\x00\x00\x00\x00\x00")
                self.close_connection = True
                self.connection.close()
                return
            if fault is not None:
                self.send_error(fault)
                return
            super().do_GET()
        finally:
            with srv.lock:
                srv.in_flight -= 1


class RangeServer:
    """``with RangeServer(root) as srv: srv.url`` -> 'http://127.0.0.1:PORT'."""

    def __init__(
        self,
        root: str | os.PathLike,
        rtt_s: float = 0.0,
        bandwidth: float | None = None,
        fail_fraction: float = 0.0,
        fail_status: int = 503,
        seed: int = 0,
        deny: tuple[str, ...] = (),
    ):
        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), partial(_Handler, directory=str(root)))
        h = self.httpd
        h.daemon_threads = True
        h.request_queue_size = 128
        h.lock = threading.Lock()
        h.rtt_s, h.bandwidth, h.fail_fraction, h.fail_status = rtt_s, bandwidth, fail_fraction, fail_status
        h.rng = random.Random(seed)
        h.deny = {d.lstrip("/") for d in deny}
        h.storm: dict[str | None, list] = {}  # path (None: any) -> the faults of its next requests
        h.free_at = 0.0  # when the link has sent what it was given (bandwidth pacing)
        h.pace = self._pace
        h.next_fault = self._next_fault
        self.reset()
        self.thread = threading.Thread(target=h.serve_forever, daemon=True)

    def _next_fault(self, rel: str):
        """The fault this request gets (called under the lock): None, an HTTP status or 'reset'."""
        h = self.httpd
        if rel in h.deny:
            return 403
        for key in (rel, None):
            if h.storm.get(key):
                return h.storm[key].pop(0)
        if h.fail_fraction and h.rng.random() < h.fail_fraction:
            h.failures += 1
            return h.fail_status
        return None

    def _pace(self, nbytes: int) -> None:
        """Wait until the link (shared by all connections) has room for ``nbytes`` more."""
        h = self.httpd
        if not h.bandwidth:
            return
        with h.lock:
            now = time.perf_counter()
            h.free_at = max(h.free_at, now) + nbytes / h.bandwidth
            wait = h.free_at - now - nbytes / h.bandwidth  # send now if the link is idle, else queue
        if wait > 0:
            time.sleep(wait)

    def storm(self, n: int, fault: int | str = 503, path: str | None = None) -> None:
        """The next ``n`` GET requests (of ``path`` relative to the root, or of any path) fail with
        ``fault`` (an HTTP status or 'reset')."""
        with self.httpd.lock:
            self.httpd.storm[path] = [fault] * n

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.httpd.server_address[1]}"

    @property
    def bytes_served(self) -> int:
        return self.httpd.bytes_served

    @property
    def requests(self) -> int:
        return self.httpd.requests

    @property
    def failures(self) -> int:
        """Requests answered ``fail_status`` by ``fail_fraction`` (not the storm's)."""
        return self.httpd.failures

    @property
    def max_in_flight(self) -> int:
        return self.httpd.max_in_flight

    @property
    def paths(self) -> Counter:
        return self.httpd.paths

    def reset(self) -> None:
        h = self.httpd
        with h.lock:
            h.bytes_served = h.requests = h.failures = h.in_flight = h.max_in_flight = 0
            h.paths = Counter()

    def __enter__(self) -> RangeServer:
        self.thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()


def main(argv=None) -> None:
    """``python range_server.py ROOT [--rtt-ms ..]``: serve in a process of its own (a remote store
    does not share the reader's interpreter); prints the URL, serves until stdin closes, then prints
    its counters as JSON."""
    import argparse
    import json
    import sys

    ap = argparse.ArgumentParser(description=main.__doc__)
    ap.add_argument("root")
    ap.add_argument("--rtt-ms", type=float, default=0.0)
    ap.add_argument("--mb-s", type=float, default=0.0, help="link cap in MB/s (0: none)")
    ap.add_argument("--fail", type=float, default=0.0, help="fraction of GET requests answered --status")
    ap.add_argument("--status", type=int, default=503)
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args(argv)
    kw = dict(rtt_s=args.rtt_ms / 1e3, bandwidth=args.mb_s * 1e6 or None, fail_status=args.status, seed=args.seed)
    with RangeServer(args.root, fail_fraction=args.fail, **kw) as srv:
        print(srv.url, flush=True)
        for line in sys.stdin:  # "fail F" sets the fraction of failures; "reset" clears the counters
            cmd, _, value = line.strip().partition(" ")
            if cmd == "fail":
                srv.httpd.fail_fraction = float(value)
            elif cmd == "reset":
                srv.reset()
            print(json.dumps({"ok": cmd}), flush=True)
        stats = {"requests": srv.requests, "bytes": srv.bytes_served, "failures": srv.failures}
        print(json.dumps({**stats, "max_in_flight": srv.max_in_flight}), flush=True)


if __name__ == "__main__":
    main()
