"""Fetch and preprocess: source -> raw directory -> columnar Parquet + normalisation stats + manifest.

Raw directory (fetch): ``source.json`` (what was fetched, from where, its checksums) and, for the embedded
set and CIFAR, the archive itself (CIFAR *binary* format: fixed-size records, so no pickle is ever loaded;
the archive is verified against the published MD5 before it is used). For ImageNet, an index of the source
(see ``pipeline.data.imagenet``): the images stay where they are.

Preprocessed directory, two formats (``manifest.json`` ``format``):

- ``raw`` (embedded, CIFAR): ``train.parquet``, ``test.parquet``, columns ``image`` fixed_size_binary[H*W*3]
  (uint8 HWC) and ``label`` int16;
- ``jpeg`` (ImageNet): ``train-NNNNN.parquet``/``test-NNNNN.parquet`` shards of encoded images + labels,
  the encoding per split in the manifest's ``encoding``: train as JPEG with shorter side ``resize`` (256)
  for training; test as PNG, the exact 224 centre crop of the full-resolution Resize(256), so evaluation is
  torchvision's reference protocol bit for bit (``pipeline.data.imagenet``).

The manifest holds classes, counts, image shape, per-channel mean/std of the train split (of the images
training sees; ImageNet: of their evaluation view, what ``load_split`` gives), the sha256 of every file,
the source checksums and ``data_sha256``, the identity of the preprocessed data (what training runs are keyed
on: a different subset is different data; it hashes the files, so it changes when the stored bytes do).

Every output is written to a temporary directory and renamed into place, so an interrupted stage leaves
nothing that looks finished.
"""

from __future__ import annotations

import hashlib
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from pipeline.config import CifarDataCfg, DatasetCfg, PreprocessCfg
from pipeline.io import atomic_path, filesystem, join, read_json, sha256_file, write_json
from pipeline.redact import redact_url

from .cifar import LAYOUT_OF_KIND, OFFICIAL, ImageSet, read_cifar_binary
from .errors import DataError

SOURCE = "source.json"
MANIFEST = "manifest.json"


def fetch_dataset(name: str, cfg: DatasetCfg, out_dir: str | Path) -> dict[str, Any]:
    """Put data set ``name``'s raw data (or, for ImageNet, its index) under ``out_dir`` with ``source.json``."""
    out_dir = Path(out_dir)
    with atomic_path(out_dir) as tmp:
        tmp.mkdir()
        if cfg.kind == "embedded":
            from .embedded import write_embedded_archive

            archive = "archive.tar.gz"
            write_embedded_archive(cfg.fetch, tmp / archive)
            source = {
                "format": "cifar-binary",
                "archive": archive,
                "sha256": sha256_file(tmp / archive),
                "origin": {"generator": "pipeline.data.embedded", "settings": cfg.fetch.model_dump()},
            }
        elif cfg.kind in ("cifar10", "cifar100"):
            source = _fetch_cifar(name, cfg, tmp, partial=out_dir.parent / f".{out_dir.name}.part")
        else:
            from .imagenet import index_source

            source = index_source(cfg.fetch, tmp)
        source["dataset"] = name
        source["kind"] = cfg.kind
        write_json(tmp / SOURCE, source)
    return source


def _fetch_cifar(name: str, cfg: CifarDataCfg, tmp: Path, *, partial: Path) -> dict[str, Any]:
    """Download and verify the archive (checksum, then every member and the content: ``read_cifar_binary``),
    so a finished fetch output is data preprocess can read."""
    from .download import Checksum, Limits, Retry, fetch_file

    official = OFFICIAL[cfg.kind]
    where = official.url if cfg.fetch.source == "official" else cfg.fetch.source
    checksum = Checksum.parse(cfg.fetch.checksum or official.checksum)
    published = str(checksum) == official.checksum  # then the size is known exactly
    f = cfg.fetch
    limits = Limits(
        max_bytes=official.size if published else f.max_bytes,
        deadline_s=f.deadline_s,
        min_rate_bytes_s=f.min_rate_bytes_s,
        rate_window_s=f.rate_window_s,
        setting=f"datasets.{name}.fetch",
        cap_note=f": the published archive is {official.size:,} bytes" if published else "",
    )
    archive = Path(official.url).name
    digests = fetch_file(
        where, tmp / archive, checksum, Retry(f.retries, f.backoff_s, f.timeout_s), limits, partial=partial
    )
    read_cifar_binary(tmp / archive, LAYOUT_OF_KIND[cfg.kind], label=redact_url(where))  # the content, too
    return {
        "format": "cifar-binary",
        "archive": archive,
        "sha256": digests["sha256"],
        "md5": digests["md5"],
        # "official" only when the published md5 itself matched, whatever checksum the user pinned
        "origin": {
            "source": redact_url(where),
            "verified_against": str(checksum),
            "published": official.checksum,
            "official": f"md5:{digests['md5']}" == official.checksum,
        },
    }


