"""Hyperparameter search with Ray Tune: seeded random search with ASHA early stopping.

Each trial trains its unit in the trial's own process (one CPU or one GPU) with the same ``train_units``
loop as the Ray Train workers, and reports every epoch to Tune, so ASHA can stop weak trials. Why not the
Train V2 pattern of one ``TorchTrainer`` per trial: on a 2-core machine each trial then costs ~50 s of
Ray Train start-up before its first step (measured), more than the search itself; parallelism comes from
running trials side by side instead. Searches run on a held-out part of the train split, never on the test
split.

MLflow: one parent run per searched method, one nested run per trial. ASHA stops trials by killing them, so
after the search every trial run still marked RUNNING is closed as KILLED, with the epoch it reached.
A finished search is cached under its content key in the run storage: a rerun with unchanged inputs
reuses it.
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

from pipeline import tracking
from pipeline.compute import SECRET_MARKERS, check_workers_before_start, ray_session, storage_path
from pipeline.config import Params, SearchDim, TuneCfg, config_hash
from pipeline.io import write_json
from pipeline.provenance import provenance
from pipeline.spec import DataRef, RunSpec, build_spec, code_digest, data_ref, shared
from pipeline.train.store import SearchCache

METRIC = "val_top1"


def _space(space: dict[str, SearchDim]) -> dict[str, Any]:
    from ray import tune

    out = {}
    for key, d in space.items():
        if d.type == "loguniform":
            out[key] = tune.loguniform(d.low, d.high)
        elif d.type == "uniform":
            out[key] = tune.uniform(d.low, d.high)
        else:
            out[key] = tune.choice(d.values)
    return out


def trial_spec(params: Params, method: str, data: DataRef, chosen: dict[str, Any]) -> RunSpec:
    """The unit a trial trains: the method with ``chosen`` values, tune's epochs, held-out validation."""
    t = params.tune
    return build_spec(
        params,
        method,
        data,
        t.seed,
        {
            **chosen,
            "train.epochs": t.epochs,
            "train.milestones": [m for m in params.recipe(method, data.name).milestones if m < t.epochs],
        },
        val_fraction=t.val_fraction,
        train_subset=t.train_subset,
    )


def _trial_name(chosen: dict[str, Any]) -> str:
    def fmt(v: Any) -> str:
        return f"{v:.3g}" if isinstance(v, float) else str(v)

    return " ".join(f"{k.split('.', 1)[1]}={fmt(v)}" for k, v in chosen.items())


def _make_trainable(
    params: Params, method: str, data: DataRef, exp: str, parent: str, key: str, uri: str, threads: int
):
    def trainable(config: dict[str, Any]) -> None:
        from ray import tune

        from pipeline.train.worker import tune_trial

        chosen = dict(config)
        spec = trial_spec(params, method, data, chosen)
        trial_id = tune.get_context().get_trial_id()
        c = tracking.client(uri)
        run_id, _ = tracking.find_or_create_run(
            c,
            exp,
            f"trial {trial_id} | {_trial_name(chosen)}",
            tracking.tags_for(run_key=key, trial=trial_id, stage="tune-trial", method=method, dataset=data.name),
            {**chosen, "unit": spec.model_dump()},
            parent_run_id=parent,
        )
        tune_trial(spec, threads, uri, run_id, params.compute.fast_path)
        tracking.finish(c, run_id)

    return trainable


def _keep_credentials_out_of_trial_envs() -> None:
    """Ray Tune copies AWS_SECRET_ACCESS_KEY, AWS_SESSION_TOKEN, ... from this process into every trial's
    runtime_env (``ray.tune.execution.class_cache``), which Ray writes verbatim into runtime_env_agent.log.
    Drop them there: trials get credentials from their node's environment, like every other worker
    (``pipeline.compute``). tests/test_cluster.py greps Ray's logs for a planted secret."""
    from ray.tune.execution import class_cache

    names = getattr(class_cache, "ENV_VARS_TO_PROPAGATE", None)
    if isinstance(names, set):
        class_cache.ENV_VARS_TO_PROPAGATE = {n for n in names if not any(m in n for m in SECRET_MARKERS)}


def _concurrent_trials(t: TuneCfg, per_trial: dict[str, int]) -> int:
    """``tune.max_concurrent_trials``, or (auto) as many trials as the cluster's CPUs or GPUs hold at once."""
    import ray

    if t.max_concurrent_trials != "auto":
        return t.max_concurrent_trials
    res = ray.cluster_resources()
    k = res.get("GPU", 0) // per_trial["gpu"] if per_trial["gpu"] else res.get("CPU", 0) // per_trial["cpu"]
    return max(1, min(int(k), t.num_samples))


