"""The contract between the train stage's driver (``pipeline.train.run``) and its Ray Train jobs
(``pipeline.train.worker``): everything a job needs, typed, built once by the driver and validated again in
every worker."""

from __future__ import annotations

from typing import Annotated, Any

from pydantic import Field

from pipeline.config import FastPathCfg, Frozen
from pipeline.spec import DataRef, RunSpec
from pipeline.tracking import UnitRun


class TrainJob(Frozen):
    """One Ray Train job: the units it trains, one after another, and where their records go."""

    units: list[RunSpec] = Field(min_length=1)
    store: str  # the run storage (a local path or URI): unit store and checkpoints
    mlflow_uri: str
    runs: dict[str, UnitRun] = Field(default_factory=dict)  # unit key -> its MLflow run (the worker opens it)
    resume: dict[str, str] = Field(default_factory=dict)  # unit key -> the latest checkpoint an earlier job left of it
    threads: Annotated[int, Field(gt=0)] = 1  # torch threads per worker
    origin: dict[str, Any] = Field(default_factory=dict)  # provenance for each finished unit: git state, job
    fast_path: FastPathCfg = FastPathCfg()
    stream: bool = False  # the data is streamed through Ray Data (JPEG data sets)
    system_metrics_s: Annotated[float, Field(ge=0)] = 0  # MLflow system metrics every that many seconds (0: off)
    log_models: bool = True  # each finished unit's net logged as its run's MLflow model (the study's are not)
    checkpoint_every_s: Annotated[float, Field(ge=0)] = 0  # report and checkpoint a unit at most this often


def run_params(u: RunSpec) -> dict[str, Any]:
    """A unit's MLflow params: its resolved settings and content key; the data set's path as the repository
    names it (``DataRef.source``), not this machine's absolute path."""
    d = u.model_dump()
    d["dataset"]["path"] = d["dataset"].pop("source") or u.dataset.path
    return {**d, "run_key": u.key()}


def dataset_input(d: DataRef) -> dict[str, str]:
    """A data set as the MLflow runs that use it record it (``tracking.log_dataset``): units, trials, searches."""
    return {"name": d.name, "sha256": d.sha256, "source": d.source or d.path}
