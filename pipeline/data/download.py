"""Fetch one file from a URL, a local path or ``s3://bucket/key``, verified against a pinned checksum.

Guarantees, whatever the source:

- the bytes go to a temporary file beside the destination and are renamed into place only after the
  checksum matches, so a partial or wrong file never sits where a finished one is expected;
- HTTP: connection errors, timeouts, truncated bodies and 5xx answers are retried with exponential backoff;
  a retry resumes from the bytes already received when the server honours ``Range`` (206), else restarts;
  4xx answers (404, 403) fail at once;
- every failure raises ``FetchError`` naming the source, what went wrong and what to do, and removes the
  temporary file;
- a progress line (size, rate, ETA) goes to stderr.

S3 goes through boto3 and honours the standard AWS variables (``AWS_ACCESS_KEY_ID``, ``AWS_PROFILE``,
``AWS_REGION``, ...) and ``AWS_ENDPOINT_URL`` for S3-compatible stores.
"""

from __future__ import annotations

import hashlib
import http.client
import socket
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from pipeline.io import atomic_path

from .errors import DataError

CHUNK = 1 << 20
ALGORITHMS = ("md5", "sha256")


class FetchError(DataError):
    """A download or copy that could not be completed and verified; nothing was left at the destination."""


@dataclass(frozen=True)
class Checksum:
    algorithm: str  # md5 | sha256
    hexdigest: str

    @classmethod
    def parse(cls, text: str) -> Checksum:
        """``"md5:<32 hex>"`` or ``"sha256:<64 hex>"``."""
        algo, _, digest = text.partition(":")
        want = {"md5": 32, "sha256": 64}.get(algo)
        if want is None or len(digest) != want or any(c not in "0123456789abcdef" for c in digest.lower()):
            raise ValueError(f"checksum {text!r}: expected 'md5:<32 hex digits>' or 'sha256:<64 hex digits>'")
        return cls(algo, digest.lower())

    def __str__(self) -> str:
        return f"{self.algorithm}:{self.hexdigest}"


@dataclass(frozen=True)
class Retry:
    attempts: int = 5
    backoff_s: float = 1.0  # sleep backoff_s * 2**i before attempt i+1, capped at 30 s
    timeout_s: float = 60.0  # per connection/read


def is_s3(uri: str) -> bool:
    return uri.startswith("s3://")


def is_http(uri: str) -> bool:
    return uri.startswith(("http://", "https://"))


def split_s3(uri: str) -> tuple[str, str]:
    bucket, _, key = uri.removeprefix("s3://").partition("/")
    if not bucket:
        raise FetchError(f"{uri}: not an S3 URI; expected s3://bucket/key")
    return bucket, key


def s3_client():
    """A boto3 S3 client from the standard AWS settings (and ``AWS_ENDPOINT_URL``, which boto3 reads itself).

    A new session each time: the environment is read now, not when some earlier client was made."""
    import boto3

    return boto3.session.Session().client("s3")


def s3_error(uri: str, e: Exception) -> FetchError:
    """Turn a botocore error into a message that says what to check."""
    from botocore.exceptions import ClientError, NoCredentialsError, PartialCredentialsError

    if isinstance(e, (NoCredentialsError, PartialCredentialsError)):
        return FetchError(
            f"{uri}: no AWS credentials found ({e}); set AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY, or AWS_PROFILE, "
            "(and AWS_ENDPOINT_URL for an S3-compatible store)"
        )
    if isinstance(e, ClientError):
        code = str(e.response.get("Error", {}).get("Code", "?"))
        if code in ("404", "NoSuchKey", "NotFound"):
            return FetchError(f"{uri}: no such key in the bucket (S3 {code}); check the bucket, key and endpoint")
        if code in ("NoSuchBucket",):
            return FetchError(f"{uri}: no such bucket (S3 {code}); check the bucket name and AWS_ENDPOINT_URL")
        if code in ("403", "AccessDenied", "InvalidAccessKeyId", "SignatureDoesNotMatch"):
            return FetchError(f"{uri}: access denied (S3 {code}); check the credentials and the bucket policy")
        return FetchError(f"{uri}: S3 error {code}: {e}")
    return FetchError(f"{uri}: {type(e).__name__}: {e}")


class Progress:
    """A progress line on stderr: bytes done / total, rate and ETA; redrawn at most twice a second."""

    def __init__(self, label: str, total: int | None, stream=None) -> None:
        self.label, self.total, self.stream = label, total, stream or sys.stderr
        self.start = self.last = time.monotonic()
        self.done = 0
        self.tty = getattr(stream, "isatty", lambda: False)()

    def update(self, n: int) -> None:
        self.done += n
        now = time.monotonic()
        if now - self.last >= (0.5 if self.tty else 10.0):
            self.last = now
            self._draw(now)

    def _draw(self, now: float, end: str = "") -> None:
        rate = self.done / max(now - self.start, 1e-9)
        mb = self.done / 1e6
        if self.total:
            eta = (self.total - self.done) / rate if rate > 0 else float("inf")
            text = f"{self.label}: {mb:.1f}/{self.total / 1e6:.1f} MB, {rate / 1e6:.1f} MB/s, ETA {eta:.0f} s"
        else:
            text = f"{self.label}: {mb:.1f} MB, {rate / 1e6:.1f} MB/s"
        self.stream.write(("\r" if self.tty else "") + text + ("\n" if not self.tty or end else ""))
        self.stream.flush()

    def close(self) -> None:
        self._draw(time.monotonic(), end="\n")


