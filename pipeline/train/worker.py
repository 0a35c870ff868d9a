"""Worker-side training: ``train_units`` wires data, model and the engine's plain functions; ``train_worker``
(Ray Train) and ``tune_trial`` (Ray Tune) only adapt it to their runtime.

A job trains a list of units (one (method, seed) each) one after another. Every epoch each worker trains on
its shard, all workers agree on global metrics, rank 0 saves a checkpoint of the current unit
(``ray.train.report`` is a barrier, so all ranks report once per epoch) and logs the epoch to MLflow. A
finished unit goes to the unit store; a resumed job skips stored units and restarts the current one from its
last checkpoint.
"""

from __future__ import annotations

import io
import json
import os
import tempfile
import time
from collections.abc import Callable
from typing import Any

import torch

from pipeline import tracking
from pipeline.config import FastPathCfg
from pipeline.data.preprocess import load_split
from pipeline.io import filesystem, join
from pipeline.models import create_model
from pipeline.provenance import provenance
from pipeline.spec import RunSpec
from pipeline.train.engine import (
    FastPath,
    Shard,
    StreamData,
    TensorData,
    build_optimizer,
    build_scheduler,
    evaluate,
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


def _load_checkpoint(checkpoint) -> dict[str, Any] | None:
    if checkpoint is None:
        return None
    with checkpoint.as_directory() as d:
        return torch.load(os.path.join(d, STATE_FILE), map_location="cpu", weights_only=False)


def load_state(checkpoint_uri: str) -> dict[str, Any]:
    """A checkpoint's training state, read straight from the run storage (local or s3://)."""
    fs, base = filesystem(checkpoint_uri)
    with fs.open_input_stream(join(base, STATE_FILE)) as f:
        return torch.load(io.BytesIO(f.read()), map_location="cpu", weights_only=False)


Reporter = Callable[[dict[str, Any], "dict[str, Any] | None"], None]
Resume = Callable[[str], "dict[str, Any] | None"]


def train_units(
    units: list[RunSpec],
    shard: Shard,
    device: torch.device,
    report: Reporter,
    store: UnitStore | None = None,
    resume: Resume | None = None,
    mlflow_uri: str | None = None,
    mlflow_runs: dict[str, str] | None = None,
    origin: dict[str, Any] | None = None,
    fast_path: FastPathCfg | None = None,
    streams: tuple[StreamData, StreamData] | None = None,
) -> None:
    """Train ``units`` in order. ``report(metrics, state)`` is called once per epoch on every rank (state: the
    current unit's checkpoint, or None); units already in ``store`` are skipped, and a unit for which
    ``resume(key)`` gives a state restarts from it. ``origin`` (git commit, job, nodes) goes into each
    finished unit's record."""
    runs = mlflow_runs or {}
    mlflow = tracking.client(mlflow_uri) if shard.rank == 0 and runs else None
    fast = FastPath.resolve(fast_path or FastPathCfg(), device)
    data_cache: dict[tuple, tuple[TensorData, TensorData]] = {}
    for spec in units:
        key = spec.key()
        if store is not None and store.has(key):
            continue
        dkey = (spec.dataset.path, spec.val_fraction, spec.train_subset)
        if streams is not None:  # (train, val) streamed by Ray Data: decoded and augmented by Ray Data tasks
            data_cache = {dkey: streams}
        elif dkey not in data_cache:
            data_cache = {dkey: load_data(spec)}
            if fast.data_on_device:  # uint8: CIFAR-10's train split is 150 MB
                data_cache[dkey] = tuple(d.to(device) for d in data_cache[dkey])
        train, val = data_cache[dkey]
        mean = torch.tensor(spec.dataset.mean, device=device)
        std = torch.tensor(spec.dataset.std, device=device)
        cfg, seed, run_id = spec.train, spec.seed, runs.get(key)

        torch.manual_seed(seed)
        model = fast.prepare(build_model(spec).to(device))
        optimizer = build_optimizer(model, cfg)
        scheduler = build_scheduler(optimizer, cfg)
        history: list[dict[str, Any]] = []
        resumed_from = None
        started_at = time.time()
        elog = tracking.EpochLog(mlflow, run_id) if mlflow is not None and run_id else None
        saved = resume(key) if resume is not None else None
        if saved is not None:
            model.load_state_dict(saved["model"])
            optimizer.load_state_dict(saved["optimizer"])
            scheduler.load_state_dict(saved["scheduler"])
            history, resumed_from = saved["history"], len(saved["history"])
            if elog:
                for rec in history:  # saved, but maybe cut off before it was logged
                    elog.log(rec)
        start = len(history)
        tag = f"[{spec.method} seed {seed}]"
        if shard.rank == 0:
            print(f"{tag} {'resuming at' if start else 'starting'} epoch {start + 1}/{cfg.epochs}", flush=True)
        train_model = model
        if shard.world_size > 1:
            import ray.train.torch

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
            rec.update(
                epoch=epoch + 1, lr=lr, epoch_time_s=time.perf_counter() - t0, timestamp_ms=int(time.time() * 1000)
            )
            history.append(rec)
            state = None
            if store is not None:
                weights = {k: v.detach().cpu() for k, v in model.state_dict().items()}
                if epoch + 1 == cfg.epochs:
                    if shard.rank == 0:  # finished: into the store before the barrier, so a cut-off job skips it
                        store.save(
                            key,
                            {
                                "spec": spec.model_dump(),
                                "key": key,
                                "model": weights,
                                "history": history,
                                "resumed_from": resumed_from,
                                "wall": {"started_at": started_at, "finished_at": time.time()},
                                "provenance": provenance(
                                    **(origin or {}), world_size=shard.world_size, device=str(device)
                                ),
                            },
                        )
                else:
                    state = {
                        "key": key,
                        "model": weights,
                        "optimizer": optimizer.state_dict(),
                        "scheduler": scheduler.state_dict(),
                        "history": history,
                    }
            if elog and store is None:  # nothing to resume from; and a search's report may end the trial
                elog.log(rec)
            report({**rec, "seed": seed, "method": spec.method}, state)
            if elog:  # after the checkpoint: an epoch trained again after a cut-off is not logged twice
                elog.log(rec)
            if shard.rank == 0:
                print(
                    f"{tag} epoch {epoch + 1}/{cfg.epochs} loss {rec['train_loss']:.3f} "
                    f"val top-1 {rec['val_top1']:.1f}% ({rec['images_per_s']:.0f} img/s)",
                    flush=True,
                )


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


def train_worker(config: dict[str, Any]) -> None:
    """Ray Train entry point. ``config``: units (RunSpec dicts), store (storage path), mlflow_uri,
    mlflow_runs {unit key: run_id}, resume {unit key: checkpoint URI}, threads."""
    import ray.train
    import ray.train.torch

    units = [RunSpec.model_validate(u) for u in config["units"]]
    torch.set_num_threads(config.get("threads", 1))
    ctx = ray.train.get_context()
    shard = Shard(ctx.get_world_rank(), ctx.get_world_size())
    nodes = _nodes(shard)
    me = nodes[shard.rank]
    print(f"worker rank {shard.rank}/{shard.world_size} pid {os.getpid()} on {me['host']} node {me['node_id'][:8]}")
    own = _load_checkpoint(ray.train.get_checkpoint())  # this job's latest: set after a worker-group restart
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

    train_units(
        units,
        shard,
        ray.train.torch.get_device(),
        report,
        UnitStore(config["store"], units[0].dataset.name),
        resume,
        config["mlflow_uri"],
        config.get("mlflow_runs"),
        {**config.get("origin", {}), "nodes": nodes},
        FastPathCfg.model_validate(config.get("fast_path", {})),
        (StreamData(ray.train.get_dataset_shard("train")), StreamData(ray.train.get_dataset_shard("val")))
        if config.get("stream")
        else None,
    )


def tune_trial(spec: RunSpec, threads: int, mlflow_uri: str, run_id: str, fast_path: FastPathCfg) -> None:
    """Ray Tune entry point: train one unit in the trial's own process, reporting each epoch to Tune
    (ASHA stops weak trials between epochs). Nothing is checkpointed: a search trial is cheap to redo."""
    from ray import tune

    torch.set_num_threads(threads)
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    train_units(
        [spec],
        Shard(),
        device,
        lambda metrics, state: tune.report(metrics),
        None,
        None,
        mlflow_uri,
        {spec.key(): run_id},
        fast_path=fast_path,
    )
