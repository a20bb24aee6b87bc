"""A local stand-in for the CDS "retrieve" API (ecmwf-datastores-client's processes/jobs protocol).

It binds 127.0.0.1 on a free port and speaks what ``cdsapi`` 0.7 (through
ecmwf-datastores-client) calls:

    GET  /api/catalogue/v1/messages                      -> {"messages": []}
    GET  /api/retrieve/v1/processes/{dataset}            -> the process
    POST /api/retrieve/v1/processes/{dataset}/execution  -> a job (status accepted), link rel=monitor
    GET  /api/retrieve/v1/jobs/{id}                      -> its status (scripted sequence), link rel=results
    GET  /api/retrieve/v1/jobs/{id}/results              -> asset {href, file:size, type}
    HEAD/GET /download/{id}.grib                         -> the GRIB, with HTTP range support

Scripted behaviour: ``post_failures`` (HTTP codes answered to successive submissions),
``statuses`` (what successive status polls report), ``drop_after`` (the first download sends that
many bytes and closes the connection), ``payload`` (request -> GRIB bytes, e.g. real files from
../shared/data, or the wrong field). It counts requests and the most jobs in flight at once.
"""

from __future__ import annotations

import json
import threading
import uuid
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer


class FakeCds:
    def __init__(self, payload, key: str = "test-token-0123456789"):
        self.payload = payload
        self.key = key
        self.post_failures: list[int] = []
        self.statuses: list[str] = ["successful"]
        self.drop_after: int | None = None
        self.hold_s = 0.0  # how long a job reports 'running' before 'successful' (concurrency tests)
        self.jobs: dict[str, dict] = {}
        self.log: list[tuple[str, str, dict]] = []
        self.active = 0
        self.max_active = 0
        self.lock = threading.Lock()
        self.server = ThreadingHTTPServer(("127.0.0.1", 0), _handler(self))
        self.server.daemon_threads = True
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server.server_address[1]}/api"

    def __enter__(self):
        self.thread.start()
        return self

    def __exit__(self, *exc):
        self.server.shutdown()
        self.server.server_close()

    def count(self, method: str, prefix: str) -> int:
        return sum(1 for m, p, _ in self.log if m == method and p.startswith(prefix))

    @property
    def submissions(self) -> list[dict]:
        return [body for m, p, body in self.log if m == "POST" and p.endswith("/execution") and body]


