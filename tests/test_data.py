"""The embedded set, the CIFAR binary format and the preprocess path they share."""

from __future__ import annotations

import gzip
import io
import tarfile

import numpy as np
import pytest

from pipeline.config import EmbeddedDataCfg, EmbeddedFetchCfg
from pipeline.data import embedded
from pipeline.data.cifar import CIFAR10, read_cifar_binary, write_cifar10_binary
from pipeline.data.embedded import make_embedded
from pipeline.data.fetch import fetch_dataset
from pipeline.data.manifest import load_manifest, load_split
from pipeline.data.preprocess import preprocess_dataset
from pipeline.io import sha256_file

FETCH = EmbeddedFetchCfg(seed=3, num_train=60, num_test=20)
CFG = EmbeddedDataCfg(kind="embedded", fetch=FETCH)


def test_embedded_is_deterministic_and_balanced(tmp_path) -> None:
    a = fetch_dataset("embedded", CFG, tmp_path / "a")
    b = fetch_dataset("embedded", CFG, tmp_path / "b")
    c = fetch_dataset(
        "embedded", CFG.model_copy(update={"fetch": FETCH.model_copy(update={"seed": 4})}), tmp_path / "c"
    )
    assert a["sha256"] == b["sha256"] != c["sha256"]  # byte-identical archives from the same seed
    data = make_embedded(FETCH)
    assert data["train"][0].shape == (60, 32, 32, 3) and data["train"][0].dtype == np.uint8
    assert np.bincount(data["train"][1], minlength=10).tolist() == [6] * 10


def test_the_class_is_the_glyph_not_the_background() -> None:
    """Mean images per class are near-identical: the label is only recoverable from the object's shape."""
    imgs, labels = make_embedded(EmbeddedFetchCfg(num_train=2000, num_test=10))["train"]
    means = np.stack([imgs[labels == k].mean((0, 3)) for k in range(10)])  # (10, 32, 32)
    assert np.abs(means - means.mean(0)).max() < 25  # of 255: no fixed position or colour gives the class away


def test_cifar10_binary_layout_roundtrip(tmp_path) -> None:
    rng = np.random.default_rng(0)
    train = (rng.integers(0, 256, (20, 32, 32, 3), dtype=np.uint8), rng.permutation(20).astype(np.uint8) % 10)
    test = (rng.integers(0, 256, (10, 32, 32, 3), dtype=np.uint8), rng.permutation(10).astype(np.uint8))
    path = tmp_path / "cifar-10-binary.tar.gz"
    write_cifar10_binary(path, train, test, [f"c{i}" for i in range(10)])
    with tarfile.open(path) as tar:
        names = tar.getnames()
        first = tar.extractfile(f"{CIFAR10.folder}/data_batch_1.bin").read()
    assert sorted(names) == sorted(f"{CIFAR10.folder}/{f}" for f in (*CIFAR10.train, *CIFAR10.test, CIFAR10.names))
    # record 0: label byte, then the 1024 red values in row-major order
    assert first[0] == train[1][0]
    assert first[1:1025] == train[0][0, :, :, 0].tobytes()
    splits, classes = read_cifar_binary(path, CIFAR10)
    np.testing.assert_array_equal(splits["train"].images, train[0])
    np.testing.assert_array_equal(splits["test"].labels, test[1])
    assert classes[3] == "c3"


def _tar_with(tmp_path, member: str, blob: bytes, with_names: bool = True):
    path = tmp_path / "bad.tar.gz"
    names = "".join(f"c{i}\n" for i in range(10)).encode()
    members = [(f"{CIFAR10.folder}/{CIFAR10.names}", names)] if with_names else []
    with gzip.open(path, "wb") as gz, tarfile.open(fileobj=gz, mode="w") as tar:
        for name, data in [*members, (member, blob)]:
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return path


