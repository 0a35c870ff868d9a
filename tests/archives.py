"""Small data sets in the exact official layouts and record formats, for tests and benchmarks.

CIFAR-10/100: the binary archives (``cifar-10-batches-bin/data_batch_{1..5}.bin``, ``test_batch.bin``,
``batches.meta.txt``; ``cifar-100-binary/train.bin``, ``test.bin``, ``fine_label_names.txt``,
``coarse_label_names.txt``). ImageNet: ``ILSVRC2012_img_train.tar`` (one ``<wnid>.tar`` per class holding
``<wnid>_<n>.JPEG``), ``ILSVRC2012_img_val.tar`` (flat ``ILSVRC2012_val_<8 digits>.JPEG``) and
``ILSVRC2012_devkit_t12.tar.gz`` (``data/meta.mat`` with the ``synsets`` struct array, leaf synsets having
``num_children`` 0, and ``data/ILSVRC2012_validation_ground_truth.txt``), or the extracted
``train/<wnid>/*.JPEG``, ``val/<wnid>/*.JPEG`` trees.
"""

from __future__ import annotations

import hashlib
import io
import struct
import tarfile
import zlib
from pathlib import Path

import numpy as np

from pipeline.data.cifar import CIFAR10, CIFAR100, write_cifar_binary

CIFAR10_CLASSES = ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"]


def md5(path: Path) -> str:
    return "md5:" + hashlib.md5(Path(path).read_bytes()).hexdigest()


def cifar10_archive(path: Path, per_class: int = 4, test_per_class: int = 2, seed: int = 0) -> str:
    """A CIFAR-10 binary archive with classes cycling 0..9; returns its md5 checksum string."""
    rng = np.random.default_rng(seed)

    def split(n: int):
        labels = np.arange(n * 10) % 10
        return rng.integers(0, 256, (len(labels), 32, 32, 3), dtype=np.uint8), labels.astype(np.uint8)

    write_cifar_binary(path, CIFAR10, split(per_class), split(test_per_class), CIFAR10_CLASSES)
    return md5(path)