def _retryable_http(e: Exception) -> bool:
    if isinstance(e, urllib.error.HTTPError):
        return e.code >= 500 or e.code in (408, 429)
    return isinstance(e, (urllib.error.URLError, http.client.HTTPException, ConnectionError, socket.timeout, OSError))


def _http_attempt(url: str, part: Path, retry: Retry, progress_label: str) -> None:
    """One GET into ``part``, resuming from its current size when the server accepts ranges."""
    have = part.stat().st_size if part.exists() else 0
    req = urllib.request.Request(url, headers={"User-Agent": "attncnn-pipeline"})
    if have:
        req.add_header("Range", f"bytes={have}-")
    with urllib.request.urlopen(req, timeout=retry.timeout_s) as r:
        if have and r.status == 206:
            start = int(r.headers.get("Content-Range", "bytes 0-").split()[1].split("-")[0])
            if start != have:
                raise http.client.HTTPException(f"server resumed at byte {start}, not {have}")
            mode = "ab"
        else:  # 200: the server sent the whole file (no range support); start over
            have, mode = 0, "wb"
        length = r.headers.get("Content-Length")
        expected = have + int(length) if length is not None else None
        prog = Progress(progress_label, expected)
        prog.done = have
        with open(part, mode) as f:
            while block := r.read(CHUNK):
                f.write(block)
                prog.update(len(block))
        prog.close()
    got = part.stat().st_size
    if expected is not None and got != expected:
        raise http.client.IncompleteRead(b"", expected - got)


def _download_http(url: str, part: Path, retry: Retry, label: str, log: Callable[[str], None]) -> None:
    last: Exception | None = None
    for attempt in range(retry.attempts):
        if attempt:
            delay = min(retry.backoff_s * 2 ** (attempt - 1), 30.0)
            log(f"{url}: attempt {attempt} failed ({last}); retrying in {delay:.1f} s")
            time.sleep(delay)
        try:
            _http_attempt(url, part, retry, label)
            return
        except urllib.error.HTTPError as e:
            if not _retryable_http(e):
                raise FetchError(
                    f"{url}: HTTP {e.code} {e.reason}; check the URL (datasets.<name>.fetch.source) or use a mirror, "
                    "a local file or s3://bucket/key"
                ) from None
            last = e
        except Exception as e:
            if not _retryable_http(e):
                raise
            last = e
    have = part.stat().st_size if part.exists() else 0
    what = (
        f"transfer truncated: {have} bytes received, {last.expected} more expected"
        if isinstance(last, http.client.IncompleteRead)
        else str(last)
    )
    raise FetchError(
        f"{url}: failed after {retry.attempts} attempts: {what}; check the network or the server, then rerun "
        "(raise datasets.<name>.fetch.retries for a flaky link)"
    )


def _download_s3(uri: str, part: Path, label: str) -> None:
    from botocore.exceptions import BotoCoreError, ClientError

    bucket, key = split_s3(uri)
    try:
        client = s3_client()
        size = client.head_object(Bucket=bucket, Key=key)["ContentLength"]
        prog = Progress(label, size)
        client.download_file(bucket, key, str(part), Callback=prog.update)
        prog.close()
    except (BotoCoreError, ClientError) as e:
        raise s3_error(uri, e) from None


def _copy_local(src: str, part: Path, label: str) -> None:
    path = Path(src.removeprefix("file://")).expanduser()
    if not path.is_file():
        raise FetchError(f"{src}: no such file; give an existing file, an http(s):// URL or s3://bucket/key")
    prog = Progress(label, path.stat().st_size)
    with open(path, "rb") as fi, open(part, "wb") as fo:
        while block := fi.read(CHUNK):
            fo.write(block)
            prog.update(len(block))
    prog.close()


def file_digests(path: str | Path, algorithms: tuple[str, ...] = ALGORITHMS) -> dict[str, str]:
    hs = {a: hashlib.new(a) for a in algorithms}
    with open(path, "rb") as f:
        while block := f.read(CHUNK):
            for h in hs.values():
                h.update(block)
    return {a: h.hexdigest() for a, h in hs.items()}


def fetch_file(
    source: str,
    dest: str | Path,
    checksum: Checksum,
    retry: Retry = Retry(),
    log: Callable[[str], None] = lambda m: print(m, file=sys.stderr),
) -> dict[str, str]:
    """Fetch ``source`` to ``dest``, verified against ``checksum``; returns the file's md5 and sha256."""
    dest = Path(dest)
    with atomic_path(dest) as tmp:
        label = f"fetch {dest.name}"
        if is_http(source):
            _download_http(source, tmp, retry, label, log)
        elif is_s3(source):
            _download_s3(source, tmp, label)
        elif "://" in source and not source.startswith("file://"):
            raise FetchError(f"{source}: unsupported scheme; use http(s)://, s3:// or a local path")
        else:
            _copy_local(source, tmp, label)
        digests = file_digests(tmp)
        if digests[checksum.algorithm] != checksum.hexdigest:
            raise FetchError(
                f"{source}: checksum mismatch: expected {checksum}, got {checksum.algorithm}:"
                f"{digests[checksum.algorithm]} ({tmp.stat().st_size} bytes); the file is corrupt, truncated or "
                "not the one pinned; fetch it again or from another source, or set datasets.<name>.fetch.checksum "
                "if you deliberately use a different file. Nothing was kept."
            )
    return digests
