"""Ray adapters of the training loop (``pipeline.train.loop``): ``train_worker`` runs units under Ray Train
(checkpoint every epoch, resume, MLflow per unit) and ``tune_trial`` runs one search trial under Ray Tune
(report every epoch, so ASHA can stop it). They wire runtimes and records; what a unit computes is in
``pipeline.train.loop``.
"""

from __future__ import annotations

import json
import logging
import os
import tempfile
from typing import Any

import torch

from pipeline import tracking
from pipeline.config import FastPathCfg
from pipeline.provenance import provenance
from pipeline.spec import RunSpec
from pipeline.train.engine import Shard, StreamData
from pipeline.train.loop import STATE_FILE, UNIT_FILE, load_state, train_units
from pipeline.train.store import UnitStore


def _loggers(mlflow_uri: str | None, runs: dict[str, str]):
    """unit key -> its MLflow epoch log (None for a unit without a run)."""
    c = tracking.client(mlflow_uri) if runs else None
    return lambda key: tracking.EpochLog(c, runs[key]) if c is not None and key in runs else None


def _nodes(shard: Shard) -> list[dict[str, str]]:
    """Where each rank runs (Ray node id, host), in rank order: the record shows how a job was placed."""
    import socket

    import ray

    me = {"node_id": ray.get_runtime_context().get_node_id(), "host": socket.gethostname()}
    if shard.world_size == 1:
        return [me]
    out: list[Any] = [None] * shard.world_size
    torch.distributed.all_gather_object(out, me)
    return out


def quiet_ray_logs() -> None:
    """Ray Train sets the worker's root logger to INFO, and Ray Train logs every ``report`` there (a
    540-character "Reporting training result" line per epoch, from a logger named after its file): keep the
    root at WARNING. This process's own lines are prints, which ``RAY_TRAIN_ENABLE_PRINT_PATCH=0``
    (``pipeline.compute.ray_session``) keeps out of logging, so each reaches the terminal once."""
    logging.getLogger().setLevel(logging.WARNING)


def train_worker(config: dict[str, Any]) -> None:
    """Ray Train entry point. ``config``: units (RunSpec dicts), store (storage path), mlflow_uri,
    mlflow_runs {unit key: run_id}, resume {unit key: checkpoint URI}, threads, origin, fast_path, stream."""
    import ray.train
    import ray.train.torch

    quiet_ray_logs()
    units = [RunSpec.model_validate(u) for u in config["units"]]
    torch.set_num_threads(config.get("threads", 1))
    ctx = ray.train.get_context()
    shard = Shard(ctx.get_world_rank(), ctx.get_world_size())
    nodes = _nodes(shard)
    me = nodes[shard.rank]
    print(f"worker rank {shard.rank}/{shard.world_size} pid {os.getpid()} on {me['host']} node {me['node_id'][:8]}")
    ck = ray.train.get_checkpoint()  # this job's latest: set after a worker-group restart
    own = None
    if ck is not None:
        with ck.as_directory() as d:
            own = load_state(d)
    found = config.get("resume") or {}  # the latest checkpoint of each unit in earlier jobs (driver's index)

    def resume(key: str) -> dict[str, Any] | None:
        if own is not None and own["key"] == key:
            return own
        return load_state(found[key]) if key in found else None

    def report(metrics: dict[str, Any], state: dict[str, Any] | None) -> None:
        with tempfile.TemporaryDirectory() as d:
            ckpt = None
            if shard.rank == 0 and state is not None:
                torch.save(state, os.path.join(d, STATE_FILE))
                # beside the state, which unit and epoch it is: the driver's resume index reads only this
                with open(os.path.join(d, UNIT_FILE), "w") as f:
                    json.dump({"key": state["key"], "epoch": len(state["history"])}, f)
                ckpt = ray.train.Checkpoint.from_directory(d)
            ray.train.report(metrics, checkpoint=ckpt)  # a barrier: every rank, every epoch

    streams = None
    if config.get("stream"):
        streams = (StreamData(ray.train.get_dataset_shard("train")), StreamData(ray.train.get_dataset_shard("val")))
    train_units(
        units,
        shard,
        ray.train.torch.get_device(),
        report,
        store=UnitStore(config["store"], units[0].dataset.name),
        resume=resume,
        loggers=_loggers(config["mlflow_uri"], config.get("mlflow_runs") or {}),
        origin=provenance(**config.get("origin", {}), nodes=nodes),
        fast_path=FastPathCfg.model_validate(config.get("fast_path", {})),
        streams=streams,
    )


def tune_trial(spec: RunSpec, threads: int, mlflow_uri: str, run_id: str, fast_path: FastPathCfg) -> None:
    """Ray Tune entry point: train one unit in the trial's own process, reporting each epoch to Tune
    (ASHA stops weak trials between epochs). Nothing is checkpointed: a search trial is cheap to redo.

    The trial's MLflow run ``run_id`` is ended FINISHED just before its last epoch is reported: Tune stops a
    trial that reached ``max_t`` right after that report, so later work in this process may never run. (The
    search then sets every trial run's status from Tune's results: ``pipeline.tune``.)"""
    from ray import tune

    quiet_ray_logs()
    torch.set_num_threads(threads)
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    c = tracking.client(mlflow_uri)

    def report(metrics: dict[str, Any], state: dict[str, Any] | None) -> None:
        if metrics.get("epoch") == spec.train.epochs:  # logged already (the loop logs before it reports)
            tracking.finish(c, run_id)
        tune.report(metrics)

    train_units(
        [spec],
        Shard(),
        device,
        report,
        loggers=_loggers(mlflow_uri, {spec.key(): run_id}),
        fast_path=fast_path,
    )
