"""Driver of the training stage: every (method, seed) unit of one data set, on Ray Train, recorded in MLflow.

The grid's units are dealt into lanes, one Ray Train job per lane, and the lanes' jobs run side by side, as
many as the cluster has room for (``compute.concurrency``): on a GPU cluster each job takes ``num_workers``
GPUs, so 8 GPUs with one worker per job train 8 units at once. Why lanes rather than one job per unit:
starting a Ray Train job has a fixed cost (ray.init, the controller's and workers' start-up, DDP's first use,
the driver's imports) that many short units would pay again and again (``benchmarks/grid_concurrency.py``).
Units keep their own identity all the same: one content key, one MLflow run, one record each;
finished units are reused from the unit store, so changing one method's settings retrains only that method;
and an interrupted unit resumes from its latest checkpoint whichever lane or job it ran in before
(``pipeline.train.checkpoint.resume_points``).
"""

from __future__ import annotations

import csv
import logging
import os
import time
from collections.abc import Collection, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from ray.train import CheckpointConfig, DataConfig, FailureConfig, LoggingConfig, RunConfig, ScalingConfig
from ray.train.torch import TorchTrainer

from pipeline import tracking, units
from pipeline.compute import Workers, ray_session, resolve_workers, storage_path, world_size
from pipeline.config import Params, config_hash
from pipeline.data.manifest import load_manifest, ray_dataset, stream_options
from pipeline.errors import StageError
from pipeline.io import atomic_path, read_json, write_json
from pipeline.plan import Stage, plan_lines
from pipeline.plots import plt, training_curves
from pipeline.progress import PlannedUnit, UnitProgress, relay
from pipeline.provenance import git_commit
from pipeline.records import CHECKPOINT_FILE, HISTORY_FILE, ROWS_FILE, TrainedRow, TrainedRows, unit_dir
from pipeline.spec import RunSpec, data_ref, shared
from pipeline.tracking import UnitRun
from pipeline.train.checkpoint import HISTORY_FIELDS, UnitRecord, resume_points
from pipeline.train.job import TrainJob, dataset_input, run_params
from pipeline.train.probe import probe
from pipeline.train.store import UnitStore
from pipeline.train.worker import train_worker

log = logging.getLogger(__name__)


def fit(job: TrainJob, params: Params, name: str, w: Workers, progress: Any = None):
    """Run ``train_worker`` over ``job``'s units as one Ray Train job; returns the Ray ``Result``. Needs a Ray
    session. ``progress``: the progress hub the workers report to (``pipeline.progress.relay``), or None.

    JPEG data sets (ImageNet) are streamed through Ray Data: shards are read with ``read_parquet``, decoded
    and augmented by Ray Data tasks, and split across the workers; CIFAR-sized sets are held in memory."""
    datasets = streamed_datasets(job.units[0].dataset.path)
    if datasets:
        log.info("train@%s: streaming the JPEG shards through Ray Data", job.units[0].dataset.name)
    trainer = TorchTrainer(
        train_worker,
        train_loop_config={"job": job.model_copy(update={"stream": bool(datasets)}).model_dump(), "progress": progress},
        datasets=datasets,
        dataset_config=DataConfig(execution_options=stream_options(params.compute.stream_memory_mb)),
        scaling_config=ScalingConfig(
            num_workers=w.num_workers, use_gpu=w.use_gpu, resources_per_worker={"CPU": w.cpus_per_worker}
        ),
        run_config=RunConfig(
            name=name,
            storage_path=job.store,
            checkpoint_config=CheckpointConfig(num_to_keep=params.compute.keep_checkpoints),
            failure_config=FailureConfig(max_failures=params.compute.max_failures),
            logging_config=LoggingConfig(log_level="WARNING"),
        ),
    )
    return trainer.fit()


