"""Results kept in the run storage (a local path or s3://...) under their content key.

A unit is one (data set, method, seed) with fully resolved settings; its key hashes the settings, the data
checksum and the code. When a unit finishes, rank 0 writes ``<storage>/units/<dataset>/<key>.pt``; a
finished search is kept the same way under ``tune-cache`` (``pipeline.tune.SearchCache``). Files are written
to a temporary name and moved into place, so a half-written file never counts. A later job -- a rerun after
an interruption, or after another method's settings changed -- finds them and does not redo the work.

JSON entries (``write_entry``/``read_entry``, the eval store's) carry the sha256 of their content: one cut short,
edited, or written before entries had a checksum is not used but set aside (``<key>.json.unreadable``, as an
unreadable checkpoint is: ``pipeline.train.checkpoint.set_aside``) and its work is done again.
"""

from __future__ import annotations

import hashlib
import io
import json
import logging
import uuid
from collections.abc import Callable
from typing import Any, TypeVar

import pyarrow.fs as pafs
import torch

from pipeline.io import filesystem
from pipeline.train.checkpoint import UnitRecord, read_checkpoint

log = logging.getLogger(__name__)
T = TypeVar("T")

CHECKSUM = "checksum"  # the field of a JSON entry that holds "sha256:<hex>" of the rest


class CorruptEntry(ValueError):
    """A stored entry that cannot be used: not JSON, not an object, no checksum or one that does not match, or
    fields this code does not know. Its message says which."""


def entry_checksum(entry: dict[str, Any]) -> str:
    """``sha256:<hex>`` of the entry's canonical JSON (sorted keys, no spaces), the checksum field left out."""
    body = {k: v for k, v in entry.items() if k != CHECKSUM}
    return "sha256:" + hashlib.sha256(json.dumps(body, sort_keys=True, separators=(",", ":")).encode()).hexdigest()


class KeyedStore:
    def __init__(self, storage_path: str, name: str, dataset: str, suffix: str):
        self.fs, base = filesystem(storage_path)
        self.dir = f"{base.rstrip('/')}/{name}/{dataset}"
        self.where = f"{storage_path.rstrip('/')}/{name}/{dataset}" if "://" in storage_path else self.dir
        self.suffix, self.dataset = suffix, dataset

    def path(self, key: str) -> str:
        return f"{self.dir}/{key}{self.suffix}"

    def has(self, key: str) -> bool:
        return self.fs.get_file_info(self.path(key)).type == pafs.FileType.File

    def write(self, key: str, data: bytes) -> None:
        self.fs.create_dir(self.dir, recursive=True)
        tmp = f"{self.dir}/.{key}.{uuid.uuid4().hex}.tmp"
        with self.fs.open_output_stream(tmp) as f:
            f.write(data)
        self.fs.move(tmp, self.path(key))

    def read(self, key: str) -> bytes:
        with self.fs.open_input_stream(self.path(key)) as f:
            return f.read()

    def write_entry(self, key: str, entry: dict[str, Any]) -> None:
        """``entry`` as JSON, with its checksum (``entry_checksum``) in the field ``checksum``: of the entry as it
        will be read back (keys as strings, values as JSON types), so the read matches it."""
        entry = json.loads(json.dumps(entry, default=str))
        self.write(key, json.dumps({**entry, CHECKSUM: entry_checksum(entry)}).encode())

    def read_entry(self, key: str) -> dict[str, Any]:
        """The entry ``write_entry`` wrote, without its checksum; ``CorruptEntry`` if it is not that (cut short,
        changed since, or written with no checksum). The checksum catches accidents -- a crash, a truncated
        copy, a hand edit, a stray writer of a shared store -- not a writer who means harm and recomputes it:
        whoever can write the store decides what it holds."""
        try:
            d = json.loads(self.read(key))
        except ValueError as e:  # JSONDecodeError, UnicodeDecodeError
            raise CorruptEntry(f"not valid JSON ({e})") from None
        if not isinstance(d, dict):
            raise CorruptEntry(f"not a JSON object (a {type(d).__name__})")
        stored = d.pop(CHECKSUM, None)
        if stored is None:
            raise CorruptEntry("it has no checksum (written by an older version, or by hand)")
        if stored != entry_checksum(d):
            raise CorruptEntry("its checksum does not match its content (changed after it was written)")
        return d

    def get_entry(self, key: str, load: Callable[[dict[str, Any]], T], *, what: str, then: str) -> T | None:
        """``load`` of the entry of ``key``; None when there is none, or when it cannot be trusted (``read_entry``
        or ``load`` raising ``CorruptEntry``): then it is set aside (``set_aside``) with what happens ``then``."""
        if not self.has(key):
            return None
        try:
            return load(self.read_entry(key))
        except CorruptEntry as e:
            self.set_aside(key, str(e), then, what=what)
            return None

    def set_aside(self, key: str, why: str, then: str, *, what: str) -> None:
        """Take the entry of ``key`` out of use, keeping it for a post-mortem as ``<key><suffix>.unreadable``
        (a move, which S3 can do), with one warning naming it, ``why`` and what happens ``then``."""
        log.warning("set aside the unreadable %s %s/%s%s: %s; %s", what, self.where, key, self.suffix, why, then)
        path = self.path(key)
        try:
            self.fs.move(path, f"{path}.unreadable")
        except OSError:
            if self.has(key):  # not another reader of a shared store setting it aside first
                raise


class UnitStore(KeyedStore):
    """Finished training units: spec, weights, per-epoch history, provenance."""

    def __init__(self, storage_path: str, dataset: str):
        super().__init__(storage_path, "units", dataset, ".pt")

    def save(self, key: str, obj: UnitRecord) -> None:
        buf = io.BytesIO()
        torch.save(obj, buf)
        self.write(key, buf.getvalue())

    def load(self, key: str) -> UnitRecord:
        return read_checkpoint(self.read(key), f"{self.where}/{key}{self.suffix}")  # type: ignore[return-value]
