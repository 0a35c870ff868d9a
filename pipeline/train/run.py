"""Driver of the training stage: every (method, seed) unit of one data set, on Ray Train, recorded in MLflow.

The grid's units are dealt into lanes, one Ray Train job per lane, and the lanes' jobs run side by side, as
many as the cluster has room for (``compute.concurrency``): on a GPU cluster each job takes ``num_workers``
GPUs, so 8 GPUs with one worker per job train 8 units at once. Why lanes rather than one job per unit:
starting a Ray Train job costs ~50 s on a 2-core machine (measured: ray.init ~7 s, controller and worker
start-up ~25 s, DDP's first use ~4 s, driver imports ~8 s), which would dominate the small default grid.
Units keep their own identity all the same: one content key, one MLflow run, one output directory each;
finished units are reused from the unit store, so changing one method's settings retrains only that method;
and an interrupted unit resumes from its latest checkpoint whichever lane or job it ran in before
(``pipeline.train.checkpoint.resume_points``).
"""

from __future__ import annotations

import csv
import logging
import os
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from ray.train import CheckpointConfig, DataConfig, FailureConfig, LoggingConfig, RunConfig, ScalingConfig
from ray.train.torch import TorchTrainer

from pipeline import tracking
from pipeline.compute import Workers, check_workers_before_start, ray_session, resolve_workers, storage_path
from pipeline.config import Params, config_hash
from pipeline.data.manifest import load_manifest, ray_dataset, stream_options
from pipeline.io import atomic_path, read_json, write_json
from pipeline.plan import Stage, plan_lines
from pipeline.plots import plt, training_curves
from pipeline.progress import PlannedUnit, UnitProgress, relay
from pipeline.provenance import git_commit
from pipeline.spec import DataRef, RunSpec, build_spec, data_ref, shared
from pipeline.tracking import UnitRun
from pipeline.train.checkpoint import HISTORY_FIELDS, UnitRecord, resume_points
from pipeline.train.job import TrainJob, dataset_input, run_params
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


def plan_units(params: Params, data: DataRef, tuned: dict[str, Any]) -> dict[str, list[RunSpec]]:
    """Every (method, seed) of the grid per track: ``recipe`` (the shared recipe, the headline tables) and,
    when a search ran, ``searched`` (each method at what its search adopted; a method whose search kept the
    recipe, or that was not searched, is the very same unit as in ``recipe``)."""
    plan = {"recipe": [build_spec(params, m, data, s) for m in params.grid.methods for s in params.grid.seeds]}
    if tuned:
        plan["searched"] = [
            build_spec(params, m, data, s, tuned[m]["chosen"] if m in tuned else {})
            for m in params.grid.methods
            for s in params.grid.seeds
        ]
    return plan


def _unique(plan: dict[str, list[RunSpec]]) -> list[RunSpec]:
    """Each unit once, as its first row in plan order: tracks share the units a search did not change, and
    methods that resolve to the same network, recipe and start share theirs (``RunSpec.identity``)."""
    first: dict[str, RunSpec] = {}
    for units in plan.values():
        for u in units:
            first.setdefault(u.key(), u)
    return list(first.values())


def sharing(plan: dict[str, list[RunSpec]]) -> dict[str, list[str]]:
    """unit key -> the methods whose rows it is, in plan order (one method for most units; ``resnet`` and
    ``no_attention`` for the ablation of a ResNet-backbone net, which *is* that ResNet)."""
    out: dict[str, list[str]] = {}
    for units in plan.values():
        for u in units:
            methods = out.setdefault(u.key(), [])
            if u.method not in methods:
                methods.append(u.method)
    return out


def unit_dir(root: str | Path, u: RunSpec, track: str) -> Path:
    return Path(root) / u.method / track / f"seed{u.seed}"


def curve_name(u: RunSpec, track: str) -> str:
    return f"{u.method}-seed{u.seed}.csv" if track == "recipe" else f"{u.method}-{track}-seed{u.seed}.csv"


def run_name(method: str, seed: int, searched_only: bool, also: list[str] | None = None) -> str:
    """A unit's MLflow run name: method and seed first, so the UI's cut-off runs column still shows both;
    then the other methods whose rows the unit is (``also``)."""
    shared = f" (also {', '.join(also)})" if also else ""
    return f"{method} seed {seed}" + (" (searched)" if searched_only else "") + shared


