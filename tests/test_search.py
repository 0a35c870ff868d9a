"""The search track's rules, without running a search: trials see the final schedule's shape, the recipe is
the first trial, and a searched setting is adopted only when it beats the recipe by more than the held-out
split's noise and left chance; what each trial's MLflow run is closed as. (tests/test_pipeline_e2e.py and
tests/test_tune_trials.py run real searches through Ray Tune.)"""

from __future__ import annotations

import signal
import sys

import pytest
from ray.tune.experiment import Trial
from ray.tune.schedulers import ASHAScheduler

from pipeline import tracking
from pipeline.cli import run_stage
from pipeline.config import TrainCfg, TuneCfg
from pipeline.settings import validate_params
from pipeline.spec import DataRef
from pipeline.stats import binomial_margin
from pipeline.train.worker import HISTORY
from pipeline.trials import METRIC, SearchRecord, error_line, trial_status
from pipeline.tune import ResumableASHA, SearchError, _kept, _reusable, consumed, decide, recipe_point
from pipeline.units import compressed

RECIPE = {"train.lr": 0.1, "train.weight_decay": 1e-4}


def trial(lr: float, history: list[float], error: str | None = None) -> dict:
    return {"config": {"train.lr": lr, "train.weight_decay": 1e-4}, "history": history, "error": error}


def test_trials_run_the_final_schedule_compressed() -> None:
    paper = TrainCfg(epochs=200, batch_size=128, lr=0.1, schedule="step", milestones=[100, 150])
    assert compressed(paper, 10) == {"train.epochs": 10, "train.milestones": [5, 8], "train.warmup_epochs": 0}
    assert compressed(paper, 2)["train.milestones"] == [1]  # still a step, not a constant lr
    assert compressed(paper, 1)["train.milestones"] == []
    warm = paper.model_copy(update={"warmup_epochs": 1})
    assert compressed(warm, 10)["train.warmup_epochs"] == 1  # at least one epoch when the recipe has any
    # the squeezed schedule is itself a valid recipe
    TrainCfg.model_validate({**paper.model_dump(), **{k[6:]: v for k, v in compressed(paper, 3).items()}})


def test_a_search_whose_trials_all_stay_at_chance_adopts_nothing() -> None:
    trials = [trial(0.1, [9.0, 10.5]), trial(0.3, [10.0, 11.0]), trial(0.05, [8.0, 12.0])]
    out = decide(trials, RECIPE, n_val=600, num_classes=10)
    assert not out["adopted"] and out["chosen"] == {} and out["reason"] == "every searched trial stayed at chance"
    assert all(t["at_chance"] for t in trials)


def test_adopted_only_beyond_the_held_out_noise() -> None:
    n = 600
    base = trial(0.1, [40.0, 60.0])
    margin = binomial_margin(60.0 + 5.0, 60.0, n)  # about 5.4 points on 600 images
    within = decide([base, trial(0.2, [45.0, 65.0])], RECIPE, n_val=n, num_classes=10)
    assert not within["adopted"] and "within the held-out noise" in within["reason"]
    assert within["margin"] == pytest.approx(margin)
    beyond = decide([base, trial(0.2, [45.0, 70.0])], RECIPE, n_val=n, num_classes=10)
    assert beyond["adopted"] and beyond["chosen"] == {"train.lr": 0.2, "train.weight_decay": 1e-4}
    # a bigger held-out split has less noise: the same +5 points then counts
    assert decide([base, trial(0.2, [45.0, 65.0])], RECIPE, n_val=20_000, num_classes=10)["adopted"]


def test_compared_at_the_last_epoch_both_reached() -> None:
    """ASHA may stop the recipe's trial early: the best trial is then judged at that epoch, not its last."""
    base = trial(0.1, [50.0])  # stopped after epoch 1
    best = trial(0.2, [52.0, 90.0])
    out = decide([base, best], RECIPE, n_val=600, num_classes=10)
    assert out["compared_at_epoch"] == 1 and not out["adopted"]


def test_failed_trials_never_win_and_the_recipe_trial_is_recognised() -> None:
    base = trial(0.1, [40.0, 50.0])
    crashed = trial(0.2, [90.0], error="RuntimeError: boom")
    out = decide([base, crashed], RECIPE, n_val=600, num_classes=10)
    assert not out["adopted"] and out["reason"] == "every searched trial failed (see its error)"
    assert out["recipe_val_top1"] == 50.0


