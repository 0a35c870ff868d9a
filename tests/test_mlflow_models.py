"""Training units as MLflow users expect them, on a real MLflow store (sqlite) and real tiny trained nets:
each unit's run starts and ends with the unit, names its data set and source commit and carries system
metrics; evaluation logs each net as an MLflow model and registers the lowest seed's under its track's
alias; a registered model loads by alias and predicts from uint8 images what the evaluation measured."""

from __future__ import annotations

import json
import time
from pathlib import Path

import mlflow
import numpy as np
import pytest
import torch
import yaml

from pipeline import serving, tracking
from pipeline.config import EmbeddedDataCfg, EmbeddedFetchCfg
from pipeline.data.fetch import fetch_dataset
from pipeline.data.manifest import load_split
from pipeline.data.preprocess import preprocess_dataset
from pipeline.device import normalize
from pipeline.evaluate import evaluate_dataset, load_checkpoint
from pipeline.io import read_json
from pipeline.models import create_model
from pipeline.records import TrainedRow, TrainedRows, unit_dir
from pipeline.settings import validate_params
from pipeline.spec import DataRef, build_spec, data_ref, repo_relative
from pipeline.train.engine import Shard, TensorData, predict
from pipeline.train.job import TrainJob, dataset_input, run_params
from pipeline.train.loop import train_units
from pipeline.train.run import write_outputs
from pipeline.train.store import UnitStore
from pipeline.train.worker import _unit_runs

ROOT = Path(__file__).resolve().parents[1]
EXPERIMENT = "attncnn-test"


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """Two seeds of the attention net trained through the workers' MLflow path (``_unit_runs``: each run opened
    as its unit starts, system metrics every 0.2 s), written as the train stage writes them: seed 0 in both
    tracks (a search that kept the recipe), seed 1 in the recipe track."""
    tmp = tmp_path_factory.mktemp("mlflow")
    uri = f"sqlite:///{tmp / 'mlflow.db'}"
    cfg = EmbeddedDataCfg(kind="embedded", fetch=EmbeddedFetchCfg(seed=3, num_train=120, num_test=40))
    fetch_dataset("embedded", cfg, tmp / "raw")
    preprocess_dataset(tmp / "raw", tmp / "proc")
    raw = yaml.safe_load((ROOT / "params.yaml").read_text())
    raw["methods"]["attn_resnet"]["args"]["width"] = 4
    raw["train"]["epochs"] = 2
    raw["grid"]["methods"] = ["attn_resnet"]
    raw["compute"]["storage_path"] = str(tmp / "storage")
    raw["evaluate"]["attention_images"] = 0
    params = validate_params(raw)
    data = data_ref("embedded", tmp / "proc")
    specs = [build_spec(params, "attn_resnet", data, s) for s in (0, 1)]
    c = tracking.client(uri)
    exp = c.create_experiment(EXPERIMENT, artifact_location=str(tmp / "artifacts"))  # not ./mlruns of this checkout
    refs = {
        s.key(): tracking.UnitRun(
            experiment_id=exp,
            name=f"attn_resnet seed {s.seed}",
            tags={"run_key": s.key(), "seed": str(s.seed), **tracking.source_tags("train@embedded", "c0ffee")},
        )
        for s in specs
    }
    store = UnitStore(str(tmp / "storage"), "embedded")
    job = TrainJob(units=specs, store=str(tmp / "storage"), mlflow_uri=uri, runs=refs, system_metrics_s=0.2)
    train_units(specs, Shard(), torch.device("cpu"), lambda m, s: None, store=store, loggers=_unit_runs(job))
    runs = {s.key(): tracking.find_run(c, exp, s.key()).info.run_id for s in specs}
    rows = [
        TrainedRow(method="attn_resnet", track=t, seed=s.seed, key=s.key(), spec=s.model_dump(), run_id=runs[s.key()])
        for s, t in ((specs[0], "recipe"), (specs[0], "searched"), (specs[1], "recipe"))
    ]
    shared = {s.key(): ["attn_resnet"] for s in specs}
    trained_rows = TrainedRows(dataset="embedded", experiment_id=exp, rows=rows, shared_by=shared)
    write_outputs(tmp / "train", trained_rows, {s.key(): store.load(s.key()) for s in specs})
    return {
        "tmp": tmp, "uri": uri, "c": c, "exp": exp, "specs": specs, "store": store,
        "params": params,
    }  # fmt: skip


