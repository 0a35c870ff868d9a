"""ImageNet (ILSVRC2012): index a local folder or an S3 prefix, then preprocess into Parquet shards on Ray.

Two source layouts are accepted (``datasets.<name>.fetch.layout``):

- ``official``: ``ILSVRC2012_img_train.tar`` (one ``<wnid>.tar`` per class inside), ``ILSVRC2012_img_val.tar``
  (50,000 flat ``ILSVRC2012_val_NNNNNNNN.JPEG``) and ``ILSVRC2012_devkit_t12.tar.gz`` (``data/meta.mat`` for
  class ids, wnids and names; ``data/ILSVRC2012_validation_ground_truth.txt`` for the val labels). Each file is
  checked against the md5 published for it (pinned below, the same values torchvision pins), by streaming it
  once; nothing is unpacked to disk.
- ``folders``: ``train/<wnid>/*.JPEG`` and ``val/<wnid>/*.JPEG`` (``val/`` may also be flat, labelled by a
  devkit archive in the same folder). Class names come from the devkit or a ``LOC_synset_mapping.txt`` when
  present, else the wnid is the name. There are no published checksums for loose files: the index (every
  path and size) is hashed, and preprocess records a sha256 of the bytes each shard was made from.

``index_source`` (the fetch stage) writes ``index.parquet``: one row per image with the byte range that holds
it (``container``, ``offset``, ``length``), so preprocess tasks on any node read exactly their images with
one ranged read per shard, from disk or S3, without unpacking. ``preprocess_imagenet`` writes
``train-NNNNN.parquet``/``test-NNNNN.parquet`` shards (columns ``image`` encoded bytes, ``label`` int16,
``name``) with a manifest; the ILSVRC2012 val set is the ``test`` split, as in the paper's tables.

Evaluation follows torchvision's reference protocol (``references/classification``): the image decoded at
full resolution, ``Resize(256)`` (shorter side, bilinear, antialiased), then the ``CenterCrop(224)``
(``eval_view``, built on torchvision's own functions; ``preprocess.resize`` plays 256 and
``preprocess.image_size`` 224). Stored shards keep shorter side 256 for training; the test split is stored as
the exact 224 centre crop of the full-resolution Resize(256), losslessly, so evaluation is torchvision's
reference protocol bit for bit:

- train: shorter side -> ``resize``, JPEG at ``quality``; training reads it through the random-resized-crop
  augmentation, and train images evaluated (those a search holds out) through ``eval_view`` of the stored
  JPEG;
- test: ``eval_view`` of the original, decoded fully (no JPEG draft, no reducing gap), as PNG; read back as
  is, with no further resizing.

The manifest records this (``encoding``: ``{"train": "jpeg", "test": "png"}``, ``eval_protocol`` with the
Pillow/torchvision versions that made the shards: "bit for bit" is against the reference run with that
Pillow); ``load_split`` and ``ray_dataset`` decode accordingly and give the same evaluation inputs. A manifest
without ``encoding`` (older shards) has both splits as JPEG; both are then evaluated through ``eval_view``.
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import json
import re
import sys
import tarfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any, BinaryIO

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from pipeline.config import ImageNetFetchCfg, ImageNetPreprocessCfg
from pipeline.io import atomic_path, read_json, sha256_file, write_json
from pipeline.redact import redact_url

from .archives import check_member, check_members, open_checked, readable
from .download import CHUNK, Checksum, FetchError, is_s3, s3_client, s3_error, split_s3
from .errors import DataError

TRAIN_TAR = "ILSVRC2012_img_train.tar"
VAL_TAR = "ILSVRC2012_img_val.tar"
DEVKIT = "ILSVRC2012_devkit_t12.tar.gz"
PINNED = {
    TRAIN_TAR: "md5:1d675b47d978889d74fa0da5fadfb00e",
    VAL_TAR: "md5:29b22e2961454d5413ddabcf34fc5622",
    DEVKIT: "md5:fa75699e90414af021442c21a62c3abf",
}
DEVKIT_META = "ILSVRC2012_devkit_t12/data/meta.mat"
DEVKIT_VAL_GT = "ILSVRC2012_devkit_t12/data/ILSVRC2012_validation_ground_truth.txt"
SYNSET_MAPPING = "LOC_synset_mapping.txt"
IMAGE_EXT = (".jpeg", ".jpg", ".png")
VAL_NAME = re.compile(r"ILSVRC2012_val_(\d{8})\.JPEG$")
WNID = re.compile(r"^n\d{8}$")
INDEX = "index.parquet"
INDEX_SCHEMA = pa.schema(
    [("split", pa.string()), ("wnid", pa.string()), ("name", pa.string()), ("container", pa.string()),
     ("offset", pa.int64()), ("length", pa.int64())]
)  # fmt: skip


# ---------------------------------------------------------------------------------------------------------
# Where the source files are: a local folder or an S3 prefix


class Store:
    """Read-only access to a local folder or ``s3://bucket/prefix``: listing, ranged reads and streams."""

    def __init__(self, uri: str) -> None:
        self.uri = uri.rstrip("/")
        if is_s3(uri):
            self.bucket, key = split_s3(self.uri)
            self.prefix = f"{key}/" if key else ""
            self._client = None
        else:
            self.root = Path(uri).expanduser()
            if not self.root.is_dir():
                raise FetchError(f"{uri}: no such folder; give a folder or s3://bucket/prefix holding ImageNet")

    @property
    def client(self):
        if self._client is None:
            self._client = s3_client()
        return self._client

    def __getstate__(self) -> dict[str, Any]:  # boto3 clients do not pickle; Ray tasks make their own
        return {**self.__dict__, "_client": None} if is_s3(self.uri) else self.__dict__

    def where(self, rel: str) -> str:
        return f"{self.uri}/{rel}"

    def list(self) -> dict[str, int]:
        """Every file under the root: relative path -> size."""
        if not is_s3(self.uri):
            return {str(p.relative_to(self.root)): p.stat().st_size for p in self.root.rglob("*") if p.is_file()}
        from botocore.exceptions import BotoCoreError, ClientError

        out: dict[str, int] = {}
        try:
            for page in self.client.get_paginator("list_objects_v2").paginate(Bucket=self.bucket, Prefix=self.prefix):
                for o in page.get("Contents", []):
                    if not o["Key"].endswith("/"):
                        out[o["Key"][len(self.prefix) :]] = o["Size"]
        except (BotoCoreError, ClientError) as e:
            raise s3_error(self.uri, e) from None
        if not out:
            raise FetchError(f"{self.uri}: no objects under this prefix; check the bucket, prefix and AWS_ENDPOINT_URL")
        return out

    def read(self, rel: str, start: int = 0, length: int | None = None) -> bytes:
        if not is_s3(self.uri):
            with open(self.root / rel, "rb") as f:
                f.seek(start)
                return f.read() if length is None else f.read(length)
        from botocore.exceptions import BotoCoreError, ClientError

        rng = f"bytes={start}-" if length is None else f"bytes={start}-{start + length - 1}"
        try:
            return self.client.get_object(Bucket=self.bucket, Key=self.prefix + rel, Range=rng)["Body"].read()
        except (BotoCoreError, ClientError) as e:
            raise s3_error(self.where(rel), e) from None

    @contextlib.contextmanager
    def stream(self, rel: str) -> Iterator[BinaryIO]:
        if not is_s3(self.uri):
            with open(self.root / rel, "rb") as f:
                yield f
            return
        from botocore.exceptions import BotoCoreError, ClientError

        try:
            body = self.client.get_object(Bucket=self.bucket, Key=self.prefix + rel)["Body"]
        except (BotoCoreError, ClientError) as e:
            raise s3_error(self.where(rel), e) from None
        try:
            yield body
        finally:
            body.close()


