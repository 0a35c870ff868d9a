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
import warnings
from pathlib import Path
from typing import Any, Literal

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
from pydantic import BaseModel, ConfigDict

from pipeline.io import filesystem, join, read_json

from .cifar import ImageSet
from .errors import DataError
from .jpeg import channel_histogram, decode_images

SOURCE = "source.json"
MANIFEST = "manifest.json"


class Manifest(BaseModel):
    """``manifest.json``: what a preprocessed directory holds. Written by preprocess, read by every later stage
    (``load_manifest``). Fields a format does not have stay unset and are not written."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    dataset: str = ""
    format: Literal["raw", "jpeg"] = "raw"
    classes: list[str]  # in label order
    num_classes: int
    image_shape: list[int] = []  # (H, W, C) of what training sees
    mean: list[float] = []  # per channel, [0, 1] scale, of the train split as training sees it
    std: list[float] = []
    class_counts: dict[str, list[int]]  # split -> images per class
    files: dict[str, dict[str, Any]]  # split -> {rows, sha256} (raw) or {rows, shards, sha256} (jpeg)
    preprocess: dict[str, Any] = {}  # the settings that made it
    source_sha256: str
    source_files: dict[str, Any] = {}  # the fetched files' checksums
    source_origin: dict[str, Any] = {}  # where they came from, and whether they are the published files
    data_sha256: str  # the data's identity: what training units are keyed on
    # ImageNet (jpeg) only
    class_info: list[dict[str, Any]] | None = None
    stored_shorter_side: int | None = None
    encoding: dict[str, str] | None = None  # split -> jpeg | png (pipeline.data.jpeg)
    eval_protocol: dict[str, Any] | None = None
    stats_of: str | None = None
    skipped_images: dict[str, Any] | None = None
    missing_classes: list[str] | None = None
    test_split: str | None = None

    @property
    def num_test(self) -> int:
        return sum(self.class_counts["test"])

    @property
    def num_train(self) -> int:
        return sum(self.class_counts["train"])

    def dump(self) -> dict[str, Any]:
        """As ``manifest.json`` holds it (unset fields left out)."""
        return self.model_dump(exclude_none=True)

    def split_encoding(self, split: str) -> str:
        """How ``split``'s images are stored (``jpeg`` format): ``jpeg`` (shorter side ``stored_shorter_side``)
        or ``png`` (the exact evaluation input). Manifests older than ``encoding`` stored both splits as JPEG."""
        return (self.encoding or {}).get(split, "jpeg")

    def shards(self, split: str) -> list[str]:
        return [f["path"] for f in self.files[split]["shards"]]

    def eval_resize(self, split: str) -> int | None:
        """``decode_images``'s ``resize`` for evaluating ``split``: None where the stored image is the input."""
        return None if self.split_encoding(split) == "png" else self.stored_shorter_side


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
    return stats_from_histogram(channel_histogram(images))


def data_sha(files: dict[str, dict[str, Any]], classes: list[str], image_shape: list[int]) -> str:
    """Identity of the preprocessed data: its files' checksums, classes and shape."""
    parts = [files[s]["sha256"] for s in ("train", "test")]
    parts += [",".join(classes), str(image_shape)]
    return hashlib.sha256("|".join(parts).encode()).hexdigest()


def load_manifest(data_dir: str | Path) -> Manifest:
    """The manifest of a preprocessed directory: local, or a URI (``compute.shared_data``)."""
    return Manifest.model_validate(read_json(join(data_dir, MANIFEST)))


def read_table(data_dir: str | Path, name: str, columns: list[str] | None = None) -> pa.Table:
    fs, base = filesystem(data_dir)
    return pq.read_table(join(base, name), columns=columns, filesystem=fs)


def load_split(data_dir: str | Path, split: str) -> ImageSet:
    """Read one split back into (N, H, W, 3) uint8 images and int64 labels, as training sees them;
    ``data_dir`` is a local directory or a URI."""
    man = load_manifest(data_dir)
    if man.format == "jpeg":
        return ImageSet(*load_jpeg_split(data_dir, split, man))
    t = read_table(data_dir, f"{split}.parquet")
    return ImageSet(_raw_images(t, man.image_shape), t.column("label").to_numpy().astype(np.int64))


def _raw_images(t: pa.Table, shape: list[int]) -> np.ndarray:
    """The ``image`` column of a ``raw`` table as (N, H, W, C) uint8, without copying."""
    col = t.column("image").combine_chunks()
    buf = np.frombuffer(col.buffers()[1], np.uint8)
    n = len(col)
    width = int(np.prod(shape))
    return buf[col.offset * width : (col.offset + n) * width].reshape(n, *shape)