def unit_runs(
    params: Params, exp: str, units: list[RunSpec], recipe_keys: set[str], commit: str, shared: dict[str, list[str]]
) -> dict[str, UnitRun]:
    """unit key -> where its MLflow run is and what it is called (the worker opens it as the unit starts).
    ``shared``: unit key -> the methods whose rows it is (``sharing``), tagged ``methods`` on the run."""
    out = {}
    for u in units:
        key = u.key()
        methods = shared.get(key, [u.method])
        tags = tracking.tags_for(
            run_key=key,
            seed=u.seed,
            dataset=u.dataset.name,
            method=u.method,
            methods=",".join(methods),
            label=" = ".join(params.method(m).label for m in methods),
            model=u.model,
            track="recipe" if key in recipe_keys else "searched",
            stage="train",
            git_commit=commit,
            data_sha256=u.dataset.sha256,
        )
        tags |= tracking.source_tags(f"train@{u.dataset.name}", commit)
        name = run_name(u.method, u.seed, key not in recipe_keys, [m for m in methods if m != u.method])
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
    )


def train_on_ray(params: Params, job: TrainJob, data_dir: str | Path, *, stage: Stage = "train") -> int:
    """Train ``job``'s units on a Ray session, as many jobs side by side as fit; the number of jobs. Raises the
    first job's error. A unit that did not finish (an error, an interrupt, SIGTERM) has its run ended FAILED.
    First the plan of ``stage`` (``pipeline.plan``: units, epochs, device-hours and wall time from a probe on
    the workers' device) is logged, before anything is spent."""
    dataset = job.units[0].dataset.name
    # streamed data needs CPUs beside the training workers' for its decoding tasks
    extra = 2 * params.compute.cpus_per_worker if streaming(data_dir) else 0
    store, c = UnitStore(job.store, dataset), tracking.client(job.mlflow_uri)
    planned = [PlannedUnit(u.key(), u.method, u.seed, u.train.epochs) for u in job.units]
    progress = UnitProgress(f"train@{dataset}", planned)
    try:
        with ray_session(num_cpus=(os.cpu_count() or 1) + extra if extra else None) as res:
            w = resolve_workers(params.compute, res.get("CPU", 0), res.get("GPU", 0), "the Ray cluster")
            seen = {**res, "CPU": res.get("CPU", 0) - extra}  # the decoding CPUs added above train nothing
            stages = (stage, "searched") if stage == "train" and params.searched else (stage,)
            for line in plan_lines(params, [dataset], data_dirs={dataset: data_dir}, resources=seen, stages=stages):
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


def _write_unit(d: Path, final: dict[str, Any], mlflow_run: dict[str, str]) -> None:
    """A unit's outputs depend on the unit alone (not on when the stage ran), so reused units rewrite
    identical files and DVC does not re-evaluate them."""
    d.mkdir(parents=True)
    torch.save(final, d / "model.pt")
    write_json(d / "mlflow.json", mlflow_run)
    _write_history(d / "history.csv", final["history"])


