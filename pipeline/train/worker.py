"""Ray adapters of the training loop (``pipeline.train.loop``): ``train_worker`` runs units under Ray Train
(a checkpoint every ``compute.checkpoint_every_s``, resume, MLflow per unit) and ``tune_trial`` runs one search
trial under Ray Tune (report every epoch, so ASHA can stop it). They wire runtimes and records; what a unit
computes is in ``pipeline.train.loop``.
"""

from __future__ import annotations

import logging
import os
import socket
import tempfile
import time
from typing import Any

import ray
import ray.train
import ray.train.torch
import torch
from ray import tune

from pipeline import serving, tracking
from pipeline.config import FastPathCfg
from pipeline.data.manifest import first_images, load_manifest
from pipeline.events import WorkerStarted
from pipeline.progress import Emitter
from pipeline.provenance import provenance
from pipeline.spec import RunSpec
from pipeline.train.checkpoint import CheckpointError, load_state, write_state
from pipeline.train.engine import Shard, StreamData
from pipeline.train.job import TrainJob, dataset_input, run_params
from pipeline.train.loop import Loggers, build_model, train_units
from pipeline.train.store import UnitStore

log = logging.getLogger(__name__)


def _trial_log(mlflow_uri: str, run_id: str) -> Loggers:
    """A search trial's epoch log: its run was made by the trial and is ended by the search."""
    c = tracking.client(mlflow_uri)
    return lambda key: tracking.EpochLog(c, run_id)


class UnitLog(tracking.EpochLog):
    """A training unit's run (``tracking.EpochLog``) that, as the unit finishes, also logs the trained net as
    the run's MLflow model (``pipeline.serving``): here, in the worker that made it, beside the other lanes'
    training, rather than one after another in the evaluate stage, which registers it (and logs it itself
    only for a run that has none: a failure here costs a warning, not the unit)."""

    def __init__(self, c, run_id: str, *, spec: RunSpec, store: UnitStore, experiment_id: str, **kw: Any):
        super().__init__(c, run_id, owns_run=True, **kw)
        self.spec, self.store, self.experiment_id = spec, store, experiment_id

    def end(self, status: str = "FINISHED", end_time_ms: int | None = None) -> None:
        ended = end_time_ms or int(time.time() * 1000)  # the run spans the unit's training, not the logging
        if status == "FINISHED":
            try:
                self._log_model()
            except Exception as e:  # the MLflow store or its artifact store refusing: the evaluate stage retries
                log.warning("%s seed %d: its model was not logged to MLflow here (%s)", self.spec.method,
                            self.spec.seed, " ".join(str(e).split())[:300])  # fmt: skip
        super().end(status, ended)

    def _log_model(self) -> None:
        if serving.logged_model(self.c, self.experiment_id, self.run_id) is not None:
            return
        net = build_model(self.spec)
        net.load_state_dict(self.store.load(self.spec.key())["model"])  # as the unit was stored, on the CPU
        data = self.spec.dataset.path
        example = first_images(data, "test", 2)
        serving.log_unit_model(self.c, self.run_id, self.experiment_id, net.eval(), self.spec, example,
                               load_manifest(data).classes)  # fmt: skip


def _unit_runs(job: TrainJob) -> Loggers:
    """unit key -> its MLflow run, opened (found by its key, or made) as the unit starts and ended by the loop
    as it ends, with the trained net logged as its model (``job.log_models``); the machine sampled into it
    meanwhile. None for a unit without a run."""
    c = tracking.client(job.mlflow_uri) if job.runs else None
    specs = {u.key(): u for u in job.units}
    store = UnitStore(job.store, job.units[0].dataset.name)

    def open_(key: str) -> tracking.EpochLog | None:
        if c is None or key not in job.runs:
            return None
        spec, ref = specs[key], job.runs[key]
        run_id = tracking.open_run(c, ref, run_params(spec), dataset=dataset_input(spec.dataset))
        if not job.log_models:
            return tracking.EpochLog(c, run_id, owns_run=True, system_metrics_s=job.system_metrics_s)
        return UnitLog(c, run_id, spec=spec, store=store, experiment_id=ref.experiment_id,
                       system_metrics_s=job.system_metrics_s)  # fmt: skip

    return open_


def _nodes(shard: Shard) -> list[dict[str, str]]:
    """Where each rank runs (Ray node id, host), in rank order: the record shows how a job was placed."""
    me = {"node_id": ray.get_runtime_context().get_node_id(), "host": socket.gethostname()}
    if shard.world_size == 1:
        return [me]
    out: list[Any] = [None] * shard.world_size
    torch.distributed.all_gather_object(out, me)
    return out


