"""A search trial (``pipeline.tune``): what it trains (``make_trainable``: the Ray Tune trainable, training one
``pipeline.units.trial`` unit in the trial's own process), its MLflow run under its search's parent run
(``SearchRecord``) and the status that run ends with (``trial_status``, from Tune's own record of the trial),
its error as one line (``error_line``), its outcome as Tune reports it (``trials_of``) and the progress the
search's driver logs of it (``trial_progress``)."""

from __future__ import annotations

import logging
import re
from dataclasses import dataclass, field
from typing import Any

from ray import tune

from pipeline import tracking, units
from pipeline.config import Params, SearchDim, split_key
from pipeline.spec import DataRef
from pipeline.train.job import dataset_input
from pipeline.train.worker import SESSION, tune_trial

log = logging.getLogger("pipeline.tune")  # the search's lines, as its stage logs them

METRIC = "val_top1"  # what a trial reports each epoch and ASHA ranks by: held-out top-1


def _trial_name(chosen: dict[str, Any], recipe: dict[str, Any]) -> str:
    what = " ".join(f"{split_key(k)[1]}={_fmt(v)}" for k, v in chosen.items())
    return f"recipe | {what}" if chosen == recipe else what


@dataclass(frozen=True)
class SearchRecord:
    """Where one method's search is recorded in MLflow: its experiment and parent run, and what its trial runs
    are found by and tagged with. Trial runs are tagged ``searched_method``, not ``method``: grouping the
    experiment by method shows the training runs only."""

    exp: str
    parent: str
    key: str  # the search's content key: every trial run's run_key
    method: str
    dataset: DataRef
    recipe: dict[str, Any]  # the unsearched recipe as a point of the space (the baseline trial)
    source: dict[str, str] = field(default_factory=dict)  # MLflow source tags (stage, commit)

    def trial_run(
        self, c, trial_id: str, chosen: dict[str, Any], extra: dict[str, Any] | None = None, *, reopen: bool = True
    ) -> str:
        """The MLflow run of one trial, found by its ``run_key`` and Tune trial id (created if there is none,
        with its data set; ``reopen``: an existing one is set RUNNING again, see ``tracking.find_or_create_run``)."""
        d = self.dataset
        run_id, _ = tracking.find_or_create_run(
            c,
            self.exp,
            f"{self.method} trial {trial_id.rpartition('_')[2]} | {_trial_name(chosen, self.recipe)}",
            tracking.tags_for(
                run_key=self.key,
                trial=trial_id,
                stage="tune-trial",
                searched_method=self.method,
                dataset=d.name,
                baseline="recipe" if chosen == self.recipe else None,
            )
            | self.source,
            {**chosen, **(extra or {})},
            parent_run_id=self.parent,
            reopen=reopen,
        )
        tracking.ensure_dataset(c, run_id, dataset_input(d))
        return run_id

    def close_trials(self, c, trials: list[dict[str, Any]], planned: int) -> None:
        """Give every trial's MLflow run its final status and tags (``trial_status``) from Tune's results,
        however far its own process got in closing it; a trial that crashed before it made its run gets one.
        Each trial record notes its run and status. Any other run of this search still RUNNING is closed
        FAILED."""
        ids = set()
        for tr in trials:
            status, tags = trial_status(tr["error"], tr["epochs"], planned)
            run_id = self.trial_run(c, str(tr["trial_id"]), tr["config"], reopen=False)
            for k, v in tags.items():
                c.set_tag(run_id, k, v)
            tracking.finish(c, run_id, status)
            tr.update(mlflow_run=run_id, status=status)
            ids.add(run_id)
        running = f"tags.mlflow.parentRunId = '{self.parent}' and attributes.status = 'RUNNING'"
        for r in c.search_runs([self.exp], running):
            if r.info.run_id not in ids:
                c.set_tag(r.info.run_id, "pipeline.failure", "not among the trials in Tune's results")
                tracking.finish(c, r.info.run_id, "FAILED")


def make_trainable(params: Params, record: SearchRecord, uri: str, session: str):
    """The trainable of one search, for this stage run (``session``: what its trials' results are marked with,
    so a resumed search tells the trials it trained from those it kept)."""
    threads = params.compute.cpus_per_worker

    def trainable(config: dict[str, Any]) -> None:
        chosen = dict(config)
        spec = units.trial(params, record.method, record.dataset, chosen)
        c = tracking.client(uri)
        run_id = record.trial_run(c, tune.get_context().get_trial_id(), chosen, {"unit": spec.model_dump()})
        try:
            tune_trial(spec, threads, uri, run_id, params.compute.fast_path, session=session)  # ends the run
        except Exception as e:  # not ASHA's stop (SystemExit, or the process killed): the search reads Tune's error
            c.set_tag(run_id, "error", error_line(e))
            tracking.finish(c, run_id, "FAILED")
            raise

    return trainable


