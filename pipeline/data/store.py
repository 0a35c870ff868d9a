"""Read-only access to a folder or an S3 prefix of source files (ImageNet's): listing, ranged reads and
streams, the same calls for both; and a stream reader that hashes what passes through it."""

from __future__ import annotations

import contextlib
import hashlib
import io
from collections.abc import Iterator
from pathlib import Path
from typing import Any, BinaryIO

from pipeline.checksum import CHUNK

from .sources import FetchError, is_s3, s3_client, s3_error, split_s3


class Store:
    """Read-only access to a local folder or ``s3://bucket/prefix``: listing, ranged reads and streams."""

    def __init__(self, uri: str) -> None:
        self.uri = uri.rstrip("/")
        if is_s3(uri):
            self.bucket, key = split_s3(self.uri)
            self.prefix = f"{key}/" if key else ""
            self._client = None
        else:
            self.root = Path(uri).expanduser()
            if not self.root.is_dir():
                raise FetchError(f"{uri}: no such folder; give a folder or s3://bucket/prefix holding ImageNet")

    @property
    def client(self):
        if self._client is None:
            self._client = s3_client()
        return self._client

    def __getstate__(self) -> dict[str, Any]:  # boto3 clients do not pickle; Ray tasks make their own
        return {**self.__dict__, "_client": None} if is_s3(self.uri) else self.__dict__

    def where(self, rel: str) -> str:
        return f"{self.uri}/{rel}"

    def list(self) -> dict[str, int]:
        """Every file under the root: relative path -> size."""
        if not is_s3(self.uri):
            return {str(p.relative_to(self.root)): p.stat().st_size for p in self.root.rglob("*") if p.is_file()}
        from botocore.exceptions import BotoCoreError, ClientError

        out: dict[str, int] = {}
        try:
            for page in self.client.get_paginator("list_objects_v2").paginate(Bucket=self.bucket, Prefix=self.prefix):
                for o in page.get("Contents", []):
                    if not o["Key"].endswith("/"):
                        out[o["Key"][len(self.prefix) :]] = o["Size"]
        except (BotoCoreError, ClientError) as e:
            raise s3_error(self.uri, e) from None
        if not out:
            raise FetchError(f"{self.uri}: no objects under this prefix; check the bucket, prefix and AWS_ENDPOINT_URL")
        return out

    def read(self, rel: str, start: int = 0, length: int | None = None) -> bytes:
        if not is_s3(self.uri):
            with open(self.root / rel, "rb") as f:
                f.seek(start)
                return f.read() if length is None else f.read(length)
        from botocore.exceptions import BotoCoreError, ClientError

        rng = f"bytes={start}-" if length is None else f"bytes={start}-{start + length - 1}"
        try:
            return self.client.get_object(Bucket=self.bucket, Key=self.prefix + rel, Range=rng)["Body"].read()
        except (BotoCoreError, ClientError) as e:
            raise s3_error(self.where(rel), e) from None

    @contextlib.contextmanager
    def stream(self, rel: str) -> Iterator[BinaryIO]:
        if not is_s3(self.uri):
            with open(self.root / rel, "rb") as f:
                yield f
            return
        from botocore.exceptions import BotoCoreError, ClientError

        try:
            body = self.client.get_object(Bucket=self.bucket, Key=self.prefix + rel)["Body"]
        except (BotoCoreError, ClientError) as e:
            raise s3_error(self.where(rel), e) from None
        try:
            yield body
        finally:
            body.close()


class HashingReader(io.RawIOBase):
    """A read-only stream that hashes (md5 and sha256) everything read through it."""

    def __init__(self, raw: BinaryIO) -> None:
        self.raw, self.md5, self.sha256, self.pos = raw, hashlib.md5(), hashlib.sha256(), 0

    def readable(self) -> bool:
        return True

    def read(self, n: int = -1) -> bytes:
        b = self.raw.read() if n is None or n < 0 else self.raw.read(n)
        self.md5.update(b)
        self.sha256.update(b)
        self.pos += len(b)
        return b

    def readinto(self, buf) -> int:
        b = self.read(len(buf))
        buf[: len(b)] = b
        return len(b)

    def drain(self) -> dict[str, str]:
        while self.read(CHUNK):
            pass
        return {"md5": self.md5.hexdigest(), "sha256": self.sha256.hexdigest(), "size": self.pos}
