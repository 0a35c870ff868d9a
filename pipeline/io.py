"""Atomic outputs and checksums: a partial file never sits where a finished one is expected."""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any


@contextlib.contextmanager
def atomic_path(path: str | Path) -> Iterator[Path]:
    """Yield a temporary path beside ``path``; on success it is renamed onto ``path`` (file or directory).

    On error the temporary is removed and ``path`` is left as it was.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent))
    target = tmp / path.name
    try:
        yield target
        if path.is_dir() and not path.is_symlink():
            shutil.rmtree(path)
        os.replace(target, path)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def write_json(path: str | Path, obj: Any) -> None:
    with atomic_path(path) as tmp:
        tmp.write_text(json.dumps(obj, indent=2, sort_keys=True, default=str) + "\n")


def read_json(path: str | Path) -> Any:
    """A local file, or a URI (``s3://bucket/key``) through ``pyarrow.fs``."""
    if "://" not in str(path):
        return json.loads(Path(path).read_text())
    fs, p = filesystem(str(path))
    with fs.open_input_stream(p) as f:
        return json.loads(f.read())


def filesystem(path: str | Path):
    """(pyarrow filesystem, path inside it) for a local path or a URI. S3 honours ``AWS_ENDPOINT_URL``, so an
    S3-compatible store is a setting, not a code change."""
    import pyarrow.fs as pafs

    if "://" in str(path):
        return pafs.FileSystem.from_uri(str(path))
    return pafs.LocalFileSystem(), str(Path(path).resolve())


def join(base: str | Path, *parts: str) -> str:
    """``base/part/...`` for a local path or a URI alike."""
    return "/".join([str(base).rstrip("/"), *parts])


def sha256_file(path: str | Path, chunk: int = 1 << 20) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()


def sha256_tree(root: str | Path) -> str:
    """One checksum over every file under ``root`` (relative names and contents, in sorted order)."""
    root = Path(root)
    h = hashlib.sha256()
    for p in sorted(x for x in root.rglob("*") if x.is_file()):
        h.update(str(p.relative_to(root)).encode() + b"\0" + sha256_file(p).encode())
    return h.hexdigest()