def lane_count(params: Params, resources: dict[str, float], w: Workers, units: int) -> int:
    """How many training jobs run side by side: ``compute.concurrency``, or (auto) as many as the cluster's
    GPUs (one job = num_workers GPUs) or CPUs (num_workers x cpus_per_worker) hold; never more than units."""
    k = params.compute.concurrency
    if k == "auto":
        if w.use_gpu:
            k = int(resources.get("GPU", 0) // w.num_workers)
        else:
            k = int(resources.get("CPU", 0) // (w.num_workers * w.cpus_per_worker))
    return max(1, min(k, units))


def split_lanes(units: list[RunSpec], k: int) -> list[list[RunSpec]]:
    """Deal ``units`` round-robin into ``k`` lanes (so each method's seeds spread over the lanes)."""
    return [lane for lane in (units[i::k] for i in range(k)) if lane]


def streamed_datasets(data_dir: str) -> dict[str, Any]:
    """Ray Datasets for a JPEG data set ({} for in-memory formats): augmented train, plain test."""
    man = load_manifest(data_dir)
    if man.format != "jpeg":
        return {}
    return {"train": ray_dataset(data_dir, "train", man, augment=True), "val": ray_dataset(data_dir, "test", man)}


def streaming(data_dir: str | Path) -> bool:
    return load_manifest(data_dir).format == "jpeg"


def run_name(method: str, seed: int, searched_only: bool, also: list[str] | None = None) -> str:
    """A unit's MLflow run name: method and seed first, so the UI's cut-off runs column still shows both;
    then the other methods whose rows the unit is (``also``)."""
    shared = f" (also {', '.join(also)})" if also else ""
    return f"{method} seed {seed}" + (" (searched)" if searched_only else "") + shared


def unit_runs(params: Params, exp: str, rows: Sequence[units.Row], commit: str) -> dict[str, UnitRun]:
    """unit key -> where its MLflow run is and what it is called (the worker opens it as the unit starts): named
    and tagged by its first row, tagged ``methods`` with every method whose rows it is and ``track`` recipe
    when one of its rows is on the recipe track."""
    recipe = {r.key for r in rows if r.track == "recipe"}
    out = {}
    for key, rs in units.group(rows).items():
        u, methods = rs[0].unit, list(dict.fromkeys(r.name for r in rs))
        tags = tracking.tags_for(
            run_key=key,
            seed=u.seed,
            dataset=u.dataset.name,
            method=u.method,
            methods=",".join(methods),
            label=" = ".join(params.method(m).label for m in methods),
            model=u.model,
            track="recipe" if key in recipe else "searched",
            stage="train",
            git_commit=commit,
            data_sha256=u.dataset.sha256,
        )
        tags |= tracking.source_tags(f"train@{u.dataset.name}", commit)
        name = run_name(u.method, u.seed, key not in recipe, [m for m in methods if m != u.method])
        out[key] = UnitRun(experiment_id=exp, name=name, tags=tags)
    return out


def _run_lanes(
    lanes: list[list[RunSpec]], params: Params, base: TrainJob, w: Workers, progress: Any
) -> list[BaseException]:
    """One Ray Train job per lane, all at once (each from its own driver thread); the errors, if any.

    Ray schedules the jobs' worker groups as resources free up, so on a cluster without room for all lanes
    they still complete, fewer at a time."""

    def one(lane: list[RunSpec]) -> None:
        name = f"{lane[0].dataset.name}-train-{config_hash([u.key() for u in lane])}"
        keys = {u.key() for u in lane}
        job = base.model_copy(
            update={
                "units": lane,
                "runs": {k: r for k, r in base.runs.items() if k in keys},
                "resume": {k: r for k, r in base.resume.items() if k in keys},
                "origin": {**base.origin, "job": name},
            }
        )
        fit(job, params, name, w, progress)

    with ThreadPoolExecutor(len(lanes), thread_name_prefix="lane") as pool:
        futures = [pool.submit(one, lane) for lane in lanes]
    return [e for f in futures if (e := f.exception()) is not None]


def job_for(
    params: Params, todo: list[RunSpec], refs: dict[str, UnitRun], origin: dict[str, Any], *, log_models: bool = True
) -> TrainJob:
    """The job that trains ``todo``: its data where the workers read it (``compute.shared_data``), its MLflow
    runs (with each finished net as a logged model unless not ``log_models``), and the checkpoints earlier
    jobs left of its units to resume from."""
    data = shared(todo[0].dataset, params.compute.shared_data)
    todo = [u.model_copy(update={"dataset": data}) for u in todo]
    storage = storage_path(params.compute)
    return TrainJob(
        units=todo,
        store=storage,
        mlflow_uri=tracking.tracking_uri(),
        runs={u.key(): refs[u.key()] for u in todo},
        resume=resume_points(storage, data.name, [u.key() for u in todo]),
        threads=params.compute.cpus_per_worker,
        origin=origin,
        fast_path=params.compute.fast_path,
        system_metrics_s=params.mlflow.system_metrics_s,
        log_models=log_models,
        checkpoint_every_s=params.compute.checkpoint_every_s,
    )


def train_on_ray(
    params: Params, job: TrainJob, data_dir: str | Path, *, work: units.Work, stages: Collection[Stage] = ("train",)
) -> int:
    """Train ``job``'s units on a Ray session, as many jobs side by side as fit; the number of jobs. Raises the
    first job's error. A unit that did not finish (an error, an interrupt, SIGTERM) has its run ended FAILED.
    First the plan of ``work``'s ``stages`` (``pipeline.plan``: units, epochs, device-hours and wall time from
    a probe on the workers' device) is logged, before anything is spent."""
    dataset = job.units[0].dataset.name
    # streamed data needs CPUs beside the training workers' for its decoding tasks
    extra = 2 * params.compute.cpus_per_worker if streaming(data_dir) else 0
    store, c = UnitStore(job.store, dataset), tracking.client(job.mlflow_uri)
    planned = [PlannedUnit(u.key(), u.method, u.seed, u.train.epochs) for u in job.units]
    stage = next(iter(stages))  # what the plan's lines are labelled with
    progress = UnitProgress(f"train@{dataset}", planned)
    try:
        with ray_session(num_cpus=(os.cpu_count() or 1) + extra if extra else None) as res:
            w = resolve_workers(params.compute, res.get("CPU", 0), res.get("GPU", 0), "the Ray cluster")
            if w.num_workers != job.units[0].workers:  # the units' keys name the workers they train on
                raise StageError(
                    f"compute.num_workers = {params.compute.num_workers!r} resolves to {w.num_workers} worker(s) on "
                    f"the Ray cluster, but to {job.units[0].workers} when this stage planned its units; the "
                    "cluster changed meanwhile: run the stage again"
                )
            seen = {**res, "CPU": res.get("CPU", 0) - extra}  # the decoding CPUs added above train nothing
            lines = plan_lines(
                params, works=[work], data_dirs={dataset: data_dir}, resources=seen, stages=stages, prober=probe
            )
            for line in lines:
                log.info("%s@%s: %s", stage, dataset, line)
            lanes = split_lanes(job.units, lane_count(params, res, w, len(job.units)))
            log.info(
                "train@%s: %d job(s) side by side, %d worker(s) each%s; resuming %d unit(s) from checkpoints",
                dataset,
                len(lanes),
                w.num_workers,
                " on GPUs" if w.use_gpu else "",
                len(job.resume),
            )
            with relay(progress) as hub:
                errors = _run_lanes(lanes, params, job, w, hub)
    finally:
        progress.close()
        for u in job.units:
            if store.has(u.key()):  # finished: its worker ended its run
                continue
            run = tracking.find_run(c, job.runs[u.key()].experiment_id, u.key())
            if run is not None and run.info.status == "RUNNING":
                tracking.finish(c, run.info.run_id, "FAILED")
    if errors:
        raise errors[0]
    return len(lanes)


@dataclass(frozen=True)
class TrainPlan:
    """The train stage resolved once: its rows (``pipeline.units``), each unit once, which are in the unit store
    and which to train, and where each unit's MLflow run is."""

    work: units.Work
    rows: tuple[units.Row, ...]  # recipe (and searched): every (track, method, seed) of the grid
    units: list[RunSpec]  # each unit once (rows of one network, recipe and start share it), in row order
    store: UnitStore
    todo: list[RunSpec]  # the units not in the store yet
    experiment: str
    refs: dict[str, UnitRun]  # unit key -> its MLflow run
    git: dict[str, Any]


def plan_stage(params: Params, dataset: str, data_dir: str | Path, tuned_file: str | Path, c) -> TrainPlan:
    """The train stage's ``TrainPlan``; MLflow runs a dead process left RUNNING are closed FAILED first."""
    workers = world_size(params.compute)  # first: too many workers is a settings error, before any file is read
    tuned = read_json(tuned_file)["methods"]
    work = units.Work(params, data_ref(dataset, data_dir), tuned, workers=workers)
    rows = tuple(r for track in work.tracks.values() for r in track)
    todo_units = [r.unit for r in units.distinct(rows)]
    store = UnitStore(storage_path(params.compute), dataset)
    exp = tracking.open_experiment(
        c, tracking.experiment_name(params.mlflow.experiment_prefix, dataset), f"train@{dataset}"
    )
    git = git_commit()
    return TrainPlan(
        work=work,
        rows=rows,
        units=todo_units,
        store=store,
        todo=[u for u in todo_units if not store.has(u.key())],
        experiment=exp,
        refs=unit_runs(params, exp, rows, git["commit"]),
        git=git,
    )


def train_dataset(
    params: Params,
    dataset: str,
    data_dir: str | Path,
    tuned_file: str | Path,
    out_dir: str | Path,
    metrics_file: str | Path,
) -> dict[str, Any]:
    """Train (or reuse) every unit of the grid for ``dataset``. Writes ``out_dir`` (``rows.json``: every row,
    pointing at its unit; ``units/<key>/``: each unit's model.pt and history.csv, once) and what this stage did
    to ``metrics_file``; then the new units' files into their MLflow runs."""
    t0 = time.time()  # plan_stage checks the workers against the resources before anything else
    c = tracking.client()
    plan = plan_stage(params, dataset, data_dir, tuned_file, c)
    n, todo = len(plan.units), plan.todo
    shares = ", ".join(f"{len(v)} {k}" for k, v in plan.work.tracks.items())
    log.info(
        "train@%s: %d rows (%s) resolve to %d units%s; %d already in the unit store, %d to train",
        dataset,
        len(plan.rows),
        shares,
        n,
        _shared_note(units.methods_of(plan.rows)),
        n - len(todo),
        len(todo),
    )
    lanes = 0
    if todo:
        job = job_for(params, todo, plan.refs, {"git": plan.git})
        stages = ("train", "searched") if plan.work.searched else ("train",)
        lanes = train_on_ray(params, job, data_dir, work=plan.work, stages=stages)
    finals = {u.key(): plan.store.load(u.key()) for u in plan.units}
    runs = {
        u.key(): tracking.settle_unit_run(
            c, plan.refs[u.key()], run_params(u), finals[u.key()], dataset=dataset_input(u.dataset)
        )
        for u in plan.units
    }
    trained = TrainedRows(
        dataset=dataset,
        experiment_id=plan.experiment,
        rows=[trained_row(r, finals[r.key], runs[r.key]) for r in plan.rows],
        shared_by=units.methods_of(plan.rows),
    )
    write_outputs(Path(out_dir), trained, finals)
    # per-(method, seed) accuracy is the evaluate stage's metrics; here, what this stage did and its speed
    rates = [h["images_per_s"] for u in todo for h in finals[u.key()]["history"]]
    metrics = {
        "rows": len(plan.rows),
        "units": n,
        "units_trained": len(todo),
        "units_reused": n - len(todo),
        "jobs_side_by_side": lanes,
        "wall_time_s": round(time.time() - t0, 1),
        "train_images_per_s": round(sum(rates) / len(rates), 1) if rates else None,
    }
    write_json(metrics_file, metrics)
    for u in todo:
        _log_unit_files(c, runs[u.key()], unit_dir(out_dir, u.key()), u, finals[u.key()]["history"])
    return metrics


def _shared_note(shared: dict[str, list[str]]) -> str:
    """``" (resnet = no_attention: the same network, recipe and start, trained once)"``, or "" if none."""
    groups = list(dict.fromkeys(" = ".join(ms) for ms in shared.values() if len(ms) > 1))
    return f" ({'; '.join(groups)}: the same network, recipe and start, trained once)" if groups else ""


def trained_row(r: units.Row, final: UnitRecord, run_id: str) -> TrainedRow:
    """Row ``r`` as the train stage records it: its own resolved settings, on the data set as its unit's workers
    read it (the unit's record), its unit key and the unit's MLflow run."""
    spec = {**r.unit.model_dump(), "dataset": final["spec"]["dataset"]}
    return TrainedRow(method=r.name, track=r.track, seed=r.seed, key=r.key, spec=spec, run_id=run_id)


def write_outputs(out_dir: Path, trained: TrainedRows, finals: Mapping[str, UnitRecord]) -> None:
    """The stage's output directory, moved into place whole: ``rows.json`` (``trained``) and each unit once,
    ``units/<key>/``: ``model.pt`` (its record, naming the methods whose rows it is: what evaluation rebuilds the
    net from) and ``history.csv`` (its epochs: the report's curves). Files depend on the units alone, not on when
    the stage ran, so reused units rewrite identical files and DVC does not re-evaluate them."""
    with atomic_path(out_dir) as tmp:
        for key, methods in trained.shared_by.items():
            d = unit_dir(tmp, key)
            d.mkdir(parents=True)
            torch.save({**finals[key], "shared_by": methods}, d / CHECKPOINT_FILE)
            _write_history(d / HISTORY_FILE, finals[key]["history"])
        write_json(tmp / ROWS_FILE, trained.model_dump(mode="json"))


def _write_history(path: Path, history: list[dict[str, Any]]) -> None:
    with open(path, "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=HISTORY_FIELDS, extrasaction="ignore")
        w.writeheader()
        w.writerows(history)


def _log_unit_files(c, run_id: str, d: Path, u: RunSpec, history: list[dict[str, Any]]) -> None:
    """The unit's checkpoint (what evaluation rebuilds the net from), history and curves, into its run."""
    c.log_artifact(run_id, str(d / CHECKPOINT_FILE), "checkpoint")  # "model" is the logged MLflow model's name
    c.log_artifact(run_id, str(d / HISTORY_FILE))
    fig = training_curves({f"seed {u.seed}": history}, f"{u.method} (seed {u.seed})")
    c.log_figure(run_id, fig, "curves.png")
    plt.close(fig)
