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

import getpass
import logging
import os
import socket
import time
import warnings
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import psutil
from mlflow.data.dataset_source_registry import resolve_dataset_source
from mlflow.data.meta_dataset import MetaDataset
from mlflow.entities import DatasetInput, InputTag, Metric, Param
from mlflow.system_metrics.system_metrics_monitor import SystemMetricsMonitor
from mlflow.tracking import MlflowClient
from mlflow.utils.mlflow_tags import (
    MLFLOW_DATASET_CONTEXT,
    MLFLOW_GIT_COMMIT,
    MLFLOW_PARENT_RUN_ID,
    MLFLOW_SOURCE_NAME,
    MLFLOW_SOURCE_TYPE,
    MLFLOW_USER,
)

from pipeline.config import Frozen
from pipeline.redact import carries_credentials, redact, redact_url

DEFAULT_DB = "mlflow.db"
log = logging.getLogger(__name__)


def tracking_uri() -> str:
    uri = os.environ.get("MLFLOW_TRACKING_URI")
    return uri if uri else f"sqlite:///{Path.cwd().resolve() / DEFAULT_DB}"


def client(uri: str | None = None):
    # the store's schema migrations log at INFO ("Creating initial MLflow database tables...") in every stage,
    # the system metrics monitor at every start and stop
    for name in ("mlflow.store.db.utils", "alembic", "mlflow.system_metrics"):
        logging.getLogger(name).setLevel(logging.WARNING)
    uri = uri or tracking_uri()
    keep_credentials_out_of_mlflow_output(uri)
    return MlflowClient(tracking_uri=uri)


class _Redacting(logging.Filter):
    """MLflow's own log records (and their tracebacks) with credentials hidden (``pipeline.redact``): the URLs
    it names are built from the tracking URI, userinfo included."""

    def filter(self, record: logging.LogRecord) -> bool:
        try:
            msg = record.getMessage()
        except Exception:  # a malformed record: the handler reports it (handleError), a filter must not raise
            return True
        if (shown := redact(msg)) != msg:
            record.msg, record.args = shown, None
        if record.exc_info and not record.exc_text:
            record.exc_text = redact(logging.Formatter().formatException(record.exc_info))
        return True


# MLflow prints "View run <name> at: <url>" / "View experiment at: <url>" when a run on a tracking server ends,
# straight to stdout (``TrackingServiceClient._log_url``), the URL built from the tracking URI *with* its userinfo
# (``http://alice:<pw>@host/#/experiments/...``). Not a log record, so no filter can redact it: with a URI that
# carries a credential MLflow is told not to print them (the pipeline's own lines name the runs, redacted).
SUPPRESS_URLS = "MLFLOW_SUPPRESS_PRINTING_URL_TO_STDOUT"


def keep_credentials_out_of_mlflow_output(uri: str) -> None:
    """MLflow's own output in this process (``client`` sees to it, each time: it is idempotent): its log records
    redacted; its printed run and experiment links silenced when ``uri`` carries a credential (in the Ray workers
    this process starts too: they inherit the setting)."""
    if carries_credentials(uri):
        os.environ[SUPPRESS_URLS] = "true"
    for handler in logging.getLogger("mlflow").handlers:  # MLflow's own handler: its loggers do not propagate
        if not any(isinstance(f, _Redacting) for f in handler.filters):
            handler.addFilter(_Redacting())


def experiment_name(prefix: str, dataset: str) -> str:
    return f"{prefix}-{dataset}"


def report_experiment_name(prefix: str) -> str:
    """The report runs' experiment: apart from the training runs, whose charts they would crowd."""
    return f"{prefix}-report"


def run_path(experiment_id: str, run_id: str) -> str:
    """A run's page in the MLflow UI, relative to the UI's address."""
    return f"#/experiments/{experiment_id}/runs/{run_id}"


