"""Ray connection and worker resources: a local Ray by default, the cluster in ``RAY_ADDRESS`` when set."""

from __future__ import annotations

import contextlib
import logging
import os
import socket
import warnings
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pipeline
from pipeline.config import ComputeCfg, ConfigError
from pipeline.errors import StageError
from pipeline.redact import is_secret_name, redact, safe_env

# Settings the workers need that Ray does not forward by itself (the tracking URI, the S3 endpoint and region):
# passed explicitly through the job's runtime_env. Credentials never are: Ray writes runtime_env variables
# verbatim into its logs (runtime_env_agent.log) and shows them in the dashboard. Workers get credentials
# from their node's own environment instead: a local Ray inherits this process's; a cluster node, the one
# `ray start` ran in (or an instance profile, ~/.aws/credentials).
# A variable whose *value* carries a credential (MLFLOW_TRACKING_URI=https://user:pass@host) is not forwarded
# either: a local Ray's workers inherit it from this process; on a cluster, set it on the nodes (or use
# MLFLOW_TRACKING_USERNAME / MLFLOW_TRACKING_PASSWORD there).
FORWARD_ENV_PREFIXES = ("MLFLOW_", "AWS_", "PIPELINE_", "RAY_TRAIN_")
log = logging.getLogger(__name__)


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


def world_size(cfg: ComputeCfg) -> int:
    """The data-parallel workers a unit trains on (``compute.num_workers`` resolved): part of every unit's key,
    so it is known before the units are. ``auto`` on a cluster (``RAY_ADDRESS``) asks the cluster for its GPUs
    (one short connection); the train stage checks again once its session runs (``train_on_ray``)."""
    local = check_workers_before_start(cfg)
    if local is not None:
        return local.num_workers
    if cfg.num_workers != "auto":
        return cfg.num_workers
    with ray_session() as res:
        return resolve_workers(cfg, res.get("CPU", 0), res.get("GPU", 0), "the Ray cluster").num_workers


def forwardable(env: dict[str, str]) -> dict[str, str]:
    """The one filter of what this process hands to Ray: the variables of ``env`` that are not credentials,
    by name or by value (``pipeline.redact``); a variable left out for its value is named in a warning."""
    keep, dropped = safe_env(env)
    by_value = [k for k in dropped if not is_secret_name(k)]
    if by_value:
        log.warning(
            "not forwarded to Ray workers, their values carry credentials: %s (a local Ray's workers inherit "
            "them; on a cluster set them on the nodes)",
            ", ".join(by_value),
        )
    return keep


def worker_env() -> dict[str, str]:
    """The settings forwarded to every worker: ``FORWARD_ENV_PREFIXES`` variables that are not credentials."""
    return forwardable({k: v for k, v in os.environ.items() if k.startswith(FORWARD_ENV_PREFIXES)})


def keep_credentials_out_of_trials() -> None:
    """Ray Tune copies AWS_SECRET_ACCESS_KEY, AWS_SESSION_TOKEN, ... from this process into every trial's
    runtime_env (``ray.tune.execution.class_cache``), which Ray writes verbatim into runtime_env_agent.log: its
    list keeps only what ``forwardable`` lets through. Trials get credentials from their node's environment,
    like every other worker. tests/test_cluster.py greps Ray's logs for a planted secret."""
    from ray.tune.execution import class_cache  # only the search stage, which has a Ray session, calls this

    names = getattr(class_cache, "ENV_VARS_TO_PROPAGATE", None)
    if isinstance(names, set):
        class_cache.ENV_VARS_TO_PROPAGATE = set(forwardable({n: os.environ.get(n, "") for n in names}))


def storage_path(cfg: ComputeCfg) -> str:
    """Ray Train/Tune storage: a URI as given, or a local path made absolute (workers may run elsewhere)."""
    if "://" in cfg.storage_path:
        return cfg.storage_path
    return str(Path(cfg.storage_path).resolve())


def _leave_job_env() -> None:
    """Inside a `ray job submit` job, ray.init would join this driver to the job's runtime env, working_dir
    included; when this stage's driver disconnects, Ray then deletes that working_dir -- the directory the
    job's `dvc repro` is still running in (seen with Ray 2.60). So each stage is a driver of its own, with
    its own runtime env (this package as py_modules, the settings in worker_env); the job's env_vars are in
    this process's environment already."""
    os.environ.pop("RAY_JOB_CONFIG_JSON_ENV_VAR", None)


RAY_OWN_DEPRECATION = "`ExecutionOptions.exclude_resources` is deprecated"  # the start of Ray 2.60's message


@contextlib.contextmanager
def _ray_start(what: str) -> Iterator[None]:
    """Ray failing to start or connect as one ``StageError`` (exit 1, no traceback): the cause's first line and
    what to try. A loaded machine ("GCS has become overloaded"), a full /tmp, a stale session or a wrong address
    all land here, before any work of the stage has started."""
    try:
        yield
    except Exception as e:  # ray.init raises RuntimeError, ConnectionError, TimeoutError, ...
        import ray  # already imported by the caller; here only to shut down what half started

        ray.shutdown()
        first = (str(e).strip().splitlines() or [type(e).__name__])[0]
        raise StageError(
            f"{what} ({type(e).__name__}: {redact(first)}). Nothing of this stage ran; run it again. If it "
            "fails again: free memory or CPUs (a loaded machine makes Ray's GCS time out), check that Ray's "
            f"temporary directory ({os.environ.get('RAY_TMPDIR', '/tmp/ray')}) is writable and not full, and read "
            "its logs (session_latest/logs); on a cluster, check RAY_ADDRESS and `ray status` there"
        ) from None


