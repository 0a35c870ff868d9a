"""Fetch and preprocess: raw archive -> columnar Parquet + normalisation stats + manifest.

Layout of a preprocessed data set directory::

    train.parquet, test.parquet   columns: image fixed_size_binary[H*W*3] (uint8 HWC), label int16
    manifest.json                 classes, counts, image shape, per-channel mean/std of the train split,
                                  sha256 of the source archive and of each Parquet file

Both the fetch and the preprocess output are written to a temporary directory and renamed into place, so an
interrupted stage leaves nothing that looks finished.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from pipeline.config import DatasetCfg
from pipeline.io import atomic_path, read_json, sha256_file, write_json

from .cifar import ImageSet, read_cifar_binary

ARCHIVE = "archive.tar.gz"
SOURCE = "source.json"
MANIFEST = "manifest.json"


def fetch_dataset(name: str, cfg: DatasetCfg, out_dir: str | Path) -> dict[str, Any]:
    """Put the raw archive of data set ``name`` under ``out_dir`` with a ``source.json`` (checksum, origin)."""
    out_dir = Path(out_dir)
    with atomic_path(out_dir) as tmp:
        tmp.mkdir()
        if cfg.kind == "embedded":
            from .embedded import write_embedded_archive

            write_embedded_archive(cfg, tmp / ARCHIVE)
            origin = {"generator": "pipeline.data.embedded", "settings": cfg.model_dump()}
        else:  # pragma: no cover - the config schema admits only the kinds above
            raise ValueError(f"datasets.{name}.kind = {cfg.kind!r}: no fetcher")
        source = {"dataset": name, "archive": ARCHIVE, "sha256": sha256_file(tmp / ARCHIVE), "origin": origin}
        write_json(tmp / SOURCE, source)
    return source


def _table(s: ImageSet) -> pa.Table:
    n, h, w, c = s.images.shape
    flat = pa.FixedSizeBinaryArray.from_buffers(
        pa.binary(h * w * c), n, [None, pa.py_buffer(np.ascontiguousarray(s.images).tobytes())]
    )
    return pa.table({"image": flat, "label": pa.array(s.labels.astype(np.int16))})


def channel_stats(images: np.ndarray) -> tuple[list[float], list[float]]:
    """Per-channel mean and std of uint8 HWC images, on the [0, 1] scale (float64 accumulation)."""
    x = images.reshape(-1, images.shape[-1]).astype(np.float64) / 255.0
    return x.mean(0).round(6).tolist(), x.std(0).round(6).tolist()


def preprocess_dataset(raw_dir: str | Path, out_dir: str | Path) -> dict[str, Any]:
    """Convert the archive in ``raw_dir`` into Parquet files and a manifest in ``out_dir``."""
    raw_dir = Path(raw_dir)
    source = read_json(raw_dir / SOURCE)
    archive = raw_dir / source["archive"]
    actual = sha256_file(archive)
    if actual != source["sha256"]:
        raise ValueError(f"{archive}: sha256 {actual} does not match {source['sha256']} in {raw_dir / SOURCE}; re-run fetch")
    splits, classes = read_cifar_binary(archive)
    mean, std = channel_stats(splits["train"].images)
    with atomic_path(out_dir) as tmp:
        tmp.mkdir()
        files = {}
        for split, s in splits.items():
            pq.write_table(_table(s), tmp / f"{split}.parquet", compression="zstd")
            files[split] = {"rows": len(s.labels), "sha256": sha256_file(tmp / f"{split}.parquet")}
        manifest = {
            "dataset": source["dataset"],
            "classes": classes,
            "num_classes": len(classes),
            "image_shape": list(splits["train"].images.shape[1:]),
            "mean": mean,
            "std": std,
            "class_counts": {k: np.bincount(s.labels, minlength=len(classes)).tolist() for k, s in splits.items()},
            "files": files,
            "source_sha256": source["sha256"],
        }
        write_json(tmp / MANIFEST, manifest)
    return manifest


def load_manifest(data_dir: str | Path) -> dict[str, Any]:
    return read_json(Path(data_dir) / MANIFEST)


def load_split(data_dir: str | Path, split: str) -> ImageSet:
    """Read one split back into (N, H, W, 3) uint8 images and int64 labels."""
    data_dir = Path(data_dir)
    shape = load_manifest(data_dir)["image_shape"]
    t = pq.read_table(data_dir / f"{split}.parquet")
    col = t.column("image").combine_chunks()
    buf = np.frombuffer(col.buffers()[1], np.uint8)
    n = len(col)
    width = int(np.prod(shape))
    images = buf[col.offset * width : (col.offset + n) * width].reshape(n, *shape)
    return ImageSet(images, t.column("label").to_numpy().astype(np.int64))