class HashingReader(io.RawIOBase):
    """A read-only stream that hashes (md5 and sha256) everything read through it."""

    def __init__(self, raw: BinaryIO) -> None:
        self.raw, self.md5, self.sha256, self.pos = raw, hashlib.md5(), hashlib.sha256(), 0

    def readable(self) -> bool:
        return True

    def read(self, n: int = -1) -> bytes:
        b = self.raw.read() if n is None or n < 0 else self.raw.read(n)
        self.md5.update(b)
        self.sha256.update(b)
        self.pos += len(b)
        return b

    def readinto(self, buf) -> int:
        b = self.read(len(buf))
        buf[: len(b)] = b
        return len(b)

    def drain(self) -> dict[str, str]:
        while self.read(CHUNK):
            pass
        return {"md5": self.md5.hexdigest(), "sha256": self.sha256.hexdigest(), "size": self.pos}


def _verify(where: str, digests: dict[str, Any], expected: str) -> None:
    want = Checksum.parse(expected)
    got = digests[want.algorithm]
    if got != want.hexdigest:
        raise FetchError(
            f"{where}: checksum mismatch: expected {want}, got {want.algorithm}:{got} ({digests['size']} bytes); "
            "the file is corrupt, truncated or not the official one. Copy it again, or set "
            "datasets.<name>.fetch.checksums if you deliberately use a different file."
        )


# ---------------------------------------------------------------------------------------------------------
# Fetch: index the source


DEVKIT_MEMBER_MAX = 64 << 20


