"""`dvc repro` on the real formats: CIFAR-10 (a subset) over HTTP and ImageNet from S3 (the official tars +
devkit): fetch -> preprocess -> train -> evaluate -> report. ImageNet trains streamed through Ray Data, CIFAR
in memory. (ImageNet as extracted folder trees, local or on S3, is tested stage by stage in test_imagenet.py.)

Servers run on 127.0.0.1 (a Python HTTP server and moto's S3); the archives are small but in the official
layouts and record formats; everything else is the real pipeline (local Ray, sqlite MLflow). One training
worker per job keeps this test short; the 2-worker data-parallel path is tested on the embedded set, and
CIFAR-100 from S3 in tests/test_fetch.py.
"""

from __future__ import annotations

import json

import pytest

from tests.archives import cifar10_archive, imagenet_official, upload_tree
from tests.project import make_project, run
from tests.servers import S3_ENV, file_server, moto_s3

pytestmark = pytest.mark.slow
IMAGENET_PREP = {"resize": 40, "image_size": 32, "shard_size": 16}


def test_dvc_repro_on_cifar_and_imagenet_from_http_s3_and_a_folder(tmp_path, monkeypatch) -> None:
    src = tmp_path / "sources"
    (src / "http").mkdir(parents=True)
    c10 = cifar10_archive(src / "http" / "cifar-10-binary.tar.gz", per_class=30, test_per_class=10)
    sums = imagenet_official(src / "inet_official", num_classes=3, train_per_class=12, val_per_class=4, seed=1)
    with file_server(src / "http") as http, moto_s3() as endpoint:
        for k, v in {**S3_ENV, "AWS_ENDPOINT_URL": endpoint}.items():
            monkeypatch.setenv(k, v)
        upload_tree(src / "inet_official", endpoint, "research", "imagenet")
        datasets = {
            "cifar10": {
                "fetch": {"source": f"{http.url}/cifar-10-binary.tar.gz", "checksum": c10},
                "preprocess": {"subset": {"train": 20, "test": 1.0}},
            },
            "inet_s3": {
                "kind": "imagenet",
                "fetch": {"source": "s3://research/imagenet", "checksums": sums},
                "preprocess": IMAGENET_PREP,
                "train": {},
            },
        }
        proj = make_project(
            tmp_path / "proj",
            {
                "grid": {"datasets": list(datasets), "methods": ["resnet"], "seeds": [0]},
                "datasets": datasets,
                "train": {"epochs": 1, "batch_size": 16},
                "compute": {"num_workers": 1},
                "tune": {"methods": []},
                # the ImageNet variant mechanism, with a small net instead of ResNet-50 to keep CI short
                "methods": {"resnet": {"imagenet": {"model": "resnet", "args": {"depth": 8, "width": 4}}}},
            },
        )
        out = run(["dvc", "repro"], proj, timeout=1500).stdout
        assert [r["path"] for r in http.behaviour.requests] == ["/cifar-10-binary.tar.gz"]

    assert "train@inet_s3: streaming the JPEG shards through Ray Data" in out
    assert "train@cifar10: streaming" not in out
    man = {d: json.loads((proj / f"data/processed/{d}/manifest.json").read_text()) for d in datasets}
    assert man["cifar10"]["class_counts"] == {"train": [20] * 10, "test": [10] * 10}  # the subset
    assert man["inet_s3"]["format"] == "jpeg"
    assert man["inet_s3"]["class_counts"] == {"train": [12] * 3, "test": [4] * 3}
    assert {k: "md5:" + v["md5"] for k, v in man["inet_s3"]["source_files"].items()} == sums
    tables = (proj / "reports" / "tables.md").read_text()
    # the test archive is verified against its own md5, which is not the published one: never "official"
    assert "a CIFAR-10-format archive from" in tables and "that is NOT the published file" in tables
    assert "A SUBSET" in tables and c10.removeprefix("md5:") in tables and "the official binary archive" not in tables
    assert sums["ILSVRC2012_img_val.tar"].removeprefix("md5:") in tables
    for d in datasets:
        metrics = json.loads((proj / f"results/{d}/metrics/resnet.json").read_text())
        assert 0 <= metrics["recipe"]["seed0"]["test_top1"] <= 100 and metrics["recipe"]["seed0"]["flops_per_image"] > 0
    spec = json.loads((proj / "results/inet_s3/eval/resnet/recipe/seed0/summary.json").read_text())["spec"]
    assert spec["model_args"] == {"depth": 8, "width": 4, "num_classes": 3}  # the method's ImageNet variant
    prov = json.loads((proj / "reports" / "provenance.json").read_text())
    assert prov["datasets"]["inet_s3"]["source_files"]["ILSVRC2012_img_train.tar"]["md5"] == sums[
        "ILSVRC2012_img_train.tar"
    ].removeprefix("md5:")
    # nothing changed: nothing reruns, and nothing is fetched again
    out = run(["dvc", "repro"], proj).stdout
    assert "Running stage" not in out
