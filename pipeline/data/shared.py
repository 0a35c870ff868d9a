"""Preprocessed data where every node of a cluster can read it (``compute.shared_data``).

``data/processed/<d>`` is a DVC output on the machine that ran ``dvc repro``; workers on other nodes cannot
see it. With ``compute.shared_data: s3://bucket/prefix`` the tune and train stages publish it to
``<prefix>/<d>/<data_sha256[:16]>/`` before they start Ray, and workers read from there. The prefix is keyed
by content, so publishing is idempotent and a changed subset never overwrites data an older run reads. The
manifest is uploaded last and marks the copy complete: an interrupted upload is redone, never read.
"""

from __future__ import annotations

import logging
from pathlib import Path

import pyarrow.fs as pafs

from pipeline.io import filesystem, join

from .manifest import MANIFEST

log = logging.getLogger(__name__)


def shared_uri(root: str, dataset: str, sha256: str) -> str:
    return join(root, dataset, sha256[:16])


def publish(data_dir: str | Path, root: str, dataset: str, sha256: str) -> str:
    """Copy the preprocessed ``data_dir`` (content ``sha256``) under ``root`` unless that content is there;
    return its URI."""
    uri = shared_uri(root, dataset, sha256)
    fs, dest = filesystem(uri)
    if fs.get_file_info(join(dest, MANIFEST)).type == pafs.FileType.File:
        return uri
    fs.create_dir(dest, recursive=True)
    local = Path(data_dir)
    files = sorted(p for p in local.rglob("*") if p.is_file() and p.name != MANIFEST)
    here = pafs.LocalFileSystem()
    for p in [*files, local / MANIFEST]:  # the manifest last: its presence means the copy is whole
        dst = join(dest, p.relative_to(local).as_posix())
        pafs.copy_files(str(p.resolve()), dst, source_filesystem=here, destination_filesystem=fs)
    log.info("published %s to %s (%d files) for the workers", local, uri, len(files) + 1)
    return uri