def _table(s: ImageSet) -> pa.Table:
    n, h, w, c = s.images.shape
    flat = pa.FixedSizeBinaryArray.from_buffers(
        pa.binary(h * w * c), n, [None, pa.py_buffer(np.ascontiguousarray(s.images).tobytes())]
    )
    return pa.table({"image": flat, "label": pa.array(s.labels.astype(np.int16))})


def channel_stats(images: np.ndarray) -> tuple[list[float], list[float]]:
    """Per-channel mean and std of uint8 HWC images on the [0, 1] scale, exact, from 256-bin histograms."""
    v = np.arange(256) / 255.0
    mean, std = [], []
    for c in range(images.shape[-1]):
        h = np.bincount(images[..., c].ravel(), minlength=256)
        m = (h @ v) / h.sum()
        mean.append(round(float(m), 6))
        std.append(round(float(np.sqrt(max((h @ v**2) / h.sum() - m * m, 0.0))), 6))
    return mean, std


def select(
    s: ImageSet, classes: list[str], cfg: PreprocessCfg, per_class: int | float | None
) -> tuple[ImageSet, list[int]]:
    """Keep ``cfg.classes`` (relabelled 0..K-1 in that order) and the first ``per_class`` images of each."""
    from .imagenet import take_per_class

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


def _preprocess_cifar(raw_dir: Path, source: dict[str, Any], out_dir: Path, cfg: PreprocessCfg) -> dict[str, Any]:
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
        manifest = {
            "dataset": source["dataset"],
            "format": "raw",
            "classes": classes,
            "num_classes": len(classes),
            "image_shape": list(splits["train"].images.shape[1:]),
            "mean": mean,
            "std": std,
            "class_counts": {k: np.bincount(s.labels, minlength=len(classes)).tolist() for k, s in splits.items()},
            "files": files,
            "preprocess": cfg.model_dump(),
            "source_sha256": source["sha256"],
            "source_files": {source["archive"]: {k: source[k] for k in ("md5", "sha256") if k in source}},
            "source_origin": source.get("origin", {}),
        }
        manifest["data_sha256"] = data_sha(manifest)
        write_json(tmp / MANIFEST, manifest)
    return manifest


def data_sha(manifest: dict[str, Any]) -> str:
    """Identity of the preprocessed data: its files' checksums, classes and shape."""
    parts = [manifest["files"][s]["sha256"] for s in ("train", "test")]
    parts += [",".join(manifest["classes"]), str(manifest["image_shape"])]
    return hashlib.sha256("|".join(parts).encode()).hexdigest()


def preprocess_dataset(raw_dir: str | Path, out_dir: str | Path, cfg: PreprocessCfg | None = None) -> dict[str, Any]:
    """Turn the fetched data in ``raw_dir`` into Parquet files and a manifest in ``out_dir``."""
    raw_dir, out_dir = Path(raw_dir), Path(out_dir)
    source = read_json(raw_dir / SOURCE)
    if source["format"] == "imagenet-index":
        from pipeline.config import ImageNetPreprocessCfg

        from .imagenet import preprocess_imagenet

        icfg = (
            cfg
            if isinstance(cfg, ImageNetPreprocessCfg)
            else ImageNetPreprocessCfg.model_validate((cfg or PreprocessCfg()).model_dump())
        )
        return preprocess_imagenet(raw_dir, out_dir, icfg, log=lambda m: print(m, file=sys.stderr))
    return _preprocess_cifar(raw_dir, source, out_dir, cfg or PreprocessCfg())


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
        from .imagenet import load_jpeg_split

        return ImageSet(*load_jpeg_split(data_dir, split, man))
    shape = man["image_shape"]
    t = read_table(data_dir, f"{split}.parquet")
    col = t.column("image").combine_chunks()
    buf = np.frombuffer(col.buffers()[1], np.uint8)
    n = len(col)
    width = int(np.prod(shape))
    images = buf[col.offset * width : (col.offset + n) * width].reshape(n, *shape)
    return ImageSet(images, t.column("label").to_numpy().astype(np.int64))
