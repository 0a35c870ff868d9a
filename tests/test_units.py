"""The work of a data set, resolved once (``pipeline.units``): the rows of each track and the units they train,
the searches (one per distinct base unit, budget and space) and their trials, and the rules every stage shares:
the held-out split and the shortened recipe."""

from __future__ import annotations

import pytest

from pipeline import units
from pipeline.data.manifest import load_manifest
from pipeline.data.subset import held_out
from pipeline.settings import validate_params
from pipeline.spec import data_ref
from pipeline.train.loop import load_data


@pytest.fixture
def data(processed):
    return data_ref("embedded", processed)


def test_methods_of_one_network_share_one_search(raw_params, data) -> None:
    raw_params["tune"]["methods"] = "all"
    params = validate_params(raw_params)
    found = units.searches(params, data)
    # the ablation is ResNet itself, with the same (shared) space: one search serves both
    assert [s.methods for s in found if len(s.methods) > 1] == [("resnet", "no_attention")]
    assert sorted(m for s in found for m in s.methods) == sorted(params.grid.methods)
    assert len({s.key for s in found}) == len(found)
    # the attention net searches its own placement too: its search is its own even on a twin network
    ours = next(s for s in found if s.method == "attn_resnet")
    assert list(ours.space) == ["train.lr", "train.weight_decay", "args.placement"]
    trials = ours.trials(params.tune.num_samples)
    assert len(trials) == params.tune.num_samples and {r.track for r in trials} == {"trial"}
    assert {r.unit.key() for r in trials} == {ours.base.key()}


def test_the_searched_track_retrains_only_what_a_search_adopted(raw_params, data) -> None:
    params = validate_params(raw_params)
    tuned = {"attn_resnet": {"chosen": {"train.lr": 0.02}}, "resnet": {"chosen": {}}}
    work = units.Work(params, data, tuned)
    recipe = {(r.name, r.seed): r.key for r in work.recipe}
    changed = {(r.name, r.seed) for r in work.searched if r.key != recipe[(r.name, r.seed)]}
    assert changed == {("attn_resnet", s) for s in params.grid.seeds}
    assert {r.unit.train.lr for r in work.searched if r.name == "attn_resnet"} == {0.02}
    assert list(work.tracks) == ["recipe", "searched"] and work.adopted
    before = units.Work(params, data)  # the plan, before any search ran
    assert before.searched == () and not before.adopted and list(before.tracks) == ["recipe"]


def test_the_loop_splits_as_the_search_and_the_plan_count(raw_params, data, processed) -> None:
    """One held-out rule: the training loop's split has the sizes ``RunSpec.images`` (what the search's
    adoption margin and the plan count) gives, with and without a train subset."""
    raw_params["tune"]["val_fraction"] = 0.25
    man = load_manifest(processed)
    for subset in (None, 7):
        raw_params["tune"]["train_subset"] = subset
        t = units.trial(validate_params(raw_params), "resnet", data, {})
        train, val = load_data(t)
        assert (len(train), len(val)) == t.images(man.num_train, man.num_test)
    assert len(val) == held_out(man.num_train, 0.25) == 15 and len(train) == 7
    recipe = units.recipe_rows(validate_params(raw_params), data)[0].unit
    assert recipe.images(man.num_train, man.num_test) == (man.num_train, man.num_test)  # the test split


def test_a_trial_and_a_study_cell_are_shortened_alike(raw_params, data) -> None:
    raw_params["train"].update(epochs=20, schedule="step", milestones=[10, 15], warmup_epochs=2)
    raw_params["tune"]["epochs"] = 4
    raw_params["study"].update(enabled=True, epochs=4, seeds=[0])
    params = validate_params(raw_params)
    t = units.trial(params, "attn_resnet", data, {"train.lr": 0.05})
    cell = next(r.unit for r in units.study_rows(params, data) if r.name == "stage/hw")
    for u in (t, cell):
        assert (u.train.epochs, u.train.milestones, u.train.warmup_epochs) == (4, [2, 3], 1)
    assert t.train.lr == 0.05 and cell.model_args["placement"] == "stage"
    assert units.shortened(params, "attn_resnet", "embedded", 4) == units.compressed(params.train, 4)
