"""ImageNet for real, at toy size: the official files and the extracted trees, from a folder and from S3
(moto on 127.0.0.1), preprocessed by Ray tasks into Parquet shards; missing classes and corrupt JPEGs."""

from __future__ import annotations

import json
import os

import numpy as np
import pyarrow.parquet as pq
import pytest

from pipeline.config import ImageNetDataCfg
from pipeline.data.archives import UnsafeArchiveError
from pipeline.data.download import FetchError
from pipeline.data.errors import DataError
from pipeline.data.fetch import fetch_dataset
from pipeline.data.manifest import load_manifest, load_split, ray_dataset
from pipeline.data.preprocess import preprocess_dataset
from tests.archives import imagenet_folders, imagenet_official, photo, upload_tree, wnids
from tests.servers import S3_ENV, moto_s3

pytestmark = pytest.mark.slow  # every test here shares a local Ray (the `cluster` fixture)

PREP = {"resize": 40, "image_size": 32, "shard_size": 5}


def cfg(source: str, **kw) -> ImageNetDataCfg:
    fetch = {"source": source, **kw.pop("fetch", {})}
    return ImageNetDataCfg.model_validate({"kind": "imagenet", "fetch": fetch, "preprocess": {**PREP, **kw}})


@pytest.fixture(scope="module")
def cluster():
    """A moto S3 server and a local 2-CPU Ray whose workers see its endpoint, shared by this module's tests."""
    import ray

    with moto_s3() as endpoint:
        env = {**S3_ENV, "AWS_ENDPOINT_URL": endpoint}
        old = {k: os.environ.get(k) for k in env}
        os.environ.update(env)
        ray.init(num_cpus=2, include_dashboard=False, runtime_env={"env_vars": env}, logging_level="ERROR")
        try:
            yield endpoint
        finally:
            ray.shutdown()
            for k, v in old.items():
                if v is None:
                    os.environ.pop(k, None)
                else:
                    os.environ[k] = v


def run(tmp_path, c: ImageNetDataCfg, tag: str = "") -> dict:
    fetch_dataset("inet", c, tmp_path / f"raw{tag}")
    return preprocess_dataset(tmp_path / f"raw{tag}", tmp_path / f"proc{tag}", c.preprocess)


def test_official_files_from_a_folder(tmp_path, cluster) -> None:
    sums = imagenet_official(tmp_path / "src", num_classes=3, train_per_class=4, val_per_class=2)
    man = run(tmp_path, cfg(str(tmp_path / "src"), fetch={"checksums": sums}))
    cls = wnids(3)
    assert [c["wnid"] for c in man.class_info] == cls and man.classes[0] == f"class {cls[0]}, words"
    assert [c["ilsvrc_id"] for c in man.class_info] == [1, 2, 3]  # the parent synset is not a class
    assert man.class_counts == {"train": [4, 4, 4], "test": [2, 2, 2]}
    assert {k: "md5:" + v["md5"] for k, v in man.source_files.items()} == sums
    # val labels come from the devkit's ground truth: image i has ILSVRC2012_ID 1 + (i-1) % 3
    test = pq.read_table([tmp_path / "proc" / s["path"] for s in man.files["test"]["shards"]]).to_pylist()
    for r in test:
        assert r["label"] == (int(r["name"][15:23]) - 1) % 3
    assert sum(f["rows"] for f in man.files["train"]["shards"]) == 12 and len(man.files["train"]["shards"]) == 3
    tr = load_split(tmp_path / "proc", "train")
    assert tr.images.shape == (12, 32, 32, 3) and tr.images.dtype == np.uint8
    x = tr.images.reshape(-1, 3) / 255.0
    np.testing.assert_allclose(man.mean, x.mean(0), atol=1e-5)  # stats are of what training sees
    np.testing.assert_allclose(man.std, x.std(0), atol=1e-5)


def test_official_checksums_are_pinned_and_checked(tmp_path, cluster) -> None:
    imagenet_official(tmp_path / "src")
    with pytest.raises(FetchError, match=r"ILSVRC2012_devkit_t12\.tar\.gz: checksum mismatch: expected md5:fa7569"):
        fetch_dataset("inet", cfg(str(tmp_path / "src")), tmp_path / "raw")
    assert not (tmp_path / "raw").exists()


