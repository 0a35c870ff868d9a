"""The settings rules that span sections (and need no model code: ``pipeline.models.checks`` has those):
data sets and methods that exist, every recipe valid on every data set of the grid, batches that split over
the workers, an equal search, search values the recipe takes, a study on a data set the pipeline prepares.
Each returns its problems as messages naming the key, the value and what is allowed."""

from __future__ import annotations

from typing import Any

from pydantic import ValidationError

from pipeline.config import Params, SearchDim, TrainCfg, did_you_mean, fmt_loc, split_key


def cross_checks(p: Params) -> list[str]:
    """The rules that span sections and need no model code (``pipeline.models.checks`` has the rest)."""
    errs: list[str] = []
    for d in p.grid.datasets:
        if d not in p.datasets:
            errs.append(
                f"grid.datasets: {d!r} has no entry under 'datasets'{did_you_mean(d, p.datasets)}; defined: "
                f"{sorted(p.datasets)}"
            )
    for m in p.grid.methods:
        if m not in p.methods:
            errs.append(_unknown_method("grid.methods", m, p))
    if "report" in p.datasets:  # experiment names: <prefix>-<dataset> for training, <prefix>-report for reports
        errs.append("datasets.report: the name is the report runs' experiment's (<prefix>-report); allowed: any other")
    errs += _search_checks(p) + _study_checks(p)
    train_fields = set(TrainCfg.model_fields)
    for name, m in p.methods.items():
        bad_t = sorted(set(m.train) - train_fields)
        if bad_t:
            errs.append(_unknown_fields(f"methods.{name}.train", bad_t, train_fields))
        else:
            try:
                p.recipe(name)
            except ValidationError as e:
                errs += [
                    f"methods.{name}.train.{fmt_loc(x['loc'])} = {x.get('input')!r}: "
                    + x["msg"].removeprefix("Value error, ")
                    for x in e.errors()
                ]
        if m.imagenet is not None and set(m.imagenet.train) - train_fields:
            bad = sorted(set(m.imagenet.train) - train_fields)
            errs.append(_unknown_fields(f"methods.{name}.imagenet.train", bad, train_fields))
    for d in p.datasets:  # every entry, in the grid or not: one switched in later must not surprise
        errs += _dataset_recipe_checks(p, d, errs)
    return list(dict.fromkeys(errs))


def _unknown_method(where: str, name: str, p: Params) -> str:
    hint = did_you_mean(name, p.methods)
    return f"{where}: unknown method {name!r}{hint}; defined under 'methods': {sorted(p.methods)}"


def _unknown_fields(where: str, bad: list[str], allowed: set[str]) -> str:
    hints = "".join(did_you_mean(b, allowed, f"{where}.") for b in bad)
    return f"{where}: unknown field(s) {bad}{hints}; allowed: {sorted(allowed)}"


def _dataset_recipe_checks(p: Params, d: str, errs: list[str]) -> list[str]:
    """Every grid method's recipe on data set ``d`` is valid and splits over the workers."""
    train_fields = set(TrainCfg.model_fields)
    bad_t = sorted(set(p.datasets[d].train) - train_fields)
    if bad_t:
        return [_unknown_fields(f"datasets.{d}.train", bad_t, train_fields)]
    out: list[str] = []
    recipe_errs: dict[str, list[str]] = {}
    for name in p.grid.methods:
        if name not in p.methods or any(e.startswith(f"methods.{name}.") for e in errs):
            continue
        try:
            r = p.recipe(name, d)
        except ValidationError as e:
            for x in e.errors():
                where = f"{fmt_loc(x['loc'])} = {x.get('input')!r}: " if x["loc"] else ""
                recipe_errs.setdefault(where + x["msg"].removeprefix("Value error, "), []).append(name)
            continue
        if p.compute.num_workers != "auto" and r.batch_size % p.compute.num_workers:
            out.append(
                f"{batch_setting(p, d, name)} = {r.batch_size}: must be divisible by "
                f"compute.num_workers = {p.compute.num_workers}"
            )
    out += [
        f"datasets.{d}.train = {p.datasets[d].train} (on top of train, under the overrides of methods {ms}): {msg}"
        for msg, ms in recipe_errs.items()
    ]
    return out


