"""ImageNet (ILSVRC2012) for the preprocess stage: the fetched index (``pipeline.data.imagenet_index``) into
Parquet shards, one Ray task per shard.

``preprocess_imagenet`` picks the classes and images (``preprocess.classes`` / ``subset``), reads each shard's
images with one ranged read per run from the source (``pipeline.data.store``), stores train images as
resized JPEGs and test images as the exact evaluation input (``pipeline.data.jpeg``), and writes
``train-NNNNN.parquet``/``test-NNNNN.parquet`` shards (columns ``image`` encoded bytes, ``label`` int16,
``name``) with a manifest; the ILSVRC2012 val set is the ``test`` split, as in the paper's tables.

Train shards mix classes (``interleave``: runs of ``preprocess.interleave`` images in a seeded random order,
rows permuted within each shard), so that training needs no global shuffle per epoch: a new shard order and a
bounded buffer per worker give batches as varied as a full shuffle's (``benchmarks/stream.py`` measures it).
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
import zlib
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from pipeline.config import ImageNetPreprocessCfg
from pipeline.io import atomic_path, sha256_file, write_json
from pipeline.redact import redact_url

from .errors import DataError
from .jpeg import ENCODING, EVAL_PROTOCOL, encode_image
from .manifest import MANIFEST, SOURCE, Manifest, data_sha, stats_from_histogram
from .sources import resolve_source
from .store import Store
from .subset import take_per_class

log = logging.getLogger(__name__)
INTERLEAVE_SEED = 0  # fixed: the shards, and so the data's checksum, are a function of the settings alone


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
    while i < len(rows):  # runs of rows adjacent in one container, in file order: one read each
        j = i + 1
        while (
            j < len(rows)
            and rows[j]["container"] == rows[i]["container"]
            and 0 <= rows[j]["offset"] - (rows[j - 1]["offset"] + rows[j - 1]["length"]) <= 1 << 16
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
                stored, h = encode_image(b, r["split"], cfg)
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
    if cfg.interleave and rows and rows[0]["split"] == "train":  # runs read in order, stored mixed
        rng = np.random.default_rng([INTERLEAVE_SEED, zlib.crc32(rows[0]["name"].encode())])
        table = table.take(rng.permutation(table.num_rows))
    return {"table": table, "hist": hist, "bad": bad, "source_sha256": src_hash.hexdigest(), "versions": _versions()}


def _versions() -> dict[str, str]:
    import PIL
    import torchvision

    return {"pillow": PIL.__version__, "torchvision": torchvision.__version__}


def _plan(source: dict[str, Any], index: pa.Table, cfg: ImageNetPreprocessCfg) -> tuple[list[dict], dict]:
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
        log.warning("skipping %d class(es) without train or val images: %s", len(missing), detail)
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


def interleave(rows: list[dict[str, Any]], run: int) -> list[dict[str, Any]]:
    """``rows`` in source order (class by class) cut into runs of ``run`` and the runs put in a seeded random
    order, so every shard holds many classes while each run stays one contiguous read (``process_shard``).
    ``run`` 0: unchanged."""
    if run <= 0:
        return rows
    runs = [rows[i : i + run] for i in range(0, len(rows), run)]
    order = np.random.default_rng(INTERLEAVE_SEED).permutation(len(runs))
    return [r for k in order for r in runs[k]]


@contextlib.contextmanager
def _ray() -> Iterator[None]:
    import ray

    if ray.is_initialized():
        yield
        return
    from pipeline.compute import ray_session

    with ray_session():
        yield


@dataclass
class _Shards:
    """What the shards written so far add up to: files per split, pixel histogram (train), counts per class,
    the images that could not be decoded, the library versions that made them."""

    num_classes: int
    files: dict[str, list[dict[str, Any]]] = field(default_factory=lambda: {"train": [], "test": []})
    hist: np.ndarray = field(default_factory=lambda: np.zeros((3, 256), np.int64))
    bad: list[dict[str, str]] = field(default_factory=list)
    versions: dict[str, set[str]] = field(default_factory=dict)
    counts: dict[str, np.ndarray] = field(init=False)

    def __post_init__(self) -> None:
        self.counts = {s: np.zeros(self.num_classes, np.int64) for s in self.files}

    def add(self, split: str, fname: str, path: Path, res: dict[str, Any]) -> None:
        self.bad += [{"split": split, "name": n, "reason": w} for n, w in res["bad"]]
        for lib, ver in res["versions"].items():
            self.versions.setdefault(lib, set()).add(ver)
        if split == "train":
            self.hist += res["hist"]
        labels = res["table"].column("label").to_numpy()
        self.counts[split] += np.bincount(labels, minlength=self.num_classes)
        self.files[split].append(
            {"path": fname, "rows": res["table"].num_rows, "sha256": sha256_file(path),
             "source_sha256": res["source_sha256"]}
        )  # fmt: skip

    def split_files(self) -> dict[str, dict[str, Any]]:
        out = {}
        for split, fs in self.files.items():
            fs.sort(key=lambda f: f["path"])
            out[split] = {
                "rows": sum(f["rows"] for f in fs),
                "shards": fs,
                "sha256": hashlib.sha256("".join(f["sha256"] for f in fs).encode()).hexdigest(),
            }
        return out


def preprocess_imagenet(raw_dir: Path, source: dict[str, Any], out_dir: Path, cfg: ImageNetPreprocessCfg) -> Manifest:
    """Index -> Parquet shards + manifest in ``out_dir`` (atomically), one Ray task per shard. ``source`` is
    ``raw_dir``'s source.json, read once by the caller."""
    index_path = raw_dir / source["index"]
    if sha256_file(index_path) != source["index_sha256"]:
        raise DataError(f"{index_path}: sha256 does not match {raw_dir / SOURCE}; re-run fetch")
    rows, info = _plan(source, pq.read_table(index_path), cfg)
    shards = []
    for split in ("train", "test"):
        rs = sorted((r for r in rows if r["split"] == split), key=lambda r: (r["container"], r["offset"], r["name"]))
        if split == "train":
            rs = interleave(rs, cfg.interleave)
        shards += [(split, k, rs[i : i + cfg.shard_size]) for k, i in enumerate(range(0, len(rs), cfg.shard_size))]
    with _ray(), atomic_path(out_dir) as tmp:
        tmp.mkdir()
        root = resolve_source(source["root"], setting=f"{raw_dir / SOURCE} root", official=False, what="prefix")
        done = _write_shards(shards, Store(root), cfg, tmp, redact_url(root), len(info["classes"]))
        if done.bad:
            log.warning(
                "skipped %d image(s) that could not be decoded, e.g. %s (see the manifest)", len(done.bad), done.bad[:3]
            )
        manifest = _manifest(source, info, cfg, done)
        write_json(tmp / MANIFEST, manifest.dump())
    return manifest