def test_folders_from_s3_match_the_ray_data_reader_and_subset(tmp_path, cluster) -> None:
    import ray.data

    cls = imagenet_folders(tmp_path / "src", num_classes=4, train_per_class=5, val_per_class=2)
    upload_tree(tmp_path / "src", cluster, "inet", "ilsvrc")
    c = cfg("s3://inet/ilsvrc", classes=3, subset={"train": 3, "test": 0.5})
    man = run(tmp_path, c)
    assert [c["wnid"] for c in man.class_info] == cls[:3] and man.classes == cls[:3]  # no names: wnids
    assert man.class_counts == {"train": [3, 3, 3], "test": [1, 1, 1]}
    names = [n for f in man.files["train"]["shards"] for n in pq.read_table(tmp_path / "proc" / f["path"])
             .column("name").to_pylist()]  # fmt: skip
    assert sorted(names) == [f"{w}_{k}.JPEG" for w in cls[:3] for k in (1, 2, 3)]  # the first N per class by name
    # the same shards, read back through Ray Data (as a cluster would, from S3), give the same inputs
    upload_tree(tmp_path / "proc", cluster, "inet", "processed")
    ray.data.DataContext.get_current().execution_options.preserve_order = True
    rows = ray_dataset("s3://inet/processed", "train", load_manifest(tmp_path / "proc")).take_all()
    local = load_split(tmp_path / "proc", "train")
    np.testing.assert_array_equal(np.stack([r["image"] for r in rows]), local.images)
    assert [r["label"] for r in rows] == local.labels.tolist()


def test_a_missing_class_is_an_error_or_skipped_and_counted(tmp_path, cluster) -> None:
    cls = imagenet_folders(tmp_path / "src", num_classes=3)
    for f in (tmp_path / "src" / "val" / cls[1]).iterdir():
        f.unlink()
    (tmp_path / "src" / "val" / cls[1]).rmdir()
    with pytest.raises(DataError, match=rf"1 class\(es\) without train or val images: {cls[1]} \(train 4, val 0\)"):
        run(tmp_path, cfg(str(tmp_path / "src")))
    assert not (tmp_path / "proc").exists()
    man = run(tmp_path, cfg(str(tmp_path / "src"), on_missing_class="skip"), tag="2")
    assert man.missing_classes == [cls[1]] and man.classes == [cls[0], cls[2]]
    assert man.class_counts["train"] == [4, 4]


def test_a_corrupt_jpeg_is_skipped_and_counted_or_rejected(tmp_path, cluster, capsys) -> None:
    cls = imagenet_folders(tmp_path / "src", num_classes=2)
    bad = tmp_path / "src" / "train" / cls[0] / f"{cls[0]}_2.JPEG"
    bad.write_bytes(bad.read_bytes()[:200])  # truncated mid-scan
    (tmp_path / "src" / "train" / cls[1] / "garbage.JPEG").write_bytes(b"not a jpeg at all")
    man = run(tmp_path, cfg(str(tmp_path / "src")))
    assert man.skipped_images["count"] == 2
    assert sorted(i["name"] for i in man.skipped_images["images"]) == [
        f"train/{cls[0]}/{cls[0]}_2.JPEG",
        f"train/{cls[1]}/garbage.JPEG",
    ]
    assert man.class_counts["train"] == [3, 4]
    assert "skipped 2 image(s) that could not be decoded" in capsys.readouterr().err
    with pytest.raises(DataError, match=r"image '.*' cannot be decoded .*on_bad_image: skip"):
        run(tmp_path, cfg(str(tmp_path / "src"), on_bad_image="error"), tag="2")
    assert not (tmp_path / "proc2").exists()


def test_a_link_inside_the_train_tar_is_refused(tmp_path, cluster) -> None:
    import io
    import tarfile

    sums = imagenet_official(tmp_path / "src", num_classes=2)
    path = tmp_path / "src" / "ILSVRC2012_img_train.tar"
    with tarfile.open(path, "a") as tar:
        link = tarfile.TarInfo("n99999999.tar")
        link.type, link.linkname = tarfile.SYMTYPE, "../../etc/passwd"
        tar.addfile(link, io.BytesIO(b""))
    sums["ILSVRC2012_img_train.tar"] = "md5:" + __import__("hashlib").md5(path.read_bytes()).hexdigest()
    with pytest.raises(UnsafeArchiveError, match=r"unsafe member 'n99999999\.tar' \(link to '\.\./\.\./etc/passwd'\)"):
        fetch_dataset("inet", cfg(str(tmp_path / "src"), fetch={"checksums": sums}), tmp_path / "raw")
    assert not (tmp_path / "raw").exists()


