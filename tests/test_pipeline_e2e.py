"""The whole pipeline for real: `dvc repro` on a small copy of the project (local Ray with 2 workers, MLflow in
sqlite, the embedded data set), then the records it leaves in DVC and MLflow."""

from __future__ import annotations

import csv
import json
import subprocess

import pytest
import torch
import yaml

from tests.project import TINY, make_project, mlflow_client, run

pytestmark = pytest.mark.slow

METHODS, SEEDS, EPOCHS = TINY["grid"]["methods"], TINY["grid"]["seeds"], TINY["train"]["epochs"]


@pytest.fixture(scope="module")
def project(tmp_path_factory):
    proj = make_project(tmp_path_factory.mktemp("e2e"), TINY)
    first = run(["dvc", "repro"], proj, timeout=1500)
    return proj, first


def test_outputs_and_report(project) -> None:
    proj, _ = project
    md = (proj / "reports" / "tables.md").read_text()
    assert "NOT CIFAR" in md and "`embedded`" in md
    for label in ("ResNet", "Attention CNN (ours)", "CNN without attention"):
        assert f"| {label} | " in md
    assert "Paper Tables 1-2: CIFAR-10" in md and "96.2" in md  # the paper's claim beside the measurement
    with open(proj / "reports" / "tables.csv") as f:
        rows = list(csv.DictReader(f))
    assert {r["method"] for r in rows} == set(METHODS)
    for r in rows:
        values = [float(v) for v in r["test_top1_values"].split()]
        assert len(values) == len(SEEDS) and abs(sum(values) / len(values) - float(r["test_top1_mean"])) < 1e-2
        # cost columns: torch's flop counter and the measured training speed per device
        assert float(r["flops_per_image"]) > 0 and float(r["train_images_per_s_per_device"]) > 0
    assert "| GFLOPs/img | train img/s/device |" in md
    assert "![attention maps on embedded](attention-embedded.png)" in md
    for png in ("curves.png", "attention-embedded.png"):
        assert (proj / "reports" / png).read_bytes()[:4] == b"\x89PNG"
    prov = json.loads((proj / "reports" / "provenance.json").read_text())
    head = subprocess.run(["git", "rev-parse", "HEAD"], cwd=proj, capture_output=True, text=True).stdout.strip()
    assert prov["git"]["commit"] == head and prov["hardware"]["cpu_count"]


def test_dvc_metrics_plots_and_experiments(project) -> None:
    proj, _ = project
    shown = json.loads(run(["dvc", "metrics", "show", "--json"], proj).stdout)
    files = next(iter(shown.values()))["data"]
    for m in METHODS:
        for s in SEEDS:  # a row per method, a column group per seed
            metrics = files[f"results/embedded/metrics/{m}.json"]["data"][f"seed{s}"]
            assert 0 <= metrics["test_top1"] <= 100 and metrics["params"] > 0
    train = files["results/embedded/train_metrics.json"]["data"]
    assert (train["units_trained"], train["units_reused"]) == (len(METHODS) * len(SEEDS), 0)
    # the grid ran as two jobs at once (2 cores, 1 worker each): each job's units overlap the other's in time
    assert train["jobs_side_by_side"] == 2
    walls = {}
    for m in METHODS:
        for s in SEEDS:
            rec = torch.load(proj / f"results/embedded/train/{m}/seed{s}/model.pt", weights_only=False)
            walls.setdefault(rec["provenance"]["job"], []).append(rec["wall"])
    (a, b) = walls.values()
    spans = [(min(w["started_at"] for w in j), max(w["finished_at"] for w in j)) for j in (a, b)]
    assert spans[0][0] < spans[1][1] and spans[1][0] < spans[0][1], spans
    # evaluation, the net rebuilt from its checkpoint alone, reproduces the test accuracy training measured
    for m in METHODS:
        for s in SEEDS:
            with open(proj / f"results/embedded/curves/{m}-seed{s}.csv") as f:
                last = list(csv.DictReader(f))[-1]
            assert int(last["epoch"]) == EPOCHS
            assert (
                abs(
                    files[f"results/embedded/metrics/{m}.json"]["data"][f"seed{s}"]["test_top1"]
                    - float(last["val_top1"])
                )
                < 1e-6
            )
    run(["dvc", "plots", "show", "-o", "plots_html"], proj)
    assert (proj / "plots_html" / "index.html").stat().st_size > 1000
    exp = run(["dvc", "exp", "show", "--json"], proj).stdout
    assert "train.epochs" in exp or '"epochs"' in exp


def test_mlflow_records(project) -> None:
    proj, _ = project
    c = mlflow_client(proj)
    exp = c.get_experiment_by_name("attncnn-embedded")
    assert exp is not None
    runs = c.search_runs([exp.experiment_id], "tags.stage = 'train'")
    assert sorted((r.data.tags["method"], r.data.tags["seed"]) for r in runs) == sorted(
        (m, str(s)) for m in METHODS for s in SEEDS
    )
    head = subprocess.run(["git", "rev-parse", "HEAD"], cwd=proj, capture_output=True, text=True).stdout.strip()
    sha = json.loads((proj / "data/processed/embedded/manifest.json").read_text())["data_sha256"]
    for r in runs:
        assert r.info.status == "FINISHED"
        assert r.data.tags["git_commit"] == head and r.data.tags["data_sha256"] == sha
        assert "|" in r.info.run_name and r.data.tags["seed"] in r.info.run_name
        for key in ("train_loss", "val_top1", "val_top5", "lr", "images_per_s", "epoch_time_s"):
            assert [m.step for m in c.get_metric_history(r.info.run_id, key)] == list(range(1, EPOCHS + 1)), key
        assert "test_top1" in r.data.metrics  # logged by the evaluate stage into the same run
        assert r.data.params["train.epochs"] == str(EPOCHS)
        arts = {a.path for a in c.list_artifacts(r.info.run_id)} | {
            a.path for a in c.list_artifacts(r.info.run_id, "model")
        }
        assert {"model/model.pt", "curves.png", "history.csv"} <= arts
    parents = c.search_runs([exp.experiment_id], "tags.stage = 'tune'")
    assert len(parents) == 1 and parents[0].info.status == "FINISHED"
    trials = c.search_runs([exp.experiment_id], f"tags.mlflow.parentRunId = '{parents[0].info.run_id}'")
    assert len(trials) == TINY["tune"]["num_samples"]
    assert all(t.info.status in ("FINISHED", "KILLED") for t in trials)
    assert all(c.get_metric_history(t.info.run_id, "val_top1") for t in trials)


def test_second_repro_does_nothing(project) -> None:
    proj, _ = project
    out = run(["dvc", "repro"], proj).stdout
    assert "Running stage" not in out and "Data and pipelines are up to date" in out


def test_changing_one_method_reruns_only_that_method(project) -> None:
    proj, _ = project
    params = yaml.safe_load((proj / "params.yaml").read_text())
    params["methods"]["resnet"]["args"]["width"] = 6
    (proj / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    out = run(["dvc", "repro"], proj, timeout=1500).stdout
    train = json.loads((proj / "results/embedded/train_metrics.json").read_text())
    assert (train["units_trained"], train["units_reused"]) == (len(SEEDS), (len(METHODS) - 1) * len(SEEDS))
    assert "Running stage 'evaluate@embedded-resnet'" in out
    for m in METHODS[1:]:
        assert f"Running stage 'evaluate@embedded-{m}'" not in out
    assert "Running stage 'tune@embedded'" in out  # it reads every method's settings, but reuses its search
    assert json.loads((proj / "results/embedded/tune.json").read_text())["methods"]["attn_resnet"]["cached"]
