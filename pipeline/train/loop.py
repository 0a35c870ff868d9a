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
from typing import Any, Protocol

import torch

from pipeline.config import FastPathCfg, config_hash
from pipeline.data.manifest import load_split
from pipeline.events import Emit, EpochDone, UnitStarted
from pipeline.io import filesystem, join
from pipeline.models import backbone_digest, create_model
from pipeline.models.diagnostics import diagnose
from pipeline.spec import RunSpec
from pipeline.train.checkpoint import read_checkpoint
from pipeline.train.engine import (
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

STATE_FILE = "state.pt"
UNIT_FILE = "unit.json"


def load_data(spec: RunSpec) -> tuple[TensorData, TensorData]:
    """(train, val): val is the test split, or a held-out tail of a fixed shuffle of train (searches)."""
    tr = load_split(spec.dataset.path, "train")
    train = TensorData.from_numpy(tr.images, tr.labels)
    if spec.val_fraction is None:
        te = load_split(spec.dataset.path, "test")
        val = TensorData.from_numpy(te.images, te.labels)
    else:
        perm = torch.randperm(len(train), generator=torch.Generator().manual_seed(0))
        n_val = max(1, int(len(train) * spec.val_fraction))
        train, val = train.subset(perm[n_val:]), train.subset(perm[:n_val])
    if spec.train_subset:
        train = train.subset(torch.arange(min(spec.train_subset, len(train))))
    return train, val


def build_model(spec: RunSpec) -> torch.nn.Module:
    return create_model(spec.model, **spec.model_args)


def load_state(checkpoint_uri: str) -> dict[str, Any]:
    """A checkpoint's training state, read straight from its directory in the run storage (local or s3://)."""
    fs, base = filesystem(checkpoint_uri)
    with fs.open_input_stream(join(base, STATE_FILE)) as f:
        return read_checkpoint(f.read(), join(checkpoint_uri, STATE_FILE))


def data_order(spec: RunSpec, world_size: int, streamed: bool) -> str | None:
    """Key of the sample order and augmentation draws a unit sees: equal for units of one seed on the same
    data and batch plan (``pipeline.train.engine.epoch_order``), None when Ray Data streams the data in an
    order of its own."""
    if streamed:
        return None
    t = spec.train
    plan = (t.epochs, t.batch_size, t.crop_padding, t.flip, world_size, spec.val_fraction, spec.train_subset)
    return config_hash(spec.dataset.sha256, spec.seed, plan)


class EpochLogger(Protocol):
    """A unit's record keeper (its MLflow run): opened when the unit starts, ended when it ends."""

    def log(self, record: dict[str, Any]) -> bool: ...

    def end(self, status: str) -> None: ...


Reporter = Callable[[dict[str, Any], "dict[str, Any] | None"], None]
Resume = Callable[[str], "dict[str, Any] | None"]
Loggers = Callable[[str], "EpochLogger | None"]


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
) -> None:
    """Train ``units`` in order. ``report(metrics, state)`` is called once per epoch on every rank (state: the
    current unit's checkpoint, or None); units already in ``store`` are skipped, and a unit for which
    ``resume(key)`` gives a state restarts from it. ``loggers(key)`` is called as the unit starts and logs its
    epochs (rank 0; None: not logged); it is ended FINISHED after the last epoch, FAILED if training raised.
    ``origin`` (provenance: git commit, job, nodes) goes into each finished unit's record. ``progress``
    receives rank 0's ``UnitStarted`` and ``EpochDone`` events (nothing is printed here)."""
    fast = FastPath.resolve(fast_path or FastPathCfg(), device)
    data_cache: dict[tuple, tuple[TensorData, TensorData]] = {}
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
        emit = progress if shard.rank == 0 else None
        try:
            _train_unit(
                spec,
                data_cache[dkey],
                shard,
                device,
                report,
                store,
                resume,
                logger,
                origin,
                fast,
                streams is not None,
                emit,
            )
        except BaseException:
            if logger is not None:
                logger.end("FAILED")
            raise
        if logger is not None:
            logger.end("FINISHED")


