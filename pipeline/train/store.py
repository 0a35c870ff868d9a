"""Results kept in the run storage (a local path or s3://...) under their content key.

A unit is one (data set, method, seed) with fully resolved settings; its key hashes the settings, the data
checksum and the code. When a unit finishes, rank 0 writes ``<storage>/units/<dataset>/<key>.pt``; a
finished search is kept the same way under ``tune-cache`` (``pipeline.tune.SearchCache``). Files are written
to a temporary name and moved into place, so a half-written file never counts. A later job -- a rerun after
an interruption, or after another method's settings changed -- finds them and does not redo the work.
"""

from __future__ import annotations

import io
import uuid

import pyarrow.fs as pafs
import torch

from pipeline.io import filesystem
from pipeline.train.checkpoint import UnitRecord, read_checkpoint


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
