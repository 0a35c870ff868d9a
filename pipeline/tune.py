"""The search track: a seeded search (``tune.searcher``: random, or Optuna's TPE) with ASHA early stopping (Ray
Tune), the same for every method.

Every searched method gets the same budget -- ``tune.num_samples`` trials of up to ``tune.epochs`` epochs --
over the same recipe space (``tune.space``: lr, weight decay), plus its own architecture choices
(``tune.arch_space[method]``) inside that budget. Each trial trains a compressed copy of the final run: the
same schedule shape squeezed into ``tune.epochs`` (step milestones and warm-up scaled, cosine over the trial's
own length), on a held-out part of the train split, never the test split.

The first trial of every search is the unsearched recipe itself (Tune's ``points_to_evaluate``). A searched
setting is adopted only if its held-out top-1 beats the recipe's, at the last epoch both reached, by more
than that split's noise (``pipeline.stats.binomial_margin``: 1.96 standard errors of the difference on the
held-out images), and only if it left chance; otherwise the method keeps its recipe and the record says why.
Trials whose accuracy never left chance are marked so.

Each trial trains in the trial's own process (one CPU or one GPU) with the same loop as the Ray Train
workers, reporting every epoch to Tune so ASHA can stop weak trials (``pipeline.trials``). Why not one
``TorchTrainer`` per trial: each would pay Ray Train's start-up, on a small machine more than the trial itself.

MLflow: one parent run per searched method, one nested run per trial. After the search every trial run gets
its final status from Tune's own record of the trial (``pipeline.trials.trial_status``), not from whether its process
managed to close it (ASHA ends a trial's process right after its last report): FINISHED if it trained all
``tune.epochs``; FAILED, with its error in the ``error`` tag, if it raised; KILLED, tagged ``stopped_by`` ASHA
and ``stopped_at_epoch``, if ASHA stopped it earlier. A crashed trial fails the search (``SearchError``: the
stage exits 1 naming the trial and its error; the parent run is FAILED) unless ``tune.on_trial_error`` is
``exclude``: then it stays recorded FAILED, is left out of the decision, and tune.json lists it under
``excluded``. A search that ends this way is cached under its content key in the run storage: a rerun with
unchanged inputs reuses it (a search that failed is never cached, and one that excluded crashed trials is not
reused under ``fail``). A search interrupted before it finished is restored from Tune's state in the run
storage (``Tuner.restore``): the trials it had ended are kept, and ASHA's rungs rebuilt from them
(``ResumableASHA``); its record says how many trials were kept, and what every search consumed (``consumed``).
"""

from __future__ import annotations

import inspect
import json
import logging
import math
import os
import time
import uuid
from pathlib import Path
from typing import Any

import optuna
import ray
from ray import tune
from ray.tune.schedulers import ASHAScheduler
from ray.tune.search import ConcurrencyLimiter
from ray.tune.search.basic_variant import BasicVariantGenerator
from ray.tune.search.optuna import OptunaSearch

from pipeline import tracking, units
from pipeline.compute import check_workers_before_start, keep_credentials_out_of_trials, ray_session, storage_path
from pipeline.config import Params, SearchDim, TuneCfg, split_key
from pipeline.data.manifest import load_manifest
from pipeline.errors import StageError
from pipeline.io import write_json
from pipeline.models import get_factory
from pipeline.provenance import git_commit, provenance
from pipeline.spec import DataRef, data_ref, shared
from pipeline.stats import binomial_margin, near_chance
from pipeline.train.job import dataset_input
from pipeline.train.store import KeyedStore
from pipeline.train.worker import HISTORY
from pipeline.trials import (
    METRIC,
    SearchRecord,
    make_trainable,
    trial_progress,
    trials_of,
)

log = logging.getLogger(__name__)


class SearchError(StageError):
    """A search that cannot give a decision: a trial crashed (under ``tune.on_trial_error: fail``), or every
    trial did."""


def _space(space: dict[str, SearchDim]) -> dict[str, Any]:
    out = {}
    for key, d in space.items():
        if d.type == "loguniform":
            out[key] = tune.loguniform(d.low, d.high)
        elif d.type == "uniform":
            out[key] = tune.uniform(d.low, d.high)
        else:
            out[key] = tune.choice(d.values)
    return out