def test_recipe_point_and_space(raw_params: dict) -> None:
    raw_params["tune"]["methods"] = "all"
    p = validate_params(raw_params)
    assert list(p.tune.space_of("attn_resnet")) == ["train.lr", "train.weight_decay", "args.placement"]
    assert list(p.tune.space_of("resnet")) == ["train.lr", "train.weight_decay"]  # the shared space only
    point = recipe_point(p, "attn_resnet", "embedded")
    assert point == {
        "train.lr": p.train.lr,
        "train.weight_decay": p.train.weight_decay,
        "args.placement": p.method("attn_resnet").args["placement"],
    }


def test_trial_status_comes_from_what_tune_knows() -> None:
    """Completed: FINISHED; raised: FAILED with its error; fewer epochs without an error: ASHA stopped it."""
    assert trial_status(None, 3, 3) == ("FINISHED", {})
    assert trial_status("ValueError: bad", 0, 3) == ("FAILED", {"error": "ValueError: bad"})
    assert trial_status("ValueError: bad", 3, 3)[0] == "FAILED"  # crashed after its last report: still failed
    assert trial_status(None, 1, 3) == ("KILLED", {"stopped_by": "ASHA", "stopped_at_epoch": "1"})
    status, tags = trial_status(None, 0, 3)  # never reported, no error: it did not run, ASHA never saw it
    assert status == "FAILED" and "without reporting an epoch" in tags["error"]


def test_error_line_is_the_trials_own_exception_on_one_line() -> None:
    from ray.exceptions import RayTaskError

    wrapped = RayTaskError("train", "Traceback (most recent call last):\n  File ...", ValueError("num_maps=3\nmore"))
    assert error_line(wrapped) == "ValueError: num_maps=3"
    assert error_line(RuntimeError("")) == "RuntimeError" and error_line(None) is None


def test_trial_runs_are_closed_from_tunes_results_not_from_running(tmp_path) -> None:
    """Real sqlite store. Trials as their processes left them: one completed but cut off before it closed its
    run, one stopped by ASHA after epoch 1, one crashed (it closed its run FAILED), one crashed before it
    made its run. Only the ASHA-stopped one ends KILLED."""
    c = tracking.client(f"sqlite:///{tmp_path / 'mlflow.db'}")
    exp = tracking.get_experiment(c, "t-embedded")
    parent, _ = tracking.find_or_create_run(c, exp, "search", {"run_key": "k", "stage": "tune"}, {})
    recipe = {"train.lr": 0.1}
    runs = {}
    for tid in ("t1", "t2", "t3"):
        tags = {"run_key": "k", "trial": tid, "stage": "tune-trial"}
        runs[tid], _ = tracking.find_or_create_run(c, exp, tid, tags, {}, parent_run_id=parent)
    tracking.finish(c, runs["t3"], "FAILED")
    trials = [
        {"trial_id": "t1", "config": recipe, "epochs": 3, "error": None},
        {"trial_id": "t2", "config": {"train.lr": 0.2}, "epochs": 1, "error": None},
        {"trial_id": "t3", "config": {"train.lr": 0.3}, "epochs": 1, "error": "ValueError: boom"},
        {"trial_id": "t4", "config": {"train.lr": 0.4}, "epochs": 0, "error": "TypeError: early"},
    ]
    data = DataRef(name="embedded", path=str(tmp_path), sha256="0" * 64, num_classes=10, mean=[0.5] * 3, std=[0.2] * 3)
    SearchRecord(exp, parent, "k", "resnet", data, recipe).close_trials(c, trials, planned=3)
    got = {tr["trial_id"]: c.get_run(tr["mlflow_run"]) for tr in trials}
    assert {t: r.info.status for t, r in got.items()} == {
        "t1": "FINISHED",
        "t2": "KILLED",
        "t3": "FAILED",
        "t4": "FAILED",
    }
    assert [tr["status"] for tr in trials] == ["FINISHED", "KILLED", "FAILED", "FAILED"]
    assert got["t1"].info.run_id == runs["t1"] and got["t3"].info.run_id == runs["t3"]  # the trials' own runs
    assert got["t2"].data.tags["stopped_by"] == "ASHA" and got["t2"].data.tags["stopped_at_epoch"] == "1"
    assert got["t3"].data.tags["error"] == "ValueError: boom" and got["t4"].data.tags["error"] == "TypeError: early"
    assert got["t4"].data.tags["mlflow.parentRunId"] == parent  # made for the trial that crashed before its run
    assert "stopped_by" not in got["t1"].data.tags and "error" not in got["t1"].data.tags
    assert c.get_run(parent).info.status == "RUNNING"  # the parent is the search's to close


def test_a_search_that_excluded_crashes_is_not_reused_under_fail() -> None:
    clean = {"trials": [{"error": None}]}
    excluded = {"trials": [{"error": None}, {"error": "ValueError: boom"}]}
    assert _reusable(clean, TuneCfg()) and _reusable(excluded, TuneCfg(on_trial_error="exclude"))
    assert not _reusable(excluded, TuneCfg())  # default: fail


