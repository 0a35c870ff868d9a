"""MLflow records: one experiment per data set, one run per (method, seed), nested runs for searches.

The store is ``MLFLOW_TRACKING_URI`` when set, else ``sqlite:///<repo>/mlflow.db``. Runs carry a ``run_key``
tag (settings + data + code): a rerun of an interrupted job finds and continues its runs instead of
creating duplicates, and back-fills any epoch the interruption kept from being logged.

With ``MLFLOW_TRACKING_URI=http://<server>`` every stage and every Ray worker logs to that server (the URI is
forwarded to the workers); artifacts then go through the server to its artifact store (S3), so clients need
no S3 credentials. Runs carry their owning process (``pipeline.owner``): a stage that starts marks FAILED
the runs still RUNNING whose owner on this host is gone (``close_dead_runs``).
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from pipeline.redact import redact

DEFAULT_DB = "mlflow.db"


def tracking_uri() -> str:
    uri = os.environ.get("MLFLOW_TRACKING_URI")
    return uri if uri else f"sqlite:///{Path.cwd().resolve() / DEFAULT_DB}"


def client(uri: str | None = None):
    from mlflow.tracking import MlflowClient

    # the store's schema migrations log at INFO ("Creating initial MLflow database tables...") in every stage
    logging.getLogger("mlflow.store.db.utils").setLevel(logging.WARNING)
    logging.getLogger("alembic").setLevel(logging.WARNING)
    return MlflowClient(tracking_uri=uri or tracking_uri())


def experiment_name(prefix: str, dataset: str) -> str:
    return f"{prefix}-{dataset}"


# MLflow 3's UI opens an experiment on its GenAI overview unless told it holds model training runs
KIND_TAG, KIND = "mlflow.experimentKind", "custom_model_development"


def get_experiment(c, name: str) -> str:
    exp = c.get_experiment_by_name(name)
    if exp is not None:
        if exp.lifecycle_stage == "deleted":
            c.restore_experiment(exp.experiment_id)
        if KIND_TAG not in exp.tags:
            c.set_experiment_tag(exp.experiment_id, KIND_TAG, KIND)
        return exp.experiment_id
    try:
        return c.create_experiment(name, tags={KIND_TAG: KIND})
    except Exception:  # created concurrently by another process
        return c.get_experiment_by_name(name).experiment_id


def flatten(d: Mapping[str, Any], prefix: str = "") -> dict[str, str]:
    """Nested settings as MLflow params (``a.b.c``), credentials in URLs redacted (``pipeline.redact``)."""
    out: dict[str, str] = {}
    for k, v in d.items():
        key = f"{prefix}{k}"
        if isinstance(v, Mapping):
            out.update(flatten(v, key + "."))
        else:
            out[key] = redact(str(v))[:6000]
    return out


def find_or_create_run(
    c,
    experiment_id: str,
    run_name: str,
    tags: Mapping[str, str],
    params: Mapping[str, Any],
    parent_run_id: str | None = None,
    reopen: bool = True,
) -> tuple[str, bool]:
    """The run tagged with this ``run_key`` (and seed, trial) if one exists, else a new one; (run_id, existed).
    An existing run is set RUNNING again (and owned by this process) when ``reopen``: it is about to go on;
    a finished unit merely reused keeps its status."""
    from mlflow.entities import Param
    from mlflow.utils.mlflow_tags import MLFLOW_PARENT_RUN_ID

    keys = ("run_key", "seed", "trial")
    filt = " and ".join(f"tags.{k} = '{tags[k]}'" for k in keys if k in tags)
    found = c.search_runs([experiment_id], filter_string=filt, max_results=1) if filt else []
    if found:
        run_id = found[0].info.run_id
        if not reopen:
            return run_id, True
        c.update_run(run_id, status="RUNNING")
        for k, v in owner_tags().items():  # this process carries the run on now
            c.set_tag(run_id, k, v)
        return run_id, True
    all_tags = {k: redact(str(v)) for k, v in {**tags, **owner_tags()}.items()}
    if parent_run_id:
        all_tags[MLFLOW_PARENT_RUN_ID] = parent_run_id
    run = c.create_run(experiment_id, tags=all_tags, run_name=run_name)
    flat = flatten(params)
    items = [Param(k, v) for k, v in flat.items()]
    for i in range(0, len(items), 100):
        c.log_batch(run.info.run_id, params=items[i : i + 100])
    return run.info.run_id, False


def log_epoch(c, run_id: str, record: Mapping[str, float], step: int, timestamp_ms: int | None = None) -> None:
    from mlflow.entities import Metric

    ts = timestamp_ms or int(time.time() * 1000)
    metrics = [Metric(k, float(v), ts, step) for k, v in record.items() if isinstance(v, (int, float)) and k != "epoch"]
    c.log_batch(run_id, metrics=metrics)


class EpochLog:
    """The per-epoch metrics of one run, each epoch logged exactly once.

    Epochs the run already holds (logged by an attempt that was cut off before its checkpoint was saved, then
    trained again) are not logged twice; epochs saved in a checkpoint but never logged are back-filled.
    """

    def __init__(self, c, run_id: str, probe: str = "val_top1"):
        self.c, self.run_id = c, run_id
        self.logged = {m.step for m in c.get_metric_history(run_id, probe)}

    def log(self, record: Mapping[str, float]) -> bool:
        step = int(record["epoch"])
        if step in self.logged:
            return False
        log_epoch(self.c, self.run_id, record, step, record.get("timestamp_ms"))
        self.logged.add(step)
        return True


def finish(c, run_id: str, status: str = "FINISHED") -> None:
    c.set_terminated(run_id, status=status)


def tags_for(**kw: Any) -> dict[str, str]:
    return {k: str(v) for k, v in kw.items() if v is not None}


OWNER_HOST, OWNER = "pipeline.owner_host", "pipeline.owner"


def _process_id(pid: int) -> str | None:
    """``pid@start-time`` of a live process, None if it is gone (the start time tells a reused pid apart)."""
    import psutil

    try:
        return f"{pid}@{psutil.Process(pid).create_time():.2f}"
    except psutil.NoSuchProcess:
        return None


def owner_tags() -> dict[str, str]:
    """Which process is responsible for ending a run: lets a later stage tell a dead run from a live one."""
    import socket

    return {OWNER_HOST: socket.gethostname(), OWNER: _process_id(os.getpid()) or str(os.getpid())}


def close_dead_runs(c, experiment_id: str) -> list[str]:
    """Mark FAILED every run of the experiment still RUNNING whose owning process on this host is gone
    (a killed ``dvc repro``, a crashed node process); return their ids. A run that is later resumed turns
    RUNNING again and ends FINISHED. Runs owned by other hosts are left to those hosts' stages."""
    import socket

    dead = []
    filt = f"attributes.status = 'RUNNING' and tags.`{OWNER_HOST}` = '{socket.gethostname()}'"
    for r in c.search_runs([experiment_id], filter_string=filt, max_results=1000):
        owner = r.data.tags.get(OWNER, "")
        pid = owner.split("@", 1)[0]
        if pid.isdigit() and _process_id(int(pid)) == owner:
            continue
        c.set_tag(r.info.run_id, "pipeline.failure", f"its process {owner} ended without closing it")
        finish(c, r.info.run_id, "FAILED")
        dead.append(r.info.run_id)
    return dead