def recipe_point(params: Params, method: str, dataset: str) -> dict[str, Any]:
    """The unsearched recipe as a point of ``method``'s search space: its recipe's values, and its model's
    configured (or default) arguments."""
    recipe = params.recipe(method, dataset)
    model, args = params.model_of(method, dataset)
    defaults = {
        k: p.default for k, p in inspect.signature(get_factory(model)).parameters.items() if p.default is not p.empty
    }
    point = {}
    for key in params.tune.space_of(method):
        section, name = split_key(key)
        point[key] = getattr(recipe, name) if section == "train" else args.get(name, defaults.get(name))
    return point


def _concurrent_trials(t: TuneCfg, per_trial: dict[str, int]) -> int:
    """``tune.max_concurrent_trials``, or (auto) as many trials as the cluster's CPUs or GPUs hold at once."""
    if t.max_concurrent_trials != "auto":
        return t.max_concurrent_trials
    res = ray.cluster_resources()
    k = res.get("GPU", 0) // per_trial["gpu"] if per_trial["gpu"] else res.get("CPU", 0) // per_trial["cpu"]
    return max(1, min(int(k), t.num_samples))


def decide(trials: list[dict[str, Any]], recipe: dict[str, Any], *, n_val: int, num_classes: int) -> dict[str, Any]:
    """Whether the search found a better setting than the recipe. ``trials``: {config, history (held-out
    top-1 per epoch), error}; the recipe's own trial is the one whose config equals ``recipe``.

    Adopted only if the best trial (longest-running first, then most accurate) left chance and beats the
    recipe's trial at the last epoch both reached by more than ``binomial_margin`` on the ``n_val`` images."""
    for tr in trials:
        tr["at_chance"] = bool(tr["history"]) and near_chance(max(tr["history"]), num_classes, n_val)
    ok = [tr for tr in trials if tr["history"] and tr["error"] is None]
    base = next((tr for tr in ok if tr["config"] == recipe), None)
    others = [tr for tr in ok if tr is not base and not tr["at_chance"]]
    out: dict[str, Any] = {"adopted": False, "chosen": {}, "best": None, "recipe_val_top1": None, "margin": None}
    if base is not None:
        out["recipe_val_top1"] = base["history"][-1]
    if not others:
        out["reason"] = (
            "every searched trial stayed at chance"
            if any(tr is not base for tr in ok)
            else "every searched trial failed (see its error)"
        )
        return out
    best = max(others, key=lambda tr: (len(tr["history"]), tr["history"][-1]))
    out["best"] = best["config"]
    if base is None:
        out.update(
            adopted=True, chosen=best["config"], reason="the recipe's own trial failed; the best trial left chance"
        )
        return out
    e = min(len(best["history"]), len(base["history"]))
    b, r = best["history"][e - 1], base["history"][e - 1]
    margin = binomial_margin(b, r, n_val)
    out.update(margin=margin, compared_at_epoch=e, best_val_top1=b, recipe_at_epoch=r)
    if b - r > margin:
        out.update(adopted=True, chosen=best["config"], reason=f"beat the recipe by {b - r:.2f} > {margin:.2f} points")
    else:
        out["reason"] = f"best trial {b - r:+.2f} points vs the recipe, within the held-out noise of ±{margin:.2f}"
    return out


def _fail(c, parent: str, err: SearchError) -> None:
    c.set_tag(parent, "error", str(err)[:5000])
    tracking.finish(c, parent, "FAILED")
    raise err