def parse_devkit(blob: bytes, where: str) -> tuple[list[dict[str, Any]], list[int]]:
    """(classes sorted by ILSVRC2012_ID: {ilsvrc_id, wnid, name}, val labels as ILSVRC2012_IDs in image order)."""
    from scipy.io import loadmat

    def rule(m: tarfile.TarInfo) -> str | None:  # the official devkit's largest member is ~2 MB
        return (
            f"declares {m.size:,} bytes; a devkit member has at most {DEVKIT_MEMBER_MAX:,}"
            if (m.size > DEVKIT_MEMBER_MAX)
            else None
        )

    with open_checked(where, rule, max_members=4096, fileobj=io.BytesIO(blob)) as tar, readable(where):
        members = {m.name: m for m in tar.getmembers()}
        for need in (DEVKIT_META, DEVKIT_VAL_GT):
            if need not in members or not members[need].isfile():
                raise FetchError(f"{where}: devkit archive lacks {need}; is this ILSVRC2012_devkit_t12.tar.gz?")
        meta = tar.extractfile(members[DEVKIT_META]).read()
        gt = tar.extractfile(members[DEVKIT_VAL_GT]).read().decode()
    synsets = loadmat(io.BytesIO(meta), squeeze_me=True)["synsets"]
    classes = [
        {"ilsvrc_id": int(s["ILSVRC2012_ID"]), "wnid": str(s["WNID"]), "name": str(s["words"])}
        for s in synsets
        if int(s["num_children"]) == 0  # the 1000 leaf synsets are the classes
    ]
    classes.sort(key=lambda c: c["ilsvrc_id"])
    return classes, [int(x) for x in gt.split()]


def _check_size(where: str, size: int, cap: int) -> None:
    """A member or file larger than ``fetch.max_member_bytes`` is refused from its declared size, unread."""
    if size > cap:
        raise FetchError(
            f"{where}: declares {size:,} bytes, more than datasets.<name>.fetch.max_member_bytes = {cap:,}; "
            "no ImageNet file is that large (a decompression bomb or the wrong file?). Raise the setting only "
            "for a source you trust"
        )


def _read_verified(store: Store, rel: str, expected: str) -> tuple[bytes, dict[str, Any]]:
    blob = store.read(rel)
    digests = {"md5": hashlib.md5(blob).hexdigest(), "sha256": hashlib.sha256(blob).hexdigest(), "size": len(blob)}
    _verify(store.where(rel), digests, expected)
    return blob, digests


def _walk_tar(store: Store, rel: str, expected: str, visit) -> dict[str, Any]:
    """Stream the tar ``rel`` once: check every member, ``visit(tar, member)`` each file, verify the checksum."""
    with store.stream(rel) as raw, readable(store.where(rel)):
        h = HashingReader(raw)
        with tarfile.open(fileobj=h, mode="r|") as tar:
            for m in tar:
                check_member(store.where(rel), m)
                if m.isfile():
                    visit(tar, m)
        digests = h.drain()
    _verify(store.where(rel), digests, expected)
    return digests


def _index_official(
    store: Store, listing: dict[str, int], sums: dict[str, str], rows: list[tuple], log, *, cap: int
) -> tuple[list, dict]:
    files: dict[str, Any] = {}
    _check_size(store.where(DEVKIT), listing[DEVKIT], cap)
    blob, files[DEVKIT] = _read_verified(store, DEVKIT, sums[DEVKIT])
    classes, val_ids = parse_devkit(blob, store.where(DEVKIT))
    wnid_of = {c["ilsvrc_id"]: c["wnid"] for c in classes}

    def train_member(tar: tarfile.TarFile, m: tarfile.TarInfo) -> None:
        wnid = m.name.removesuffix(".tar")
        if not (m.name.endswith(".tar") and WNID.match(wnid)):
            raise FetchError(f"{store.where(TRAIN_TAR)}: unexpected member {m.name!r}; expected <wnid>.tar")
        _check_size(f"{store.where(TRAIN_TAR)}/{m.name}", m.size, cap)
        inner = tar.extractfile(m).read()
        with tarfile.open(fileobj=io.BytesIO(inner), mode="r:") as tin:
            for im in check_members(f"{store.where(TRAIN_TAR)}/{m.name}", tin.getmembers()):
                if im.isfile():
                    _check_size(f"{store.where(TRAIN_TAR)}/{m.name}/{im.name}", im.size, cap)
                    rows.append(("train", wnid, Path(im.name).name, TRAIN_TAR, m.offset_data + im.offset_data, im.size))

    def val_member(tar: tarfile.TarFile, m: tarfile.TarInfo) -> None:
        k = VAL_NAME.search(m.name)
        if k is None or not 1 <= int(k.group(1)) <= len(val_ids):
            raise FetchError(
                f"{store.where(VAL_TAR)}: unexpected member {m.name!r}; expected ILSVRC2012_val_NNNNNNNN.JPEG "
                f"numbered 1..{len(val_ids)} (the devkit's ground truth)"
            )
        _check_size(f"{store.where(VAL_TAR)}/{m.name}", m.size, cap)
        rows.append(("test", wnid_of[val_ids[int(k.group(1)) - 1]], Path(m.name).name, VAL_TAR, m.offset_data, m.size))

    for rel, visit in ((TRAIN_TAR, train_member), (VAL_TAR, val_member)):
        log(f"indexing {store.where(rel)} (reads every byte once to verify its checksum)")
        files[rel] = _walk_tar(store, rel, sums[rel], visit)
    return classes, files