@pytest.fixture(scope="module")
def evaluated(trained):
    tmp = trained["tmp"]
    out = [tmp / "eval", tmp / "confusion", tmp / "metrics"]
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("MLFLOW_TRACKING_URI", trained["uri"])
        metrics = evaluate_dataset(tmp / "train", tmp / "proc", trained["params"], *out)["attn_resnet"]
        again = evaluate_dataset(tmp / "train", tmp / "proc", trained["params"], *out)["attn_resnet"]
    return {**trained, "metrics": metrics, "again": again, "eval": out[0] / "attn_resnet"}


def test_a_units_run_spans_its_unit_and_names_data_source_and_machine(trained) -> None:
    c = trained["c"]
    for s in trained["specs"]:
        run = tracking.find_run(c, trained["exp"], s.key())
        wall = trained["store"].load(s.key())["wall"]
        assert run.info.status == "FINISHED"
        # opened as the unit started, ended as it ended: not when some stage began or finished
        assert abs(run.info.start_time / 1000 - wall["started_at"]) < 2.0
        assert 0 <= run.info.end_time / 1000 - wall["finished_at"] < 2.0
        (ds,) = run.inputs.dataset_inputs
        assert ds.dataset.name == "embedded" and ds.dataset.digest == s.dataset.sha256[: tracking.DIGEST_CHARS]
        assert s.dataset.path in ds.dataset.source and {t.value for t in ds.tags} == {"training"}
        tags = run.data.tags
        assert tags["mlflow.source.name"] == "dvc repro train@embedded" and tags["mlflow.source.git.commit"] == "c0ffee"
        assert any(k.startswith("system/cpu_utilization") for k in run.data.metrics), sorted(run.data.metrics)
        assert [m.step for m in c.get_metric_history(run.info.run_id, "val_top1")] == [1, 2]
        # the trained net, logged by the worker as the unit finished (the evaluate stage only registers it)
        assert serving.logged_model(c, trained["exp"], run.info.run_id) is not None


def test_the_image_classifier_is_the_net_on_normalised_images() -> None:
    net = create_model("attn_resnet", depth=8, width=4, num_classes=10).eval()
    mean, std = [0.4, 0.5, 0.6], [0.2, 0.25, 0.3]
    images = torch.randint(0, 256, (3, 32, 32, 3), dtype=torch.uint8)
    direct = net(normalize(images.permute(0, 3, 1, 2), torch.tensor(mean), torch.tensor(std)))
    assert torch.allclose(serving.ImageClassifier(net, mean, std)(images), direct, atol=1e-6)


def test_every_net_is_a_logged_model_and_the_lowest_seed_is_registered(evaluated) -> None:
    c, exp = evaluated["c"], evaluated["exp"]
    s0, s1 = evaluated["specs"]
    runs = {s.seed: tracking.find_run(c, exp, s.key()).info.run_id for s in (s0, s1)}
    models = {seed: serving.logged_model(c, exp, run_id) for seed, run_id in runs.items()}
    assert all(m is not None for m in models.values())
    # evaluating again logged nothing twice: one model per run, one registered version
    assert len(c.search_logged_models(experiment_ids=[exp])) == 2
    name = serving.registered_name(EXPERIMENT, "attn_resnet")
    (version,) = c.search_model_versions(f"name = '{name}'")
    assert version.run_id == runs[0] and version.source == f"models:/{models[0].model_id}"
    for alias in ("recipe", "searched"):  # seed 0 is both tracks' unit: both aliases, one version
        assert c.get_model_version_by_alias(name, alias).version == version.version
    # registered through the API that links them: the logged model lists its version (its UI page shows it)
    assert json.loads(c.get_logged_model(models[0].model_id).tags["mlflow.modelVersions"]) == [
        {"name": name, "version": version.version}
    ]
    assert "mlflow.modelVersions" not in c.get_logged_model(models[1].model_id).tags  # seed 1: not registered
    description = c.get_registered_model(name).description  # names the data set where the data set belongs
    assert description.startswith("attn_resnet (model attn_resnet) trained on the data set embedded;"), description
    for seed, m in models.items():  # named for the unit, with its test metrics on the test data attached
        assert m.name == f"embedded-attn_resnet-seed{seed}"
        logged = {x.key: x for x in c.get_logged_model(m.model_id).metrics}
        measured = evaluated["metrics"]["recipe"][f"seed{seed}"]
        assert logged["test_top1"].value == measured["test_top1"] and logged["test_top1"].dataset_name == "embedded"
        assert "timestamp_ms" not in c.get_run(runs[seed]).data.metrics  # an epoch's time is its metrics' timestamp
    record = read_json(evaluated["eval"] / "searched" / "seed0" / "mlflow_model.json")
    assert record["registered"] == {"name": name, "version": int(version.version)} and record["aliases"] == ["searched"]
    assert read_json(evaluated["eval"] / "recipe" / "seed1" / "mlflow_model.json")["aliases"] == []
    top1 = {t: {k: m["test_top1"] for k, m in seeds.items()} for t, seeds in evaluated["metrics"].items()}
    assert top1 == {t: {k: m["test_top1"] for k, m in seeds.items()} for t, seeds in evaluated["again"].items()}


