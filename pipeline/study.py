"""The attention study: where the paper's attention modules help, and why its multi-module network collapses.

The paper describes attention modules after several convolutional layers, "repeated for subsequent attention
modules" (Sec. 3.1), then says it "currently uses a single attention module at the end" and calls several
modules future work (Sec. 7.2). The reproduction runs the one-module network (``placement: final``) because
the Sec. 3.1 network stayed at chance here. This study asks why, and what small change makes it train:

- **where the modules sit** (``SoftmaxAttention`` in ``pipeline.models.resnet``): ``final`` (one, Sec. 7.2),
  ``stage`` (on the trunk after every stage, the literal Sec. 3.1), ``stage_branch`` (as many, but inside
  the residual branch of each stage's last block, so the shortcut carries the features past the map),
  ``block`` (in every block's branch, where SE and CBAM sit);
- **how the sum-to-one map scales the features**: ``none`` (the literal x * map: a uniform map at HxW divides
  the features by H*W, and three such modules in a row by 1024 * 256 * 64), ``hw`` (x * H*W*map, a uniform
  map is the identity), ``residual`` (x * (1 + H*W*map)), ``gated`` (a learned gate from the identity);
- **named variants** on top (``study.variants``): a softmax temperature, fixed or learned; the map conv's
  random initialisation instead of zero (peaked maps from the first step); several maps per module.

Every cell is the study method's net with the cell's model arguments and the method's recipe (``study.epochs``
replacing its length, milestones scaled as the search does), trained for every seed of ``study.seeds``
through the train stage's own Ray path (``pipeline.train.run.train_on_ray``): one MLflow run per (cell,
seed) in the experiment ``<prefix>-<dataset>-study``, checkpoints every epoch, finished units kept in the unit
store under their content key, so an interrupted study resumes and a study with one cell changed trains only
that cell. Every unit records the collapse diagnostics (``pipeline.models.diagnostics``) before training and
after every epoch. The cell's score is its test top-1 after the last epoch (the train stage's per-epoch
``val_top1``, measured on the test split). ``results/<dataset>/study.json`` holds it all; the report's section "Where
attention helps" (``pipeline.report.study``) reads it.
"""

from __future__ import annotations

import logging
import math
import statistics
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from pipeline import tracking, units
from pipeline.compute import storage_path, world_size
from pipeline.config import STUDY_HOW_TO_RUN, Params
from pipeline.data.manifest import load_manifest
from pipeline.io import write_json
from pipeline.models import create_model
from pipeline.provenance import git_commit
from pipeline.spec import DataRef, RunSpec, data_ref
from pipeline.train.job import dataset_input, run_params
from pipeline.train.run import job_for, train_on_ray
from pipeline.train.store import UnitStore

log = logging.getLogger(__name__)


def study_specs(params: Params, data: DataRef) -> dict[str, dict[int, RunSpec]]:
    """cell -> seed -> the unit it trains on one worker (``pipeline.units.study_rows``)."""
    return _by_cell(units.study_rows(params, data))


def _by_cell(rows: Sequence[units.Row]) -> dict[str, dict[int, RunSpec]]:
    out: dict[str, dict[int, RunSpec]] = {}
    for r in rows:
        out.setdefault(r.name, {})[r.seed] = r.unit
    return out


def _refs(params: Params, exp: str, rows: Sequence[units.Row], commit: str) -> dict[str, tracking.UnitRun]:
    """unit key -> its MLflow run: named and tagged by its cell (the first cell, when two cells are one unit)."""
    out: dict[str, tracking.UnitRun] = {}
    for key, (r, *_) in units.group(rows).items():
        u = r.unit
        tags = tracking.tags_for(
            run_key=key,
            seed=r.seed,
            cell=r.name,
            dataset=u.dataset.name,
            stage="study",
            study_method=u.method,
            placement=u.model_args.get("placement"),
            scaling=u.model_args.get("scaling"),
            git_commit=commit,
            data_sha256=u.dataset.sha256,
        ) | tracking.source_tags("study", commit)
        out[key] = tracking.UnitRun(experiment_id=exp, name=f"{r.name} seed {r.seed}", tags=tags)
    return out


