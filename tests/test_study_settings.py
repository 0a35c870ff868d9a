"""The study's settings and units, without training: the cells it makes, what each unit trains, and the
settings refused before any work; and that the diagnostics every study unit records leave its training as
it would have been without them."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from pipeline.config import ConfigError, EmbeddedDataCfg, EmbeddedFetchCfg
from pipeline.data.fetch import fetch_dataset
from pipeline.data.preprocess import preprocess_dataset
from pipeline.models.checks import validate_all
from pipeline.settings import validate_params
from pipeline.spec import build_spec, data_ref
from pipeline.study import study_specs
from pipeline.train.engine import Shard
from pipeline.train.loop import train_units
from pipeline.train.store import UnitStore


def _errors(raw: dict) -> str:
    with pytest.raises(ConfigError) as e:
        validate_all(raw)
    return str(e.value)


def test_cells_are_the_grid_then_the_variants(raw_params) -> None:
    p = validate_params(raw_params)
    cells = p.study.cells()
    grid = [f"{a}/{b}" for a in p.study.placements for b in p.study.scalings]
    assert list(cells)[: len(grid)] == grid and list(cells)[len(grid) :] == list(p.study.variants)
    assert cells["stage_branch/gated"] == {"placement": "stage_branch", "scaling": "gated"}


def test_each_unit_is_the_method_with_the_cells_arguments(raw_params, tmp_path: Path) -> None:
    raw_params["study"].update(enabled=True, epochs=2, seeds=[3, 4])
    raw_params["train"].update(schedule="step", epochs=10, milestones=[5, 8])
    p = validate_params(raw_params)
    cfg = EmbeddedDataCfg(kind="embedded", fetch=EmbeddedFetchCfg(num_train=20, num_test=10))
    fetch_dataset("embedded", cfg, tmp_path / "raw")
    preprocess_dataset(tmp_path / "raw", tmp_path / "proc")
    specs = study_specs(p, data_ref("embedded", tmp_path / "proc"))
    assert set(specs) == set(p.study.cells()) and all(set(per) == {3, 4} for per in specs.values())
    u = specs["stage-hw-T4"][4]
    base = p.method("attn_resnet").args
    assert u.model_args == {**base, "placement": "stage", "scaling": "hw", "temperature": 4.0, "num_classes": 10}
    assert u.train.epochs == 2 and u.train.milestones == [1]  # the recipe's shape, squeezed as a search does
    assert u.diagnostics == p.study.diagnostics and u.seed == 4
    keys: dict[str, set[str]] = {}
    for cell, per in specs.items():
        for x in per.values():
            keys.setdefault(x.key(), set()).add(cell.split("/")[0])
    # every (cell, seed) its own unit, but where two cells are one network: at depth 8 a stage has one block,
    # so `stage_branch` (its last block's branch) and `block` (every block's) put the module in the same place
    shared = [cells for cells in keys.values() if len(cells) > 1]
    assert shared == [{"stage_branch", "block"}] * 2 * len(p.study.scalings)
    assert len(keys) == (len(specs) - len(p.study.scalings)) * 2


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"placements": ["stage", "block"]}, r"study.placements = \['stage', 'block'\]: must include 'final'"),
        ({"enabled": True, "dataset": "cifar10"}, r"study.dataset: 'cifar10' is not in grid.datasets \['embedded'\]"),
        ({"method": "vit"}, "study.method: unknown method 'vit'"),
        (
            {"enabled": True, "placements": ["final", "middle"]},
            r"study \(cell middle/none\)\.args = .*placement='middle'",
        ),
        ({"variants": {"x": {"temprature": 2.0}}}, r"study.variants.x.args: unknown argument\(s\) \['temprature'\]"),
        ({"enabled": True, "variants": {"x": {"temperature": -1.0}}}, r"study.variants.x.args = .*temperature=-1.0"),
    ],
)
def test_bad_study_settings_are_refused_before_work(raw_params, change: dict, message: str) -> None:
    raw_params["study"].update(change)
    import re

    assert re.search(message, _errors(raw_params)), _errors(raw_params)


def test_diagnostics_leave_the_training_as_it_was(raw_params, tmp_path: Path) -> None:
    """The same unit trained with and without the per-epoch diagnostics: the same losses and accuracies, epoch
    by epoch (they run in eval mode and take their gradients without touching the parameters' .grad)."""
    raw_params["methods"]["attn_resnet"]["args"].update(width=4, placement="stage", scaling="gated")
    raw_params["train"]["epochs"] = 2
    p = validate_params(raw_params)
    cfg = EmbeddedDataCfg(kind="embedded", fetch=EmbeddedFetchCfg(seed=1, num_train=80, num_test=20))
    fetch_dataset("embedded", cfg, tmp_path / "raw")
    preprocess_dataset(tmp_path / "raw", tmp_path / "proc")
    data = data_ref("embedded", tmp_path / "proc")
    histories = {}
    for n in (0, 16):
        spec = build_spec(p, "attn_resnet", data, 0, diagnostics=n)
        store = UnitStore(str(tmp_path / f"store{n}"), "embedded")
        train_units([spec], Shard(), torch.device("cpu"), lambda m, s: None, store=store)
        histories[n] = store.load(spec.key())
    plain, diag = histories[0]["history"], histories[16]["history"]
    fields = ("train_loss", "train_top1", "val_loss", "val_top1")
    assert [[h[f] for f in fields] for h in plain] == [[h[f] for f in fields] for h in diag]
    assert any(k.startswith("diag/") for k in diag[-1]) and not any(k.startswith("diag/") for k in plain[-1])
    assert histories[16]["diag_start"] and histories[0]["diag_start"] is None