@contextlib.contextmanager
def ray_session(num_cpus: int | None = None) -> Iterator[dict[str, float]]:
    """Connect to ``RAY_ADDRESS`` or start a local Ray (``num_cpus`` logical CPUs); yield cluster resources."""
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    os.environ.setdefault("RAY_TRAIN_V2_ENABLED", "1")
    # Worker start-up (imports) on a small, busy machine can exceed Ray's 60 s default; wait longer.
    os.environ.setdefault("RAY_TRAIN_WORKER_GROUP_START_TIMEOUT_S", "600")
    # Ray Train turns a worker's print into a log record and, where stdout is wrapped, prints it as well: every
    # line twice. Plain prints (the workers' own progress is not printed at all: pipeline.progress)
    os.environ.setdefault("RAY_TRAIN_ENABLE_PRINT_PATCH", "0")
    # Ray's log dedup folds forwarded worker lines that differ only in their numbers ("[repeated 3x across
    # cluster]"): on a cluster, where worker output is forwarded, show each as written.
    os.environ.setdefault("RAY_DEDUP_LOGS", "0")
    # Ray Train's state tracking (on where a dashboard runs: clusters) builds Ray Data's default options in this
    # driver, setting a field Ray itself deprecates: two lines of RayDeprecationWarning per job that no setting of
    # ours can avoid. Only that message: Ray's other notices, and the workers' warnings, are left as they are
    warnings.filterwarnings("ignore", message=RAY_OWN_DEPRECATION, category=DeprecationWarning)
    import ray

    env: dict[str, Any] = {"env_vars": worker_env()}
    address = os.environ.get("RAY_ADDRESS")
    if address:
        # workers on other nodes need this package: ship it (inside a job too, see _leave_job_env)
        env["py_modules"] = [str(Path(pipeline.__file__).parent)]
        _leave_job_env()
        if not _reachable(address):  # Ray itself would retry for minutes
            raise StageError(
                f"could not connect to the Ray cluster at RAY_ADDRESS={address}: it takes no connection. Nothing of "
                "this stage ran; start the cluster, or correct or unset RAY_ADDRESS"
            )
        with _ray_start(f"could not connect to the Ray cluster at RAY_ADDRESS={address}"):
            ray.init(address=address, runtime_env=env, logging_level=logging.WARNING)
    else:
        # A local Ray's workers are this machine's processes: their output is not forwarded here. Progress comes
        # as events through the driver (pipeline.progress), errors as the exceptions Ray raises here, and what
        # else a worker writes (Ray's own notices, a worker's SIGTERM at shutdown) stays in Ray's log files
        # (/tmp/ray/session_latest/logs). No dashboard (seconds of start-up per stage), so no State API: Ray
        # Train's placement-group cleaner would warn every few seconds that it cannot query the controller (63 of
        # 427 lines of a default `dvc repro`); Ray's Python loggers in this job's processes are set to ERROR. No
        # preemption watcher: a local Ray's node is never drained, and it is one more actor per job. On a cluster
        # (RAY_ADDRESS, above) worker output, Ray's warnings and the watcher stay on.
        os.environ.setdefault("RAY_TRAIN_ENABLE_PREEMPTION_WATCHER", "0")
        with _ray_start("could not start a local Ray on this machine"):
            ray.init(
                num_cpus=num_cpus or os.cpu_count(),
                include_dashboard=False,
                runtime_env=env,
                log_to_driver=False,
                logging_level=logging.WARNING,
                logging_config=ray.LoggingConfig(log_level="ERROR"),
            )
    try:
        yield ray.cluster_resources()
    finally:
        ray.shutdown()


def _reachable(address: str, timeout_s: float = 5.0) -> bool:
    """Whether ``host:port`` (``ray://host:port``) takes a TCP connection: Ray itself retries an unreachable
    address for minutes. Other forms (``auto``) are left to Ray."""
    host, _, port = address.removeprefix("ray://").rpartition(":")
    if not host or not port.isdigit():
        return True
    try:
        socket.create_connection((host, int(port)), timeout=timeout_s).close()
        return True
    except OSError:
        return False


@contextlib.contextmanager
def seen_resources() -> Iterator[dict[str, float] | None]:
    """With ``RAY_ADDRESS`` set, the cluster's resources, connected for the duration (so ``probe`` can run on
    its GPUs); None (this machine) without it, or when the cluster cannot be reached."""
    address = os.environ.get("RAY_ADDRESS")
    with contextlib.ExitStack() as stack:
        res, why = None, ""
        if address:
            try:
                res = dict(stack.enter_context(ray_session()))
            except Exception as e:  # ray missing, no connection, the cluster refusing: plan for this machine
                why = str(e)
        if why:
            log.warning("plan: the Ray cluster at %s is not reachable (%s): planning for this machine", address, why)
        yield res
