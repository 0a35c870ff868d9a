"""A search whose space holds a value the model rejects, for real: a local Ray Tune search (ASHA), the trials'
MLflow runs in a sqlite store. One architecture choice (``num_maps=3``) passes the settings' validation but
cannot divide any layer's channels, so that trial crashes when it builds its net; the recipe's trial trains.

Under ``tune.on_trial_error: fail`` (the default) the search fails, naming the trial and its error, and
nothing is cached; under ``exclude`` the crashed trial is recorded FAILED with its error and left out of the
decision. Either way every trial run's status is what Tune knows of the trial: none that trained all its
epochs is KILLED."""

from __future__ import annotations

import copy
import json
from contextlib import nullcontext
from pathlib import Path

import pytest

from pipeline import tracking
from pipeline.compute import ray_session, storage_path
from pipeline.settings import validate_params
from pipeline.spec import data_ref
from pipeline.trials import trial_status
from pipeline.tune import SearchCache, SearchError, tune_dataset
from pipeline.units import search_key

pytestmark = pytest.mark.slow

EPOCHS = 2


@pytest.fixture
def processed(search_data):
    return search_data


@pytest.fixture
def project(tmp_path, monkeypatch):
    """A clean working directory: MLflow (sqlite) and Ray's storage land there."""
    for var in ("MLFLOW_TRACKING_URI", "RAY_ADDRESS"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.chdir(tmp_path)
    return tmp_path


def _params(raw: dict, root, on_trial_error: str):
    raw["methods"]["attn_resnet"]["args"]["width"] = 4
    raw["compute"].update(storage_path=str(root / "ray"), num_workers=1)
    raw["tune"].update(
        methods=["attn_resnet"],
        allow_unequal=True,
        num_samples=2,  # the recipe (num_maps=1, from the method's args) and one trial at num_maps=3
        epochs=EPOCHS,
        grace_period=1,
        on_trial_error=on_trial_error,
        arch_space={"attn_resnet": {"args.num_maps": {"type": "choice", "values": [3]}}},
    )
    return validate_params(raw)  # not the model checks: the search must cope with what they might miss


def _trial_runs(c, trials):
    return [(tr, c.get_run(tr["mlflow_run"])) for tr in trials]


def _check_trial_runs(c, trials) -> None:
    """Each trial run's status and tags follow from Tune's record of the trial; a crashed one carries its error,
    and no trial that trained all its epochs is KILLED."""
    for tr, run in _trial_runs(c, trials):
        status, tags = trial_status(tr["error"], tr["epochs"], EPOCHS)
        assert run.info.status == status == tr["status"], (tr, run.info.status)
        assert {k: run.data.tags.get(k) for k in tags} == tags
        if tr["config"]["args.num_maps"] == 3:
            assert status == "FAILED" and "num_maps=3 must divide" in run.data.tags["error"]
        else:
            assert tr["error"] is None and tr["epochs"] == EPOCHS and status == "FINISHED"
            assert [m.step for m in c.get_metric_history(run.info.run_id, "val_top1")] == [1, 2]


def test_a_crashed_trial_fails_the_search_unless_excluded(project, processed, raw_params, monkeypatch) -> None:
    """Both settings in turn, as a user would meet them: the search fails; with ``exclude`` it is run again
    (nothing was cached) and ends, the crash recorded. One local Ray for both (it takes seconds to start)."""
    import pipeline.tune

    with ray_session():
        monkeypatch.setattr(pipeline.tune, "ray_session", nullcontext)
        _fails(project, processed, _params(copy.deepcopy(raw_params), project, "fail"))
        _excludes(project, processed, _params(raw_params, project, "exclude"))


def _fails(project, processed, params) -> None:
    with pytest.raises(SearchError) as e:
        tune_dataset(params, "embedded", processed, project / "tune.json")
    msg = str(e.value)
    assert "1 of 2 search trials of method 'attn_resnet' crashed" in msg
    assert "'args.num_maps': 3" in msg and "ValueError: num_maps=3 must divide channels=" in msg
    assert "`tune.on_trial_error: exclude`" in msg and "Traceback" not in msg
    assert not (project / "tune.json").exists()
    key = search_key(params, "attn_resnet", data_ref("embedded", processed))
    assert not SearchCache(storage_path(params.compute), "embedded").has(key)  # a failed search is not cached

    c = tracking.client()
    exp = c.get_experiment_by_name(tracking.experiment_name(params.mlflow.experiment_prefix, "embedded"))
    (parent,) = c.search_runs([exp.experiment_id], "tags.stage = 'tune'")
    assert parent.info.status == "FAILED" and "num_maps=3" in parent.data.tags["error"]
    trials = json.loads(Path(c.download_artifacts(parent.info.run_id, "trials.json", str(project))).read_text())
    assert len(trials) == 2
    _check_trial_runs(c, trials)
    children = c.search_runs([exp.experiment_id], f"tags.mlflow.parentRunId = '{parent.info.run_id}'")
    assert sorted(r.info.run_id for r in children) == sorted(tr["mlflow_run"] for tr in trials)


def _excludes(project, processed, params) -> None:
    out = tune_dataset(params, "embedded", processed, project / "tune.json")
    r = json.loads((project / "tune.json").read_text())["methods"]["attn_resnet"]
    assert r == json.loads(json.dumps(out["methods"]["attn_resnet"])) and r["cached"] is False
    (crashed,) = r["excluded"]
    assert crashed["config"]["args.num_maps"] == 3 and crashed["error"].startswith("ValueError: num_maps=3")
    assert not r["adopted"] and r["reason"] == "every searched trial failed (see its error)"
    assert r["recipe_val_top1"] is not None  # the recipe's trial ran, and was compared with nothing
    c = tracking.client()
    _check_trial_runs(c, r["trials"])
    # the re-run's parent is the search's own run (stage tune), never a trial of the failed search, though every
    # trial run carries the search's run_key; the new trials nest under it
    parent = c.get_run(r["mlflow_parent_run"])
    assert parent.info.status == "FINISHED" and parent.data.tags["stage"] == "tune"
    exp = parent.info.experiment_id
    assert [p.info.run_id for p in c.search_runs([exp], "tags.stage = 'tune'")] == [parent.info.run_id]
    for tr in r["trials"]:
        tags = c.get_run(tr["mlflow_run"]).data.tags
        assert tags["stage"] == "tune-trial" and tags["mlflow.parentRunId"] == parent.info.run_id
    key = search_key(params, "attn_resnet", data_ref("embedded", processed))
    assert SearchCache(storage_path(params.compute), "embedded").has(key)  # a search that ended is reused