def first_images(data_dir: str | Path, split: str, n: int) -> np.ndarray:
    """The first ``n`` images of ``split`` as ``load_split`` gives them, reading only the file they are in
    (an example input, e.g. for a logged model's signature)."""
    man = load_manifest(data_dir)
    if man.format == "jpeg":
        t = read_table(data_dir, man.shards(split)[0], columns=["image"]).slice(0, n)
        return decode_images(t.column("image").to_pylist(), man.image_shape[0], man.eval_resize(split))
    return _raw_images(read_table(data_dir, f"{split}.parquet", columns=["image"]).slice(0, n), man.image_shape)


def load_jpeg_split(data_dir: str | Path, split: str, manifest: Manifest) -> tuple[np.ndarray, np.ndarray]:
    """The whole split's evaluation inputs decoded into memory, in shard order (the same values
    ``ray_dataset`` yields without ``augment``): the test split as stored, a JPEG split through ``eval_view``."""
    size = manifest.image_shape[0]
    resize = manifest.eval_resize(split)
    images, labels = [], []
    for p in manifest.shards(split):
        t = read_table(data_dir, p, columns=["image", "label"])
        images.append(decode_images(t.column("image").to_pylist(), size, resize))
        labels.append(t.column("label").to_numpy().astype(np.int64))
    if not images:
        return np.zeros((0, size, size, 3), np.uint8), np.zeros(0, np.int64)
    return np.concatenate(images), np.concatenate(labels)


DECODE_BATCH = 32  # images per decoding call: decoded blocks of ~5 MB at 224 px, small in the object store


def stream_options(memory_mb: int):
    """Ray Data's execution options for a training stream: Ray Train's defaults for a worker's shard, with the
    object-store memory the stream may hold capped at ``memory_mb`` (``compute.stream_memory_mb``). Without a
    cap Ray Data fills up to half the object store, more the longer an epoch runs: 1.19 GiB at 10k images,
    1.79 GiB at 40k (benchmarks/stream.py); with it the peak is the same at both sizes."""
    import ray.train  # here, not at the top: Ray is heavy, and only a streamed (JPEG) data set needs it

    with warnings.catch_warnings():  # Ray's own defaults set a field Ray itself deprecates (exclude_resources)
        warnings.simplefilter("ignore", DeprecationWarning)
        opts = ray.train.DataConfig.default_ingest_options()
    opts.resource_limits = opts.resource_limits.copy(object_store_memory=memory_mb * 2**20)
    return opts


def ray_dataset(data_uri: str, split: str, manifest: Manifest, augment: bool = False, *, seed: int = 0):
    """The split as a Ray Dataset of decoded inputs (``image`` (B, S, S, 3) uint8, ``label`` int64), read with
    ``ray.data.read_parquet`` from a local folder or ``s3://bucket/prefix``. Decoding (and with ``augment``,
    the random-resized-crop + flip augmentation, drawn afresh every epoch) runs in Ray Data tasks on the
    cluster's CPUs, streamed to the training workers, so the GPUs do not wait on JPEG decoding. Without
    ``augment``, the evaluation inputs: the same values as ``load_split``.

    With ``augment`` the shards are read in a new order each epoch (a permutation seeded by ``seed`` and the
    epoch: ``FileShuffleConfig``), never shuffled globally: a global shuffle moves the whole split through the
    object store every epoch (~30 GB for ImageNet), its time and memory growing with the data. Rows are mixed
    by the shards themselves (classes interleaved at preprocess) and by each worker's bounded shuffle buffer
    (``StreamData.batches``, ``train.shuffle_buffer``)."""
    import ray.data  # here, not at the top: Ray is heavy, and only the training of a JPEG data set streams
    from ray.data import FileShuffleConfig  # the same reason

    size = manifest.image_shape[0]
    resize = manifest.eval_resize(split)
    if augment and manifest.split_encoding(split) != "jpeg":
        raise DataError(
            f"the {split} split is stored as evaluation inputs ({manifest.split_encoding(split)}); it is not augmented"
        )
    paths = [f"{data_uri.rstrip('/')}/{p}" for p in manifest.shards(split)]

    def decode(batch: dict[str, Any]) -> dict[str, Any]:
        rng = np.random.default_rng() if augment else None  # fresh entropy: a new augmentation every epoch
        images = decode_images(list(batch["image"]), size, resize, rng)
        return {"image": images, "label": batch["label"].astype(np.int64)}

    shuffle = FileShuffleConfig(seed=seed, reseed_after_execution=True) if augment else None
    ds = ray.data.read_parquet(paths, shuffle=shuffle).select_columns(["image", "label"])
    return ds.map_batches(decode, batch_format="numpy", batch_size=DECODE_BATCH)