def test_missing_source_folder_and_empty_prefix(tmp_path, cluster) -> None:
    with pytest.raises(FetchError, match=r"no such folder"):
        fetch_dataset("inet", cfg(str(tmp_path / "nowhere")), tmp_path / "raw")
    import boto3

    boto3.client("s3").create_bucket(Bucket="empty")
    with pytest.raises(FetchError, match=r"s3://empty/imagenet: no objects under this prefix"):
        fetch_dataset("inet", cfg("s3://empty/imagenet"), tmp_path / "raw")


def test_training_streams_through_ray_data(tmp_path, cluster) -> None:
    """The Ray Data path training uses for JPEG sets: augmented train batches, and evaluation equal to the
    in-memory path's on the same images."""
    import torch

    from pipeline.config import TrainCfg
    from pipeline.models import create_model
    from pipeline.train.engine import StreamData, TensorData, evaluate, train_one_epoch

    imagenet_folders(tmp_path / "src", num_classes=3, train_per_class=6, val_per_class=3)
    man = run(tmp_path, cfg(str(tmp_path / "src")))
    proc = str(tmp_path / "proc")
    aug = ray_dataset(proc, "train", man, augment=True).take_all()
    assert len(aug) == 18 and aug[0]["image"].shape == (32, 32, 3)
    plain = {int(r["label"]): r["image"] for r in ray_dataset(proc, "train", man).take_all()}
    assert any(not np.array_equal(r["image"], plain[int(r["label"])]) for r in aug)  # crops differ from centres

    torch.manual_seed(0)
    model = create_model("resnet", depth=8, width=4, num_classes=3)
    mean, std = torch.tensor(man.mean), torch.tensor(man.std)
    train = StreamData(ray_dataset(proc, "train", man, augment=True).iterator())
    rec = train_one_epoch(model, train, torch.optim.SGD(model.parameters(), 0.01), TrainCfg(epochs=1, batch_size=4,
                          lr=0.01), mean, std, seed=0, epoch=0)  # fmt: skip
    assert np.isfinite(rec["train_loss"]) and rec["images_per_s"] > 0
    streamed = evaluate(model, StreamData(ray_dataset(proc, "test", man).iterator()), mean, std, 4)
    te = load_split(proc, "test")
    in_memory = evaluate(model, TensorData.from_numpy(te.images, te.labels), mean, std, 4)
    assert streamed == pytest.approx(in_memory, rel=1e-5)


def _shard_labels(proc, man) -> list[list[int]]:
    return [pq.read_table(proc / p, columns=["label"]).column("label").to_pylist() for p in man.shards("train")]


def test_train_shards_mix_classes_from_contiguous_runs(tmp_path, cluster) -> None:
    """``preprocess.interleave``: the train images, class by class in the source, are dealt into shards in runs
    of that many (one read each), so every shard holds several classes; the same images either way, the same
    shards every time (the data checksum is a function of the settings); 0 keeps shards class by class."""
    # the official layout: every class's images in one tar, so runs out of file order must each be read apart
    sums = imagenet_official(tmp_path / "src", num_classes=4, train_per_class=6, val_per_class=1)
    mixed = run(tmp_path, cfg(str(tmp_path / "src"), shard_size=6, interleave=2, fetch={"checksums": sums}), "mixed")
    again = run(tmp_path, cfg(str(tmp_path / "src"), shard_size=6, interleave=2, fetch={"checksums": sums}), "again")
    flat = run(tmp_path, cfg(str(tmp_path / "src"), shard_size=6, interleave=0, fetch={"checksums": sums}), "flat")
    assert mixed.class_counts["train"] == flat.class_counts["train"] == [6] * 4 and not mixed.skipped_images["count"]
    assert mixed.data_sha256 == again.data_sha256 != flat.data_sha256
    by_class = _shard_labels(tmp_path / "procflat", flat)
    assert [len(set(s)) for s in by_class] == [1, 1, 1, 1]  # class by class: the worst case for a buffer
    shards = _shard_labels(tmp_path / "procmixed", mixed)
    assert all(len(set(s)) >= 2 for s in shards)
    assert sorted(v for s in shards for v in s) == sorted(v for s in by_class for v in s)
    names = {r: sorted(pq.read_table(tmp_path / f"proc{r}" / "train-00000.parquet").column("name").to_pylist())
             for r in ("mixed", "again")}  # fmt: skip
    assert names["mixed"] == names["again"]