def _index_folders(
    store: Store, listing: dict[str, int], sums: dict[str, str], rows: list[tuple], *, cap: int
) -> tuple[list, dict]:
    files: dict[str, Any] = {}
    classes: list[dict[str, Any]] = []
    val_ids: list[int] = []
    for rel in (DEVKIT, SYNSET_MAPPING):
        if rel in listing:
            _check_size(store.where(rel), listing[rel], cap)
    if DEVKIT in listing:
        blob, files[DEVKIT] = _read_verified(store, DEVKIT, sums[DEVKIT])
        classes, val_ids = parse_devkit(blob, store.where(DEVKIT))
    elif SYNSET_MAPPING in listing:
        for line in store.read(SYNSET_MAPPING).decode().splitlines():
            wnid, _, name = line.strip().partition(" ")
            if wnid:
                classes.append({"wnid": wnid, "name": name or wnid})
    wnid_of = {c["ilsvrc_id"]: c["wnid"] for c in classes if "ilsvrc_id" in c}
    flat_val = []
    for rel, size in sorted(listing.items()):
        parts = rel.split("/")
        if not rel.lower().endswith(IMAGE_EXT) or parts[0] not in ("train", "val"):
            continue
        split = "train" if parts[0] == "train" else "test"
        _check_size(store.where(rel), size, cap)
        if len(parts) == 3:
            rows.append((split, parts[1], parts[2], rel, 0, size))
        elif len(parts) == 2 and split == "test":
            flat_val.append((rel, size))
    for rel, size in flat_val:
        k = VAL_NAME.search(rel)
        if not val_ids or k is None or not 1 <= int(k.group(1)) <= len(val_ids):
            raise FetchError(
                f"{store.where(rel)}: a val image outside a val/<wnid>/ folder needs {DEVKIT} in {store.uri} "
                "(its ground truth labels the flat val/ILSVRC2012_val_NNNNNNNN.JPEG files)"
            )
        rows.append(("test", wnid_of[val_ids[int(k.group(1)) - 1]], Path(rel).name, rel, 0, size))
    if not rows:
        raise FetchError(f"{store.uri}: no images found; expected train/<wnid>/*.JPEG and val/<wnid>/*.JPEG")
    return classes, files


def index_source(cfg: ImageNetFetchCfg, out_dir: Path, log=lambda m: print(m, file=sys.stderr)) -> dict[str, Any]:
    """Index (and verify) the ImageNet source into ``out_dir/index.parquet``; returns the ``source.json`` dict."""
    store = Store(cfg.source)
    listing = store.list()
    sums = {**PINNED, **cfg.checksums}
    official = all(f in listing for f in (TRAIN_TAR, VAL_TAR, DEVKIT))
    layout = cfg.layout if cfg.layout != "auto" else ("official" if official else "folders")
    rows: list[tuple] = []
    if layout == "official":
        missing = [f for f in (TRAIN_TAR, VAL_TAR, DEVKIT) if f not in listing]
        if missing:
            raise FetchError(f"{cfg.source}: layout 'official' needs {missing}; found {sorted(listing)[:10]}")
        classes, files = _index_official(store, listing, sums, rows, log, cap=cfg.max_member_bytes)
    else:
        classes, files = _index_folders(store, listing, sums, rows, cap=cfg.max_member_bytes)
    table = pa.Table.from_pylist([dict(zip(INDEX_SCHEMA.names, r, strict=True)) for r in rows], schema=INDEX_SCHEMA)
    pq.write_table(table, out_dir / INDEX, compression="zstd")
    index_sha = sha256_file(out_dir / INDEX)
    files_sha = hashlib.sha256(json.dumps(files, sort_keys=True).encode()).hexdigest()
    return {
        "format": "imagenet-index",
        "layout": layout,
        "root": cfg.source,
        "index": INDEX,
        "index_sha256": index_sha,
        "files": files,  # the official files' md5/sha256/size (verified against the pinned values)
        # "official" only when every official file's md5 is the published one (user checksums may differ)
        "origin": {
            "source": redact_url(cfg.source),
            "layout": layout,
            "published": PINNED,
            "official": layout == "official"
            and all(f"md5:{files.get(f, {}).get('md5')}" == PINNED[f] for f in (TRAIN_TAR, VAL_TAR, DEVKIT)),
        },
        "classes": classes,  # from the devkit or the synset mapping; empty: the folders' wnids
        "counts": {s: sum(r[0] == s for r in rows) for s in ("train", "test")},
        "sha256": hashlib.sha256(f"{index_sha}:{files_sha}".encode()).hexdigest(),
    }