def _unit_summary(record: dict[str, Any], run_id: str) -> dict[str, Any]:
    """What the report needs of one trained unit: its score, its curves and diagnostics, its pairing."""
    hist = record["history"]
    return {
        "key": record["key"],
        "test_top1": hist[-1]["val_top1"],
        "diverged": not all(math.isfinite(h["train_loss"]) for h in hist),
        "history": [{k: v for k, v in h.items() if k != "timestamp_ms"} for h in hist],
        "diag_start": record.get("diag_start") or {},
        "pairing": record.get("pairing") or {},
        "images_per_s": statistics.median(h["images_per_s"] for h in hist),
        "mlflow_run": run_id,
    }


def run_study(params: Params, dataset: str, data_dir: str | Path, out_file: str | Path) -> dict[str, Any]:
    """Train (or reuse) every (cell, seed) of ``params.study`` on ``dataset``; write what the report needs to
    ``out_file``. When the study is off, or on another data set (``study.dataset``), write only that (and how
    to turn it on)."""
    t0, s = time.time(), params.study
    if not s.enabled or s.dataset != dataset:
        out = {"enabled": False, "how": STUDY_HOW_TO_RUN, "dataset": dataset}
        write_json(out_file, out)
        why = "study.enabled: false" if not s.enabled else f"study.dataset: {s.dataset}"
        log.info("study@%s: off (%s); to run it: %s", dataset, why, STUDY_HOW_TO_RUN)
        return out
    work = units.Work(params, data_ref(dataset, data_dir), workers=world_size(params.compute))
    specs = _by_cell(work.study)
    trained = [r.unit for r in units.distinct(work.study)]
    store = UnitStore(storage_path(params.compute), dataset)
    todo = [u for u in trained if not store.has(u.key())]
    c = tracking.client()
    experiment = tracking.experiment_name(params.mlflow.experiment_prefix, f"{dataset}-study")
    exp = tracking.open_experiment(c, experiment, f"study@{dataset}")
    git = git_commit()
    refs = _refs(params, exp, work.study, git["commit"])
    n, m = len(trained), len(todo)
    log.info("study@%s: %d cells x %d seeds = %d units, %d already in the unit store, %d to train",
             dataset, len(specs), len(s.seeds), n, n - m, m)  # fmt: skip
    if todo:
        job = job_for(params, todo, refs, {"git": git, "study": True}, log_models=False)  # study nets are not served
        train_on_ray(params, job, data_dir, work=work, stages=("study",))
    records = {u.key(): store.load(u.key()) for u in trained}
    runs = {
        u.key(): tracking.settle_unit_run(
            c, refs[u.key()], run_params(u), records[u.key()], dataset=dataset_input(u.dataset)
        )
        for u in trained
    }
    man, cells = load_manifest(data_dir), s.cells()
    out = {
        "enabled": True,
        "dataset": dataset,
        "method": s.method,
        "num_classes": man.num_classes,
        "num_test": man.num_test,
        "epochs": next(iter(next(iter(specs.values())).values())).train.epochs,
        "seeds": list(s.seeds),
        "placements": list(s.placements),
        "scalings": list(s.scalings),
        "cells": {name: _cell(cells[name], per, records, runs) for name, per in specs.items()},
        "units_trained": m,
        "units_reused": n - m,
        "margin": s.margin,
        "wall_time_s": round(time.time() - t0, 1),
        "mlflow_experiment": experiment,
    }
    write_json(out_file, out)
    return out


def _cell(args: dict[str, Any], per_seed: dict[int, RunSpec], records, runs: dict[str, str]) -> dict[str, Any]:
    """One cell's record: its arguments, its net's parameter count, every seed's unit."""
    first = next(iter(per_seed.values()))
    return {
        "args": args,
        "params": sum(p.numel() for p in create_model(first.model, **first.model_args).parameters()),
        "seeds": {str(seed): _unit_summary(records[u.key()], runs[u.key()]) for seed, u in per_seed.items()},
    }
