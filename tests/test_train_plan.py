"""How the train stage deals its units into jobs (lanes) side by side, without a cluster."""

from __future__ import annotations

import pytest

from pipeline.compute import Workers
from pipeline.settings import validate_params
from pipeline.spec import build_spec, data_ref
from pipeline.train.run import lane_count, split_lanes


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