def batch_setting(p: Params, d: str, method: str) -> str:
    """The setting a method's batch size on data set ``d`` comes from: the last layer of its recipe that sets it
    (``Params.recipe_layers``)."""
    name = next(n for n, layer in reversed(p.recipe_layers(method, d)) if "batch_size" in layer)
    return f"{name}.batch_size" + (f" (method {method})" if name.startswith("datasets.") else "")


def _study_checks(p: Params) -> list[str]:
    """The study's data set is one the pipeline prepares, and its method is a method (the model code checks
    that every cell builds: ``pipeline.models.checks``)."""
    s, errs = p.study, []
    if s.enabled and s.dataset not in p.grid.datasets:
        errs.append(
            f"study.dataset: {s.dataset!r} is not in grid.datasets {p.grid.datasets} (only those are fetched and "
            "preprocessed); allowed: one of them"
        )
    if s.method not in p.methods:
        errs.append(_unknown_method("study.method", s.method, p))
    return errs


def _search_checks(p: Params) -> list[str]:
    """The search track must be equal: every compared method searched, or none (unless opted out)."""
    t, errs = p.tune, []
    searched = p.searched
    for m in searched:
        if m not in p.methods:
            errs.append(_unknown_method("tune.methods", m, p))
    for key in t.space:
        if split_key(key)[1] not in TrainCfg.model_fields:
            errs.append(
                f"tune.space.{key}: not a recipe field; allowed: {sorted('train.' + f for f in TrainCfg.model_fields)}"
            )
    errs += _space_value_checks(p)
    for m in t.arch_space:
        if searched and m not in searched:  # dormant while nothing is searched
            errs.append(f"tune.arch_space.{m}: {m!r} is not searched; allowed: methods of tune.methods = {t.methods!r}")
    if not searched:
        return errs
    if t.num_samples < 2:
        errs.append(
            f"tune.num_samples = {t.num_samples}: must be >= 2 when searching; the first trial of every search is "
            "the unsearched recipe, the baseline a searched setting must beat"
        )
    if not t.space and not t.arch_space:
        errs.append("tune.space: empty, and no tune.arch_space: a search needs something to search")
    left_out = [m for m in p.grid.methods if m not in searched]
    if left_out and not t.allow_unequal:
        errs.append(
            f"tune.methods = {t.methods!r} searches {len(searched)} of the {len(p.grid.methods)} compared methods "
            f"and leaves out {left_out}: their comparison would measure the search as much as the method. "
            "Allowed: [] (no search: every method at the recipe), all (every method of grid.methods, same budget "
            "and space), or set tune.allow_unequal: true to accept it (the report then marks those rows)"
        )
    return errs


def search_values(dim: SearchDim) -> list[tuple[str, Any]]:
    """(what, value) a search dimension may set that a check can try: each choice, or the two bounds."""
    if dim.type == "choice":
        return [("choice value", v) for v in dim.values or []]
    return [("low", dim.low), ("high", dim.high)]


def _space_value_checks(p: Params) -> list[str]:
    """Every value ``tune.space`` may set is one the recipe takes, with every searched method (every method of
    the grid while nothing is searched) on every data set of the grid."""
    errs: list[str] = []
    pairs = []
    for m in p.searched or p.grid.methods:
        for d in p.grid.datasets:
            if m in p.methods and d in p.datasets:
                try:
                    p.recipe(m, d)
                except ValidationError:
                    continue  # the recipe itself is bad: said elsewhere
                pairs.append((m, d))
    for key, dim in p.tune.space.items():
        field = split_key(key)[1]
        if field not in TrainCfg.model_fields:
            continue  # said elsewhere
        kind = TrainCfg.model_fields[field].annotation
        if dim.type != "choice" and kind is not float:
            errs.append(
                f"tune.space.{key}: {dim.type} samples real numbers, but {field} takes "
                f"{getattr(kind, '__name__', kind)}; allowed: {{type: choice, values: [...]}}"
            )
            continue
        for what, v in search_values(dim):
            for m, d in pairs:
                try:
                    p.recipe(m, d, {field: v})
                except ValidationError as e:
                    why = "; ".join(
                        (f"{fmt_loc(x['loc'])}: " if tuple(x["loc"]) not in ((), (field,)) else "")
                        + x["msg"].removeprefix("Value error, ")
                        for x in e.errors()
                    )
                    errs.append(
                        f"tune.space.{key}: {what} {v!r} is refused by the recipe (method {m}, data set {d}): {why}"
                    )
                    break
    return errs
