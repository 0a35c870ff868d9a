"""Fetch one file from a URL, a local path or ``s3://bucket/key``, verified against a pinned checksum.

Guarantees, whatever the source:

- the bytes go to a temporary file beside the destination and are renamed into place only after the
  checksum matches, so a partial or wrong file never sits where a finished one is expected;
- HTTP: connection errors, timeouts, truncated bodies and 5xx answers are retried with exponential backoff;
  a retry resumes from the bytes already received when the server honours ``Range`` (206), else restarts;
  a resume answered with 416 (the kept bytes reach the file's end or beyond) restarts from byte 0, once;
  4xx answers (404, 403) fail at once;
- limits (``Limits``): a size cap (the official file's known size, else ``fetch.max_bytes``), checked against
  the announced size before the body is read and against every block received; an overall deadline over
  all attempts and waits; a minimum rate over a sliding window, so a server trickling a byte at a time
  cannot hold the stage. Each failure names the setting to change;
- the bytes go to a fixed hidden ``.part`` file (``partial``): a run killed outright (SIGKILL, power loss)
  leaves it, and the next run resumes it with ``Range`` (HTTP) or starts it over (S3, local); a failure
  the process sees removes it; an interrupt (Ctrl-C, SIGTERM) keeps it to be resumed;
- every failure raises ``FetchError`` naming the source (credentials redacted: ``pipeline.redact``), what
  went wrong and what to do;
- progress (size, rate, ETA) goes to stderr: a tqdm bar on a terminal, else a line every 10 s.

S3 goes through boto3 and honours the standard AWS variables (``AWS_ACCESS_KEY_ID``, ``AWS_PROFILE``,
``AWS_REGION``, ...) and ``AWS_ENDPOINT_URL`` for S3-compatible stores.
"""

from __future__ import annotations

import base64
import hashlib
import http.client
import json
import logging
import os
import socket
import time
import urllib.error
import urllib.request
from pathlib import Path
from urllib.parse import unquote, urlsplit, urlunsplit

from pipeline.checksum import CHUNK, Checksum, file_digests
from pipeline.progress import Bar
from pipeline.redact import redact, redact_url

from .limits import Limits, Meter, Retry, TooSlow
from .sources import FetchError, is_http, is_s3, s3_client, s3_error, split_s3

log = logging.getLogger(__name__)


def _bar(label: str, total: int | None, done: int = 0) -> Bar:
    """Bytes received, rate and ETA (``pipeline.progress.Bar``: tqdm on a terminal, a line every 10 s else)."""
    bar = Bar(label, total, unit="B", unit_scale=True, unit_divisor=1024)
    if done:
        bar.update(done)
    return bar


def _retryable_http(e: Exception) -> bool:
    if isinstance(e, urllib.error.HTTPError):
        return e.code >= 500 or e.code in (408, 429)
    return isinstance(
        e, (TooSlow, urllib.error.URLError, http.client.HTTPException, ConnectionError, socket.timeout, OSError)
    )


def _split_userinfo(url: str) -> tuple[str, dict[str, str]]:
    """``https://user:pass@host/x`` -> (``https://host/x``, a Basic ``Authorization`` header), as curl does;
    urllib itself would take ``user:pass@host`` for the host name."""
    parts = urlsplit(url)
    if "@" not in parts.netloc:
        return url, {}
    userinfo, _, hostport = parts.netloc.rpartition("@")
    user, _, password = userinfo.partition(":")
    token = base64.b64encode(f"{unquote(user)}:{unquote(password)}".encode()).decode()
    return urlunsplit(parts._replace(netloc=hostport)), {"Authorization": f"Basic {token}"}


def _http_attempt(source: str, part: Path, retry: Retry, meter: Meter, progress_label: str) -> None:
    """One GET into ``part``, resuming from its current size when the server accepts ranges. A resume the server
    answers with 416 (nothing past the kept bytes) starts over from byte 0, once: no ``Range`` then."""
    have = part.stat().st_size if part.exists() else 0
    url, auth = _split_userinfo(source)
    req = urllib.request.Request(url, headers={"User-Agent": "attncnn-pipeline", **auth})
    if have:
        req.add_header("Range", f"bytes={have}-")
    meter.new_attempt()
    try:
        resp = urllib.request.urlopen(req, timeout=min(retry.timeout_s, meter.remaining()))
    except urllib.error.HTTPError as e:
        if e.code != 416 or not have:
            raise
        e.close()
        # the kept bytes reach the end of the remote file or beyond: a run killed between its last byte and the
        # checksum, or a file that changed since; either way the checksum of a fresh copy decides
        log.warning(
            "%s: the server has no bytes past the %s kept in %s (HTTP 416 Range Not Satisfiable): the kept file is "
            "complete or stale; downloading it again from the start",
            redact_url(source),
            f"{have:,}",
            part,
        )
        part.unlink()
        return _http_attempt(source, part, retry, meter, progress_label)
    with resp as r:
        if have and r.status == 206:
            start = int(r.headers.get("Content-Range", "bytes 0-").split()[1].split("-")[0])
            if start != have:
                raise http.client.HTTPException(f"server resumed at byte {start}, not {have}")
            mode = "ab"
        else:  # 200: the server sent the whole file (no range support); start over
            have, mode = 0, "wb"
        length = r.headers.get("Content-Length")
        expected = have + int(length) if length is not None else None
        if expected is not None:
            meter.check_size(expected, announced=True)
        prog = _bar(progress_label, expected, have)
        with open(part, mode) as f:
            # read1: whatever one socket read gives, so the limits are checked even when a server trickles
            while block := r.read1(CHUNK):
                f.write(block)
                prog.update(len(block))
                meter.add(len(block), int(prog.n))
        prog.close()
    got = part.stat().st_size
    if expected is not None and got != expected:
        raise http.client.IncompleteRead(b"", expected - got)