def test_a_registered_model_loads_by_alias_and_predicts_from_uint8_images(evaluated) -> None:
    mlflow.set_tracking_uri(evaluated["uri"])
    name = serving.registered_name(EXPERIMENT, "attn_resnet")
    te = load_split(evaluated["tmp"] / "proc", "test")
    t0 = time.perf_counter()
    logits = mlflow.pyfunc.load_model(f"models:/{name}@recipe").predict(te.images)  # (N, 32, 32, 3) uint8
    assert logits.shape == (len(te.labels), 10) and logits.dtype == np.float32
    net, spec, _ = load_checkpoint(unit_dir(evaluated["tmp"] / "train", evaluated["specs"][0].key()) / "model.pt")
    mean, std = torch.tensor(spec.dataset.mean), torch.tensor(spec.dataset.std)
    ref = predict(net, TensorData.from_numpy(te.images, te.labels), mean, std).numpy()  # what evaluation computes
    np.testing.assert_allclose(logits, ref, atol=1e-4)
    top1 = 100.0 * float((logits.argmax(1) == te.labels).mean())
    assert top1 == pytest.approx(evaluated["metrics"]["recipe"]["seed0"]["test_top1"], abs=1e-3)
    net = mlflow.pytorch.load_model(f"models:/{name}@recipe")  # the exported graph, no project code needed
    direct = net(torch.from_numpy(te.images[:5]))
    assert np.allclose(direct.detach().numpy(), logits[:5], atol=1e-5), time.perf_counter() - t0


def test_a_unit_stored_without_its_run_gets_a_complete_one(trained, tmp_path) -> None:
    """A fresh MLflow store beside a kept unit store: the train stage makes the run from the unit's record,
    with the unit's own start and end, every epoch, and its data set."""
    s = trained["specs"][1]
    record = trained["store"].load(s.key())
    c = tracking.client(f"sqlite:///{tmp_path / 'fresh.db'}")
    exp = c.create_experiment(EXPERIMENT, artifact_location=str(tmp_path / "artifacts"))
    ref = tracking.UnitRun(experiment_id=exp, name="attn_resnet seed 1", tags={"run_key": s.key()})
    dataset = {"name": "embedded", "sha256": s.dataset.sha256, "source": s.dataset.path}
    run_id = tracking.settle_unit_run(c, ref, {"seed": 1}, record, dataset=dataset)
    run = c.get_run(run_id)
    assert run.info.status == "FINISHED" and run.info.run_name == "attn_resnet seed 1"
    assert run.info.start_time == int(record["wall"]["started_at"] * 1000)
    assert run.info.end_time == int(record["wall"]["finished_at"] * 1000)
    assert [m.step for m in c.get_metric_history(run_id, "train_loss")] == [1, 2]
    assert len(run.inputs.dataset_inputs) == 1
    assert tracking.settle_unit_run(c, ref, {"seed": 1}, record, dataset=dataset) == run_id  # found, not made again


def test_a_failed_attempt_leaves_the_run_a_later_attempt_reopened(tmp_path) -> None:
    """A worker of a failed attempt (stuck in a collective with a dead peer) can raise after Ray started the
    next attempt, which reopened the unit's run: the stale worker must not mark it FAILED."""
    c = tracking.client(f"sqlite:///{tmp_path / 'm.db'}")
    exp = c.create_experiment("e", artifact_location=str(tmp_path / "artifacts"))
    ref = tracking.UnitRun(experiment_id=exp, name="u", tags={"run_key": "k"})
    run_id = tracking.open_run(c, ref, {}, dataset={"name": "d", "sha256": "0" * 64, "source": str(tmp_path)})
    stale = tracking.EpochLog(c, run_id, owns_run=True)
    c.set_tag(run_id, tracking.OWNER, "1@1.00")  # the next attempt's worker carries it now
    stale.end("FAILED")
    assert c.get_run(run_id).info.status == "RUNNING"
    c.set_tag(run_id, tracking.OWNER, tracking.owner_tags()[tracking.OWNER])
    stale.end("FAILED")
    assert c.get_run(run_id).info.status == "FAILED"


