"""Atomic outputs and checksums: a partial file never sits where a finished one is expected."""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import re
import shutil
import socket
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pyarrow.fs as pafs

from pipeline.checksum import file_digests

_HOST = re.sub(r"[^A-Za-z0-9-]", "-", socket.gethostname())
_TMP = re.compile(r"^(?P<host>[A-Za-z0-9-]+)-(?P<pid>\d+)-[A-Za-z0-9_]+\.tmp$")


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # someone else's live process
        return True
    return True


def remove_stale(path: str | Path) -> list[Path]:
    """Remove the temporaries of ``path`` that a killed process left (``.<name>.<host>-<pid>-*.tmp`` of this
    host whose process is gone); a live process's, or another host's on a shared disk, are left alone."""
    path = Path(path)
    gone = []
    prefix = f".{path.name}."
    with contextlib.suppress(FileNotFoundError):
        for p in path.parent.iterdir():
            m = _TMP.match(p.name[len(prefix) :]) if p.name.startswith(prefix) else None
            if m and m["host"] == _HOST and not _alive(int(m["pid"])):
                shutil.rmtree(p, ignore_errors=True)
                gone.append(p)
    return gone


@contextlib.contextmanager
def scratch_dir(path: str | Path) -> Iterator[Path]:
    """Yield a new temporary directory beside ``path`` (``.<name>.<host>-<pid>-*.tmp``), removed on exit. A
    process killed outright leaves it behind; the next ``scratch_dir`` or ``atomic_path`` of the same ``path``
    removes it (``remove_stale``)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    remove_stale(path)
    tmp = Path(tempfile.mkdtemp(prefix=f".{path.name}.{_HOST}-{os.getpid()}-", suffix=".tmp", dir=path.parent))
    try:
        yield tmp
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


@contextlib.contextmanager
def atomic_path(path: str | Path) -> Iterator[Path]:
    """Yield a temporary path beside ``path``; on success it is renamed onto ``path`` (file or directory).

    On error the temporary is removed and ``path`` is left as it was. A process killed outright (SIGKILL)
    cannot clean up: its temporary is named after its host and pid, and the next ``atomic_path`` of the same
    ``path`` removes it (``remove_stale``). The names (``.<name>.*.tmp``) are git- and DVC-ignored.
    """
    path = Path(path)
    with scratch_dir(path) as tmp:
        target = tmp / path.name
        yield target
        if path.is_dir() and not path.is_symlink():
            shutil.rmtree(path)
        os.replace(target, path)


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
    if "://" in str(path):
        return pafs.FileSystem.from_uri(str(path))
    return pafs.LocalFileSystem(), str(Path(path).resolve())


def join(base: str | Path, *parts: str) -> str:
    """``base/part/...`` for a local path or a URI alike."""
    return "/".join([str(base).rstrip("/"), *parts])


def sha256_file(path: str | Path) -> str:
    return file_digests(path, ("sha256",))["sha256"]


def sha256_tree(root: str | Path) -> str:
    """One checksum over every file under ``root`` (relative names and contents, in sorted order)."""
    root = Path(root)
    h = hashlib.sha256()
    for p in sorted(x for x in root.rglob("*") if x.is_file()):
        h.update(str(p.relative_to(root)).encode() + b"\0" + sha256_file(p).encode())
    return h.hexdigest()