def _write_shards(
    shards: list[tuple[str, int, list[dict[str, Any]]]],
    store: Store,
    cfg: ImageNetPreprocessCfg,
    tmp: Path,
    root: str,
    num_classes: int,
) -> _Shards:
    """One Ray task per shard (``process_shard``), at most twice the cluster's CPUs waiting in memory; each
    shard written to ``tmp`` as it comes back."""
    import ray  # here, not at the top: Ray is heavy, and only ImageNet's preprocess needs it in this stage

    task = ray.remote(num_cpus=1)(process_shard)
    window = max(2, int(ray.cluster_resources().get("CPU", 2)) * 2)  # bounds what waits in memory
    pending: dict[Any, tuple[str, int]] = {}
    todo, done = list(shards), _Shards(num_classes)
    while todo or pending:
        while todo and len(pending) < window:
            split, k, rs = todo.pop(0)
            pending[task.remote(store, rs, cfg)] = (split, k)
        ready, _ = ray.wait(list(pending), num_returns=1)
        split, k = pending.pop(ready[0])
        res = ray.get(ready[0])
        if res["bad"] and cfg.on_bad_image == "error":
            name, why = res["bad"][0]
            raise DataError(
                f"{root}: image {name!r} cannot be decoded ({why}); remove it, or set "
                "preprocess.on_bad_image: skip to skip and count such images"
            )
        fname = f"{split}-{k:05d}.parquet"
        pq.write_table(res["table"], tmp / fname, compression="none")  # JPEG/PNG bytes do not compress
        done.add(split, fname, tmp / fname, res)
    return done


def _manifest(source: dict[str, Any], info: dict[str, Any], cfg: ImageNetPreprocessCfg, done: _Shards) -> Manifest:
    mean, std = stats_from_histogram(done.hist)
    split_files = done.split_files()
    classes, shape = [c["name"] for c in info["classes"]], [cfg.image_size, cfg.image_size, 3]
    return Manifest(
        dataset=source["dataset"],
        format="jpeg",
        classes=classes,
        class_info=info["classes"],
        num_classes=len(info["classes"]),
        image_shape=shape,
        stored_shorter_side=cfg.resize,  # of the train split's JPEGs
        encoding=dict(ENCODING),  # per split; readers: Manifest.split_encoding, decode_images
        eval_protocol={
            "transform": f"Resize({cfg.resize}) + CenterCrop({cfg.image_size})",
            "description": EVAL_PROTOCOL,
            "test": "stored as the exact evaluation input (lossless PNG), decoded as is",
            "train": "Resize + CenterCrop of the stored JPEG (train images held out for evaluation)",
            "made_with": {lib: sorted(v) for lib, v in sorted(done.versions.items())},
        },
        stats_of="train split, evaluation view of the stored JPEGs (load_split(..., 'train'))",
        mean=mean,
        std=std,
        class_counts={s: c.tolist() for s, c in done.counts.items()},
        files=split_files,
        skipped_images={"count": len(done.bad), "images": done.bad},
        missing_classes=info["missing_classes"],
        preprocess=cfg.model_dump(),
        source_sha256=source["sha256"],
        source_files=source["files"],
        source_origin=source.get("origin", {}),
        test_split="ILSVRC2012 val",
        data_sha256=data_sha(split_files, classes, shape),
    )