def _handler(cds: FakeCds):
    import time

    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def log_message(self, *args):  # keep test output clean
            pass

        def _json(self, code: int, obj) -> None:
            body = json.dumps(obj).encode()
            self.send_response(code)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def _base(self) -> str:
            return f"http://127.0.0.1:{cds.server.server_address[1]}"

        def _authorized(self) -> bool:
            if self.headers.get("PRIVATE-TOKEN") != cds.key:
                self._json(401, {"title": "Authentication failed", "detail": "invalid token"})
                return False
            return True

        def do_GET(self):
            self._get(head=False)

        def do_HEAD(self):
            self._get(head=True)

        def _get(self, head: bool):
            path = self.path.split("?")[0]
            with cds.lock:
                cds.log.append(("HEAD" if head else "GET", path, {"range": self.headers.get("Range")}))
            if path == "/api/catalogue/v1/messages":
                return self._json(200, {"messages": []})
            if path.startswith("/api/retrieve/v1/processes/"):
                return self._json(200, {"id": path.rsplit("/", 1)[1], "links": []})
            if path.startswith("/api/retrieve/v1/jobs/"):
                if not self._authorized():
                    return None
                parts = path.split("/")
                job = cds.jobs[parts[5]]
                if len(parts) > 6 and parts[6] == "results":
                    return self._json(
                        200,
                        {
                            "asset": {
                                "value": {
                                    "href": f"{self._base()}/download/{job['id']}.grib",
                                    "file:size": len(job["data"]),
                                    "type": "application/x-grib",
                                }
                            }
                        },
                    )
                return self._json(200, self._status(job))
            if path.startswith("/download/"):
                return self._download(cds.jobs[path.split("/")[2].split(".")[0]], head)
            return self._json(404, {"title": "not found"})

        def _status(self, job) -> dict:
            with cds.lock:
                if job["polls"] < len(cds.statuses):
                    status = cds.statuses[job["polls"]]
                else:
                    status = cds.statuses[-1]
                if status == "successful" and time.monotonic() - job["created"] < cds.hold_s:
                    status = "running"
                job["polls"] += 1
            url = f"{self._base()}/api/retrieve/v1/jobs/{job['id']}"
            return {
                "jobID": job["id"],
                "status": status,
                "processID": job["dataset"],
                "metadata": {"log": [], "request": {"ids": job["request"]}},
                "links": [{"rel": "self", "href": url}, {"rel": "results", "href": f"{url}/results"}],
            }

        def _download(self, job, head: bool):
            data = job["data"]
            start = 0
            rng = self.headers.get("Range")
            if rng:
                start = int(rng.split("=")[1].split("-")[0])
                self.send_response(206)
                self.send_header("Content-Range", f"bytes {start}-{len(data) - 1}/{len(data)}")
            else:
                self.send_response(200)
            self.send_header("Accept-Ranges", "bytes")
            self.send_header("Content-Type", "application/x-grib")
            self.send_header("Content-Length", str(len(data) - start))
            self.end_headers()
            if head:
                return
            body = data[start:]
            with cds.lock:
                drop, cds.drop_after = cds.drop_after, None
            if drop is not None:
                self.wfile.write(body[:drop])
                self.wfile.flush()
                self.close_connection = True
                self.connection.shutdown(2)
                return
            self.wfile.write(body)
            with cds.lock:
                if not job["done"]:
                    job["done"] = True
                    cds.active -= 1

        def do_POST(self):
            path = self.path.split("?")[0]
            length = int(self.headers.get("Content-Length", 0))
            body = json.loads(self.rfile.read(length) or b"{}")
            with cds.lock:
                cds.log.append(("POST", path, body.get("inputs", {})))
            if not self._authorized():
                return None
            with cds.lock:
                failure = cds.post_failures.pop(0) if cds.post_failures else None
            if failure is not None:
                return self._json(failure, {"title": f"scripted failure {failure}"})
            dataset = path.split("/")[5]
            inputs = body["inputs"]
            job_id = uuid.uuid4().hex[:12]
            with cds.lock:
                cds.jobs[job_id] = {
                    "id": job_id,
                    "dataset": dataset,
                    "request": inputs,
                    "polls": 0,
                    "data": cds.payload(dataset, inputs),
                    "created": time.monotonic(),
                    "done": False,
                }
                cds.active += 1
                cds.max_active = max(cds.max_active, cds.active)
            url = f"{self._base()}/api/retrieve/v1/jobs/{job_id}"
            return self._json(
                201,
                {
                    "jobID": job_id,
                    "status": "accepted",
                    "processID": dataset,
                    "links": [{"rel": "monitor", "href": url}],
                },
            )

    return Handler


def subset(path, short_names=None, levels=None, max_messages=None) -> bytes:
    """Raw bytes of the messages of a real GRIB file with these shortNames/levels (as MARS would cut)."""
    import eccodes

    out = []
    with open(path, "rb") as f:
        while (gid := eccodes.codes_grib_new_from_file(f)) is not None:
            try:
                ok = (short_names is None or eccodes.codes_get_string(gid, "shortName") in short_names) and (
                    levels is None or eccodes.codes_get_long(gid, "level") in levels
                )
                if ok:
                    out.append(eccodes.codes_get_message(gid))
            finally:
                eccodes.codes_release(gid)
            if max_messages and len(out) >= max_messages:
                break
    return b"".join(out)