def trial_progress(method: str, dataset: str, planned: int, chosen_keys: list[str], samples: int):
    """A Tune callback, run by the search's driver (this process), that logs each trial's start, epochs and end:
    trials print nothing themselves (``pipeline.progress``)."""

    def name(trials, trial) -> str:
        return f"tune@{dataset}: {method} trial {trials.index(trial) + 1}/{samples}"

    class TrialProgress(tune.Callback):
        def on_trial_start(self, iteration, trials, trial, **info) -> None:
            values = ", ".join(f"{split_key(k)[1]}={_fmt(trial.config[k])}" for k in chosen_keys)
            log.info("%s starting (%s)", name(trials, trial), values)

        def on_trial_result(self, iteration, trials, trial, result, **info) -> None:
            if "epoch" in result:
                log.info(
                    "%s epoch %d/%d loss %.3f held-out top-1 %.1f%% (%.0f img/s)",
                    name(trials, trial),
                    result["epoch"],
                    planned,
                    result["train_loss"],
                    result[METRIC],
                    result["images_per_s"],
                )

        def on_trial_complete(self, iteration, trials, trial, **info) -> None:
            reached = (trial.last_result or {}).get("epoch", 0)
            if reached < planned:
                log.info("%s stopped by ASHA after epoch %d of %d", name(trials, trial), reached, planned)
            else:
                log.info("%s finished its %d epochs", name(trials, trial), planned)

        def on_trial_error(self, iteration, trials, trial, **info) -> None:
            err = trial.get_pickled_error() or trial.get_error()
            log.info("%s crashed: %s", name(trials, trial), error_line(err))

    return TrialProgress()


def _fmt(v: Any) -> str:
    return f"{v:.3g}" if isinstance(v, float) else str(v)


_ANSI = re.compile(r"\x1b\[[0-9;]*m")


def error_line(err: BaseException | None) -> str | None:
    """An exception as one short line, ``Type: first line of its message``. Ray's wrapper of a trial's error
    (``RayTaskError``, whose text is a traceback) is unwrapped to the trial's own exception."""
    if err is None:
        return None
    cause = getattr(err, "cause", None)
    if isinstance(cause, BaseException):
        err = cause
    msg = next((ln.strip() for ln in _ANSI.sub("", str(err)).splitlines() if ln.strip()), "")
    return (f"{type(err).__name__}: {msg}" if msg else type(err).__name__)[:500]


NO_EPOCH = "RuntimeError: the trial ended without reporting an epoch"


def trial_status(error: str | None, epochs_reached: int, planned: int) -> tuple[str, dict[str, str]]:
    """A search trial's final MLflow status and tags, from what Tune knows of it: FAILED with its ``error`` if
    it raised; FINISHED if it trained its ``planned`` epochs; else KILLED by ASHA (the only thing here that
    ends a trial early without an error) at the epoch it reached. A trial that reported no epoch and no
    error did not run: FAILED."""
    if error is not None:
        return "FAILED", {"error": error}
    if epochs_reached >= planned:
        return "FINISHED", {}
    if epochs_reached == 0:
        return "FAILED", {"error": NO_EPOCH}
    return "KILLED", {"stopped_by": "ASHA", "stopped_at_epoch": str(epochs_reached)}


def trials_of(grid, space: dict[str, SearchDim]) -> list[dict[str, Any]]:
    """Every trial's Tune id, configuration, held-out top-1 per epoch, error (one line; ``error_detail``: Ray's
    full text), seconds trained (``time_s``: Tune's ``time_total_s``) and the stage run that trained it
    (``session``), from Tune's results, in the order the trials were created. A trial that reported nothing
    without an error counts as failed."""
    out = []
    for r in sorted(grid, key=lambda r: _creation_order((r.metrics or {}).get("experiment_tag"))):
        df = r.metrics_dataframe
        if df is not None and METRIC in df:
            hist = [float(v) for v in df.sort_values("training_iteration")[METRIC]]
        else:
            hist = [float(r.metrics[METRIC])] if r.metrics and METRIC in r.metrics else []
        error = error_line(r.error) if r.error else (None if hist else NO_EPOCH)
        out.append(
            {
                "trial_id": (r.metrics or {}).get("trial_id"),
                "config": {k: r.config[k] for k in space},
                "history": hist,
                "epochs": len(hist),
                METRIC: hist[-1] if hist else None,
                "error": error,
                "error_detail": _ANSI.sub("", str(r.error))[-4000:] if r.error else None,
                "time_s": float((r.metrics or {}).get("time_total_s") or 0.0),
                "session": (r.metrics or {}).get(SESSION),
            }
        )
    return out


def _creation_order(tag: str | None) -> tuple[int, str]:
    """A trial's ``experiment_tag`` starts with its creation index (``3_train_lr=0.1``); a trial that reported
    nothing has none and comes last."""
    head = (tag or "").partition("_")[0]
    return (int(head), "") if head.isdigit() else (1 << 30, tag or "")
