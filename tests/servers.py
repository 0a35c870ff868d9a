"""Real servers on 127.0.0.1 for the download tests: an HTTP file server with failure modes, and moto's S3."""

from __future__ import annotations

import base64
import contextlib
import socket
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import urlsplit


@dataclass
class Behaviour:
    """How the server treats requests; tests change it between fetches."""

    fail_first: int = 0  # answer this many requests with HTTP 500 first
    truncate_at: int | None = None  # send the full Content-Length but close after this many body bytes
    truncate_times: int = 1 << 30  # ... for this many requests (then serve normally)
    ranges: bool = True  # honour Range requests (206; 416 past the end) or ignore them (200, whole file)
    throttle: tuple[int, float] | None = None  # send the body in blocks of this many bytes, sleeping between
    endless: bool = False  # 200 with no Content-Length and zeros for ever
    announce: int | None = None  # claim this Content-Length (then send the file as it is)
    auth: str | None = None  # require HTTP Basic credentials "user:password" (else 401)
    requests: list[dict] = field(default_factory=list)  # what was asked: path, range, status


class FileServer:
    """Serves files from ``root`` at ``http://127.0.0.1:<port>/<name>``; 404 for anything else."""

    def __init__(self, root: Path) -> None:
        self.root, self.behaviour = root, Behaviour()
        server = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args) -> None:
                pass

            def do_GET(self) -> None:
                b = server.behaviour
                rng = self.headers.get("Range")
                rec = {"path": self.path, "range": rng}
                b.requests.append(rec)
                if b.auth is not None and self.headers.get("Authorization") != basic(b.auth):
                    rec["status"] = 401
                    self.send_error(401)
                    return
                if b.endless:
                    rec["status"] = 200
                    self.send_response(200)
                    self.end_headers()
                    with contextlib.suppress(OSError):
                        while True:
                            self.wfile.write(bytes(1 << 16))
                    return
                if b.fail_first > 0:
                    b.fail_first -= 1
                    rec["status"] = 500
                    self.send_error(500, "planned failure")
                    return
                path = server.root / urlsplit(self.path).path.lstrip("/")
                if not path.is_file():
                    rec["status"] = 404
                    self.send_error(404)
                    return
                data = path.read_bytes()
                start = 0
                if rng and b.ranges:
                    start = int(rng.removeprefix("bytes=").split("-")[0])
                    if start >= len(data):  # as real servers answer a range with no bytes in it
                        rec["status"] = 416
                        self.send_response(416)
                        self.send_header("Content-Range", f"bytes */{len(data)}")
                        self.send_header("Content-Length", "0")
                        self.end_headers()
                        return
                    self.send_response(206)
                    self.send_header("Content-Range", f"bytes {start}-{len(data) - 1}/{len(data)}")
                else:
                    self.send_response(200)
                body = data[start:]
                self.send_header("Content-Length", str(b.announce or len(body)))
                self.send_header("Accept-Ranges", "bytes" if b.ranges else "none")
                self.end_headers()
                rec["status"] = 206 if start else 200
                if b.truncate_at is not None and b.truncate_times > 0:
                    b.truncate_times -= 1
                    self.wfile.write(body[: b.truncate_at])
                    self.wfile.flush()
                    self.close_connection = True
                    with contextlib.suppress(OSError):
                        self.connection.shutdown(socket.SHUT_RDWR)
                    return
                n, pause = b.throttle or (len(body) or 1, 0.0)
                with contextlib.suppress(OSError):  # the client gave up (a cap, a deadline): not a server error
                    for i in range(0, len(body), n):
                        self.wfile.write(body[i : i + n])
                        self.wfile.flush()
                        if pause:
                            time.sleep(pause)

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}"
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)
        self.thread.start()

    def close(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()


def basic(userinfo: str) -> str:
    return "Basic " + base64.b64encode(userinfo.encode()).decode()


@contextlib.contextmanager
def file_server(root: Path) -> Iterator[FileServer]:
    s = FileServer(root)
    try:
        yield s
    finally:
        s.close()


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


S3_ENV = {
    "AWS_ACCESS_KEY_ID": "testing",
    "AWS_SECRET_ACCESS_KEY": "testing",
    "AWS_DEFAULT_REGION": "us-east-1",
    "AWS_EC2_METADATA_DISABLED": "true",
}


@contextlib.contextmanager
def moto_s3() -> Iterator[str]:
    """A moto S3 server on 127.0.0.1; yields its endpoint URL."""
    from moto.server import ThreadedMotoServer

    port = free_port()
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
    server.start()
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.stop()