def test_the_stream_reorders_shards_each_epoch_within_a_bounded_buffer(tmp_path, cluster) -> None:
    """No global shuffle: each epoch reads every train image once, the shards in a new order; with a shuffle
    buffer the rows leave in an order of their own, every image still exactly once per epoch."""
    import torch

    from pipeline.train.engine import StreamData

    imagenet_folders(tmp_path / "src", num_classes=4, train_per_class=6, val_per_class=1)
    man = run(tmp_path, cfg(str(tmp_path / "src"), shard_size=3, interleave=1))
    ds = ray_dataset(str(tmp_path / "proc"), "train", man, augment=True)
    assert "Shuffle" not in str(ds)  # the logical plan: no all-to-all exchange (``RandomShuffle``)
    (shard,) = ds.streaming_split(1)
    data = StreamData(shard)

    def epoch(buffer: int) -> list[int]:
        return [int(v) for _, y in data.batches(4, torch.device("cpu"), drop_last=False, shuffle_buffer=buffer)
                for v in y]  # fmt: skip

    orders = [epoch(0) for _ in range(4)]
    assert all(sorted(o) == sorted(orders[0]) for o in orders) and len(orders[0]) == 24
    assert len({tuple(o) for o in orders}) > 1  # the shard order changes between epochs
    buffered = epoch(12)
    assert sorted(buffered) == sorted(orders[0])


# ---------------------------------------------------------------------------------------------------------
# Evaluation: torchvision's reference protocol, Resize(R) + CenterCrop(S) of the full-resolution image

SIZES = [(500, 375), (375, 500), (333, 500), (640, 427), (300, 300), (200, 150), (50, 40), (61, 97)]


def photo_folders(root, sizes, modes=("RGB",)) -> dict[str, bytes]:
    """``train/<wnid>/`` and ``val/<wnid>/`` of photo-like JPEGs, one per size in each (two classes);
    returns {file name: JPEG bytes}."""
    rng = np.random.default_rng(1)
    out = {}
    for c, w in enumerate(wnids(2)):
        for split, tag in (("train", w), ("val", "ILSVRC2012_val")):
            (root / split / w).mkdir(parents=True, exist_ok=True)
            for k, (width, height) in enumerate(sizes):
                name = f"{tag}_{c}{k:03d}.JPEG"
                out[name] = photo(rng, width, height, mode=modes[k % len(modes)])
                (root / split / w / name).write_bytes(out[name])
    return out


def reference(blob: bytes, r: int, s: int) -> np.ndarray:
    """torchvision's reference evaluation transform on the image as its ``pil_loader`` opens it."""
    import io

    from PIL import Image
    from torchvision import transforms as T

    with Image.open(io.BytesIO(blob)) as im:
        return np.asarray(T.Compose([T.Resize(r), T.CenterCrop(s)])(im.convert("RGB")))