def _write_history(path: Path, history: list[dict[str, Any]]) -> None:
    with open(path, "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=HISTORY_FIELDS, extrasaction="ignore")
        w.writeheader()
        w.writerows(history)


@dataclass(frozen=True)
class TrainPlan:
    """The train stage resolved once: its units by track, each unit once, which are in the unit store and
    which to train, and where each unit's MLflow run is."""

    dataset: str
    tracks: dict[str, list[RunSpec]]  # recipe (and searched): every (method, seed) of the grid: the rows
    units: list[RunSpec]  # each unit once (rows of one network, recipe and start share it), in plan order
    shared: dict[str, list[str]]  # unit key -> the methods whose rows it is
    store: UnitStore
    todo: list[RunSpec]  # the units not in the store yet
    experiment: str
    refs: dict[str, UnitRun]  # unit key -> its MLflow run
    git: dict[str, Any]

    def track_of(self, u: RunSpec) -> str:
        return self.refs[u.key()].tags["track"]  # decided once, in unit_runs


def plan_stage(params: Params, dataset: str, data_dir: str | Path, tuned_file: str | Path, c) -> TrainPlan:
    """The train stage's ``TrainPlan``; MLflow runs a dead process left RUNNING are closed FAILED first."""
    tracks = plan_units(params, data_ref(dataset, data_dir), read_json(tuned_file)["methods"])
    units = _unique(tracks)
    store = UnitStore(storage_path(params.compute), dataset)
    exp = tracking.open_experiment(
        c, tracking.experiment_name(params.mlflow.experiment_prefix, dataset), f"train@{dataset}"
    )
    git = git_commit()
    recipe_keys = {u.key() for u in tracks["recipe"]}
    shared = sharing(tracks)
    return TrainPlan(
        dataset=dataset,
        tracks=tracks,
        units=units,
        shared=shared,
        store=store,
        todo=[u for u in units if not store.has(u.key())],
        experiment=exp,
        refs=unit_runs(params, exp, units, recipe_keys, git["commit"], shared),
        git=git,
    )


def train_dataset(
    params: Params,
    dataset: str,
    data_dir: str | Path,
    tuned_file: str | Path,
    out_dir: str | Path,
    metrics_file: str | Path,
    curves_dir: str | Path,
) -> dict[str, Any]:
    """Train (or reuse) every unit of the grid for ``dataset``. Writes ``out_dir/<method>/<track>/seed<k>/``
    (model.pt, history.csv, mlflow.json: run, experiment and unit key), what this stage did to
    ``metrics_file`` and one learning curve CSV per (track, method, seed) to ``curves_dir``; then the new
    units' files into their MLflow runs."""
    t0 = time.time()
    check_workers_before_start(params.compute)
    c = tracking.client()
    plan = plan_stage(params, dataset, data_dir, tuned_file, c)
    n, todo = len(plan.units), plan.todo
    rows = sum(len(v) for v in plan.tracks.values())
    shares = ", ".join(f"{len(v)} {k}" for k, v in plan.tracks.items())
    log.info(
        "train@%s: %d rows (%s) resolve to %d units%s; %d already in the unit store, %d to train",
        dataset,
        rows,
        shares,
        n,
        _shared_note(plan.shared),
        n - len(todo),
        len(todo),
    )
    lanes = train_on_ray(params, job_for(params, todo, plan.refs, {"git": plan.git}), data_dir) if todo else 0
    finals = {u.key(): plan.store.load(u.key()) for u in plan.units}
    runs = {
        u.key(): tracking.settle_unit_run(
            c, plan.refs[u.key()], run_params(u), finals[u.key()], dataset=dataset_input(u.dataset)
        )
        for u in plan.units
    }
    _write_outputs(plan, finals, runs, Path(out_dir), Path(curves_dir))
    # per-(method, seed) accuracy is the evaluate stage's metrics; here, what this stage did and its speed
    rates = [h["images_per_s"] for u in todo for h in finals[u.key()]["history"]]
    metrics = {
        "rows": rows,
        "units": n,
        "units_trained": len(todo),
        "units_reused": n - len(todo),
        "jobs_side_by_side": lanes,
        "wall_time_s": round(time.time() - t0, 1),
        "train_images_per_s": round(sum(rates) / len(rates), 1) if rates else None,
    }
    write_json(metrics_file, metrics)
    for u in todo:
        d = unit_dir(out_dir, u, plan.track_of(u))
        _log_unit_files(c, runs[u.key()], d, u, finals[u.key()]["history"])
    return metrics


def _shared_note(shared: dict[str, list[str]]) -> str:
    """``" (resnet = no_attention: the same network, recipe and start, trained once)"``, or "" if none."""
    groups = list(dict.fromkeys(" = ".join(ms) for ms in shared.values() if len(ms) > 1))
    return f" ({'; '.join(groups)}: the same network, recipe and start, trained once)" if groups else ""


def row_record(final: UnitRecord, u: RunSpec, methods: list[str]) -> UnitRecord:
    """What ``model.pt`` of row ``u`` holds: the unit's record with the row's own resolved settings, so
    evaluation rebuilds the net the row names (the same network: the unit key says so), the data set where the
    workers read it, and the methods whose rows share the unit."""
    return {**final, "spec": {**u.model_dump(), "dataset": final["spec"]["dataset"]}, "shared_by": methods}


def _write_outputs(
    plan: TrainPlan, finals: dict[str, UnitRecord], runs: dict[str, str], out_dir: Path, curves_dir: Path
) -> None:
    """The DVC outputs: every row of every track (model.pt, history.csv, mlflow.json) and its curve CSV."""
    with atomic_path(out_dir) as tmp, atomic_path(curves_dir) as ctmp:
        ctmp.mkdir()
        for track, track_units in plan.tracks.items():
            for u in track_units:
                key = u.key()
                record = {"run_id": runs[key], "experiment_id": plan.experiment, "key": key}
                _write_unit(unit_dir(tmp, u, track), row_record(finals[key], u, plan.shared[key]), record)
                _write_history(ctmp / curve_name(u, track), finals[key]["history"])


def _log_unit_files(c, run_id: str, d: Path, u: RunSpec, history: list[dict[str, Any]]) -> None:
    """The unit's checkpoint (what evaluation rebuilds the net from), history and curves, into its run."""
    c.log_artifact(run_id, str(d / "model.pt"), "checkpoint")  # "model" is the logged MLflow model's name
    c.log_artifact(run_id, str(d / "history.csv"))
    fig = training_curves({f"seed {u.seed}": history}, f"{u.method} (seed {u.seed})")
    c.log_figure(run_id, fig, "curves.png")
    plt.close(fig)