def test_truncated_or_incomplete_archives_are_rejected(tmp_path) -> None:
    with pytest.raises(ValueError, match=r"declares 5,000 bytes; allowed: a whole number of 3073-byte records"):
        read_cifar_binary(_tar_with(tmp_path, f"{CIFAR10.folder}/data_batch_1.bin", b"\0" * 5000), CIFAR10)
    with pytest.raises(ValueError, match=r"missing regular file cifar-10-batches-bin/data_batch_2\.bin"):
        read_cifar_binary(_tar_with(tmp_path, f"{CIFAR10.folder}/data_batch_1.bin", b"\0" * 3073), CIFAR10)
    with pytest.raises(ValueError, match="'other/file': not under cifar-10-batches-bin/"):
        read_cifar_binary(_tar_with(tmp_path, "other/file", b"x", with_names=False), CIFAR10)


def test_preprocess_writes_parquet_stats_and_checksums(tmp_path) -> None:
    src = fetch_dataset("embedded", CFG, tmp_path / "raw")
    man = preprocess_dataset(tmp_path / "raw", tmp_path / "proc")
    tr = load_split(tmp_path / "proc", "train")
    orig = make_embedded(FETCH)["train"]
    np.testing.assert_array_equal(tr.images, orig[0])
    np.testing.assert_array_equal(tr.labels, orig[1])
    x = orig[0].reshape(-1, 3) / 255.0
    np.testing.assert_allclose(man.mean, x.mean(0), atol=1e-6)
    np.testing.assert_allclose(man.std, x.std(0), atol=1e-6)
    assert man.source_sha256 == src["sha256"]
    assert man.files["test"]["sha256"] == sha256_file(tmp_path / "proc" / "test.parquet")
    assert load_manifest(tmp_path / "proc").num_classes == 10


def test_preprocess_refuses_a_changed_archive_and_leaves_nothing(tmp_path) -> None:
    fetch_dataset("embedded", CFG, tmp_path / "raw")
    with open(tmp_path / "raw" / "archive.tar.gz", "ab") as f:
        f.write(b"tampered")
    with pytest.raises(ValueError, match=r"sha256 .* does not match"):
        preprocess_dataset(tmp_path / "raw", tmp_path / "proc")
    assert not (tmp_path / "proc").exists()
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".proc")]  # no temporary left behind


def test_the_object_is_the_one_bright_digit_and_the_distractors_are_other_digits() -> None:
    """Without noise, clutter or occlusion, the pixels bright in every channel are exactly the label's glyph
    (mirrored or not) and nothing else: the distractors, whole digits, are all dimmer; with occlusion on, a
    distractor may hide part of the object but never adds to it."""
    glyphs = embedded._glyphs()
    labels = np.arange(40) % 10
    for occlusion in (0.0, 1.0):
        rng = np.random.default_rng(5)
        imgs = embedded.render(labels, rng, clutter=0, noise=0.0, distractors=3, occlusion=occlusion)
        bright = (imgs >= round(embedded.TARGET_COLOUR[0] * 255)).all(axis=3)
        hidden = 0
        for img, label, mask in zip(imgs, labels, bright, strict=True):
            if not mask.any():  # wholly hidden (only with occlusion)
                assert occlusion
                hidden += 1
                continue
            ys, xs = np.nonzero(mask)
            found = None
            for g in (glyphs[label], glyphs[label][:, ::-1]):
                for y in range(max(0, ys.max() - g.shape[0] + 1), min(ys.min(), 32 - g.shape[0]) + 1):
                    for x in range(max(0, xs.max() - g.shape[1] + 1), min(xs.min(), 32 - g.shape[1]) + 1):
                        window = np.zeros_like(mask)
                        window[y : y + g.shape[0], x : x + g.shape[1]] = g
                        if not (mask & ~window).any() and (occlusion or (mask == window).all()):
                            found = window
            assert found is not None, (label, occlusion)
            hidden += int((found & ~mask).sum())
            assert img[~mask].max() <= round(embedded.DISTRACTOR_COLOUR[1] * 255)  # all else is dimmer
        assert (hidden > 0) == (occlusion > 0)  # occluded objects lose pixels; unoccluded ones never do