def ui_url(path: str) -> str:
    """Where the MLflow UI shows ``path`` (``run_path``): on the tracking server, or -- for a local store -- on
    the UI that ``mlflow ui`` serves for it (port 5000 by default)."""
    uri = tracking_uri()
    if uri.startswith(("http://", "https://")):
        return f"{redact_url(uri).rstrip('/')}/{path}"
    return f"http://127.0.0.1:5000/{path} (start the UI: mlflow ui --backend-store-uri {redact_url(uri)})"


NOTE = "mlflow.note.content"  # the description the UI shows on a run's or an experiment's page (Markdown)


def link_report(
    c, run_id: str, *, report_experiment: str, training_experiment: str, train_name: str, dataset: str
) -> None:
    """Link a report run and the training experiment (``training_experiment``, named ``train_name``) it reports
    on, both ways: the run's tags and description name the training experiment; the training experiment's tags
    and description name the report run."""
    c.set_tag(run_id, "training_experiment", train_name)
    c.set_tag(run_id, "training_experiment_id", training_experiment)
    c.set_tag(run_id, NOTE, f"The report on {dataset}: the training runs are in [{train_name}]"
              f"(#/experiments/{training_experiment}) (one run per method and seed).")  # fmt: skip
    for k, v in {
        "report_experiment_id": report_experiment,
        "report_run_id": run_id,
        NOTE: f"Model training runs on {dataset}: one run per (method, seed), with its per-epoch metrics, "
        f"logged model and test metrics. The report (tables, verdicts, figures): [report | {dataset}]"
        f"({run_path(report_experiment, run_id)}) in the experiment of reports.",
    }.items():
        c.set_experiment_tag(training_experiment, k, v)


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
    start_time_ms: int | None = None,
    match: tuple[str, ...] = ("run_key", "seed", "trial"),
) -> tuple[str, bool]:
    """The run tagged with this ``run_key`` (and seed, trial: the ``match`` tags ``tags`` has) if one exists,
    else a new one; (run_id, existed). An existing run is set RUNNING again (and owned by this process) when
    ``reopen``: it is about to go on; a finished unit merely reused keeps its status."""
    filt = " and ".join(f"tags.{k} = '{tags[k]}'" for k in match if k in tags)
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
    run = c.create_run(experiment_id, tags=all_tags, run_name=run_name, start_time=start_time_ms)
    flat = flatten(params)
    items = [Param(k, v) for k, v in flat.items()]
    for i in range(0, len(items), 100):
        c.log_batch(run.info.run_id, params=items[i : i + 100])
    return run.info.run_id, False


class UnitRun(Frozen):
    """Where a training unit's MLflow run lives and what it is called: the train stage's driver decides, the
    worker that trains the unit opens the run when the unit starts (``open_run``)."""

    experiment_id: str
    name: str
    tags: dict[str, str]


def source_tags(stage: str, commit: str) -> dict[str, str]:
    """MLflow's standard source tags, which the UI shows in its Source column: the DVC stage that made the run
    (``dvc repro <stage>`` reproduces it) and the git commit of the code."""
    return {
        MLFLOW_SOURCE_NAME: f"dvc repro {stage}",
        MLFLOW_SOURCE_TYPE: "LOCAL",
        MLFLOW_GIT_COMMIT: commit,
        MLFLOW_USER: _user(),
    }


def _user() -> str:
    try:
        return getpass.getuser()
    except (KeyError, OSError):  # no name for this uid (a container)
        return "unknown"


# MLflow's datasets table holds a digest of at most 36 characters: the data checksum's first 32 hex digits
DIGEST_CHARS = 32


def log_dataset(c, run_id: str, *, name: str, sha256: str, source: str, context: str) -> None:
    """Record the data set a run used (``mlflow.log_input`` for a given run): the UI's Dataset column shows
    ``name`` with the data checksum as its digest and ``source`` (a local path or URI) as where it was read."""
    with warnings.catch_warnings():  # MLflow registers two local-file sources (schemes "" and "file") and says so
        warnings.filterwarnings("ignore", message="The specified dataset source can be interpreted in multiple ways")
        where = resolve_dataset_source(redact_url(source))
    ds = MetaDataset(where, name=name, digest=sha256[:DIGEST_CHARS])
    c.log_inputs(run_id, datasets=[DatasetInput(ds._to_mlflow_entity(), [InputTag(MLFLOW_DATASET_CONTEXT, context)])])


