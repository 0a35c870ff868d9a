"""The parts of cluster runs that need no cluster: lanes, resume points, shared data on a real S3 server,
what reaches the workers' environment, and dead MLflow runs."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
import torch

from pipeline import tracking
from pipeline.compute import Workers, worker_env
from pipeline.config import EmbeddedDataCfg, EmbeddedFetchCfg, validate_params
from pipeline.data.fetch import fetch_dataset
from pipeline.data.manifest import load_split
from pipeline.data.preprocess import preprocess_dataset
from pipeline.profiles import main as profiles_main
from pipeline.spec import build_spec, data_ref
from pipeline.spec import shared as share
from pipeline.train.checkpoint import STATE_FILE, UNIT_FILE, load_state, resume_points
from pipeline.train.run import lane_count, split_lanes
from tests.servers import S3_ENV, moto_s3

CFG = EmbeddedDataCfg(kind="embedded", fetch=EmbeddedFetchCfg(seed=3, num_train=60, num_test=20))


@pytest.fixture
def processed(tmp_path):
    fetch_dataset("embedded", CFG, tmp_path / "raw")
    preprocess_dataset(tmp_path / "raw", tmp_path / "proc")
    return tmp_path / "proc"


def _params(raw: dict, **compute):
    raw["compute"].update(compute)
    return validate_params(raw)


@pytest.mark.parametrize(
    ("compute", "resources", "workers", "expected"),
    [
        ({}, {"CPU": 2}, Workers(2, False, 1), 1),  # this machine: one 2-worker job
        ({}, {"CPU": 2}, Workers(1, False, 1), 2),  # or two 1-worker jobs side by side
        ({}, {"CPU": 64, "GPU": 8}, Workers(1, True, 1), 8),  # one unit per GPU
        ({}, {"CPU": 64, "GPU": 8}, Workers(4, True, 1), 2),
        ({}, {"CPU": 64, "GPU": 3}, Workers(2, True, 1), 1),
        ({"concurrency": 3}, {"CPU": 64}, Workers(1, False, 1), 3),
        ({}, {"CPU": 1}, Workers(2, False, 1), 1),  # no room for even one: still one, Ray queues it
    ],
)
def test_lane_count(raw_params, compute, resources, workers, expected) -> None:
    assert lane_count(_params(raw_params, **compute), resources, workers, units=12) == expected
    assert lane_count(_params(raw_params, **compute), resources, workers, units=1) == 1


def test_lanes_take_every_unit_once_spreading_seeds(raw_params, processed) -> None:
    raw_params["grid"]["seeds"] = [0, 1]  # 12 units
    params = validate_params(raw_params)
    data = data_ref("embedded", processed)
    units = [build_spec(params, m, data, s) for m in params.grid.methods for s in params.grid.seeds]
    lanes = split_lanes(units, 5)
    assert sorted(u.key() for lane in lanes for u in lane) == sorted(u.key() for u in units)
    assert [len(lane) for lane in lanes] == [3, 3, 2, 2, 2]
    assert len(split_lanes(units[:2], 5)) == 2  # no empty lanes


def test_resume_points_pick_each_units_latest_checkpoint(tmp_path) -> None:
    def ckpt(job: str, name: str, key: str, epoch: int) -> None:
        d = tmp_path / job / name
        d.mkdir(parents=True)
        torch.save({"key": key, "history": [{}] * epoch}, d / STATE_FILE)
        (d / UNIT_FILE).write_text(json.dumps({"key": key, "epoch": epoch}))

    ckpt("embedded-train-aaa", "checkpoint_1", "k1", 1)
    ckpt("embedded-train-aaa", "checkpoint_2", "k1", 2)
    ckpt("embedded-train-bbb", "checkpoint_1", "k1", 3)  # a later job (other lanes) took k1 further
    ckpt("embedded-train-bbb", "checkpoint_2", "k2", 1)
    ckpt("cifar10-train-ccc", "checkpoint_1", "k3", 5)  # another data set
    (tmp_path / "embedded-train-bbb" / "checkpoint_3").mkdir()  # cut off before its unit.json: not a point
    found = resume_points(str(tmp_path), "embedded", ["k1", "k2", "k3", "k4"])
    assert found == {
        "k1": str(tmp_path / "embedded-train-bbb" / "checkpoint_1"),
        "k2": str(tmp_path / "embedded-train-bbb" / "checkpoint_2"),
    }
    assert load_state(found["k1"])["key"] == "k1"
    assert resume_points(str(tmp_path / "nothing-yet"), "embedded", ["k1"]) == {}


def test_shared_data_on_s3_reads_back_identically_and_keys_ignore_where(processed, monkeypatch, raw_params) -> None:
    with moto_s3() as endpoint:
        for k, v in {**S3_ENV, "AWS_ENDPOINT_URL": endpoint}.items():
            monkeypatch.setenv(k, v)
        import boto3

        boto3.client("s3", endpoint_url=endpoint).create_bucket(Bucket="shared")
        local = data_ref("embedded", processed)
        shared = share(local, "s3://shared/data")
        assert shared.path.startswith("s3://shared/data/embedded/") and shared.path.endswith(shared.sha256[:16])
        for split in ("train", "test"):
            a, b = load_split(local.path, split), load_split(shared.path, split)
            assert (a.images == b.images).all() and (a.labels == b.labels).all()
        assert share(local, "s3://shared/data").path == shared.path  # idempotent
        params = validate_params(raw_params)
        # the same unit whether its data is read in place or from S3: a rerun on a cluster reuses it
        assert build_spec(params, "resnet", local, 0).key() == build_spec(params, "resnet", shared, 0).key()


def test_workers_get_settings_but_never_credentials(monkeypatch) -> None:
    for k, v in {
        "AWS_ENDPOINT_URL": "http://s3.local",
        "AWS_DEFAULT_REGION": "eu-west-1",
        "AWS_SECRET_ACCESS_KEY": "s",
        "AWS_ACCESS_KEY_ID": "i",
        "AWS_SESSION_TOKEN": "t",
        "MLFLOW_TRACKING_URI": "http://mlflow:5000",
        "MLFLOW_TRACKING_PASSWORD": "p",
        "MLFLOW_TRACKING_TOKEN": "t",
        "HOME_SECRET": "unrelated",
    }.items():
        monkeypatch.setenv(k, v)
    env = worker_env()
    assert env["AWS_ENDPOINT_URL"] == "http://s3.local" and env["MLFLOW_TRACKING_URI"] == "http://mlflow:5000"
    assert env["AWS_DEFAULT_REGION"] == "eu-west-1"
    for k in ("AWS_SECRET_ACCESS_KEY", "AWS_ACCESS_KEY_ID", "AWS_SESSION_TOKEN", "MLFLOW_TRACKING_PASSWORD"):
        assert k not in env
    assert "MLFLOW_TRACKING_TOKEN" not in env and "HOME_SECRET" not in env


def test_runs_of_dead_processes_are_marked_failed_and_live_ones_kept(tmp_path, monkeypatch) -> None:
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    c = tracking.client(uri)
    exp = tracking.get_experiment(c, "attncnn-test")
    mine, _ = tracking.find_or_create_run(c, exp, "live", {"run_key": "a"}, {})
    # a run created by another process that then died (a killed `dvc repro`)
    code = (
        "import sys; from pipeline import tracking as t; c = t.client(sys.argv[1]); "
        "e = t.get_experiment(c, 'attncnn-test'); print(t.find_or_create_run(c, e, 'dead', {'run_key': 'b'}, {})[0])"
    )
    dead = subprocess.run([sys.executable, "-c", code, uri], capture_output=True, text=True, check=True)
    dead_id = dead.stdout.strip().splitlines()[-1]
    assert c.get_run(dead_id).data.tags[tracking.OWNER].split("@")[0] != str(os.getpid())
    assert tracking.close_dead_runs(c, exp) == [dead_id]
    assert (
        c.get_run(dead_id).info.status == "FAILED"
        and "ended without" in c.get_run(dead_id).data.tags["pipeline.failure"]
    )
    assert c.get_run(mine).info.status == "RUNNING"  # its owner (this process) is alive
    again, existed = tracking.find_or_create_run(c, exp, "dead", {"run_key": "b"}, {})  # resumed later
    assert existed and again == dead_id and c.get_run(dead_id).info.status == "RUNNING"
    assert tracking.close_dead_runs(c, exp) == []  # now owned by a live process


def test_profiles_set_edits_params_in_place_and_validates(tmp_path, monkeypatch) -> None:
    from tests.conftest import ROOT

    (tmp_path / "params.yaml").write_text((ROOT / "params.yaml").read_text())
    monkeypatch.chdir(tmp_path)
    assert profiles_main(["--set", "compute.storage_path=s3://b/ray", "compute.shared_data=s3://b/data"]) == 0
    text = (tmp_path / "params.yaml").read_text()
    assert "storage_path: s3://b/ray" in text and "shared_data: s3://b/data" in text
    assert "# Every setting of the pipeline" in text  # comments kept
    assert profiles_main(["--set", "compute.shared_data=relative/dir"]) == 2  # not every node can read that
    assert profiles_main(["--set", "compute.nope=1"]) == 2
    assert (tmp_path / "params.yaml").read_text() == text  # a rejected edit writes nothing