def search(params: Params, method: str, data: DataRef, key: str, exp: str, c, uri: str) -> dict[str, Any]:
    """Run the ASHA search for one method; return the best values and every trial's outcome."""
    import ray
    from ray import tune
    from ray.tune.schedulers import ASHAScheduler
    from ray.tune.search.basic_variant import BasicVariantGenerator

    t = params.tune
    label = params.method(method).label
    use_gpu = params.compute.use_gpu is True or (
        params.compute.use_gpu == "auto" and ray.cluster_resources().get("GPU", 0) > 0
    )
    per_trial = {"cpu": params.compute.cpus_per_worker, "gpu": 1 if use_gpu else 0}
    _keep_credentials_out_of_trial_envs()
    parent, _ = tracking.find_or_create_run(
        c,
        exp,
        f"search | {label}",
        tracking.tags_for(run_key=key, stage="tune", method=method, dataset=data.name),
        {"tune": t.model_dump(), "base": trial_spec(params, method, data, {}).model_dump()},
    )
    try:
        tuner = tune.Tuner(
            tune.with_resources(
                _make_trainable(params, method, data, exp, parent, key, uri, params.compute.cpus_per_worker), per_trial
            ),
            param_space=_space(t.space),
            tune_config=tune.TuneConfig(
                metric=METRIC,
                mode="max",
                num_samples=t.num_samples,
                scheduler=ASHAScheduler(
                    max_t=t.epochs, grace_period=t.grace_period, reduction_factor=t.reduction_factor
                ),
                # seeded random search; the concurrency limit must live here (TuneConfig's ignores generators)
                search_alg=BasicVariantGenerator(max_concurrent=_concurrent_trials(t, per_trial), random_state=t.seed),
            ),
            run_config=tune.RunConfig(
                name=f"{data.name}-tune-{method}-{key}", storage_path=storage_path(params.compute), verbose=0
            ),
        )
        grid = tuner.fit()
    except BaseException:
        tracking.finish(c, parent, "FAILED")
        raise
    trials = []
    for r in grid:
        if r.metrics is None:
            continue
        trials.append(
            {
                "config": {k: r.config[k] for k in t.space},
                METRIC: r.metrics.get(METRIC),
                "epochs": r.metrics.get("training_iteration"),
                "error": str(r.error) if r.error else None,
            }
        )
    ok = [tr for tr in trials if tr[METRIC] is not None and tr["error"] is None]
    if not ok:
        tracking.finish(c, parent, "FAILED")
        raise RuntimeError(f"tune@{data.name}: every trial of {method} failed: {trials}")
    best = max(ok, key=lambda tr: (tr["epochs"], tr[METRIC]))  # full-length trials first, then accuracy
    _close_stopped_trials(c, exp, parent)
    c.log_metric(parent, f"best_{METRIC}", best[METRIC])
    for k, v in best["config"].items():
        c.set_tag(parent, f"best.{k}", str(v))
    c.log_text(parent, json.dumps(trials, indent=2, default=str), "trials.json")
    tracking.finish(c, parent)
    return {"best": best["config"], METRIC: best[METRIC], "trials": trials, "mlflow_parent_run": parent, "key": key}


def _close_stopped_trials(c, exp: str, parent: str) -> None:
    """Trials that ASHA stopped were killed mid-job: close their runs as KILLED, noting the epoch reached."""
    for r in c.search_runs([exp], f"tags.mlflow.parentRunId = '{parent}' and attributes.status = 'RUNNING'"):
        hist = c.get_metric_history(r.info.run_id, METRIC)
        c.set_tag(r.info.run_id, "stopped_by", f"ASHA after epoch {max((m.step for m in hist), default=0)}")
        tracking.finish(c, r.info.run_id, "KILLED")


def tune_dataset(params: Params, dataset: str, data_dir: str | Path, out_file: str | Path) -> dict[str, Any]:
    """Search every method in ``tune.methods`` on ``dataset``; write {method: result} to ``out_file``."""
    t0 = time.time()
    check_workers_before_start(params.compute.model_copy(update={"num_workers": 1}))
    data = data_ref(dataset, data_dir)
    cache = SearchCache(storage_path(params.compute), dataset)
    keys = {
        m: config_hash(trial_spec(params, m, data, {}).identity(), params.tune.model_dump(), code_digest())
        for m in params.tune.methods
    }
    results: dict[str, Any] = {}
    todo = []
    for m in params.tune.methods:
        hit = cache.get(keys[m])
        if hit is not None:
            results[m] = {**hit, "cached": True}
        else:
            todo.append(m)
    if todo:
        data = shared(data, params.compute.shared_data)  # where the trials read it
        uri = tracking.tracking_uri()
        c = tracking.client(uri)
        exp = tracking.get_experiment(c, tracking.experiment_name(params.mlflow.experiment_prefix, dataset))
        for run_id in tracking.close_dead_runs(c, exp):
            print(f"tune@{dataset}: MLflow run {run_id} was left RUNNING by a process that died: marked FAILED")
        with ray_session():
            for m in todo:
                results[m] = search(params, m, data, keys[m], exp, c, uri)
                cache.put(keys[m], results[m])
                results[m]["cached"] = False
    out = {"methods": results, "provenance": provenance(wall_time_s=round(time.time() - t0, 1))}
    write_json(out_file, out)
    return out