def find_run(c, experiment_id: str, run_key: str):
    """The run tagged with ``run_key`` in the experiment, or None."""
    found = c.search_runs([experiment_id], filter_string=f"tags.run_key = '{run_key}'", max_results=1)
    return found[0] if found else None


def open_run(c, ref: UnitRun, params: Mapping[str, Any], *, dataset: Mapping[str, str]) -> str:
    """The unit's run, found by its ``run_key`` tag (RUNNING again, owned by this process) or made now, so that
    it starts when the unit does; with its data set recorded (``log_dataset``: name, sha256, source)."""
    run_id, _ = find_or_create_run(c, ref.experiment_id, ref.name, ref.tags, params, reopen=True)
    ensure_dataset(c, run_id, dataset)
    return run_id


def ensure_dataset(c, run_id: str, dataset: Mapping[str, str], context: str = "training") -> None:
    """``log_dataset`` unless the run already records a data set (a resumed run, a reopened trial)."""
    if not c.get_run(run_id).inputs.dataset_inputs:
        log_dataset(c, run_id, context=context, **dataset)


def settle_unit_run(
    c, ref: UnitRun, params: Mapping[str, Any], record: Mapping[str, Any], *, dataset: Mapping[str, str]
) -> str:
    """The run of a finished unit (``record``: the unit store's), made complete: created from the record if
    it never existed (a fresh MLflow store beside a kept unit store), its epochs back-filled and the run ended
    FINISHED at the unit's own finishing time if it was cut off after the unit was stored. Its id."""
    wall = record.get("wall") or {}
    run = find_run(c, ref.experiment_id, ref.tags["run_key"])
    if run is not None and run.info.status == "FINISHED":
        return run.info.run_id
    if run is None:
        start = int(wall["started_at"] * 1000) if "started_at" in wall else None
        run_id, _ = find_or_create_run(
            c, ref.experiment_id, ref.name, ref.tags, params, reopen=False, start_time_ms=start
        )
        log_dataset(c, run_id, context="training", **dataset)
    else:
        run_id = run.info.run_id
    epochs = EpochLog(c, run_id)
    for rec in record.get("history", []):
        epochs.log(rec)
    end = int(wall["finished_at"] * 1000) if "finished_at" in wall else None
    c.set_terminated(run_id, status="FINISHED", end_time=end)
    return run_id


NOT_METRICS = ("epoch", "timestamp_ms")  # an epoch record's step and time: the metric's own step and timestamp


def log_epoch(
    c, run_id: str, record: Mapping[str, float], step: int, timestamp_ms: int | None = None, *, wait: bool = True
):
    """An epoch's numbers as metrics at ``step``. ``wait=False``: queued to MLflow's async logger, so training
    goes on while the store writes; returns the pending operation (``.wait()``), else None."""
    ts = timestamp_ms or int(time.time() * 1000)
    numbers = {k: v for k, v in record.items() if isinstance(v, (int, float)) and k not in NOT_METRICS}
    metrics = [Metric(k, float(v), ts, step) for k, v in numbers.items()]
    return c.log_batch(run_id, metrics=metrics, synchronous=wait)