# ---------------------------------------------------------------------------------------------------------
# Preprocess: select, decode, resize, re-encode into Parquet shards on Ray


def take_per_class(count: int, per_class: int | float | None) -> int:
    if per_class is None:
        return count
    if isinstance(per_class, float):
        return min(count, max(1, round(per_class * count)))
    return min(count, per_class)


ENCODING = {"train": "jpeg", "test": "png"}
EVAL_PROTOCOL = (
    "torchvision reference evaluation (references/classification): Resize(resize) (shorter side, bilinear, "
    "antialiased) of the image decoded at full resolution, then CenterCrop(image_size)"
)


def eval_view(img, resize: int, size: int):
    """The evaluation input of a PIL image: ``Resize(resize)`` then ``CenterCrop(size)``, with torchvision's
    own functions (the defaults of ``torchvision.transforms.Resize``: bilinear, antialiased), so it is the
    reference protocol (256 -> 224 for ImageNet) by construction."""
    from torchvision.transforms import InterpolationMode
    from torchvision.transforms.v2 import functional as F

    img = F.resize(img, [resize], interpolation=InterpolationMode.BILINEAR, antialias=True)
    return F.center_crop(img, [size, size])


def encoding(manifest: dict[str, Any], split: str) -> str:
    """How ``split``'s images are stored: ``jpeg`` (shorter side ``stored_shorter_side``) or ``png`` (the exact
    evaluation input). Manifests older than the ``encoding`` field stored both splits as JPEG."""
    return manifest.get("encoding", {}).get(split, "jpeg")


def decode_images(
    blobs: list[bytes], size: int, resize: int | None = None, rng: np.random.Generator | None = None
) -> np.ndarray:
    """Stored images -> (N, size, size, 3) uint8, each decoded at full resolution (no draft).

    - ``rng``: the ImageNet training augmentation of He et al. 2016 / torchvision -- a random crop of 8-100 %
      of the area with aspect ratio 3/4-4/3, resized to ``size``, flipped horizontally half the time;
    - else ``resize``: the evaluation view (``eval_view``: Resize(resize) + CenterCrop(size)) of the stored
      image (a JPEG-stored split, e.g. the train images a search holds out);
    - neither: the stored images are the evaluation input already (the PNG test split), taken as they are.
    """
    from PIL import Image

    out = np.empty((len(blobs), size, size, 3), np.uint8)
    for i, b in enumerate(blobs):
        with Image.open(io.BytesIO(b)) as im:
            img = im.convert("RGB")
        if rng is None:
            if resize is not None:
                img = eval_view(img, resize, size)
            elif img.size != (size, size):
                raise DataError(f"a stored evaluation image is {img.size[0]}x{img.size[1]}, expected {size}x{size}")
            out[i] = np.asarray(img)
            continue
        w, h = img.size
        for _ in range(10):
            area = w * h * rng.uniform(0.08, 1.0)
            ratio = np.exp(rng.uniform(np.log(3 / 4), np.log(4 / 3)))
            cw, ch = round(np.sqrt(area * ratio)), round(np.sqrt(area / ratio))
            if 0 < cw <= w and 0 < ch <= h:
                break
        else:  # fall back to the centre square
            cw = ch = min(w, h)
        x0, y0 = int(rng.integers(0, w - cw + 1)), int(rng.integers(0, h - ch + 1))
        crop = img.resize((size, size), Image.Resampling.BILINEAR, box=(x0, y0, x0 + cw, y0 + ch))
        arr = np.asarray(crop)
        out[i] = arr[:, ::-1] if rng.random() < 0.5 else arr
    return out