def test_rows_sharing_a_unit_are_evaluated_once_and_registered_per_method(trained, tmp_path, caplog) -> None:
    """Two methods' rows that are one unit (one network, recipe and start) and a stage run again: the unit is
    evaluated once (the second run takes it from the eval store), logged once as a model, and registered under
    each method's name; each row's summary carries its own method."""
    import logging

    s0 = trained["specs"][0]
    record = trained["store"].load(s0.key())
    run_id = tracking.find_run(trained["c"], trained["exp"], s0.key()).info.run_id
    raw = trained["params"].model_dump()
    raw["methods"]["attn_twin"] = {**raw["methods"]["attn_resnet"], "label": "Twin"}
    raw["grid"]["methods"] = ["attn_resnet", "attn_twin"]
    raw["compute"]["storage_path"] = str(tmp_path / "storage")
    params = validate_params(raw)
    rows = [
        TrainedRow(method=m, track="recipe", seed=0, key=s0.key(), spec={**s0.model_dump(), "method": m}, run_id=run_id)
        for m in ("attn_resnet", "attn_twin")
    ]
    twins = TrainedRows(dataset="embedded", experiment_id=trained["exp"], rows=rows,
                        shared_by={s0.key(): ["attn_resnet", "attn_twin"]})  # fmt: skip
    write_outputs(tmp_path / "train", twins, {s0.key(): record})
    out = [tmp_path / "eval", tmp_path / "confusion", tmp_path / "metrics"]
    caplog.set_level(logging.INFO, logger="pipeline.evaluate")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("MLFLOW_TRACKING_URI", trained["uri"])
        first = evaluate_dataset(tmp_path / "train", trained["tmp"] / "proc", params, *out)
        second = evaluate_dataset(tmp_path / "train", trained["tmp"] / "proc", params, *out)
    said = [r.getMessage() for r in caplog.records if r.name == "pipeline.evaluate"]
    assert said == [
        "evaluate@embedded: 2 rows, 1 units, 1 evaluated now, 0 from the eval store",
        "evaluate@embedded: 2 rows, 1 units, 0 evaluated now, 1 from the eval store",
    ]
    assert first == second and first["attn_resnet"] == first["attn_twin"]
    summaries = {m: read_json(out[0] / m / "recipe" / "seed0" / "summary.json") for m in ("attn_resnet", "attn_twin")}
    assert [s["spec"]["method"] for s in summaries.values()] == ["attn_resnet", "attn_twin"]
    models = {m: read_json(out[0] / m / "recipe" / "seed0" / "mlflow_model.json") for m in summaries}
    assert models["attn_resnet"]["model_id"] == models["attn_twin"]["model_id"]
    assert models["attn_twin"]["registered"]["name"] == serving.registered_name(EXPERIMENT, "attn_twin")
    assert len(trained["c"].search_logged_models(experiment_ids=[trained["exp"]])) == 2  # none added


def test_runs_record_the_data_path_as_the_repository_names_it(trained) -> None:
    """A data set inside the repository is recorded by its path there (meaningful on every node), one outside
    it by its own path; neither changes the unit's key."""
    inside = ROOT / "data" / "processed" / "embedded"
    assert repo_relative(inside) == "data/processed/embedded" and repo_relative(Path("/mnt/x")) == "/mnt/x"
    spec = trained["specs"][0]
    moved = spec.model_copy(
        update={"dataset": DataRef(**{**spec.dataset.model_dump(), "source": "data/processed/embedded"})}
    )
    assert (
        run_params(moved)["dataset"]["path"] == "data/processed/embedded"
        and "source" not in run_params(moved)["dataset"]
    )
    assert dataset_input(moved.dataset)["source"] == "data/processed/embedded"
    assert moved.key() == spec.key()
    assert run_params(spec)["dataset"]["path"] == str(trained["tmp"] / "proc")  # outside the repository: as it is
