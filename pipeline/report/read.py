"""What the report reads of the stages' outputs for one data set, typed (``Inputs``): the manifest, the search's
outcome (``tune.json``), every evaluated row (``eval/<method>/<track>/seed<k>/summary.json``), the learning
curves of the recipe track (each unit's ``history.csv``, found through the train stage's ``rows.json``), the
confusion counts, the registered models, the attention picture and the train stage's wall time."""

from __future__ import annotations

import csv
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path
from typing import Any

import numpy as np

from pipeline.config import STUDY_HOW_TO_RUN, Params
from pipeline.data.manifest import Manifest, load_manifest
from pipeline.io import read_json
from pipeline.records import HISTORY_FILE, ROWS_FILE, RowEval, read_row_eval, read_trained, unit_dir

Rows = dict[str, dict[str, dict[int, RowEval]]]  # track -> method -> seed -> the evaluated row
Curve = list[dict[str, float]]  # one unit's epochs
VAL_TOP1 = "val_top1"  # a history's per-epoch top-1 on the split it was scored on (a row's unit: the test split)


@dataclass(frozen=True, eq=False)
class Inputs:
    """Everything the report reads for one data set; what only the figures and the provenance need is read when
    first asked for."""

    params: Params
    results: Path  # the stages' results directory (results/)
    dataset: str
    kind: str
    manifest: Manifest
    tuned: dict[str, Any]  # tune.json's "methods": the searches' outcome per method ({} when none ran)
    rows: Rows

    @cached_property
    def curves(self) -> dict[str, dict[str, dict[int, Curve]]]:
        """Every track's learning curves: track -> method -> seed -> epochs."""
        return read_curves(self.results, self.params, self.dataset)

    @cached_property
    def confusion(self) -> dict[str, np.ndarray]:
        """The recipe track's confusion counts per method, its seeds summed: [true, predicted]."""
        seeds, classes = self.params.grid.seeds, self.manifest.classes
        return {m: confusion_counts(self.results, self.dataset, m, seeds, classes) for m in self.rows["recipe"]}

    @cached_property
    def models(self) -> dict[str, list[dict[str, Any]]]:
        """Per method, its rows' registry entries (mlflow_model.json) that hold a version, with their seed."""
        return _registered(self.params, self.results, self.dataset)

    @cached_property
    def attention(self) -> Path | None:
        """The paper's method's attention maps (first seed, recipe track), if its net has any."""
        return _attention_picture(self.params, self.results, self.dataset)

    @cached_property
    def train_wall_time_s(self) -> float:
        return read_json(self.results / self.dataset / "train_metrics.json")["wall_time_s"]


def read_inputs(params: Params, results: Path, data_root: Path, dataset: str) -> Inputs:
    return Inputs(
        params=params,
        results=results,
        dataset=dataset,
        kind=params.dataset(dataset).kind,
        manifest=load_manifest(data_root / dataset),
        tuned=read_json(results / dataset / "tune.json")["methods"],
        rows=collect(results, params, dataset),
    )


def collect(results: Path, params: Params, dataset: str) -> Rows:
    """{track: {method: {seed: the evaluate stage's record of the row}}} for one data set."""
    out: Rows = {}
    for m in params.grid.methods:
        for track_dir in sorted(p for p in (results / dataset / "eval" / m).iterdir() if p.is_dir()):
            per_seed = out.setdefault(track_dir.name, {}).setdefault(m, {})
            for s in params.grid.seeds:
                per_seed[s] = read_row_eval(track_dir / f"seed{s}" / "summary.json")
    return out


def read_curves(results: Path, params: Params, dataset: str) -> dict[str, dict[str, dict[int, Curve]]]:
    """Every track's learning curves: {track: {method: {seed: [per-epoch record]}}}, each read from its unit's
    history once (rows of one unit share it); none without the train stage's rows (results made otherwise)."""
    train = results / dataset / "train"
    if not (train / ROWS_FILE).is_file():
        return {}
    read: dict[str, Curve] = {}
    out: dict[str, dict[str, dict[int, Curve]]] = {}
    for r in read_trained(train).rows:
        if r.key not in read:
            with open(unit_dir(train, r.key) / HISTORY_FILE) as f:
                read[r.key] = [{k: float(v) for k, v in row.items()} for row in csv.DictReader(f)]
        out.setdefault(r.track, {}).setdefault(r.method, {})[r.seed] = read[r.key]
    return out


def confusion_counts(results: Path, dataset: str, method: str, seeds: list[int], classes: list[str]) -> np.ndarray:
    """The recipe track's test confusion counts summed over ``seeds``: [true, predicted], in label order (the
    order of ``classes``, the manifest's, never alphabetical)."""
    index = {c: i for i, c in enumerate(classes)}
    counts = np.zeros((len(classes), len(classes)), dtype=np.int64)
    for s in seeds:
        with open(results / dataset / "confusion" / method / "recipe" / f"seed{s}.csv", newline="") as f:
            for row in csv.DictReader(f):
                counts[index[row["actual"]], index[row["predicted"]]] += 1
    return counts


def _registered(params: Params, results: Path, dataset: str) -> dict[str, list[dict[str, Any]]]:
    """Per method, the registry entries of its rows that hold a registered version, with the seed they name."""
    out: dict[str, list[dict[str, Any]]] = {}
    for m in params.grid.methods:
        for f in sorted((results / dataset / "eval" / m).glob("*/seed*/mlflow_model.json")):
            model = read_json(f)
            if model.get("registered"):
                out.setdefault(m, []).append({**model, "seed": int(f.parent.name.removeprefix("seed"))})
    return out


def _attention_picture(params: Params, results: Path, dataset: str) -> Path | None:
    """The attention-map picture of the paper's method (first seed, recipe track)."""
    for m in params.grid.methods:
        p = results / dataset / "eval" / m / "recipe" / f"seed{params.grid.seeds[0]}" / "attention.png"
        if params.method(m).paper_row == "ours" and p.is_file():
            return p
    return None


def read_study(params: Params, results: Path) -> dict[str, Any]:
    """The study stage's output for the data set it studied; off when none did (or a results tree without one,
    a report of constructed results)."""
    for d in params.grid.datasets:
        f = results / d / "study.json"
        if f.is_file() and (study := read_json(f)).get("enabled"):
            return study
    return {"enabled": False, "how": STUDY_HOW_TO_RUN}
