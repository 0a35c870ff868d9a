"""What one training unit computes: data, model, epochs, checkpoints and the finished record.

This module (and what it imports) is the code a unit's result depends on: its import closure is hashed into
every unit's content key (``pipeline.spec.code_digest``), so changing it retrains, and changing the Ray or
MLflow adapters around it (``pipeline.train.worker``, ``pipeline.tracking``) does not. It knows nothing of
Ray or MLflow: the adapters pass in how to report an epoch and how to log it.

A job trains a list of units (one (method, seed) each) one after another. Every epoch each worker trains on
its shard, all workers agree on global metrics, rank 0 hands the current unit's state to ``report`` (a
barrier under Ray Train, so all ranks report once per epoch) and logs the epoch. A finished unit goes to the
unit store; a resumed job skips stored units and restarts the current one from its last checkpoint.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Protocol

import torch
from torch import nn

from pipeline.config import FastPathCfg, config_hash
from pipeline.data.manifest import load_split
from pipeline.data.subset import held_out
from pipeline.events import Emit, EpochDone, UnitStarted
from pipeline.models import backbone_digest, create_model
from pipeline.models.diagnostics import diagnose
from pipeline.spec import RunSpec
from pipeline.train.checkpoint import TrainState, UnitRecord
from pipeline.train.engine import (
    Data,
    FastPath,
    Shard,
    StreamData,
    TensorData,
    build_optimizer,
    build_scheduler,
    evaluate,
    normalize,
    recalibrate_bn,
    train_one_epoch,
)
from pipeline.train.store import UnitStore


def load_data(spec: RunSpec) -> tuple[TensorData, TensorData]:
    """(train, val): val is the test split, or a held-out tail of a fixed shuffle of train (searches)."""
    tr = load_split(spec.dataset.path, "train")
    train = TensorData.from_numpy(tr.images, tr.labels)
    if spec.val_fraction is None:
        te = load_split(spec.dataset.path, "test")
        val = TensorData.from_numpy(te.images, te.labels)
    else:
        perm = torch.randperm(len(train), generator=torch.Generator().manual_seed(0))
        n_val = held_out(len(train), spec.val_fraction)
        train, val = train.subset(perm[n_val:]), train.subset(perm[:n_val])
    if spec.train_subset:
        train = train.subset(torch.arange(min(spec.train_subset, len(train))))
    return train, val


def build_model(spec: RunSpec) -> torch.nn.Module:
    return create_model(spec.model, **spec.model_args)


def data_order(spec: RunSpec, streamed: bool) -> str | None:
    """Key of the sample order and augmentation draws a unit sees: equal for units of one seed on the same
    data and batch plan (``pipeline.train.engine.epoch_order``), None when Ray Data streams the data in an
    order of its own. The ranks it is split over are ``spec.workers`` (``prepare_unit`` checks the job's)."""
    if streamed:
        return None
    t = spec.train
    plan = (t.epochs, t.batch_size, t.crop_padding, t.flip, spec.workers, spec.val_fraction, spec.train_subset)
    return config_hash(spec.dataset.sha256, spec.seed, plan)


class EpochLogger(Protocol):
    """A unit's record keeper (its MLflow run): opened when the unit starts, ended when it ends."""

    def log(self, record: dict[str, Any]) -> bool: ...

    def end(self, status: str) -> None: ...


Reporter = Callable[[dict[str, Any], "dict[str, Any] | None"], None]
Resume = Callable[[str], "TrainState | None"]
Loggers = Callable[[str], "EpochLogger | None"]


@dataclass(frozen=True)
class Job:
    """What is the same for every unit a job trains: where it runs and where its results go."""

    shard: Shard
    device: torch.device
    fast: FastPath
    report: Reporter
    store: UnitStore | None
    origin: dict[str, Any]
    streamed: bool  # the data comes from Ray Data (ImageNet), not from memory
    checkpoint_every_s: float = 0.0  # a unit's epochs are reported (and checkpointed) at most this often (0: each)

    def due(self, since: float) -> bool:
        """Whether to report (and checkpoint) now, ``since`` (monotonic) the unit's last report or start: every
        epoch of a search trial (no store: ASHA stops it between epochs), else once ``checkpoint_every_s`` have
        passed. Ray Train's ``report`` is a barrier that costs about half a second on a small machine, so at
        seconds an epoch, reporting each one was a quarter of the train stage; a kill now loses at most that
        long of a unit's work. Rank 0 decides, every rank follows (a barrier must be met by all)."""
        due = self.store is None or time.monotonic() - since >= self.checkpoint_every_s
        if self.shard.world_size > 1:
            flag = torch.tensor([float(due)], device=self.device)
            torch.distributed.broadcast(flag, src=0)
            due = bool(flag.item())
        return due


@dataclass
class Unit:
    """One unit as it trains: its net (and the wrapper that trains it), optimizer, schedule and records."""

    spec: RunSpec
    model: nn.Module
    train_model: nn.Module  # the model, or its DDP / compiled wrapper: what the training forward runs
    optimizer: torch.optim.Optimizer
    scheduler: torch.optim.lr_scheduler.LRScheduler
    mean: torch.Tensor
    std: torch.Tensor
    pairing: dict[str, Any]
    history: list[dict[str, Any]] = field(default_factory=list)
    resumed_from: int | None = None
    started_at: float = field(default_factory=time.time)
    diag_start: dict[str, float] | None = None


def train_units(
    units: list[RunSpec],
    shard: Shard,
    device: torch.device,
    report: Reporter,
    *,
    store: UnitStore | None = None,
    resume: Resume | None = None,
    loggers: Loggers | None = None,
    origin: dict[str, Any] | None = None,
    fast_path: FastPathCfg | None = None,
    streams: tuple[StreamData, StreamData] | None = None,
    progress: Emit | None = None,
    checkpoint_every_s: float = 0.0,
) -> None:
    """Train ``units`` in order. ``report(metrics, state)`` is called on every rank after an epoch once
    ``checkpoint_every_s`` passed since the unit's last report, and after its last epoch (``Job.due``; state:
    the current unit's checkpoint, or None); units already in ``store`` are skipped, and a unit for which
    ``resume(key)`` gives a state restarts from it. ``loggers(key)`` is called as the unit starts and logs its
    epochs (rank 0; None: not logged); it is ended FINISHED after the last epoch, FAILED if training raised.
    ``origin`` (provenance: git commit, job, nodes) goes into each finished unit's record. ``progress``
    receives rank 0's ``UnitStarted`` and ``EpochDone`` events (nothing is printed here)."""
    fast = FastPath.resolve(fast_path or FastPathCfg(), device)
    job = Job(shard, device, fast, report, store, origin or {}, streams is not None, checkpoint_every_s)
    data_cache: dict[tuple, tuple[Data, Data]] = {}
    for spec in units:
        if store is not None and store.has(spec.key()):
            continue
        dkey = (spec.dataset.path, spec.val_fraction, spec.train_subset)
        if streams is not None:  # (train, val) streamed by Ray Data: decoded and augmented by Ray Data tasks
            data_cache = {dkey: streams}
        elif dkey not in data_cache:
            data_cache = {dkey: load_data(spec)}
            if fast.data_on_device:  # uint8: CIFAR-10's train split is 150 MB
                data_cache[dkey] = tuple(d.to(device) for d in data_cache[dkey])
        logger = loggers(spec.key()) if loggers is not None and shard.rank == 0 else None
        try:
            train_unit(
                spec, data_cache[dkey], job, resume=resume, logger=logger, emit=progress if shard.rank == 0 else None
            )
        except BaseException:
            if logger is not None:
                logger.end("FAILED")
            raise
        if logger is not None:
            logger.end("FINISHED")


def train_unit(
    spec: RunSpec,
    data: tuple[Data, Data],
    job: Job,
    *,
    resume: Resume | None,
    logger: EpochLogger | None,
    emit: Emit | None,
) -> None:
    """One unit, from its start or its saved state to its last epoch (see ``train_units``)."""
    train, val = data
    unit = prepare_unit(spec, job)
    saved = resume(spec.key()) if resume is not None else None
    if saved is not None:
        restore(unit, saved, logger)
    elif spec.diagnostics and isinstance(train, TensorData):  # the net as it starts: "epoch 0"
        unit.diag_start = _diagnostics(unit, train, job)
        if logger:
            logger.log({"epoch": 0, **unit.diag_start})
    start, epochs = len(unit.history), spec.train.epochs
    if emit is not None:
        emit(UnitStarted(key=spec.key(), method=spec.method, seed=spec.seed, done=start, epochs=epochs))
    _wrap_for_training(unit, job)
    since, unlogged = time.monotonic(), []
    for epoch in range(start, epochs):
        rec = train_epoch(unit, epoch, train, val, job)
        unit.history.append(rec)
        if logger and job.store is None:  # nothing to resume from; and a search's report may end the trial
            logger.log(rec)
        elif logger:
            unlogged.append(rec)
        if epoch + 1 == epochs or job.due(since):
            job.report({**rec, "seed": spec.seed, "method": spec.method}, checkpoint(unit, job))
            since = time.monotonic()
            for r in unlogged:  # after the checkpoint: an epoch trained again after a cut-off is not logged twice
                logger.log(r)
            unlogged = []
        if emit is not None:
            emit(_epoch_done(spec, rec))


def prepare_unit(spec: RunSpec, job: Job) -> Unit:
    """The unit's net drawn from its seed (the backbone from the seed alone: ``pipeline.models.resnet``), on the
    device in the chosen memory format, with its optimizer and schedule; the digests it pairs up by."""
    if spec.workers != job.shard.world_size:  # its key promises a split over spec.workers ranks
        raise ValueError(f"unit {spec.key()} is keyed for {spec.workers} worker(s) but runs on {job.shard.world_size}")
    torch.manual_seed(spec.seed)
    model = build_model(spec)
    pairing = {"init": backbone_digest(model), "data_order": data_order(spec, job.streamed)}
    model = job.fast.prepare(model.to(job.device))
    optimizer = build_optimizer(model, spec.train)
    return Unit(
        spec=spec,
        model=model,
        train_model=model,
        optimizer=optimizer,
        scheduler=build_scheduler(optimizer, spec.train),
        mean=torch.tensor(spec.dataset.mean, device=job.device),
        std=torch.tensor(spec.dataset.std, device=job.device),
        pairing=pairing,
    )


def restore(unit: Unit, saved: TrainState, logger: EpochLogger | None) -> None:
    """Continue from ``saved`` (an earlier attempt's checkpoint); its epochs that were cut off before they were
    logged are logged now."""
    unit.model.load_state_dict(saved["model"])
    unit.optimizer.load_state_dict(saved["optimizer"])
    unit.scheduler.load_state_dict(saved["scheduler"])
    unit.history, unit.resumed_from = saved["history"], len(saved["history"])
    unit.diag_start = saved.get("diag_start")
    for rec in unit.history if logger else ():
        logger.log(rec)


def _wrap_for_training(unit: Unit, job: Job) -> None:
    """DDP across the job's workers, then ``torch.compile`` (fast path); evaluation and checkpoints keep using
    the plain module."""
    if job.shard.world_size > 1:
        import ray.train.torch  # only under Ray Train: the in-process search trials never get here

        unit.train_model = ray.train.torch.prepare_model(unit.model, move_to_device=False)  # DDP
    if job.fast.compile:
        unit.train_model = torch.compile(unit.train_model)


def train_epoch(unit: Unit, epoch: int, train: Data, val: Data, job: Job) -> dict[str, Any]:
    """Epoch ``epoch`` (0-based): train, step the schedule, recalibrate BatchNorm, evaluate on ``val`` (and the
    attention diagnostics when the unit records them). Its record (global metrics, every rank the same)."""
    spec, cfg, t0 = unit.spec, unit.spec.train, time.perf_counter()
    lr = unit.optimizer.param_groups[0]["lr"]
    args = (cfg, unit.mean, unit.std, spec.seed, epoch)
    rec: dict[str, Any] = train_one_epoch(
        unit.train_model, train, unit.optimizer, *args, job.shard, job.device, job.fast
    )
    unit.scheduler.step()
    recalibrate_bn(unit.model, train, *args, job.device, job.fast)
    if job.shard.world_size > 1:  # every rank evaluates (and rank 0 saves) the same BN statistics
        for buf in unit.model.buffers():
            torch.distributed.broadcast(buf, src=0)
    rec.update(
        evaluate(unit.model, val, unit.mean, unit.std, cfg.eval_batch_size, job.shard, job.device, "val", job.fast)
    )
    if spec.diagnostics and isinstance(train, TensorData):
        rec.update(_diagnostics(unit, train, job))
    rec.update(epoch=epoch + 1, lr=lr, epoch_time_s=time.perf_counter() - t0, timestamp_ms=int(time.time() * 1000))
    return rec


def checkpoint(unit: Unit, job: Job) -> TrainState | None:
    """After an epoch: the state to report as the job's checkpoint, or, after the last epoch, the finished
    unit put into the store (rank 0, before the report's barrier, so a job cut off after it skips the unit)."""
    if job.store is None:
        return None
    weights = {k: v.detach().cpu() for k, v in unit.model.state_dict().items()}
    if len(unit.history) < unit.spec.train.epochs:
        return {
            "key": unit.spec.key(),
            "model": weights,
            "optimizer": unit.optimizer.state_dict(),
            "scheduler": unit.scheduler.state_dict(),
            "history": unit.history,
            "diag_start": unit.diag_start,
        }
    if job.shard.rank == 0:
        job.store.save(unit.spec.key(), _record(unit, weights, job))
    return None


def _epoch_done(spec: RunSpec, rec: dict[str, Any]) -> EpochDone:
    return EpochDone(
        key=spec.key(),
        method=spec.method,
        seed=spec.seed,
        epoch=rec["epoch"],
        epochs=spec.train.epochs,
        train_loss=rec["train_loss"],
        val_top1=rec["val_top1"],
        images_per_s=rec["images_per_s"],
        seconds=rec["epoch_time_s"],
    )


def _diagnostics(unit: Unit, train: TensorData, job: Job) -> dict[str, float]:
    """``pipeline.models.diagnostics`` on the first ``spec.diagnostics`` train images, unaugmented."""
    probe = train.subset(torch.arange(min(unit.spec.diagnostics, len(train))))
    x = normalize(probe.images.to(job.device), unit.mean, unit.std)
    return diagnose(unit.model, x, probe.labels.to(job.device))


def _record(unit: Unit, weights: dict[str, torch.Tensor], job: Job) -> UnitRecord:
    """A finished unit as the store keeps it; ``pairing`` says which other units started like it."""
    return {
        "spec": unit.spec.model_dump(),
        "key": unit.spec.key(),
        "model": weights,
        "history": unit.history,
        "resumed_from": unit.resumed_from,
        "pairing": unit.pairing,
        "wall": {"started_at": unit.started_at, "finished_at": time.time()},
        "provenance": {**job.origin, "world_size": job.shard.world_size, "device": str(job.device)},
        "diag_start": unit.diag_start,
    }
