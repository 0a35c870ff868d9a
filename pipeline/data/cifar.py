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

from .archives import open_checked, readable
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
    num_classes: int
    # records per member in the official archive: the most a member of this layout may declare
    max_records: dict[str, int]
    extra: tuple[str, ...] = ()  # other members the official archive has, never read

    @property
    def record_bytes(self) -> int:
        return self.label_bytes + PIXELS

    def member_rule(self, info: tarfile.TarInfo) -> str | None:
        """Why a member of an archive of this layout is refused, from its header alone (None: accepted)."""
        top, _, rest = info.name.rstrip("/").partition("/")
        if top != self.folder or "/" in rest:
            return f"not under {self.folder}/ (this data set's kind expects a {self.folder} archive)"
        if info.isdir():
            return None
        if rest in self.max_records:
            most = self.max_records[rest] * self.record_bytes
            if info.size > most or info.size % self.record_bytes:
                return (
                    f"declares {info.size:,} bytes; allowed: a whole number of {self.record_bytes}-byte records, "
                    f"at most {self.max_records[rest]:,} ({most:,} bytes, the official file's size)"
                )
            return None
        if rest in (self.names, *self.extra):
            return None if info.size <= MAX_TEXT else f"declares {info.size:,} bytes; allowed: at most {MAX_TEXT:,}"
        allowed = sorted([*self.max_records, self.names, *self.extra])
        return f"unexpected file; a {self.folder} archive holds {allowed}"


MAX_TEXT = 1 << 20  # class-name lists and the readme: a few KB in the official archives
CIFAR10 = Layout(
    "cifar-10-batches-bin",
    tuple(f"data_batch_{i}.bin" for i in range(1, 6)),
    ("test_batch.bin",),
    1,
    0,
    "batches.meta.txt",
    10,
    {**{f"data_batch_{i}.bin": 10_000 for i in range(1, 6)}, "test_batch.bin": 10_000},
    ("readme.html",),
)
CIFAR100 = Layout(
    "cifar-100-binary",
    ("train.bin",),
    ("test.bin",),
    2,
    1,
    "fine_label_names.txt",
    100,
    {"train.bin": 50_000, "test.bin": 10_000},
    ("coarse_label_names.txt",),
)
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


def read_cifar_binary(
    archive: str | Path, layout: Layout, *, label: str | None = None
) -> tuple[dict[str, ImageSet], list[str]]:
    """Read a CIFAR-10/100 binary archive of ``layout``: ({'train': ImageSet, 'test': ImageSet}, class names).

    Every member is checked from its header first (no links, no paths leaving the archive, no member
    larger than the official one: memory stays bounded by the real data's size); nothing is extracted to
    disk. Then the content: ``layout.num_classes`` class names, non-empty splits, labels in range, and every
    class present in each split. Messages name the archive as ``label`` (default: its path).
    """
    name = label or str(archive)
    with (
        readable(name),
        open(archive, "rb") as fh,
        open_checked(name, layout.member_rule, max_members=32, fileobj=fh) as tar,
    ):
        infos = {m.name: m for m in tar.getmembers()}

        def member(fname: str) -> bytes:
            info = infos.get(f"{layout.folder}/{fname}")
            if info is None or not info.isfile():
                raise DataError(
                    f"{name}: missing regular file {layout.folder}/{fname}; is this the CIFAR binary archive "
                    f"({layout.folder})?"
                )
            return tar.extractfile(info).read()

        classes = [c.strip() for c in member(layout.names).decode(errors="replace").splitlines() if c.strip()]
        if len(classes) != layout.num_classes:
            raise DataError(
                f"{name}: {layout.folder}/{layout.names} names {len(classes)} classes; this kind has exactly "
                f"{layout.num_classes}"
            )
        splits = {}
        for split, files in (("train", layout.train), ("test", layout.test)):
            parts = [decode_records(member(f), layout, f) for f in files]
            splits[split] = ImageSet(
                np.concatenate([p.images for p in parts]), np.concatenate([p.labels for p in parts])
            )
    for split, s in splits.items():
        check_split(name, split, s.labels, classes)
    return splits, classes


def check_split(archive: str, split: str, labels: np.ndarray, classes: list[str]) -> None:
    """A split is non-empty, its labels name classes, and every class has at least one image."""
    if not labels.size:
        raise DataError(f"{archive}: the {split} split is empty; a CIFAR archive has images in both splits")
    if labels.max() >= len(classes):
        raise DataError(f"{archive}: {split} label {labels.max()} >= the number of classes {len(classes)}")
    missing = [classes[k] for k in np.flatnonzero(np.bincount(labels, minlength=len(classes)) == 0)]
    if missing:
        shown = ", ".join(missing[:10]) + (f" and {len(missing) - 10} more" if len(missing) > 10 else "")
        raise DataError(
            f"{archive}: the {split} split has no image of {len(missing)} of {len(classes)} classes ({shown}); "
            "every class must be present in each split: the archive is incomplete or not the official one"
        )


def _encode(images: np.ndarray, labels: np.ndarray) -> bytes:
    """Records: label byte(s) (``labels`` is (N,) or (N, 2) for CIFAR-100's coarse, fine), then R, G, B planes."""
    planes = images.transpose(0, 3, 1, 2).reshape(len(images), PIXELS)  # HWC -> CHW rows
    lab = labels.astype(np.uint8).reshape(len(images), -1 if len(images) else 1)  # (0, 1) for an empty split
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


@dataclass(frozen=True)
class Official:
    url: str
    checksum: str  # the MD5 published on the CIFAR page
    size: int  # bytes: the cap on a download of this file


# The binary archives and the MD5 checksums published on the CIFAR page (https://www.cs.toronto.edu/~kriz/cifar.html).
OFFICIAL = {
    "cifar10": Official(
        "https://www.cs.toronto.edu/~kriz/cifar-10-binary.tar.gz", "md5:c32a1d4ab5d03f1284b67883e8d87530", 170_052_171
    ),
    "cifar100": Official(
        "https://www.cs.toronto.edu/~kriz/cifar-100-binary.tar.gz", "md5:03b5dce01913d631647c71ecec9e9cb8", 168_513_733
    ),
}
LAYOUT_OF_KIND = {"embedded": CIFAR10, "cifar10": CIFAR10, "cifar100": CIFAR100}
