"""The search track's rules, without running a search: trials see the final schedule's shape, the recipe is
the first trial, and a searched setting is adopted only when it beats the recipe by more than the held-out
split's noise and left chance. (tests/test_pipeline_e2e.py runs real searches through Ray Tune.)"""

from __future__ import annotations

import pytest

from pipeline.config import TrainCfg, validate_params
from pipeline.stats import binomial_margin
from pipeline.tune import compressed, decide, method_space, recipe_point

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
    assert list(method_space(p.tune, "attn_resnet")) == ["train.lr", "train.weight_decay", "args.placement"]
    assert list(method_space(p.tune, "resnet")) == ["train.lr", "train.weight_decay"]  # the shared space only
    point = recipe_point(p, "attn_resnet", "embedded")
    assert point == {
        "train.lr": p.train.lr,
        "train.weight_decay": p.train.weight_decay,
        "args.placement": p.method("attn_resnet").args["placement"],
    }