def _encode(blob: bytes, split: str, cfg: ImageNetPreprocessCfg) -> tuple[bytes, np.ndarray | None]:
    """One source image -> its stored bytes (decoding fully: a truncated or corrupt file raises), and for the
    train split the per-channel histogram of its evaluation view (the mean/std of the manifest).

    - train: shorter side -> ``cfg.resize``, JPEG at ``cfg.quality`` (training's random-resized crops read it);
    - test: ``eval_view`` of the original decoded at full resolution (no draft, no reducing gap), as lossless
      PNG: the exact input of the reference evaluation.
    """
    from PIL import Image

    buf = io.BytesIO()
    if split == "test":
        with Image.open(io.BytesIO(blob)) as im:
            rgb = im.convert("RGB")  # as torchvision's pil_loader: Image.open(f).convert("RGB")
        # zlib level 6 (Pillow's default): ~3x slower to write than level 1, ~13 % smaller to read each epoch
        eval_view(rgb, cfg.resize, cfg.image_size).save(buf, format="PNG", compress_level=6)
        return buf.getvalue(), None
    with Image.open(io.BytesIO(blob)) as im:
        im.draft("RGB", (cfg.resize, cfg.resize))  # JPEG: decode at 1/2, 1/4, 1/8 scale when that is enough
        im.load()
        rgb = im.convert("RGB")
    w, h = rgb.size
    scale = cfg.resize / min(w, h)
    rgb = rgb.resize((max(1, round(w * scale)), max(1, round(h * scale))), Image.Resampling.BILINEAR, reducing_gap=3.0)
    rgb.save(buf, format="JPEG", quality=cfg.quality)
    stored = buf.getvalue()
    x = decode_images([stored], cfg.image_size, cfg.resize)[0]
    return stored, np.stack([np.bincount(x[..., c].ravel(), minlength=256) for c in range(3)])


def process_shard(store: Store, rows: list[dict[str, Any]], cfg: ImageNetPreprocessCfg) -> dict[str, Any]:
    """Read this shard's images (one ranged read per contiguous run, all of one split) and store them
    (``_encode``: train as resized JPEG, test as the PNG evaluation input).

    Returns the shard as an Arrow table, the pixel histogram (train), the sha256 of the source bytes, the
    images that could not be decoded (name, reason) and the Pillow/torchvision versions that made it.
    """
    images, labels, names, bad = [], [], [], []
    hist = np.zeros((3, 256), np.int64)
    src_hash = hashlib.sha256()
    i = 0
    while i < len(rows):  # runs of rows adjacent in one container: one read each
        j = i + 1
        while (
            j < len(rows)
            and rows[j]["container"] == rows[i]["container"]
            and rows[j]["offset"] - (rows[j - 1]["offset"] + rows[j - 1]["length"]) <= 1 << 16
            and rows[j]["offset"] + rows[j]["length"] - rows[i]["offset"] <= 256 << 20
        ):
            j += 1
        start = rows[i]["offset"]
        blob = store.read(rows[i]["container"], start, rows[j - 1]["offset"] + rows[j - 1]["length"] - start)
        for r in rows[i:j]:
            b = blob[r["offset"] - start : r["offset"] - start + r["length"]]
            src_hash.update(b)
            where = r["container"] if r["container"].endswith(r["name"]) else f"{r['container']}:{r['name']}"
            if len(b) != r["length"]:
                bad.append((where, f"short read: {len(b)} of {r['length']} bytes"))
                continue
            try:
                stored, h = _encode(b, r["split"], cfg)
            except Exception as e:  # PIL raises OSError, ValueError, SyntaxError, DecompressionBombError...
                bad.append((where, f"{type(e).__name__}: {e}"))
                continue
            images.append(stored)
            labels.append(r["label"])
            names.append(r["name"])
            if h is not None:
                hist += h
        i = j
    table = pa.table(
        {"image": pa.array(images, pa.binary()), "label": pa.array(labels, pa.int16()), "name": pa.array(names)}
    )
    return {"table": table, "hist": hist, "bad": bad, "source_sha256": src_hash.hexdigest(), "versions": _versions()}


def _versions() -> dict[str, str]:
    import PIL
    import torchvision

    return {"pillow": PIL.__version__, "torchvision": torchvision.__version__}


def _plan(source: dict[str, Any], index: pa.Table, cfg: ImageNetPreprocessCfg, log) -> tuple[list[dict], dict]:
    """Pick classes and images; returns (rows with labels, class info)."""
    rows = index.to_pylist()
    seen: dict[str, dict[str, int]] = {}
    for r in rows:
        seen.setdefault(r["wnid"], {"train": 0, "test": 0})[r["split"]] += 1
    named = {c["wnid"]: c for c in source["classes"]}
    expected = [c["wnid"] for c in source["classes"]] if named else sorted(seen)
    if named:
        unknown = sorted(set(seen) - set(named))
        if unknown:
            raise DataError(
                f"{source['root']}: {len(unknown)} folder(s) are not classes of the devkit/synset mapping, e.g. "
                f"{unknown[:5]}; remove them or the class list"
            )
    missing = [w for w in expected if min(seen.get(w, {"train": 0, "test": 0}).values()) == 0]
    if missing:
        detail = ", ".join(
            f"{w} (train {seen.get(w, {}).get('train', 0)}, val {seen.get(w, {}).get('test', 0)})" for w in missing[:5]
        )
        if cfg.on_missing_class == "error":
            raise DataError(
                f"{source['root']}: {len(missing)} class(es) without train or val images: {detail}; complete the "
                "source, or set preprocess.on_missing_class: skip to drop such classes (the manifest lists them)"
            )
        log(f"warning: skipping {len(missing)} class(es) without train or val images: {detail}")
    present = [w for w in expected if w not in set(missing)]
    if isinstance(cfg.classes, int):
        chosen = present[: cfg.classes]
    elif cfg.classes is not None:
        absent = [w for w in cfg.classes if w not in present]
        if absent:
            raise DataError(f"preprocess.classes: {absent} not in the source's classes (e.g. {present[:3]})")
        chosen = list(cfg.classes)
    else:
        chosen = present
    label = {w: i for i, w in enumerate(chosen)}
    by_class: dict[tuple[str, str], list[dict]] = {}
    for r in rows:
        if r["wnid"] in label:
            by_class.setdefault((r["split"], r["wnid"]), []).append(r)
    picked = []
    for (split, wnid), rs in sorted(by_class.items()):
        rs.sort(key=lambda r: r["name"])
        n = take_per_class(len(rs), cfg.subset.train if split == "train" else cfg.subset.test)
        picked += [{**r, "label": label[wnid]} for r in rs[:n]]
    info = [
        {"index": i, "wnid": w, "name": named.get(w, {}).get("name", w), "ilsvrc_id": named.get(w, {}).get("ilsvrc_id")}
        for i, w in enumerate(chosen)
    ]
    return picked, {"classes": info, "missing_classes": missing}