def _train_unit(spec, data, shard, device, report, store, resume, logger, origin, fast, streamed, emit) -> None:
    """One unit, from its start or its saved state to its last epoch (see ``train_units``)."""
    train, val = data
    key, cfg, seed = spec.key(), spec.train, spec.seed
    mean = torch.tensor(spec.dataset.mean, device=device)
    std = torch.tensor(spec.dataset.std, device=device)
    torch.manual_seed(seed)
    model = build_model(spec)
    pairing = {"init": backbone_digest(model), "data_order": data_order(spec, shard.world_size, streamed)}
    model = fast.prepare(model.to(device))
    optimizer = build_optimizer(model, cfg)
    scheduler = build_scheduler(optimizer, cfg)
    history: list[dict[str, Any]] = []
    resumed_from, started_at, diag_start = None, time.time(), None
    saved = resume(key) if resume is not None else None
    if saved is not None:
        model.load_state_dict(saved["model"])
        optimizer.load_state_dict(saved["optimizer"])
        scheduler.load_state_dict(saved["scheduler"])
        history, resumed_from = saved["history"], len(saved["history"])
        diag_start = saved.get("diag_start")
        for rec in history if logger else ():  # saved, but maybe cut off before it was logged
            logger.log(rec)
    elif spec.diagnostics and isinstance(train, TensorData):  # the net as it starts: "epoch 0"
        diag_start = _diagnostics(model, train, spec, mean, std, device)
        if logger:
            logger.log({"epoch": 0, **diag_start})
    start = len(history)
    if emit is not None:
        emit(UnitStarted(key=key, method=spec.method, seed=seed, done=start, epochs=cfg.epochs))
    train_model = model
    if shard.world_size > 1:
        import ray.train.torch  # only under Ray Train: the in-process search trials never get here

        train_model = ray.train.torch.prepare_model(model, move_to_device=False)  # DDP
    if fast.compile:  # the training forward only; evaluation and checkpoints use the plain module
        train_model = torch.compile(train_model)
    for epoch in range(start, cfg.epochs):
        t0 = time.perf_counter()
        lr = optimizer.param_groups[0]["lr"]
        rec: dict[str, Any] = train_one_epoch(
            train_model, train, optimizer, cfg, mean, std, seed, epoch, shard, device, fast
        )
        scheduler.step()
        recalibrate_bn(model, train, cfg, mean, std, seed, epoch, device, fast)
        if shard.world_size > 1:  # every rank evaluates (and rank 0 saves) the same BN statistics
            for buf in model.buffers():
                torch.distributed.broadcast(buf, src=0)
        rec.update(evaluate(model, val, mean, std, cfg.eval_batch_size, shard, device, "val", fast))
        if spec.diagnostics and isinstance(train, TensorData):
            rec.update(_diagnostics(model, train, spec, mean, std, device))
        rec.update(epoch=epoch + 1, lr=lr, epoch_time_s=time.perf_counter() - t0, timestamp_ms=int(time.time() * 1000))
        history.append(rec)
        state = None
        if store is not None:
            weights = {k: v.detach().cpu() for k, v in model.state_dict().items()}
            if epoch + 1 == cfg.epochs and shard.rank == 0:
                # finished: into the store before the barrier, so a cut-off job skips it
                record = _record(spec, weights, history, resumed_from, started_at, pairing, origin, shard, device)
                store.save(key, {**record, "diag_start": diag_start})
            elif epoch + 1 < cfg.epochs:
                state = {
                    "key": key,
                    "model": weights,
                    "optimizer": optimizer.state_dict(),
                    "scheduler": scheduler.state_dict(),
                    "history": history,
                    "diag_start": diag_start,
                }
        if logger and store is None:  # nothing to resume from; and a search's report may end the trial
            logger.log(rec)
        report({**rec, "seed": seed, "method": spec.method}, state)
        if logger:  # after the checkpoint: an epoch trained again after a cut-off is not logged twice
            logger.log(rec)
        if emit is not None:
            emit(
                EpochDone(
                    key=key,
                    method=spec.method,
                    seed=seed,
                    epoch=epoch + 1,
                    epochs=cfg.epochs,
                    train_loss=rec["train_loss"],
                    val_top1=rec["val_top1"],
                    images_per_s=rec["images_per_s"],
                    seconds=rec["epoch_time_s"],
                )
            )


def _diagnostics(model, train: TensorData, spec: RunSpec, mean, std, device) -> dict[str, float]:
    """``pipeline.models.diagnostics`` on the first ``spec.diagnostics`` train images, unaugmented."""
    probe = train.subset(torch.arange(min(spec.diagnostics, len(train))))
    return diagnose(model, normalize(probe.images.to(device), mean, std), probe.labels.to(device))


def _record(spec, weights, history, resumed_from, started_at, pairing, origin, shard, device) -> dict[str, Any]:
    """A finished unit as the store keeps it; ``pairing`` says which other units started like it."""
    return {
        "spec": spec.model_dump(),
        "key": spec.key(),
        "model": weights,
        "history": history,
        "resumed_from": resumed_from,
        "pairing": pairing,
        "wall": {"started_at": started_at, "finished_at": time.time()},
        "provenance": {**(origin or {}), "world_size": shard.world_size, "device": str(device)},
    }