def _download_http(url: str, part: Path, retry: Retry, meter: Meter, label: str) -> None:
    shown = redact_url(url)
    last: Exception | None = None
    for attempt in range(retry.attempts):
        if attempt:
            delay = min(retry.backoff_s * 2 ** (attempt - 1), 30.0, meter.remaining())
            log.warning("%s: attempt %d failed (%s); retrying in %.1f s", shown, attempt, redact(str(last)), delay)
            time.sleep(delay)
        try:
            _http_attempt(url, part, retry, meter, label)
            return
        except urllib.error.HTTPError as e:
            if not _retryable_http(e):
                raise FetchError(
                    f"{shown}: HTTP {e.code} {e.reason}; check the URL ({meter.limits.setting}.source) or use a "
                    "mirror, a local file or s3://bucket/key"
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
        else redact(str(last))
    )
    raise FetchError(
        f"{shown}: failed after {retry.attempts} attempts: {what}; check the network or the server, then rerun "
        f"(raise {meter.limits.setting}.retries for a flaky link)"
    )


def _download_s3(uri: str, part: Path, meter: Meter, label: str) -> None:
    from botocore.exceptions import BotoCoreError, ClientError

    bucket, key = split_s3(uri)
    try:
        client = s3_client()
        size = client.head_object(Bucket=bucket, Key=key)["ContentLength"]
        meter.check_size(size, announced=True)
        prog = _bar(label, size)

        def progress(n: int) -> None:
            prog.update(n)
            meter.add(n, int(prog.n))

        client.download_file(bucket, key, str(part), Callback=progress)
        prog.close()
    except (BotoCoreError, ClientError) as e:
        raise s3_error(redact_url(uri), e) from None


def _copy_local(src: str, part: Path, meter: Meter, label: str) -> None:
    path = Path(src.removeprefix("file://")).expanduser()
    if not path.is_file():
        raise FetchError(f"{src}: no such file; give an existing file, an http(s):// URL or s3://bucket/key")
    meter.check_size(path.stat().st_size, announced=True)
    prog = _bar(label, path.stat().st_size)
    with open(path, "rb") as fi, open(part, "wb") as fo:
        while block := fi.read(CHUNK):
            fo.write(block)
            prog.update(len(block))
            meter.add(len(block), int(prog.n))
    prog.close()


def _resumable(partial: Path, source: str, checksum: Checksum) -> bool:
    """Whether ``partial`` holds the start of this very download (same source and checksum), left by a run
    that was killed; anything else there is removed."""
    stamp = partial.with_name(partial.name + ".json")
    want = {"source_sha256": hashlib.sha256(source.encode()).hexdigest(), "checksum": str(checksum)}
    try:
        ok = is_http(source) and partial.is_file() and json.loads(stamp.read_text()) == want
    except (OSError, ValueError):
        ok = False
    if not ok:
        partial.unlink(missing_ok=True)
        stamp.write_text(json.dumps(want))
    return ok


def _drop(partial: Path) -> None:
    partial.unlink(missing_ok=True)
    partial.with_name(partial.name + ".json").unlink(missing_ok=True)


def fetch_file(
    source: str,
    dest: str | Path,
    checksum: Checksum,
    retry: Retry = Retry(),
    limits: Limits = Limits(),
    partial: str | Path | None = None,
) -> dict[str, str]:
    """Fetch ``source`` to ``dest``, verified against ``checksum``; returns the file's md5 and sha256.

    The bytes go to ``partial`` (default: a hidden ``.part`` beside ``dest``) and are moved onto ``dest``
    only once verified."""
    dest, shown = Path(dest), redact_url(source)
    partial = Path(partial) if partial is not None else dest.with_name(f".{dest.name}.part")
    partial.parent.mkdir(parents=True, exist_ok=True)
    meter, label = Meter(limits, shown), f"fetch {dest.name}"
    try:
        for resumed in (_resumable(partial, source, checksum), False):
            if resumed:
                log.info(
                    "%s: resuming the %s bytes a killed run left in %s", shown, f"{partial.stat().st_size:,}", partial
                )
            if is_http(source):
                _download_http(source, partial, retry, meter, label)
            elif is_s3(source):
                _download_s3(source, partial, meter, label)
            elif "://" in source and not source.startswith("file://"):
                raise FetchError(f"{shown}: unsupported scheme; use http(s)://, s3:// or a local path")
            else:
                _copy_local(source, partial, meter, label)
            digests = file_digests(partial)
            if digests[checksum.algorithm] == checksum.hexdigest:
                break
            if resumed:  # the kept start may be what is wrong: once more from byte 0
                log.warning(
                    "%s: the resumed file does not match %s; downloading it again from the start", shown, checksum
                )
                _drop(partial)
                _resumable(partial, source, checksum)
                continue
            raise FetchError(
                f"{shown}: checksum mismatch: expected {checksum}, got {checksum.algorithm}:"
                f"{digests[checksum.algorithm]} ({partial.stat().st_size} bytes); the file is corrupt, truncated or "
                f"not the one pinned; fetch it again or from another source, or set {limits.setting}.checksum "
                "if you deliberately use a different file. Nothing was kept."
            )
        os.replace(partial, dest)
        _drop(partial)
    except Exception:
        _drop(partial)  # a failure seen here: nothing kept (an interrupt keeps the partial file to resume)
        raise
    return digests