@contextlib.contextmanager
def _ray() -> Iterator[None]:
    import ray

    if ray.is_initialized():
        yield
        return
    from pipeline.compute import ray_session

    with ray_session():
        yield


def preprocess_imagenet(
    raw_dir: Path, out_dir: Path, cfg: ImageNetPreprocessCfg, log=lambda m: print(m, file=sys.stderr)
) -> dict[str, Any]:
    """Index -> Parquet shards + manifest in ``out_dir`` (atomically), one Ray task per shard."""
    source = read_json(raw_dir / "source.json")
    index_path = raw_dir / source["index"]
    if sha256_file(index_path) != source["index_sha256"]:
        raise DataError(f"{index_path}: sha256 does not match {raw_dir / 'source.json'}; re-run fetch")
    rows, info = _plan(source, pq.read_table(index_path), cfg, log)
    store = Store(source["root"])
    shards = []
    for split in ("train", "test"):
        rs = sorted((r for r in rows if r["split"] == split), key=lambda r: (r["container"], r["offset"], r["name"]))
        shards += [(split, k, rs[i : i + cfg.shard_size]) for k, i in enumerate(range(0, len(rs), cfg.shard_size))]
    import ray

    with _ray(), atomic_path(out_dir) as tmp:
        tmp.mkdir()
        task = ray.remote(num_cpus=1)(process_shard)
        window = max(2, int(ray.cluster_resources().get("CPU", 2)) * 2)  # bounds what waits in memory
        pending: dict[Any, tuple[str, int]] = {}
        todo = list(shards)
        files: dict[str, list[dict[str, Any]]] = {"train": [], "test": []}
        hist = np.zeros((3, 256), np.int64)
        bad: list[dict[str, str]] = []
        versions: dict[str, set[str]] = {}
        counts = {s: np.zeros(len(info["classes"]), np.int64) for s in ("train", "test")}
        while todo or pending:
            while todo and len(pending) < window:
                split, k, rs = todo.pop(0)
                pending[task.remote(store, rs, cfg)] = (split, k)
            done, _ = ray.wait(list(pending), num_returns=1)
            split, k = pending.pop(done[0])
            res = ray.get(done[0])
            if res["bad"] and cfg.on_bad_image == "error":
                name, why = res["bad"][0]
                raise DataError(
                    f"{source['root']}: image {name!r} cannot be decoded ({why}); remove it, or set "
                    "preprocess.on_bad_image: skip to skip and count such images"
                )
            bad += [{"split": split, "name": n, "reason": w} for n, w in res["bad"]]
            for lib, ver in res["versions"].items():
                versions.setdefault(lib, set()).add(ver)
            if split == "train":
                hist += res["hist"]
            fname = f"{split}-{k:05d}.parquet"
            pq.write_table(res["table"], tmp / fname, compression="none")  # JPEG/PNG bytes do not compress
            labels = res["table"].column("label").to_numpy()
            counts[split] += np.bincount(labels, minlength=len(counts[split]))
            files[split].append(
                {"path": fname, "rows": res["table"].num_rows, "sha256": sha256_file(tmp / fname),
                 "source_sha256": res["source_sha256"]}
            )  # fmt: skip
        if bad:
            log(f"warning: skipped {len(bad)} image(s) that could not be decoded, e.g. {bad[:3]} (see the manifest)")
        v = np.arange(256) / 255.0
        n = hist.sum(1)
        mean = (hist @ v) / np.maximum(n, 1)
        std = np.sqrt(np.maximum((hist @ v**2) / np.maximum(n, 1) - mean**2, 0))
        split_files = {}
        for split, fs in files.items():
            fs.sort(key=lambda f: f["path"])
            split_files[split] = {
                "rows": sum(f["rows"] for f in fs),
                "shards": fs,
                "sha256": hashlib.sha256("".join(f["sha256"] for f in fs).encode()).hexdigest(),
            }
        manifest = {
            "dataset": source["dataset"],
            "format": "jpeg",
            "classes": [c["name"] for c in info["classes"]],
            "class_info": info["classes"],
            "num_classes": len(info["classes"]),
            "image_shape": [cfg.image_size, cfg.image_size, 3],
            "stored_shorter_side": cfg.resize,  # of the train split's JPEGs
            "encoding": dict(ENCODING),  # per split; readers: ``encoding``, ``decode_images``
            "eval_protocol": {
                "transform": f"Resize({cfg.resize}) + CenterCrop({cfg.image_size})",
                "description": EVAL_PROTOCOL,
                "test": "stored as the exact evaluation input (lossless PNG), decoded as is",
                "train": "Resize + CenterCrop of the stored JPEG (train images held out for evaluation)",
                "made_with": {lib: sorted(v) for lib, v in sorted(versions.items())},
            },
            "stats_of": "train split, evaluation view of the stored JPEGs (load_split(..., 'train'))",
            "mean": mean.round(6).tolist(),
            "std": std.round(6).tolist(),
            "class_counts": {s: c.tolist() for s, c in counts.items()},
            "files": split_files,
            "skipped_images": {"count": len(bad), "images": bad},
            "missing_classes": info["missing_classes"],
            "preprocess": cfg.model_dump(),
            "source_sha256": source["sha256"],
            "source_files": source["files"],
            "source_origin": source.get("origin", {}),
            "test_split": "ILSVRC2012 val",
        }
        from .preprocess import data_sha

        manifest["data_sha256"] = data_sha(manifest)
        write_json(tmp / "manifest.json", manifest)
    return manifest