def cifar100_archive(path: Path, per_class: int = 2, test_per_class: int = 1, seed: int = 0) -> str:
    """A CIFAR-100 binary archive: records carry (coarse, fine) label bytes; 100 fine, 20 coarse classes."""
    rng = np.random.default_rng(seed)

    def split(n: int):
        fine = np.arange(n * 100) % 100
        labels = np.stack([fine // 5, fine], axis=1).astype(np.uint8)  # (N, 2): coarse, fine
        return rng.integers(0, 256, (len(fine), 32, 32, 3), dtype=np.uint8), labels

    fine_names = [f"fine_{i:02d}" for i in range(100)]
    coarse_names = [f"coarse_{i:02d}" for i in range(20)]
    write_cifar_binary(path, CIFAR100, split(per_class), split(test_per_class), fine_names, coarse_names)
    return md5(path)


# ---------------------------------------------------------------------------------------------------------
# ImageNet


def jpeg(rng: np.random.Generator, w: int = 48, h: int = 40, quality: int = 85) -> bytes:
    from PIL import Image

    x = rng.integers(0, 256, (h // 8, w // 8, 3), dtype=np.uint8).repeat(8, 0).repeat(8, 1)  # blocky: small files
    buf = io.BytesIO()
    Image.fromarray(x).save(buf, format="JPEG", quality=quality)
    return buf.getvalue()


def wnids(n: int) -> list[str]:
    return [f"n{1440764 + 1000 * i:08d}" for i in range(n)]


def _add(tar: tarfile.TarFile, name: str, blob: bytes) -> None:
    info = tarfile.TarInfo(name)
    info.size, info.mode, info.mtime = len(blob), 0o644, 0
    tar.addfile(info, io.BytesIO(blob))


def devkit(path: Path, classes: list[str], val_labels: list[int]) -> None:
    """ILSVRC2012_devkit_t12.tar.gz: meta.mat (leaf synsets 1..K plus one parent synset) + val ground truth."""
    from scipy.io import savemat

    fields = [
        "ILSVRC2012_ID",
        "WNID",
        "words",
        "gloss",
        "num_children",
        "children",
        "wordnet_height",
        "num_train_images",
    ]
    syn = np.zeros((len(classes) + 1, 1), dtype=[(f, "O") for f in fields])
    for i, w in enumerate(classes):
        syn[i, 0] = (i + 1, w, f"class {w}, words", "gloss", 0, np.zeros((1, 0)), 0, 1300)
    syn[len(classes), 0] = (len(classes) + 1, "n00001740", "entity", "root", len(classes), np.arange(1, 3), 19, 0)
    meta = io.BytesIO()
    savemat(meta, {"synsets": syn})
    gt = "".join(f"{k}\n" for k in val_labels).encode()
    with tarfile.open(path, "w:gz") as tar:
        _add(tar, "ILSVRC2012_devkit_t12/data/meta.mat", meta.getvalue())
        _add(tar, "ILSVRC2012_devkit_t12/data/ILSVRC2012_validation_ground_truth.txt", gt)
        _add(tar, "ILSVRC2012_devkit_t12/readme.txt", b"devkit\n")


def imagenet_official(root: Path, num_classes: int = 3, train_per_class: int = 4, val_per_class: int = 2,
                      seed: int = 0, image=jpeg) -> dict[str, str]:  # fmt: skip
    """The three official files under ``root`` (images from ``image(rng)``); returns {file name: md5 string}."""
    rng = np.random.default_rng(seed)
    root.mkdir(parents=True, exist_ok=True)
    cls = wnids(num_classes)
    with tarfile.open(root / "ILSVRC2012_img_train.tar", "w") as outer:
        for w in cls:
            inner = io.BytesIO()
            with tarfile.open(fileobj=inner, mode="w") as t:
                for k in range(train_per_class):
                    _add(t, f"{w}_{k + 1}.JPEG", image(rng))
            _add(outer, f"{w}.tar", inner.getvalue())
    val_labels = [1 + (i % num_classes) for i in range(num_classes * val_per_class)]
    with tarfile.open(root / "ILSVRC2012_img_val.tar", "w") as tar:
        for i in range(len(val_labels)):
            _add(tar, f"ILSVRC2012_val_{i + 1:08d}.JPEG", image(rng))
    devkit(root / "ILSVRC2012_devkit_t12.tar.gz", cls, val_labels)
    return {f.name: md5(f) for f in root.iterdir()}


def imagenet_folders(root: Path, num_classes: int = 3, train_per_class: int = 4, val_per_class: int = 2,
                     seed: int = 0) -> list[str]:  # fmt: skip
    """``train/<wnid>/<wnid>_<n>.JPEG`` and ``val/<wnid>/ILSVRC2012_val_<n>.JPEG``; returns the wnids."""
    rng = np.random.default_rng(seed)
    cls = wnids(num_classes)
    n = 0
    for w in cls:
        (root / "train" / w).mkdir(parents=True, exist_ok=True)
        (root / "val" / w).mkdir(parents=True, exist_ok=True)
        for k in range(train_per_class):
            (root / "train" / w / f"{w}_{k + 1}.JPEG").write_bytes(jpeg(rng))
        for _ in range(val_per_class):
            n += 1
            (root / "val" / w / f"ILSVRC2012_val_{n:08d}.JPEG").write_bytes(jpeg(rng))
    return cls


def upload_tree(root: Path, endpoint: str, bucket: str, prefix: str) -> None:
    import boto3

    s3 = boto3.client("s3", endpoint_url=endpoint)
    s3.create_bucket(Bucket=bucket)
    for p in sorted(root.rglob("*")):
        if p.is_file():
            s3.upload_file(str(p), bucket, f"{prefix}/{p.relative_to(root)}")


def photo(rng: np.random.Generator, w: int, h: int, quality: int = 90, mode: str = "RGB") -> bytes:
    """A natural-ish JPEG of ``w`` x ``h``: smooth gradients, sensor-like noise and a few hard-edged shapes
    (what resampling and centre crops act on in real photos), saved in ``mode`` (RGB, L or CMYK)."""
    from PIL import Image, ImageDraw

    yy, xx = np.mgrid[0:h, 0:w] / max(w, h)
    base = np.stack([rng.uniform(0, 255) + rng.uniform(-200, 200) * (a * xx + b * yy)
                     for a, b in rng.uniform(-1, 1, (3, 2))], -1)  # fmt: skip
    img = Image.fromarray(np.clip(base + rng.normal(0, 12, (h, w, 3)), 0, 255).astype(np.uint8))
    draw = ImageDraw.Draw(img)
    for _ in range(6):
        x0, x1 = sorted(rng.integers(0, w, 2))
        y0, y1 = sorted(rng.integers(0, h, 2))
        fill = tuple(int(c) for c in rng.integers(0, 256, 3))
        (draw.ellipse if rng.random() < 0.5 else draw.rectangle)((x0, y0, x1, y1), fill=fill)
    buf = io.BytesIO()
    img.convert(mode).save(buf, format="JPEG", quality=quality)
    return buf.getvalue()


# ---------------------------------------------------------------------------------------------------------
# Hostile archives


def _tar_header(name: str, size: int) -> bytes:
    info = tarfile.TarInfo(name)
    info.size, info.mode, info.mtime = size, 0o644, 0
    return info.tobuf(format=tarfile.USTAR_FORMAT)


def gzip_bomb(path: Path, records: int = 700_000, names: int = 10) -> int:
    """A CIFAR-10 binary archive of a few MB whose ``data_batch_1.bin`` is ``records`` all-zero records
    (700,000: 2.15 GB once inflated); a valid gzip (CRC and length), written in about a second: deflate
    blocks flushed with Z_FULL_FLUSH are byte-identical for identical input, so one compressed MiB of zeros
    is repeated. Returns the member's declared size."""
    size = records * 3073
    text = "".join(f"c{i}\n" for i in range(names)).encode()
    head = _tar_header(f"{CIFAR10.folder}/{CIFAR10.names}", len(text)) + text + bytes(-len(text) % 512)
    head += _tar_header(f"{CIFAR10.folder}/data_batch_1.bin", size)
    zeros = size + (-size % 512) + 1024  # the member, its padding, the two end blocks
    comp = zlib.compressobj(9, zlib.DEFLATED, -15)
    block = bytes(1 << 20)
    crc = zlib.crc32(head)
    with open(path, "wb") as f:
        f.write(b"\x1f\x8b\x08\x00\x00\x00\x00\x00\x02\xff")  # gzip header: deflate, no name, mtime 0
        f.write(comp.compress(head) + comp.flush(zlib.Z_FULL_FLUSH))
        one = comp.compress(block) + comp.flush(zlib.Z_FULL_FLUSH)
        full, rest = divmod(zeros, len(block))
        f.write(one)
        f.write(one * (full - 1))
        for _ in range(full):
            crc = zlib.crc32(block, crc)
        f.write(comp.compress(bytes(rest)) + comp.flush())
        crc = zlib.crc32(bytes(rest), crc)
        f.write(struct.pack("<II", crc & 0xFFFFFFFF, (len(head) + zeros) & 0xFFFFFFFF))
    return size


def cifar10_archive_with(path: Path, *, train_labels, test_labels, names: int = 10) -> str:
    """A CIFAR-10 binary archive with these labels (e.g. an empty or incomplete test split, 201 names)."""
    rng = np.random.default_rng(0)
    tr, te = np.asarray(train_labels, np.uint8), np.asarray(test_labels, np.uint8)
    write_cifar_binary(
        path,
        CIFAR10,
        (rng.integers(0, 256, (len(tr), 32, 32, 3), dtype=np.uint8), tr),
        (rng.integers(0, 256, (len(te), 32, 32, 3), dtype=np.uint8), te),
        [f"c{i}" for i in range(names)],
    )
    return md5(path)
