"""ImageNet (ILSVRC2012) for the fetch stage: index a local folder or an S3 prefix, verifying it.

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

``index_source`` writes ``index.parquet``: one row per image with the byte range that holds it (``container``,
``offset``, ``length``), so preprocess tasks on any node (``pipeline.data.imagenet``) read exactly their
images with one ranged read per shard, from disk or S3, without unpacking.
"""

from __future__ import annotations

import hashlib
import io
import json
import logging
import re
import tarfile
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq

from pipeline.checksum import Checksum
from pipeline.config import ImageNetFetchCfg
from pipeline.io import sha256_file
from pipeline.redact import redact_url

from .archives import check_member, check_members, open_checked, readable
from .sources import FetchError
from .store import HashingReader, Store

log = logging.getLogger(__name__)

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


def _verify(where: str, digests: dict[str, Any], expected: str) -> None:
    want = Checksum.parse(expected)
    got = digests[want.algorithm]
    if got != want.hexdigest:
        raise FetchError(
            f"{where}: checksum mismatch: expected {want}, got {want.algorithm}:{got} ({digests['size']} bytes); "
            "the file is corrupt, truncated or not the official one. Copy it again, or set "
            "datasets.<name>.fetch.checksums if you deliberately use a different file."
        )


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
    store: Store, listing: dict[str, int], sums: dict[str, str], rows: list[tuple], *, cap: int
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
        log.info("indexing %s (reads every byte once to verify its checksum)", store.where(rel))
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


def index_source(cfg: ImageNetFetchCfg, out_dir: Path) -> dict[str, Any]:
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
        classes, files = _index_official(store, listing, sums, rows, cap=cfg.max_member_bytes)
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
