"""The preprocess stage: fetched data -> columnar Parquet + normalisation statistics + manifest
(``pipeline.data.manifest`` describes the result and reads it back).

Embedded and CIFAR archives become ``train.parquet`` / ``test.parquet`` here; ImageNet's index becomes JPEG
shards on Ray (``pipeline.data.imagenet``). ``preprocess.classes`` and ``preprocess.subset`` select classes
and images the same way for every data set (``pipeline.data.subset``). Every output is written to a
temporary directory and renamed into place, so an interrupted stage leaves nothing that looks finished.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from pipeline.config import ImageNetPreprocessCfg, PreprocessCfg
from pipeline.io import atomic_path, read_json, sha256_file, write_json

from .cifar import LAYOUT_OF_KIND, ImageSet, read_cifar_binary
from .errors import DataError
from .imagenet import preprocess_imagenet
from .manifest import MANIFEST, SOURCE, Manifest, channel_stats, data_sha
from .subset import take_per_class


def preprocess_dataset(raw_dir: str | Path, out_dir: str | Path, cfg: PreprocessCfg | None = None) -> Manifest:
    """Turn the fetched data in ``raw_dir`` into Parquet files and a manifest in ``out_dir``."""
    raw_dir, out_dir = Path(raw_dir), Path(out_dir)
    source = read_json(raw_dir / SOURCE)
    if source["format"] == "imagenet-index":
        icfg = (
            cfg
            if isinstance(cfg, ImageNetPreprocessCfg)
            else ImageNetPreprocessCfg.model_validate((cfg or PreprocessCfg()).model_dump())
        )
        return preprocess_imagenet(raw_dir, source, out_dir, icfg)
    return _preprocess_cifar(raw_dir, source, out_dir, cfg or PreprocessCfg())


def _table(s: ImageSet) -> pa.Table:
    n, h, w, c = s.images.shape
    flat = pa.FixedSizeBinaryArray.from_buffers(
        pa.binary(h * w * c), n, [None, pa.py_buffer(np.ascontiguousarray(s.images).tobytes())]
    )
    return pa.table({"image": flat, "label": pa.array(s.labels.astype(np.int16))})


def select(
    s: ImageSet, classes: list[str], cfg: PreprocessCfg, per_class: int | float | None
) -> tuple[ImageSet, list[int]]:
    """Keep ``cfg.classes`` (relabelled 0..K-1 in that order) and the first ``per_class`` images of each."""
    if isinstance(cfg.classes, int):
        keep = list(range(min(cfg.classes, len(classes))))
    elif cfg.classes is not None:
        absent = [c for c in cfg.classes if c not in classes]
        if absent:
            raise DataError(f"preprocess.classes: {absent} are not class names of this data set; names: {classes}")
        keep = [classes.index(c) for c in cfg.classes]
    else:
        keep = list(range(len(classes)))
    idx = []
    for old in keep:
        where = np.flatnonzero(s.labels == old)
        idx.append(where[: take_per_class(len(where), per_class)])
    order = np.sort(np.concatenate(idx)) if idx else np.zeros(0, np.int64)  # keep the archive's order
    relabel = np.full(len(classes), -1, np.int64)
    relabel[keep] = np.arange(len(keep))
    return ImageSet(s.images[order], relabel[s.labels[order]]), keep


def _preprocess_cifar(raw_dir: Path, source: dict[str, Any], out_dir: Path, cfg: PreprocessCfg) -> Manifest:
    archive = raw_dir / source["archive"]
    actual = sha256_file(archive)
    if actual != source["sha256"]:
        raise DataError(
            f"{archive}: sha256 {actual} does not match {source['sha256']} in {raw_dir / SOURCE}; re-run fetch"
        )
    splits, all_classes = read_cifar_binary(archive, LAYOUT_OF_KIND[source.get("kind", "embedded")])
    keep: list[int] = []
    for split in ("train", "test"):
        splits[split], keep = select(splits[split], all_classes, cfg, getattr(cfg.subset, split))
    classes = [all_classes[k] for k in keep]
    mean, std = channel_stats(splits["train"].images)
    with atomic_path(out_dir) as tmp:
        tmp.mkdir()
        files = {}
        for split, s in splits.items():
            pq.write_table(_table(s), tmp / f"{split}.parquet", compression="zstd", compression_level=1)
            files[split] = {"rows": len(s.labels), "sha256": sha256_file(tmp / f"{split}.parquet")}
        shape = list(splits["train"].images.shape[1:])
        manifest = Manifest(
            dataset=source["dataset"],
            format="raw",
            classes=classes,
            num_classes=len(classes),
            image_shape=shape,
            mean=mean,
            std=std,
            class_counts={k: np.bincount(s.labels, minlength=len(classes)).tolist() for k, s in splits.items()},
            files=files,
            preprocess=cfg.model_dump(),
            source_sha256=source["sha256"],
            source_files={source["archive"]: {k: source[k] for k in ("md5", "sha256") if k in source}},
            source_origin=source.get("origin", {}),
            data_sha256=data_sha(files, classes, shape),
        )
        write_json(tmp / MANIFEST, manifest.dump())
    return manifest