class EpochLog:
    """The per-epoch metrics of one run, each epoch logged exactly once.

    Epochs the run already holds (logged by an attempt that was cut off before its checkpoint was saved, then
    trained again) are not logged twice; epochs saved in a checkpoint but never logged are back-filled.
    With ``owns_run`` the log also ends the run (``end``), and with ``system_metrics_s`` it samples the
    machine (CPU, memory, disk, network; GPU where NVIDIA's library is present) into the run as MLflow's
    ``system/`` metrics every that many seconds while it is open.
    """

    def __init__(self, c, run_id: str, probe: str = "val_top1", *, owns_run: bool = False, system_metrics_s: float = 0):
        self.c, self.run_id, self.owns_run = c, run_id, owns_run
        self.logged = {m.step for m in c.get_metric_history(run_id, probe)}
        self.pending: list[Any] = []  # epochs queued to MLflow's async logger, waited for by ``end``
        self.monitor = None
        if system_metrics_s > 0:
            self.monitor = SystemMetricsMonitor(
                run_id, sampling_interval=system_metrics_s, resume_logging=True, tracking_uri=c.tracking_uri
            )
            self.monitor.start()

    def log(self, record: Mapping[str, float]) -> bool:
        step = int(record["epoch"])
        if step in self.logged:
            return False
        # asynchronously when this log owns the run (a training unit): the epoch's record is in the checkpoint
        # already, and an epoch a crash kept from the store is back-filled when the unit resumes (``restore``)
        op = log_epoch(self.c, self.run_id, record, step, record.get("timestamp_ms"), wait=not self.owns_run)
        if op is not None:
            self.pending.append(op)
        self.logged.add(step)
        return True

    def end(self, status: str = "FINISHED", end_time_ms: int | None = None) -> None:
        """The unit is done (or failed): stop sampling the machine, and end the run (at ``end_time_ms``, else
        now) if this log owns it and this process still carries it. A worker of a failed attempt can raise long
        after Ray started the next one (stuck in a collective with a dead peer): that attempt has reopened the
        run, and its status is its own."""
        for op in self.pending:  # every epoch in the store before the run ends
            op.wait()
        self.pending.clear()
        if self.monitor is not None:
            self.monitor.finish()
            # the monitor publishes a sample only once a whole interval has passed: a unit shorter than that
            # would have none. One more, over the time since its last, as the unit ends.
            self.monitor.collect_metrics()
            self.monitor.publish_metrics(self.monitor.aggregate_metrics())
            self.monitor.mlflow_logger.flush()
            self.monitor = None
        if self.owns_run and self.c.get_run(self.run_id).data.tags.get(OWNER) == owner_tags()[OWNER]:
            finish(self.c, self.run_id, status, end_time_ms)


def finish(c, run_id: str, status: str = "FINISHED", end_time_ms: int | None = None) -> None:
    c.set_terminated(run_id, status=status, end_time=end_time_ms)


def tags_for(**kw: Any) -> dict[str, str]:
    return {k: str(v) for k, v in kw.items() if v is not None}


OWNER_HOST, OWNER = "pipeline.owner_host", "pipeline.owner"


def _process_id(pid: int) -> str | None:
    """``pid@start-time`` of a live process, None if it is gone (the start time tells a reused pid apart)."""
    try:
        return f"{pid}@{psutil.Process(pid).create_time():.2f}"
    except psutil.NoSuchProcess:
        return None


def owner_tags() -> dict[str, str]:
    """Which process is responsible for ending a run: lets a later stage tell a dead run from a live one."""
    return {OWNER_HOST: socket.gethostname(), OWNER: _process_id(os.getpid()) or str(os.getpid())}


def open_experiment(c, name: str, stage: str) -> str:
    """The experiment ``name`` (``get_experiment``), its runs a dead process left RUNNING closed FAILED first
    (``close_dead_runs``), each said in a line naming ``stage`` (``train@cifar10``)."""
    exp = get_experiment(c, name)
    for run_id in close_dead_runs(c, exp):
        log.info("%s: MLflow run %s was left RUNNING by a process that died: marked FAILED", stage, run_id)
    return exp


def close_dead_runs(c, experiment_id: str) -> list[str]:
    """Mark FAILED every run of the experiment still RUNNING whose owning process on this host is gone
    (a killed ``dvc repro``, a crashed node process); return their ids. A run that is later resumed turns
    RUNNING again and ends FINISHED. Runs owned by other hosts are left to those hosts' stages."""
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
