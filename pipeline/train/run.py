"""Driver of the training stage: every (method, seed) unit of one data set, on Ray Train, recorded in MLflow.

The grid's units are dealt into lanes, one Ray Train job per lane, and the lanes' jobs run side by side, as
many as the cluster has room for (``compute.concurrency``): on a GPU cluster each job takes ``num_workers``
GPUs, so 8 GPUs with one worker per job train 8 units at once. Why lanes rather than one job per unit:
starting a Ray Train job costs ~50 s on a 2-core machine (measured: ray.init ~7 s, controller and worker
start-up ~25 s, DDP's first use ~4 s, driver imports ~8 s), which would dominate the small default grid.
Units keep their own identity all the same: one content key, one MLflow run, one output directory each;
finished units are reused from the unit store, so changing one method's settings retrains only that method;
and an interrupted unit resumes from its latest checkpoint whichever lane or job it ran in before
(``resume_points``).
"""

from __future__ import annotations

import csv
import os
import time
from pathlib import Path
from typing import Any

import torch

from pipeline import tracking
from pipeline.compute import Workers, check_workers_before_start, ray_session, resolve_workers, storage_path
from pipeline.config import Params, config_hash
from pipeline.io import atomic_path, filesystem, join, read_json, write_json
from pipeline.provenance import provenance
from pipeline.spec import DataRef, RunSpec, build_spec, data_ref, shared
from pipeline.train.store import UnitStore

HISTORY_FIELDS = (
    "epoch",
    "train_loss",
    "train_top1",
    "val_loss",
    "val_top1",
    "val_top5",
    "lr",
    "epoch_time_s",
    "images_per_s",
)