def test_a_failed_search_fails_its_stage_with_one_message(monkeypatch, capsys) -> None:
    from tests.project import ROOT

    def main(params, argv):
        raise SearchError("tune@embedded: 1 of 2 search trials of method 'attn_resnet' crashed: ValueError: x")

    monkeypatch.chdir(ROOT)  # run_stage reads ./params.yaml
    monkeypatch.setattr(sys, "argv", ["stages.tune"])
    before = signal.getsignal(signal.SIGTERM)  # run_stage installs its own
    try:
        with pytest.raises(SystemExit) as e:
            run_stage(main)
    finally:
        signal.signal(signal.SIGTERM, before)
    assert e.value.code == 1
    err = capsys.readouterr().err
    assert err.startswith("error: tune@embedded: 1 of 2 search trials") and "Traceback" not in err


def _rungs(sched) -> list[tuple[float, dict[str, float]]]:
    return [(milestone, dict(recorded)) for b in sched._brackets for milestone, recorded in b._rungs]


def test_a_restored_search_rebuilds_ashas_rungs_from_the_trials_it_kept() -> None:
    """Ray does not save a scheduler's state (ray-project/ray#30838): ``ResumableASHA`` replays each kept trial's
    per-epoch history, so a restored search's rungs are the uninterrupted search's, and the next trial is
    stopped as it would have been. Plain ASHA restored holds it against nothing."""
    histories = {"a": [50.0, 60.0, 70.0, 75.0], "b": [40.0], "c": [55.0, 65.0], "d": [45.0]}

    def live(sched) -> None:  # the uninterrupted search: every epoch reported as it was trained
        for tid, hist in histories.items():
            t = Trial("__fake", config={}, stub=True, trial_id=tid)
            sched.on_trial_add(None, t)
            for epoch, v in enumerate(hist, 1):
                sched.on_trial_result(None, t, {"training_iteration": epoch, METRIC: v})
            sched.on_trial_complete(None, t, {"training_iteration": len(hist), METRIC: hist[-1]})

    def restored(sched) -> None:  # Tuner.restore: the kept trials added back TERMINATED with their last result
        for tid, hist in histories.items():
            t = Trial("__fake", config={}, stub=True, trial_id=tid)
            t.update_last_result({"training_iteration": len(hist), METRIC: hist[-1], HISTORY: hist})
            t.set_status(Trial.TERMINATED)
            sched.on_trial_add(None, t)

    def asha(cls):
        return cls(metric=METRIC, mode="max", max_t=4, grace_period=1, reduction_factor=2)

    uninterrupted, resumed, plain = asha(ResumableASHA), asha(ResumableASHA), asha(ASHAScheduler)
    live(uninterrupted)
    restored(resumed)
    restored(plain)
    assert _rungs(resumed) == _rungs(uninterrupted)
    assert any(recorded for _, recorded in _rungs(uninterrupted))
    nxt = Trial("__fake", config={}, stub=True, trial_id="e")  # the first trial after the interruption
    decisions = []
    for sched in (uninterrupted, resumed, plain):
        sched.on_trial_add(None, nxt)
        decisions.append(sched.on_trial_result(None, nxt, {"training_iteration": 1, METRIC: 42.0}))
    assert decisions == ["STOP", "STOP", "CONTINUE"]


def test_the_budget_consumed_and_what_a_resumed_search_kept() -> None:
    trials = [
        {"epochs": 4, "time_s": 10.0, "session": "old"},
        {"epochs": 1, "time_s": 2.5, "session": "old"},
        {"epochs": 2, "time_s": 5.0, "session": "new"},
    ]
    assert consumed(trials, devices={"cpu": 2, "gpu": 0}) == {
        "trials": 3,
        "trial_epochs": 7,
        "device_seconds": 35.0,
        "device": "CPU",
    }
    assert consumed(trials, devices={"cpu": 2, "gpu": 1})["device_seconds"] == 17.5
    assert consumed(trials, devices={"cpu": 2, "gpu": 1})["device"] == "GPU"
    assert _kept(trials, "new") == {"kept": 2, "trained": 1}


def test_tpe_needs_trials_after_its_random_start() -> None:
    TuneCfg(searcher="tpe", num_samples=8, tpe_startup_trials=3)
    TuneCfg(searcher="random", num_samples=2, tpe_startup_trials=3)  # unused under random search
    with pytest.raises(ValueError, match=r"tpe_startup_trials=8 must be < num_samples=8"):
        TuneCfg(searcher="tpe", num_samples=8, tpe_startup_trials=8)
    with pytest.raises(ValueError, match="searcher"):
        TuneCfg(searcher="grid")