def search(
    params: Params, method: str, data: DataRef, key: str, exp: str, c, uri: str, *, n_val: int, also: list[str]
) -> dict[str, Any]:
    """Run the ASHA search for one method (and for the methods ``also``, whose search it is as well: one
    network, recipe and space), or resume it where an interrupted stage left it; return its trials, the
    budget it consumed and the adoption decision."""
    t = params.tune
    space = t.space_of(method)
    record = _open_search(params, method, data, key, exp, c, also)
    session, t0 = uuid.uuid4().hex, time.time()
    per_trial = _per_trial(params)
    side_by_side = _concurrent_trials(t, per_trial)
    try:
        tuner, resumed = _tuner_or_restored(params, record, uri, space, session, per_trial, side_by_side)
        grid = tuner.fit()
    except BaseException:
        tracking.finish(c, record.parent, "FAILED")
        raise
    trials = trials_of(grid, space)
    record.close_trials(c, trials, t.epochs)
    c.log_text(record.parent, json.dumps(trials, indent=2, default=str), "trials.json")
    crashed = [tr for tr in trials if tr["error"] is not None]
    _refuse_crashes(c, record, trials, crashed, t)
    result = decide(trials, record.recipe, n_val=n_val, num_classes=data.num_classes)
    _tag_decision(c, record.parent, result, crashed)
    return {
        **result,
        "recipe": record.recipe,
        "trials": trials,
        "excluded": [{k: tr[k] for k in ("trial_id", "config", "error")} for tr in crashed],
        "budget": {"trials": t.num_samples, "epochs_per_trial": t.epochs, "space": list(space)},
        "searcher": t.searcher,
        "consumed": consumed(trials, devices=per_trial),
        "wall_s": round(time.time() - t0, 1),  # this stage run's part (a resumed search: since it resumed)
        "resumed": _kept(trials, session) if resumed else None,
        "side_by_side": side_by_side,  # trials at a time
        "val_images": n_val,
        "mlflow_parent_run": record.parent,
        "key": key,
    }


def _open_search(params: Params, method: str, data: DataRef, key: str, exp: str, c, also: list[str]) -> SearchRecord:
    """The search's parent run (found by its key, or made), with its settings, source and data set; tagged
    ``searched_methods``: every method whose search it is."""
    t = params.tune
    recipe = recipe_point(params, method, data.name)
    source = tracking.source_tags(f"tune@{data.name}", git_commit()["commit"])
    methods = ",".join([method, *also])
    tags = tracking.tags_for(run_key=key, stage="tune", searched_method=method, searched_methods=methods)
    parent, _ = tracking.find_or_create_run(
        c,
        exp,
        f"{method} search" + (f" (also {', '.join(also)})" if also else ""),
        tags | tracking.tags_for(dataset=data.name) | source,
        {
            "tune": t.model_dump(),
            "space": list(t.space_of(method)),
            "recipe": recipe,
            "base": units.trial(params, method, data, {}).model_dump(),
        },
        match=("run_key", "stage"),  # a search run, never one of its trials (they share the search's run_key)
    )
    tracking.ensure_dataset(c, parent, dataset_input(data))
    return SearchRecord(exp, parent, key, method, data, recipe, source)


def _per_trial(params: Params) -> dict[str, int]:
    """What one trial holds: ``compute.cpus_per_worker`` CPUs, or one GPU where the search uses GPUs."""
    use_gpu = params.compute.use_gpu is True or (
        params.compute.use_gpu == "auto" and ray.cluster_resources().get("GPU", 0) > 0
    )
    return {"cpu": params.compute.cpus_per_worker, "gpu": 1 if use_gpu else 0}


def consumed(trials: list[dict[str, Any]], *, devices: dict[str, int]) -> dict[str, Any]:
    """The budget a search used: trials run, epochs trained over all trials (after ASHA's stops) and
    device-seconds (each trial's seconds times the GPUs, else the CPUs, it held; a restored trial's seconds are
    those of the run that trained it)."""
    device, count = ("GPU", devices["gpu"]) if devices["gpu"] else ("CPU", devices["cpu"])
    return {
        "trials": len(trials),
        "trial_epochs": sum(tr["epochs"] for tr in trials),
        "device_seconds": round(count * math.fsum(tr["time_s"] for tr in trials), 1),
        "device": device,
    }


def _kept(trials: list[dict[str, Any]], session: str) -> dict[str, int]:
    """Of a resumed search's trials: those kept from the interrupted run, and those this run trained."""
    here = sum(1 for tr in trials if tr["session"] == session)
    return {"kept": len(trials) - here, "trained": here}


class ResumableASHA(ASHAScheduler):
    """ASHA whose rungs a restored search rebuilds from the trials it kept. Ray does not restore a scheduler's
    state with its experiment (ray-project/ray#30838): the restored ASHA starts with empty rungs, so the trials
    after the interruption would be held against none of the trials before it, and fewer stopped. Each kept
    (finished or stopped) trial's held-out top-1 after every epoch (its ``HISTORY``) is replayed into its
    bracket, as the uninterrupted search recorded it; trials that were running restart from epoch 1 and record
    their rungs as they reach them."""

    def on_trial_add(self, tune_controller, trial) -> None:
        super().on_trial_add(tune_controller, trial)
        history = (trial.last_result or {}).get(HISTORY)
        if trial.status == trial.TERMINATED and history:
            bracket = self._trial_info[trial.trial_id]
            for epoch, value in enumerate(history, 1):
                bracket.on_result(trial, epoch, self._metric_op * value)


