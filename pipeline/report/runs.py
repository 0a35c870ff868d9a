"""The report's MLflow runs: one per data set (``report | <dataset>``, tag ``stage=report``) in the report
experiment (``<prefix>-report``, apart from the training runs), with the figures as metrics (a search's tuning
curve one step per trial count), the verdicts as tags and the report's files as artifacts; linked both ways
with the data set's training experiment."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

from mlflow.entities import Metric, RunTag

from pipeline import tracking
from pipeline.config import Params, config_hash
from pipeline.report.record import BENCHMARK, HEADLINE
from pipeline.report.search import SEARCH

ARTIFACTS = ("tables.md", "index.html", "tables.csv", "summary.json", "metrics.json", "study.json")


def _number(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool)


def _report_run_fields(per_track: dict[str, Any]) -> tuple[list[tuple[str, str]], list[tuple[str, float, int]]]:
    """The summary as tags (per claims version: verdict, claimed gain, whether the size was tested, direction,
    seeds; a search's words) and metrics (the numbers; a list of numbers, as a tuning curve, one step per entry
    from 1), named ``<track or search>.<method or ours_vs_x>.<field>[.<version>]``."""
    bench = per_track[BENCHMARK]
    tags = [(f"{BENCHMARK}.{k}", str(v)) for k, v in bench.items() if v is not None]
    metrics: list[tuple[str, float, int]] = []
    for track, entries in per_track.items():
        if track in (BENCHMARK, HEADLINE):  # the headline repeats the recipe track's figures
            continue
        for name, fields in entries.items():
            for k, v in fields.items():
                key = f"{track}.{name}.{k}"
                if isinstance(v, dict):
                    # a version the field does not apply to (no claim, no size tested) has no tag, not "None"
                    tags += [(f"{key}.{version}", str(x)) for version, x in v.items() if x is not None]
                elif _number(v):
                    metrics.append((key, float(v), 0))
                elif isinstance(v, list) and v and all(_number(x) for x in v):
                    metrics += [(key, float(x), step) for step, x in enumerate(v, 1)]
                elif isinstance(v, (str, bool)) and track == SEARCH:
                    tags.append((key, str(v)))
    return tags, metrics


def log_report_runs(params: Params, summary: dict[str, Any], tmp: Path, commit: str) -> dict[str, str]:
    """One run per data set (``report | <dataset>``, tag stage=report) in the report experiment
    (``<prefix>-report``, apart from the training runs): the figures as metrics, the verdicts as tags, the
    files as artifacts. Linked both ways: the run names its training experiment (tags, description) and the
    training experiment its latest report run. A rerun with the same figures finds and reuses its run.
    Returns {dataset: the report run's URL path}."""
    c = tracking.client()
    now = int(time.time() * 1000)
    prefix = params.mlflow.experiment_prefix
    rexp = tracking.get_experiment(c, tracking.report_experiment_name(prefix))
    out = {}
    for d, per_track in summary.items():
        train_name = tracking.experiment_name(prefix, d)
        exp = tracking.get_experiment(c, train_name)
        tags = tracking.tags_for(run_key=config_hash(per_track), stage="report", dataset=d)
        tags |= tracking.source_tags("report", commit)
        run_id, existed = tracking.find_or_create_run(c, rexp, f"report | {d}", tags, {}, reopen=False)
        tracking.link_report(
            c, run_id, report_experiment=rexp, training_experiment=exp, train_name=train_name, dataset=d
        )
        out[d] = tracking.run_path(rexp, run_id)
        if existed:
            continue
        tags, metrics = _report_run_fields(per_track)
        for i in range(0, len(tags), 100):  # MLflow takes at most 100 tags per batch
            c.log_batch(run_id, tags=[RunTag(k, v) for k, v in tags[i : i + 100]])
        for i in range(0, len(metrics), 1000):
            c.log_batch(run_id, metrics=[Metric(k, v, now, step) for k, v, step in metrics[i : i + 1000]])
        for name in ARTIFACTS:
            c.log_artifact(run_id, str(tmp / name))
        c.log_artifacts(run_id, str(tmp / "figures"), "figures")
        tracking.finish(c, run_id)
    return out