def quiet_ray_logs() -> None:
    """Ray Train sets the worker's root logger to INFO, and Ray Train logs every ``report`` there (a
    540-character "Reporting training result" line per epoch, from a logger named after its file): keep the
    root at WARNING. Progress reaches the terminal as events through the stage's driver
    (``pipeline.progress``), never as this process's output."""
    logging.getLogger().setLevel(logging.WARNING)


def train_worker(config: dict[str, Any]) -> None:
    """Ray Train entry point. ``config``: ``job`` (a ``TrainJob``, dumped) and ``progress`` (the driver's
    progress hub, ``pipeline.progress.relay``; None: no progress events)."""
    quiet_ray_logs()
    job = TrainJob.model_validate(config["job"])
    emit = Emitter(config["progress"]) if config.get("progress") is not None else None
    torch.set_num_threads(job.threads)
    ctx = ray.train.get_context()
    shard = Shard(ctx.get_world_rank(), ctx.get_world_size())
    nodes = _nodes(shard)
    me = nodes[shard.rank]
    if emit is not None:
        emit(WorkerStarted(shard.rank, shard.world_size, os.getpid(), me["host"], me["node_id"]))
    ck = ray.train.get_checkpoint()  # this job's latest: set after a worker-group restart
    own = None
    if ck is not None:
        with ck.as_directory() as d:
            try:
                own = load_state(d)
            except (CheckpointError, OSError) as e:  # the driver's resume points are checked; Ray's own is not
                log.warning("Ray's latest checkpoint of this job is unreadable (%s); resuming without it", e)

    def resume(key: str) -> dict[str, Any] | None:
        """The later of this job's own latest checkpoint of the unit (after a worker-group restart; Ray's record of
        it may lag, as when the stage was killed before Ray's controller registered the newest ones) and the
        latest readable one the driver found in the run storage (``TrainJob.resume``: any earlier job's)."""
        mine = own if own is not None and own["key"] == key else None
        found = load_state(job.resume[key]) if key in job.resume else None
        return max((s for s in (mine, found) if s is not None), key=lambda s: len(s["history"]), default=None)

    def report(metrics: dict[str, Any], state: dict[str, Any] | None) -> None:
        with tempfile.TemporaryDirectory() as d:
            ckpt = None
            if shard.rank == 0 and state is not None:
                write_state(d, state)
                ckpt = ray.train.Checkpoint.from_directory(d)
            ray.train.report(metrics, checkpoint=ckpt)  # a barrier: every rank, each time it is due

    streams = None
    if job.stream:
        streams = (StreamData(ray.train.get_dataset_shard("train")), StreamData(ray.train.get_dataset_shard("val")))
    try:
        train_units(
            job.units,
            shard,
            ray.train.torch.get_device(),
            report,
            store=UnitStore(job.store, job.units[0].dataset.name),
            resume=resume,
            loggers=_unit_runs(job),
            origin=provenance(**job.origin, nodes=nodes),
            fast_path=job.fast_path,
            streams=streams,
            progress=emit,
            checkpoint_every_s=job.checkpoint_every_s,
        )
    finally:
        if emit is not None:
            emit.flush()  # the last lines reach the driver before this worker goes


# What a search trial reports beside the loop's metrics: its held-out top-1 after every epoch so far (a restored
# search rebuilds ASHA's rungs from it: ``pipeline.tune.ResumableASHA``), and the stage run that trained it
HISTORY, SESSION = "val_top1_history", "search_session"


def tune_trial(
    spec: RunSpec, threads: int, mlflow_uri: str, run_id: str, fast_path: FastPathCfg, *, session: str
) -> None:
    """Ray Tune entry point: train one unit in the trial's own process, reporting each epoch to Tune
    (ASHA stops weak trials between epochs) with ``HISTORY`` and ``SESSION``. Nothing is checkpointed: a trial
    that was running when its search was interrupted trains again from its first epoch.

    The trial's MLflow run ``run_id`` is ended FINISHED just before its last epoch is reported: Tune stops a
    trial that reached ``max_t`` right after that report, so later work in this process may never run. (The
    search then sets every trial run's status from Tune's results: ``pipeline.tune``.)"""
    quiet_ray_logs()
    torch.set_num_threads(threads)
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    c = tracking.client(mlflow_uri)
    history: list[float] = []

    def report(metrics: dict[str, Any], state: dict[str, Any] | None) -> None:
        if metrics.get("epoch") == spec.train.epochs:  # logged already (the loop logs before it reports)
            tracking.finish(c, run_id)
        history.append(metrics["val_top1"])
        tune.report({**metrics, HISTORY: list(history), SESSION: session})

    train_units(
        [spec],
        Shard(),
        device,
        report,
        loggers=_trial_log(mlflow_uri, run_id),
        fast_path=fast_path,
    )
