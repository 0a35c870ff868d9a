"""Finished training units, kept in the run storage under their content key.

A unit is one (data set, method, seed) with fully resolved settings; its key hashes the settings, the data
checksum and the code. When a unit finishes, rank 0 writes ``<storage>/units/<dataset>/<key>.pt``
(write-then-rename, so a half-written file never counts). A later job -- a rerun after an interruption, or
after another method's settings changed -- finds it and does not train it again.
"""

from __future__ import annotations

import io
import uuid
from typing import Any

import torch


def _fs(root: str):
    import pyarrow.fs as pafs

    if "://" in root:
        return pafs.FileSystem.from_uri(root)
    return pafs.LocalFileSystem(), root


class UnitStore:
    def __init__(self, storage_path: str, dataset: str):
        self.fs, base = _fs(storage_path)
        self.dir = f"{base.rstrip('/')}/units/{dataset}"

    def path(self, key: str) -> str:
        return f"{self.dir}/{key}.pt"

    def has(self, key: str) -> bool:
        import pyarrow.fs as pafs

        return self.fs.get_file_info(self.path(key)).type == pafs.FileType.File

    def save(self, key: str, obj: dict[str, Any]) -> None:
        buf = io.BytesIO()
        torch.save(obj, buf)
        self.fs.create_dir(self.dir, recursive=True)
        tmp = f"{self.dir}/.{key}.{uuid.uuid4().hex}.tmp"
        with self.fs.open_output_stream(tmp) as f:
            f.write(buf.getvalue())
        self.fs.move(tmp, self.path(key))

    def load(self, key: str) -> dict[str, Any]:
        with self.fs.open_input_stream(self.path(key)) as f:
            return torch.load(io.BytesIO(f.read()), map_location="cpu", weights_only=False)