def _searcher(t: TuneCfg, recipe: dict[str, Any], concurrent: int):
    """The search algorithm: seeded, the recipe its first point (one of the ``num_samples`` trials), at most
    ``concurrent`` trials at a time. random: Ray's seeded random search. tpe: Optuna's TPE (its first
    ``tpe_startup_trials`` trials random; ``constant_liar``: a trial still running counts as a poor result, so
    side-by-side suggestions spread instead of repeating one point)."""
    if t.searcher == "random":  # its concurrency limit must live here (TuneConfig's ignores generators)
        return BasicVariantGenerator(points_to_evaluate=[recipe], max_concurrent=concurrent, random_state=t.seed)
    optuna.logging.set_verbosity(optuna.logging.WARNING)  # not a line per study: the pipeline logs its own
    sampler = optuna.samplers.TPESampler(seed=t.seed, n_startup_trials=t.tpe_startup_trials, constant_liar=True)
    return ConcurrencyLimiter(OptunaSearch(points_to_evaluate=[recipe], sampler=sampler), max_concurrent=concurrent)


def _tuner_or_restored(
    params: Params,
    record: SearchRecord,
    uri: str,
    space: dict[str, SearchDim],
    session: str,
    per_trial: dict[str, int],
    side_by_side: int,
) -> tuple[tune.Tuner, bool]:
    """The search's Tuner, and whether it is an interrupted one restored (``Tuner.restore``: the trials Tune
    recorded as ended -- finished, stopped by ASHA or crashed -- are kept, crashed ones trained again; those
    that were running restart; the searcher continues from its saved state; ``ResumableASHA`` its rungs).
    The search's directory is named by its content key, so only the same search is ever restored."""
    keep_credentials_out_of_trials()
    # Tune's new console output prints a configuration box, the results path and a TensorBoard hint for every
    # search whatever `verbose` says; the legacy reporter honours verbose=0. The pipeline prints its own lines.
    os.environ.setdefault("RAY_AIR_NEW_OUTPUT", "0")
    trainable = tune.with_resources(make_trainable(params, record, uri, session), per_trial)
    name = f"{record.dataset.name}-tune-{record.method}-{record.key}"
    path = f"{storage_path(params.compute).rstrip('/')}/{name}"
    if tune.Tuner.can_restore(path):
        log.info("tune@%s: %s: resuming the interrupted search (%s)", record.dataset.name, record.method, path)
        return tune.Tuner.restore(path, trainable, resume_unfinished=True, restart_errored=True), True
    return _tuner(params, record, trainable, space, name, side_by_side), False


def _tuner(
    params: Params, record: SearchRecord, trainable, space: dict[str, SearchDim], name: str, side_by_side: int
) -> tune.Tuner:
    """The search (``tune.searcher``) with ASHA, the recipe as its first trial, ``side_by_side`` trials at a
    time."""
    t, data = params.tune, record.dataset
    return tune.Tuner(
        trainable,
        param_space=_space(space),
        tune_config=tune.TuneConfig(
            metric=METRIC,
            mode="max",
            num_samples=t.num_samples,
            scheduler=ResumableASHA(max_t=t.epochs, grace_period=t.grace_period, reduction_factor=t.reduction_factor),
            search_alg=_searcher(t, record.recipe, side_by_side),
        ),
        run_config=tune.RunConfig(
            name=name,
            storage_path=storage_path(params.compute),
            verbose=0,
            callbacks=[trial_progress(record.method, data.name, t.epochs, list(space), t.num_samples)],
        ),
    )