def centre_square(blob: bytes, s: int) -> np.ndarray:
    """The former evaluation view: the centre square, resized to ``s``."""
    import io

    from PIL import Image

    with Image.open(io.BytesIO(blob)) as im:
        img = im.convert("RGB")
    w, h = img.size
    m = min(w, h)
    box = ((w - m) // 2, (h - m) // 2, (w - m) // 2 + m, (h - m) // 2 + m)
    return np.asarray(img.resize((s, s), Image.Resampling.BILINEAR, box=box))


def shard_column(proc, man: dict, split: str, column: str) -> list:
    return pq.read_table([proc / f["path"] for f in man.files[split]["shards"]]).column(column).to_pylist()


@pytest.mark.parametrize("r,s,sizes", [(64, 56, SIZES), (256, 224, [(500, 375), (333, 500), (200, 150)])])
def test_evaluation_is_torchvisions_reference_protocol_bit_for_bit(tmp_path, cluster, r, s, sizes) -> None:
    """The test split's evaluation inputs, from load_split and from the Ray Data reader, equal torchvision's
    Resize(r) + CenterCrop(s) of the original JPEG exactly, for landscape, portrait, square, upscaled, odd
    and grey/CMYK images; the former centre-square view and a lossy (JPEG) store of the crop would not."""
    import ray.data

    originals = photo_folders(tmp_path / "src", sizes, modes=("RGB", "L", "CMYK"))
    man = run(tmp_path, cfg(str(tmp_path / "src"), resize=r, image_size=s, shard_size=4))
    proc = tmp_path / "proc"
    assert man.encoding == {"train": "jpeg", "test": "png"} and man.format == "jpeg"
    assert man.eval_protocol["transform"] == f"Resize({r}) + CenterCrop({s})"
    assert set(man.eval_protocol["made_with"]) == {"pillow", "torchvision"}
    assert man.image_shape == [s, s, 3] and man.stored_shorter_side == r
    assert all(b[:8] == b"\x89PNG\r\n\x1a\n" for b in shard_column(proc, man, "test", "image"))
    assert all(b[:2] == b"\xff\xd8" for b in shard_column(proc, man, "train", "image"))

    names = shard_column(proc, man, "test", "name")
    want = np.stack([reference(originals[n], r, s) for n in names])
    te = load_split(proc, "test")
    assert te.images.shape == (2 * len(sizes), s, s, 3) and te.labels.tolist() == [0] * len(sizes) + [1] * len(sizes)
    for n, got, ref in zip(names, te.images, want, strict=True):
        assert np.array_equal(got, ref), n  # (a) exactly the reference, image by image

    ray.data.DataContext.get_current().execution_options.preserve_order = True
    rows = ray_dataset(str(proc), "test", man).take_all()  # (b) what evaluation during training streams
    assert np.array_equal(np.stack([row["image"] for row in rows]), want)
    assert [int(row["label"]) for row in rows] == te.labels.tolist()

    # (c) the test is meaningful: the former centre-square view, or the crop stored as JPEG, differ
    for n, ref in zip(names, want, strict=True):
        import io

        from PIL import Image

        w, h = Image.open(io.BytesIO(originals[n])).size
        if w != h:
            assert not np.array_equal(centre_square(originals[n], s), ref), n
        buf = io.BytesIO()
        Image.fromarray(ref).save(buf, format="JPEG", quality=95)
        assert not np.array_equal(np.asarray(Image.open(buf).convert("RGB")), ref), n


def test_held_out_train_images_are_evaluated_through_eval_view(tmp_path, cluster) -> None:
    """(d) Train images stay JPEGs with shorter side `resize` (training's augmentation reads them); evaluated
    (a search's held-out part, via load_split(..., "train")), they are Resize + CenterCrop of the stored JPEG,
    from load_split and the Ray Data reader alike; the manifest's mean/std are of that view."""
    import io

    import ray.data
    from PIL import Image

    from pipeline.data.jpeg import eval_view

    photo_folders(tmp_path / "src", SIZES[:5])
    man = run(tmp_path, cfg(str(tmp_path / "src"), resize=64, image_size=56))
    proc = tmp_path / "proc"
    stored = shard_column(proc, man, "train", "image")
    for b in stored:
        assert min(Image.open(io.BytesIO(b)).size) == 64
    want = np.stack([reference(b, 64, 56) for b in stored])
    tr = load_split(proc, "train")
    assert np.array_equal(tr.images, want)
    assert np.array_equal(np.asarray(eval_view(Image.open(io.BytesIO(stored[0])).convert("RGB"), 64, 56)), want[0])
    ray.data.DataContext.get_current().execution_options.preserve_order = True
    rows = ray_dataset(str(proc), "train", man).take_all()
    assert np.array_equal(np.stack([row["image"] for row in rows]), want)
    x = tr.images.reshape(-1, 3) / 255.0
    np.testing.assert_allclose(man.mean, x.mean(0), atol=1e-5)
    np.testing.assert_allclose(man.std, x.std(0), atol=1e-5)
    assert not any(np.array_equal(centre_square(b, 56), w) for b, w in zip(stored, want, strict=True))


def test_an_env_source_is_resolved_again_by_preprocess(tmp_path, cluster, monkeypatch) -> None:
    """``env:NAME``: source.json keeps the name (a URL's credential never lands on disk), and preprocess reads
    the images from the variable's value; without it, one message naming the variable."""
    imagenet_folders(tmp_path / "src", num_classes=2, train_per_class=2, val_per_class=1)
    monkeypatch.setenv("INET_ROOT", str(tmp_path / "src"))
    c = cfg("env:INET_ROOT")
    fetch_dataset("inet", c, tmp_path / "raw")
    monkeypatch.delenv("INET_ROOT")
    with pytest.raises(FetchError, match="the environment variable INET_ROOT is not set or empty"):
        preprocess_dataset(tmp_path / "raw", tmp_path / "proc", c.preprocess)
    monkeypatch.setenv("INET_ROOT", str(tmp_path / "src"))
    man = preprocess_dataset(tmp_path / "raw", tmp_path / "proc", c.preprocess)
    assert (man.num_train, man.num_test) == (4, 2)
    assert json.loads((tmp_path / "raw" / "source.json").read_text())["root"] == "env:INET_ROOT"