def fit(units: list[RunSpec], params: Params, name: str, loop_config: dict[str, Any], w: Workers):
    """Run ``train_worker`` over ``units`` as one Ray Train job; returns the Ray ``Result``. Needs a Ray session.

    JPEG data sets (ImageNet) are streamed through Ray Data: shards are read with ``read_parquet``, decoded
    and augmented by Ray Data tasks, and split across the workers; CIFAR-sized sets are held in memory."""
    from ray.train import CheckpointConfig, FailureConfig, LoggingConfig, RunConfig, ScalingConfig
    from ray.train.torch import TorchTrainer

    from pipeline.train.worker import train_worker

    datasets = streamed_datasets(units[0].dataset.path)
    if datasets:
        print(f"train@{units[0].dataset.name}: streaming the JPEG shards through Ray Data", flush=True)
    trainer = TorchTrainer(
        train_worker,
        train_loop_config={
            **loop_config,
            "units": [u.model_dump() for u in units],
            "threads": w.threads,
            "fast_path": params.compute.fast_path.model_dump(),
            "stream": bool(datasets),
        },
        datasets=datasets,
        scaling_config=ScalingConfig(
            num_workers=w.num_workers, use_gpu=w.use_gpu, resources_per_worker={"CPU": w.cpus_per_worker}
        ),
        run_config=RunConfig(
            name=name,
            storage_path=storage_path(params.compute),
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


def resume_points(storage: str, dataset: str, keys: list[str]) -> dict[str, str]:
    """The latest checkpoint of each unit in ``keys`` left by earlier training jobs of ``dataset`` in the run
    storage: {key: checkpoint URI}. Read from the small ``unit.json`` beside each checkpoint, so a unit
    resumes whichever job, lane or concurrency it was trained in before."""
    import json

    import pyarrow.fs as pafs

    from pipeline.train.loop import UNIT_FILE

    fs, base = filesystem(storage)
    want, best = set(keys), {}
    try:
        jobs = fs.get_file_info(pafs.FileSelector(base, allow_not_found=True))
    except OSError:
        return {}
    for job in jobs:
        if job.type != pafs.FileType.Directory or not job.base_name.startswith(f"{dataset}-train-"):
            continue
        for ck in fs.get_file_info(pafs.FileSelector(job.path)):
            if ck.type != pafs.FileType.Directory or not ck.base_name.startswith("checkpoint_"):
                continue
            try:
                with fs.open_input_stream(join(ck.path, UNIT_FILE)) as f:
                    info = json.loads(f.read())
            except (OSError, ValueError):  # an older or half-written checkpoint: not a resume point
                continue
            if info.get("key") in want and info["epoch"] > best.get(info["key"], (0, ""))[0]:
                best[info["key"]] = (info["epoch"], ck.path)
    uri = storage if "://" in storage else None
    return {k: (_with_scheme(uri, p) if uri else p) for k, (_, p) in best.items()}


def _with_scheme(uri: str, path: str) -> str:
    return f"{uri.split('://', 1)[0]}://{path}"


def streamed_datasets(data_dir: str) -> dict[str, Any]:
    """Ray Datasets for a JPEG data set ({} for in-memory formats): augmented train, plain test."""
    from pipeline.data.imagenet import ray_dataset
    from pipeline.data.preprocess import load_manifest

    man = load_manifest(data_dir)
    if man.get("format") != "jpeg":
        return {}
    return {"train": ray_dataset(data_dir, "train", man, augment=True), "val": ray_dataset(data_dir, "test", man)}


def streaming(data_dir: str | Path) -> bool:
    from pipeline.data.preprocess import load_manifest

    return load_manifest(data_dir).get("format") == "jpeg"


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
    """Each unit once (tracks share the units a search did not change), in plan order."""
    return list({u.key(): u for units in plan.values() for u in units}.values())


def unit_dir(root: str | Path, u: RunSpec, track: str) -> Path:
    return Path(root) / u.method / track / f"seed{u.seed}"


def curve_name(u: RunSpec, track: str) -> str:
    return f"{u.method}-seed{u.seed}.csv" if track == "recipe" else f"{u.method}-{track}-seed{u.seed}.csv"


def _write_unit(d: Path, final: dict[str, Any], mlflow_run: dict[str, str]) -> None:
    """A unit's outputs depend on the unit alone (not on when the stage ran), so reused units rewrite
    identical files and DVC does not re-evaluate them."""
    d.mkdir(parents=True)
    torch.save(final, d / "model.pt")
    write_json(d / "mlflow.json", mlflow_run)
    with open(d / "history.csv", "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=HISTORY_FIELDS, extrasaction="ignore")
        w.writeheader()
        w.writerows(final["history"])


def _mlflow_runs(
    params: Params, units: list[RunSpec], todo: set[str], recipe_keys: set[str]
) -> tuple[Any, str, dict[str, str]]:
    c = tracking.client()
    dataset = units[0].dataset
    exp = tracking.get_experiment(c, tracking.experiment_name(params.mlflow.experiment_prefix, dataset.name))
    for run_id in tracking.close_dead_runs(c, exp):
        print(f"train@{dataset.name}: MLflow run {run_id} was left RUNNING by a process that died: marked FAILED")
    commit = provenance()["git"]["commit"]
    runs = {}
    for u in units:
        key = u.key()
        tags = tracking.tags_for(
            run_key=key,
            seed=u.seed,
            dataset=dataset.name,
            method=u.method,
            model=u.model,
            stage="train",
            git_commit=commit,
            data_sha256=dataset.sha256,
        )
        track = "" if key in recipe_keys else "searched | "
        name = f"{params.method(u.method).label} | {track}seed {u.seed}"
        runs[key], _ = tracking.find_or_create_run(
            c, exp, name, tags, {**u.model_dump(), "run_key": key}, reopen=key in todo
        )
    return c, exp, runs


def _run_lanes(
    lanes: list[list[RunSpec]],
    params: Params,
    dataset: str,
    w: Workers,
    runs: dict[str, str],
    resume: dict[str, str],
    origin: dict[str, Any],
) -> list[BaseException]:
    """One Ray Train job per lane, all at once (each from its own driver thread); the errors, if any.

    Ray schedules the jobs' worker groups as resources free up, so on a cluster without room for all lanes
    they still complete, fewer at a time."""
    from concurrent.futures import ThreadPoolExecutor

    def one(lane: list[RunSpec]) -> None:
        job = f"{dataset}-train-{config_hash([u.key() for u in lane])}"
        cfg = {
            "store": storage_path(params.compute),
            "mlflow_uri": tracking.tracking_uri(),
            "mlflow_runs": {u.key(): runs[u.key()] for u in lane},
            "resume": {u.key(): resume[u.key()] for u in lane if u.key() in resume},
            "origin": {**origin, "job": job},
        }
        fit(lane, params, job, cfg, w)

    with ThreadPoolExecutor(len(lanes), thread_name_prefix="lane") as pool:
        futures = [pool.submit(one, lane) for lane in lanes]
    return [e for f in futures if (e := f.exception()) is not None]


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
    ``metrics_file`` and one learning curve CSV per (track, method, seed) to ``curves_dir``."""
    t0 = time.time()
    check_workers_before_start(params.compute)
    plan = plan_units(params, data_ref(dataset, data_dir), read_json(tuned_file)["methods"])
    units = _unique(plan)
    keys = [u.key() for u in units]
    store = UnitStore(storage_path(params.compute), dataset)
    todo = [u for u, k in zip(units, keys, strict=True) if not store.has(k)]
    recipe_keys = {u.key() for u in plan["recipe"]}
    c, exp, runs = _mlflow_runs(params, units, {u.key() for u in todo}, recipe_keys)
    print(
        f"train@{dataset}: {len(units)} units ({', '.join(f'{len(v)} {k}' for k, v in plan.items())}), "
        f"{len(units) - len(todo)} already in the unit store, {len(todo)} to train",
        flush=True,
    )
    lanes_run, errors = 0, []
    if todo:
        data = shared(todo[0].dataset, params.compute.shared_data)  # where the workers read it
        todo = [u.model_copy(update={"dataset": data}) for u in todo]
        origin = {"git": provenance()["git"]}
        resume = resume_points(storage_path(params.compute), dataset, [u.key() for u in todo])
        # streamed data needs CPUs beside the training workers' for its decoding tasks
        extra = 2 * params.compute.cpus_per_worker if streaming(data_dir) else 0
        try:
            with ray_session(num_cpus=(os.cpu_count() or 1) + extra if extra else None) as res:
                w = resolve_workers(params.compute, res.get("CPU", 0), res.get("GPU", 0), "the Ray cluster")
                lanes = split_lanes(todo, lane_count(params, res, w, len(todo)))
                lanes_run = len(lanes)
                print(
                    f"train@{dataset}: {len(lanes)} job(s) side by side, {w.num_workers} worker(s) each"
                    f"{' on GPUs' if w.use_gpu else ''}; resuming {len(resume)} unit(s) from checkpoints",
                    flush=True,
                )
                errors = _run_lanes(lanes, params, dataset, w, runs, resume, origin)
        finally:  # a unit that did not finish (error, interrupt, SIGTERM): its run ends here, marked so
            for u in todo:
                if not store.has(u.key()):
                    tracking.finish(c, runs[u.key()], "FAILED")
        if errors:
            raise errors[0]

    from pipeline.plots import training_curves

    finals = {k: store.load(k) for k in keys}
    with atomic_path(out_dir) as tmp, atomic_path(curves_dir) as ctmp:
        ctmp.mkdir()
        for track, track_units in plan.items():
            for u in track_units:
                key = u.key()
                record = {"run_id": runs[key], "experiment_id": exp, "key": key}
                _write_unit(unit_dir(tmp, u, track), finals[key], record)
                with open(ctmp / curve_name(u, track), "w", newline="") as f:
                    w = csv.DictWriter(f, fieldnames=HISTORY_FIELDS, extrasaction="ignore")
                    w.writeheader()
                    w.writerows(finals[key]["history"])
    # per-(method, seed) accuracy is the evaluate stage's metrics; here, what this stage did and its speed
    rates = [h["images_per_s"] for u in todo for h in finals[u.key()]["history"]]
    metrics = {
        "units_trained": len(todo),
        "units_reused": len(units) - len(todo),
        "jobs_side_by_side": lanes_run,
        "wall_time_s": round(time.time() - t0, 1),
        "train_images_per_s": round(sum(rates) / len(rates), 1) if rates else None,
    }
    write_json(metrics_file, metrics)

    for u in todo:
        key, run_id = u.key(), runs[u.key()]
        d = unit_dir(out_dir, u, "recipe" if key in recipe_keys else "searched")
        c.log_artifact(run_id, str(d / "model.pt"), "model")
        c.log_artifact(run_id, str(d / "history.csv"))
        fig = training_curves(
            {f"seed {u.seed}": finals[key]["history"]}, f"{params.method(u.method).label} (seed {u.seed})"
        )
        c.log_figure(run_id, fig, "curves.png")
        tracking.finish(c, run_id)
    return metrics