def _refuse_crashes(c, record: SearchRecord, trials: list[dict[str, Any]], crashed: list[dict[str, Any]], t: TuneCfg):
    """A crashed trial fails the search (``tune.on_trial_error: fail``), and so does a search whose every trial
    crashed: ``SearchError``, the parent run FAILED."""
    listing = "\n".join(f"  trial {tr['trial_id']} {tr['config']}: {tr['error']}" for tr in crashed)
    where, method = f"tune@{record.dataset.name}", record.method
    if crashed and t.on_trial_error == "fail":
        _fail(
            c,
            record.parent,
            SearchError(
                f"{where}: {len(crashed)} of {len(trials)} search trials of method {method!r} crashed:\n"
                f"{listing}\nFix the search space (tune.space, tune.arch_space.{method}) or the model; or set "
                "`tune.on_trial_error: exclude` to record crashed trials as FAILED and leave them out of the "
                "decision."
            ),
        )
    if len(crashed) == len(trials):
        _fail(c, record.parent, SearchError(f"{where}: every search trial of method {method!r} crashed:\n{listing}"))


def _tag_decision(c, parent: str, result: dict[str, Any], crashed: list[dict[str, Any]]) -> None:
    """The decision on the parent run, which then ends FINISHED."""
    c.set_tag(parent, "adopted", str(result["adopted"]))
    c.set_tag(parent, "decision", result["reason"])
    if crashed:
        c.set_tag(parent, "excluded_trials", f"{len(crashed)} crashed (tune.on_trial_error: exclude)")
    for k, v in result["chosen"].items():
        c.set_tag(parent, f"chosen.{k}", str(v))
    tracking.finish(c, parent)


def tune_dataset(params: Params, dataset: str, data_dir: str | Path, out_file: str | Path) -> dict[str, Any]:
    """Search every method of the search track on ``dataset``; write {method: result} to ``out_file``."""
    t0 = time.time()
    results: dict[str, Any] = {}
    if params.searched:
        check_workers_before_start(params.compute.model_copy(update={"num_workers": 1}))
        results = _search_all(params, dataset, data_dir)
    out = {"methods": results, "provenance": provenance(wall_time_s=round(time.time() - t0, 1))}
    write_json(out_file, out)
    return out


class SearchCache(KeyedStore):
    """Finished searches, kept in the run storage under their content key (``search_key``): best values and
    every trial's outcome."""

    def __init__(self, storage_path: str, dataset: str):
        super().__init__(storage_path, "tune-cache", dataset, ".json")

    def get(self, key: str) -> dict[str, Any] | None:
        """The search kept under ``key``; None when there is none, or when it is cut short or changed since it
        was written (then set aside, and searched again)."""
        return self.get_entry(key, dict, what="search-cache entry", then="the search runs again")

    def put(self, key: str, result: dict[str, Any]) -> None:
        self.write_entry(key, result)


def _reusable(hit: dict[str, Any], t: TuneCfg) -> bool:
    """Whether a cached search stands under these settings: one that excluded crashed trials does not
    under ``on_trial_error: fail``, which would have failed on them (it is searched again, and fails)."""
    return t.on_trial_error == "exclude" or not any(tr.get("error") for tr in hit.get("trials", []))


def _search_all(params: Params, dataset: str, data_dir: str | Path) -> dict[str, Any]:
    data, man = data_ref(dataset, data_dir), load_manifest(data_dir)
    cache = SearchCache(storage_path(params.compute), dataset)
    results: dict[str, Any] = {}
    todo = []
    for s in units.searches(params, data):
        hit = cache.get(s.key)
        if hit is not None and _reusable(hit, params.tune):
            results |= {m: {**hit, "cached": True} for m in s.methods}
        else:
            todo.append(s)
    if not todo:
        return results
    data = shared(data, params.compute.shared_data)  # where the trials read it
    uri = tracking.tracking_uri()
    c = tracking.client(uri)
    exp = tracking.open_experiment(
        c, tracking.experiment_name(params.mlflow.experiment_prefix, dataset), f"tune@{dataset}"
    )
    with ray_session():
        for s in todo:
            first, *also = s.methods
            # a search that failed raises here (SearchError): nothing of it is cached
            n_val = s.base.images(man.num_train, man.num_test)[1]  # the held-out images its trials validate on
            r = search(params, first, data, s.key, exp, c, uri, n_val=n_val, also=also)
            cache.put(s.key, r)
            what = f"adopted {r['chosen']}" if r["adopted"] else "kept the recipe"
            log.info("tune@%s: %s: %s (%s)", dataset, " = ".join(s.methods), what, r["reason"])
            results[first] = {**r, "cached": False}
            results |= {m: {**r, "cached": False, "shared_with": first} for m in also}
    return results