def split_files(manifest: dict[str, Any], split: str) -> list[str]:
    return [f["path"] for f in manifest["files"][split]["shards"]]


def _eval_resize(manifest: dict[str, Any], split: str) -> int | None:
    """``decode_images``'s ``resize`` for evaluating ``split``: None where the stored image is the input."""
    return None if encoding(manifest, split) == "png" else manifest["stored_shorter_side"]


def ray_dataset(data_uri: str, split: str, manifest: dict[str, Any], augment: bool = False):
    """The split as a Ray Dataset of decoded inputs (``image`` (B, S, S, 3) uint8, ``label`` int64), read with
    ``ray.data.read_parquet`` from a local folder or ``s3://bucket/prefix``. Decoding (and with ``augment``,
    the random-resized-crop + flip augmentation, drawn afresh every epoch) runs in Ray Data tasks on the
    cluster's CPUs, streamed to the training workers, so the GPUs do not wait on JPEG decoding. Without
    ``augment``, the evaluation inputs: the same values as ``load_split``."""
    import ray.data

    size = manifest["image_shape"][0]
    resize = _eval_resize(manifest, split)
    if augment and encoding(manifest, split) != "jpeg":
        raise DataError(
            f"the {split} split is stored as evaluation inputs ({encoding(manifest, split)}); it is not augmented"
        )
    paths = [f"{data_uri.rstrip('/')}/{p}" for p in split_files(manifest, split)]

    def decode(batch: dict[str, Any]) -> dict[str, Any]:
        rng = np.random.default_rng() if augment else None  # fresh entropy: a new augmentation every epoch
        images = decode_images(list(batch["image"]), size, resize, rng)
        return {"image": images, "label": batch["label"].astype(np.int64)}

    ds = ray.data.read_parquet(paths, columns=["image", "label"])
    return (ds.random_shuffle() if augment else ds).map_batches(decode, batch_format="numpy")


def load_jpeg_split(data_dir: str | Path, split: str, manifest: dict[str, Any]) -> tuple[np.ndarray, np.ndarray]:
    """The whole split's evaluation inputs decoded into memory, in shard order (the same values
    ``ray_dataset`` yields without ``augment``): the test split as stored, a JPEG split through ``eval_view``."""
    from .preprocess import read_table

    size = manifest["image_shape"][0]
    resize = _eval_resize(manifest, split)
    images, labels = [], []
    for p in split_files(manifest, split):
        t = read_table(data_dir, p, columns=["image", "label"])
        images.append(decode_images(t.column("image").to_pylist(), size, resize))
        labels.append(t.column("label").to_numpy().astype(np.int64))
    if not images:
        return np.zeros((0, size, size, 3), np.uint8), np.zeros(0, np.int64)
    return np.concatenate(images), np.concatenate(labels)
