"""CIFAR binary-format archives (https://www.cs.toronto.edu/~kriz/cifar.html, "binary version").

The binary format needs no unpickling: a CIFAR-10 record is 1 label byte + 3072 image bytes (1024 R, 1024 G,
1024 B, row-major); a CIFAR-100 record has 2 label bytes (coarse, fine) first. Archives are read straight
from the tarball (no extraction, so no member can land outside the data directory).
"""

from __future__ import annotations

import gzip
import io
import tarfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from pipeline.io import atomic_path

from .archives import open_checked
from .errors import DataError

PIXELS = 32 * 32 * 3


@dataclass(frozen=True)
class Layout:
    folder: str
    train: tuple[str, ...]
    test: tuple[str, ...]
    label_bytes: int
    label_offset: int  # which label byte is the class (CIFAR-100: the fine label)
    names: str


CIFAR10 = Layout(
    "cifar-10-batches-bin",
    tuple(f"data_batch_{i}.bin" for i in range(1, 6)),
    ("test_batch.bin",),
    1,
    0,
    "batches.meta.txt",
)
CIFAR100 = Layout("cifar-100-binary", ("train.bin",), ("test.bin",), 2, 1, "fine_label_names.txt")
LAYOUTS = (CIFAR10, CIFAR100)


@dataclass(frozen=True)
class ImageSet:
    images: np.ndarray  # (N, 32, 32, 3) uint8, HWC
    labels: np.ndarray  # (N,) int64


def decode_records(blob: bytes, layout: Layout, name: str) -> ImageSet:
    rec = layout.label_bytes + PIXELS
    if len(blob) % rec:
        raise DataError(f"{name}: {len(blob)} bytes is not a whole number of {rec}-byte records (truncated?)")
    arr = np.frombuffer(blob, np.uint8).reshape(-1, rec)
    images = arr[:, layout.label_bytes :].reshape(-1, 3, 32, 32).transpose(0, 2, 3, 1)
    return ImageSet(np.ascontiguousarray(images), arr[:, layout.label_offset].astype(np.int64))


def read_cifar_binary(archive: str | Path, expect: Layout | None = None) -> tuple[dict[str, ImageSet], list[str]]:
    """Read a CIFAR-10/100 binary archive: ({'train': ImageSet, 'test': ImageSet}, class names).

    Every member is checked first (no links, no paths leaving the archive); nothing is extracted to disk.
    """
    archive = Path(archive)
    with open_checked(archive) as tar:
        names = set(tar.getnames())
        layout = next((lay for lay in LAYOUTS if f"{lay.folder}/{lay.names}" in names), None)
        if layout is None:
            raise DataError(
                f"{archive}: not a CIFAR binary archive (expected "
                f"{' or '.join(f'{lay.folder}/{lay.names}' for lay in LAYOUTS)})"
            )
        if expect is not None and layout != expect:
            raise DataError(
                f"{archive}: holds {layout.folder}/, but this data set's kind expects {expect.folder}/ "
                "(a CIFAR-10 archive for kind cifar10, CIFAR-100 for cifar100)"
            )

        def member(fname: str) -> bytes:
            full = f"{layout.folder}/{fname}"
            info = tar.getmember(full) if full in names else None
            if info is None or not info.isfile():
                raise DataError(f"{archive}: missing regular file {full}")
            return tar.extractfile(info).read()

        splits = {}
        for split, files in (("train", layout.train), ("test", layout.test)):
            parts = [decode_records(member(f), layout, f) for f in files]
            splits[split] = ImageSet(
                np.concatenate([p.images for p in parts]), np.concatenate([p.labels for p in parts])
            )
        classes = [c.strip() for c in member(layout.names).decode().splitlines() if c.strip()]
    for split, s in splits.items():
        if s.labels.size and s.labels.max() >= len(classes):
            raise DataError(f"{archive}: {split} label {s.labels.max()} >= number of classes {len(classes)}")
    return splits, classes


def _encode(images: np.ndarray, labels: np.ndarray) -> bytes:
    """Records: label byte(s) (``labels`` is (N,) or (N, 2) for CIFAR-100's coarse, fine), then R, G, B planes."""
    planes = images.transpose(0, 3, 1, 2).reshape(len(images), PIXELS)  # HWC -> CHW rows
    lab = labels.astype(np.uint8).reshape(len(images), -1)
    return np.concatenate([lab, planes], axis=1).tobytes()


def write_cifar_binary(
    path: str | Path,
    layout: Layout,
    train: tuple[np.ndarray, np.ndarray],
    test: tuple[np.ndarray, np.ndarray],
    classes: list[str],
    coarse_classes: list[str] | None = None,
) -> None:
    """Write a CIFAR-10 or CIFAR-100 binary archive, in the official layout, atomically and byte-reproducibly.

    For CIFAR-100 the labels are (N, 2) arrays of (coarse, fine) and ``coarse_classes`` names the 20 coarse ones.
    """
    files: list[tuple[str, bytes]] = []
    batches = np.array_split(np.arange(len(train[1])), len(layout.train))
    for fname, idx in zip(layout.train, batches, strict=True):
        files.append((fname, _encode(train[0][idx], train[1][idx])))
    files.append((layout.test[0], _encode(*test)))
    files.append((layout.names, ("\n".join(classes) + "\n").encode()))
    if coarse_classes is not None:
        files.append(("coarse_label_names.txt", ("\n".join(coarse_classes) + "\n").encode()))
    with (
        atomic_path(path) as tmp,
        open(tmp, "wb") as raw,
        gzip.GzipFile(fileobj=raw, mode="wb", mtime=0) as gz,
        tarfile.open(fileobj=gz, mode="w", format=tarfile.USTAR_FORMAT) as tar,
    ):
        for fname, blob in files:
            info = tarfile.TarInfo(f"{layout.folder}/{fname}")
            info.size, info.mode, info.mtime = len(blob), 0o644, 0
            tar.addfile(info, io.BytesIO(blob))


def write_cifar10_binary(
    path: str | Path,
    train: tuple[np.ndarray, np.ndarray],
    test: tuple[np.ndarray, np.ndarray],
    classes: list[str],
) -> None:
    """Write a CIFAR-10 binary archive (5 train batches, 1 test batch)."""
    write_cifar_binary(path, CIFAR10, train, test, classes)


# The binary archives and the MD5 checksums published on the CIFAR page (https://www.cs.toronto.edu/~kriz/cifar.html).
OFFICIAL = {
    "cifar10": ("https://www.cs.toronto.edu/~kriz/cifar-10-binary.tar.gz", "md5:c32a1d4ab5d03f1284b67883e8d87530"),
    "cifar100": ("https://www.cs.toronto.edu/~kriz/cifar-100-binary.tar.gz", "md5:03b5dce01913d631647c71ecec9e9cb8"),
}
LAYOUT_OF_KIND = {"embedded": CIFAR10, "cifar10": CIFAR10, "cifar100": CIFAR100}
