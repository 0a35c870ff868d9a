"""Ray connection and worker resources: a local Ray by default, the cluster in ``RAY_ADDRESS`` when set."""

from __future__ import annotations

import contextlib
import logging
import os
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from pipeline.config import ComputeCfg, ConfigError

# Variables the workers need that Ray does not forward by itself (Ray Train workers inherit only RAY_TRAIN_*).
FORWARD_ENV_PREFIXES = ("MLFLOW_", "AWS_", "PIPELINE_", "RAY_TRAIN_")


@dataclass(frozen=True)
class Workers:
    num_workers: int
    use_gpu: bool
    cpus_per_worker: int

    @property
    def threads(self) -> int:
        return self.cpus_per_worker


def resolve_workers(cfg: ComputeCfg, cpus: float, gpus: float, where: str) -> Workers:
    """Turn ``auto`` settings into numbers for a cluster with ``cpus``/``gpus``, or raise ``ConfigError``."""
    use_gpu = (gpus > 0) if cfg.use_gpu == "auto" else cfg.use_gpu
    auto = max(1, int(gpus)) if use_gpu else 2
    num = auto if cfg.num_workers == "auto" else cfg.num_workers
    if use_gpu and gpus < num:
        raise ConfigError(
            f"compute.num_workers = {cfg.num_workers!r} with compute.use_gpu = {cfg.use_gpu!r} needs {num} GPUs, "
            f"but {where} has {gpus:g}; allowed: num_workers 1..{int(gpus)} (or use_gpu: false)"
        )
    need = num * cfg.cpus_per_worker
    if need > cpus:
        most = int(cpus // cfg.cpus_per_worker)
        raise ConfigError(
            f"compute.num_workers = {cfg.num_workers!r} x compute.cpus_per_worker = {cfg.cpus_per_worker} needs "
            f"{need} CPUs, but {where} has {cpus:g}; allowed: num_workers 1..{max(most, 1)}"
        )
    return Workers(num, use_gpu, cfg.cpus_per_worker)


def local_resources() -> tuple[int, int]:
    import torch

    return os.cpu_count() or 1, torch.cuda.device_count() if torch.cuda.is_available() else 0


def check_workers_before_start(cfg: ComputeCfg) -> Workers | None:
    """For a local Ray, validate the worker request against this machine before anything starts.

    With ``RAY_ADDRESS`` set the check happens right after connecting (``ray_session``).
    """
    if os.environ.get("RAY_ADDRESS"):
        return None
    cpus, gpus = local_resources()
    return resolve_workers(cfg, cpus, gpus, "this machine")


def worker_env() -> dict[str, str]:
    return {k: v for k, v in os.environ.items() if k.startswith(FORWARD_ENV_PREFIXES)}


def storage_path(cfg: ComputeCfg) -> str:
    """Ray Train/Tune storage: a URI as given, or a local path made absolute (workers may run elsewhere)."""
    if "://" in cfg.storage_path:
        return cfg.storage_path
    return str(Path(cfg.storage_path).resolve())


@contextlib.contextmanager
def ray_session(num_cpus: int | None = None) -> Iterator[dict[str, float]]:
    """Connect to ``RAY_ADDRESS`` or start a local Ray (``num_cpus`` logical CPUs); yield cluster resources."""
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    os.environ.setdefault("RAY_TRAIN_V2_ENABLED", "1")
    # Worker start-up (imports) on a small, busy machine can exceed Ray's 60 s default; wait longer.
    os.environ.setdefault("RAY_TRAIN_WORKER_GROUP_START_TIMEOUT_S", "600")
    import ray

    import pipeline

    env = {"env_vars": worker_env()}
    address = os.environ.get("RAY_ADDRESS")
    if address:
        # workers on other nodes need this package; ship it unless the job already carries it
        env["py_modules"] = [str(Path(pipeline.__file__).parent)]
        ray.init(address=address, runtime_env=env, logging_level=logging.WARNING)
    else:
        ray.init(
            num_cpus=num_cpus or os.cpu_count(), include_dashboard=False, runtime_env=env, logging_level=logging.WARNING
        )
    try:
        yield ray.cluster_resources()
    finally:
        ray.shutdown()
