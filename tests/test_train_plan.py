"""How the train stage deals its units into jobs (lanes) side by side, without a cluster."""

from __future__ import annotations

import pytest

from pipeline.compute import Workers
from pipeline.settings import validate_params
from pipeline.spec import build_spec, data_ref
from pipeline.train.run import lane_count, split_lanes, unit_runs
from pipeline.units import Work, distinct, methods_of


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


def test_rows_of_one_network_recipe_and_start_are_one_unit(raw_params, processed) -> None:
    """The ablation of the ResNet-backbone attention net is ResNet itself: the two methods' rows resolve to one
    unit per seed (trained once, one MLflow run naming both); every other method keeps units of its own, and a
    change that makes the two networks differ (the ablation's depth) splits them again."""
    raw_params["grid"]["seeds"] = [0, 1]
    params = validate_params(raw_params)
    rows = Work(params, data_ref("embedded", processed), {}).recipe
    assert len(rows) == 12 and len(distinct(rows)) == 10
    shared = methods_of(rows)
    assert sorted(ms for ms in shared.values() if len(ms) > 1) == [["resnet", "no_attention"]] * 2
    by = {(r.name, r.seed): r.key for r in rows}
    assert by[("resnet", 0)] == by[("no_attention", 0)] != by[("resnet", 1)]
    assert len({by[(m, 0)] for m in ("resnet", "se_resnet", "cbam_resnet", "attn_resnet", "densenet_bc")}) == 5
    refs = unit_runs(params, "0", rows, "c0ffee")
    run = refs[by[("resnet", 0)]]
    assert run.name == "resnet seed 0 (also no_attention)" and run.tags["methods"] == "resnet,no_attention"
    assert run.tags["label"] == "ResNet = CNN without attention"
    assert refs[by[("attn_resnet", 0)]].tags["methods"] == "attn_resnet"

    raw_params["methods"]["no_attention"]["args"]["depth"] = 14
    apart = Work(validate_params(raw_params), data_ref("embedded", processed), {}).recipe
    assert len(distinct(apart)) == 12
