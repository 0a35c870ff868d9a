"""Preprocessed data sets, read back: the manifest, the per-channel statistics, the data's identity and the
splits as the training loop sees them. What every stage after preprocess reads; it reads no source.

A preprocessed directory holds ``manifest.json`` and Parquet files in one of two formats (``format``):

- ``raw`` (embedded, CIFAR): ``train.parquet``, ``test.parquet``, columns ``image`` fixed_size_binary[H*W*3]
  (uint8 HWC) and ``label`` int16;
- ``jpeg`` (ImageNet): ``train-NNNNN.parquet``/``test-NNNNN.parquet`` shards of encoded images + labels,
  the encoding per split in the manifest's ``encoding`` (``pipeline.data.jpeg``).

The manifest holds classes, counts, image shape, per-channel mean/std of the train split (of the images
training sees; ImageNet: of their evaluation view, what ``load_split`` gives), the sha256 of every file,
the source checksums and ``data_sha256``, the identity of the preprocessed data (what training runs are keyed
on: a different subset is different data; it hashes the files, so it changes when the stored bytes do).
"""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from pipeline.io import filesystem, join, read_json

from .cifar import ImageSet
from .jpeg import decode_images, eval_resize, split_files

SOURCE = "source.json"
MANIFEST = "manifest.json"


def stats_from_histogram(hist: np.ndarray) -> tuple[list[float], list[float]]:
    """Per-channel mean and std on the [0, 1] scale from (C, 256) pixel-value counts, exact, rounded to 6."""
    v = np.arange(256) / 255.0
    mean, std = [], []
    for h in hist:
        n = max(int(h.sum()), 1)
        m = (h @ v) / n
        mean.append(round(float(m), 6))
        std.append(round(float(np.sqrt(max((h @ v**2) / n - m * m, 0.0))), 6))
    return mean, std


def channel_stats(images: np.ndarray) -> tuple[list[float], list[float]]:
    """Per-channel mean and std of uint8 HWC images on the [0, 1] scale (``stats_from_histogram``)."""
    counts = [np.bincount(images[..., c].ravel(), minlength=256) for c in range(images.shape[-1])]
    return stats_from_histogram(np.stack(counts))


def data_sha(manifest: dict[str, Any]) -> str:
    """Identity of the preprocessed data: its files' checksums, classes and shape."""
    parts = [manifest["files"][s]["sha256"] for s in ("train", "test")]
    parts += [",".join(manifest["classes"]), str(manifest["image_shape"])]
    return hashlib.sha256("|".join(parts).encode()).hexdigest()


def load_manifest(data_dir: str | Path) -> dict[str, Any]:
    """The manifest of a preprocessed directory: local, or a URI (``compute.shared_data``)."""
    return read_json(join(data_dir, MANIFEST))


def read_table(data_dir: str | Path, name: str, columns: list[str] | None = None) -> pa.Table:
    fs, base = filesystem(data_dir)
    return pq.read_table(join(base, name), columns=columns, filesystem=fs)


def load_split(data_dir: str | Path, split: str) -> ImageSet:
    """Read one split back into (N, H, W, 3) uint8 images and int64 labels, as training sees them;
    ``data_dir`` is a local directory or a URI."""
    man = load_manifest(data_dir)
    if man.get("format") == "jpeg":
        return ImageSet(*load_jpeg_split(data_dir, split, man))
    shape = man["image_shape"]
    t = read_table(data_dir, f"{split}.parquet")
    col = t.column("image").combine_chunks()
    buf = np.frombuffer(col.buffers()[1], np.uint8)
    n = len(col)
    width = int(np.prod(shape))
    images = buf[col.offset * width : (col.offset + n) * width].reshape(n, *shape)
    return ImageSet(images, t.column("label").to_numpy().astype(np.int64))


def load_jpeg_split(data_dir: str | Path, split: str, manifest: dict[str, Any]) -> tuple[np.ndarray, np.ndarray]:
    """The whole split's evaluation inputs decoded into memory, in shard order (the same values
    ``ray_dataset`` yields without ``augment``): the test split as stored, a JPEG split through ``eval_view``."""
    size = manifest["image_shape"][0]
    resize = eval_resize(manifest, split)
    images, labels = [], []
    for p in split_files(manifest, split):
        t = read_table(data_dir, p, columns=["image", "label"])
        images.append(decode_images(t.column("image").to_pylist(), size, resize))
        labels.append(t.column("label").to_numpy().astype(np.int64))
    if not images:
        return np.zeros((0, size, size, 3), np.uint8), np.zeros(0, np.int64)
    return np.concatenate(images), np.concatenate(labels)
