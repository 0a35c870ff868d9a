"""The work of one data set, resolved once: every row of the report's tables, every search and every study
cell, as the unit (``pipeline.spec.RunSpec``) it trains.

A *row* is one method (or study cell) at one seed on one track; a *unit* is what is trained. Rows whose specs
resolve to one network, recipe, data and start (``RunSpec.identity``) are one unit, trained once: ``group`` is
the one grouping of rows by unit key (the ablation of a ResNet-backbone net *is* that ResNet). The tracks:

- ``recipe``: every method at the shared recipe, every seed of the grid (the headline tables);
- ``searched``: every method at what its search adopted (a method whose search kept the recipe, or that was
  not searched, is the very same unit as on ``recipe``);
- ``study``: the attention study's cells (``pipeline.study``), each the study method with the cell's model
  arguments, at the method's recipe or shortened to ``study.epochs``.

A search trains ``tune.num_samples`` trials, each a ``trial`` unit: the method with the trial's values, the
recipe shortened to ``tune.epochs``, on a held-out part of the train split. Methods whose searches are one (one
base unit, budget and space) search once (``searches``).

Every stage asks here, and nobody else derives units: the train stage (``pipeline.train.run``), the search
(``pipeline.tune``), the study, the plan (``pipeline.plan``), and evaluation and the report through what the
train stage wrote (``pipeline.records``: each row pointing at its unit, each unit written once). The shortened
recipe of a trial or a study cell is ``shortened``; the held-out split is ``pipeline.data.subset.held_out`` (the
training loop splits by it, and what the loop imports is part of every unit's key).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from functools import cached_property
from typing import Any, Literal, Protocol, TypeVar

from pipeline.config import Overrides, Params, SearchDim, TrainCfg, config_hash
from pipeline.spec import DataRef, RunSpec, build_spec, code_digest

Track = Literal["recipe", "searched", "study", "trial"]  # trial: one of a search's trials (``Search.trials``)
SEARCH_CODE = "pipeline.tune"  # the search's code: part of a search's key, as the training loop's is of a unit's


@dataclass(frozen=True)
class Row:
    """One row: a method (or study cell) at one seed on one track, and the unit it trains."""

    track: Track
    name: str  # the method, or the study cell
    seed: int
    unit: RunSpec

    @cached_property
    def key(self) -> str:  # computed once per row: a unit key hashes the whole spec
        return self.unit.key()


class Keyed(Protocol):
    @property
    def key(self) -> str: ...


K = TypeVar("K", bound=Keyed)


def group(rows: Iterable[K]) -> dict[str, list[K]]:
    """unit key -> its rows, in row order: rows of one key are one unit, trained (and evaluated) once. Rows as
    resolved here (``Row``) or as the train stage recorded them (``pipeline.records.TrainedRow``)."""
    out: dict[str, list[K]] = {}
    for r in rows:
        out.setdefault(r.key, []).append(r)
    return out


def distinct(rows: Iterable[Row]) -> list[Row]:
    """Each unit once, as its first row, in row order."""
    return [rs[0] for rs in group(rows).values()]


def methods_of(rows: Iterable[Row]) -> dict[str, list[str]]:
    """unit key -> the names (methods) whose rows it is, each once, in row order."""
    return {k: list(dict.fromkeys(r.name for r in rs)) for k, rs in group(rows).items()}


# --- the recipe and searched tracks ------------------------------------------------------------------------


def recipe_rows(params: Params, data: DataRef, workers: int = 1) -> tuple[Row, ...]:
    """Every method of the grid at every seed, at the shared recipe, on ``workers`` data-parallel workers."""
    return tuple(
        Row("recipe", m, s, build_spec(params, m, data, s, workers=workers))
        for m in params.grid.methods
        for s in params.grid.seeds
    )


def searched_rows(
    params: Params, data: DataRef, tuned: Mapping[str, Mapping[str, Any]], workers: int = 1
) -> tuple[Row, ...]:
    """Every method of the grid at every seed, at what its search adopted (``tuned``: tune.json's ``methods``,
    {method: {"chosen": {dotted key: value}, ...}}); a method not searched, or whose search kept the recipe,
    at the recipe."""
    return tuple(
        Row("searched", m, s, build_spec(params, m, data, s, tuned[m]["chosen"] if m in tuned else {}, workers=workers))
        for m in params.grid.methods
        for s in params.grid.seeds
    )


# --- the shortened recipe, search trials and searches -----------------------------------------------------


def compressed(recipe: TrainCfg, epochs: int) -> dict[str, Any]:
    """The recipe's schedule squeezed into ``epochs``: step milestones and warm-up scaled in proportion (each
    kept inside the run, at least one epoch apart), so a short run sees the final run's lr shape, not a constant."""
    scale = epochs / recipe.epochs
    milestones = sorted({min(epochs - 1, max(1, round(m * scale))) for m in recipe.milestones}) if epochs > 1 else []
    warmup = min(epochs - 1, max(1, round(recipe.warmup_epochs * scale))) if recipe.warmup_epochs else 0
    return {"train.epochs": epochs, "train.milestones": milestones, "train.warmup_epochs": warmup}


def shortened(params: Params, method: str, dataset: str, epochs: int, chosen: Mapping[str, Any] | None = None) -> dict:
    """The overrides (dotted ``train.*`` keys) that shorten ``method``'s recipe on ``dataset`` -- with the
    recipe values in ``chosen`` applied first -- to ``epochs`` (``compressed``): a search trial's and a study
    cell's length."""
    recipe = params.recipe(method, dataset, Overrides.parse(dict(chosen or {})).train)
    return compressed(recipe, epochs)


def trial(params: Params, method: str, data: DataRef, chosen: Mapping[str, Any]) -> RunSpec:
    """The unit a search trial trains: the method with ``chosen`` values (dotted keys of its search space), the
    recipe shortened to ``tune.epochs``, validated on ``tune.val_fraction`` of the train split."""
    t = params.tune
    return build_spec(
        params,
        method,
        data,
        t.seed,
        {**chosen, **shortened(params, method, data.name, t.epochs, chosen)},
        val_fraction=t.val_fraction,
        train_subset=t.train_subset,
    )


def search_key(params: Params, method: str, data: DataRef) -> str:
    """Content key of one method's search: its base unit (the trial at the recipe), its budget and space, and
    the search's code (not ``on_trial_error``, which decides only what a crash does, nor TPE's start-up under
    random search)."""
    unused = {"tpe_startup_trials"} if params.tune.searcher == "random" else set()
    t = params.tune.model_dump(exclude={"methods", "allow_unequal", "arch_space", "on_trial_error", *unused})
    space = {k: d.model_dump() for k, d in params.tune.space_of(method).items()}
    return config_hash(trial(params, method, data, {}).identity(), t, space, code_digest(SEARCH_CODE))


@dataclass(frozen=True)
class Search:
    """One search: the methods whose search it is (the first runs it, the others share it: one base unit,
    budget and space), its content key and its base unit (the trial at the recipe, its first trial)."""

    key: str
    methods: tuple[str, ...]
    base: RunSpec
    space: Mapping[str, SearchDim]

    @property
    def method(self) -> str:
        return self.methods[0]

    def trials(self, num_samples: int) -> tuple[Row, ...]:
        """Its ``num_samples`` trials as rows, each its own (a trial trains the base unit with values of its own)."""
        return tuple(Row("trial", self.method, self.base.seed, self.base) for _ in range(num_samples))


def searches(params: Params, data: DataRef, methods: Iterable[str] | None = None) -> tuple[Search, ...]:
    """The searches of ``methods`` (default: every method the search track covers), each once."""
    names = params.searched if methods is None else list(methods)
    keys = {m: search_key(params, m, data) for m in names}
    shared: dict[str, list[str]] = {}
    for m in names:
        shared.setdefault(keys[m], []).append(m)
    return tuple(
        Search(k, tuple(ms), trial(params, ms[0], data, {}), params.tune.space_of(ms[0])) for k, ms in shared.items()
    )


# --- the study ----------------------------------------------------------------------------------------------


def study_rows(params: Params, data: DataRef, workers: int = 1) -> tuple[Row, ...]:
    """Every cell of ``params.study`` (``StudyCfg.cells``) at every study seed: the study method with the
    cell's model arguments, at its recipe shortened to ``study.epochs`` when that is set."""
    s = params.study
    length = Overrides.parse(shortened(params, s.method, data.name, s.epochs)).train if s.epochs is not None else {}

    def cell(args: dict[str, Any], seed: int) -> RunSpec:
        over = Overrides(args=args, train=length)
        return build_spec(params, s.method, data, seed, over, diagnostics=s.diagnostics, workers=workers)

    return tuple(Row("study", name, seed, cell(args, seed)) for name, args in s.cells().items() for seed in s.seeds)


# --- all of it ----------------------------------------------------------------------------------------------


@dataclass(frozen=True, eq=False)
class Work:
    """Everything ``params`` trains on ``data``, each part resolved when first asked for. ``tuned``: the
    searches' outcome (tune.json's ``methods``: ``{}`` when no search ran), or None while it is not known (the
    plan before a search). The study only on ``study.dataset``, when it is enabled. ``workers``: the
    data-parallel workers each unit trains on (``compute.world_size``); a search trial trains on one."""

    params: Params
    data: DataRef
    tuned: Mapping[str, Mapping[str, Any]] | None = None
    workers: int = 1

    @cached_property
    def recipe(self) -> tuple[Row, ...]:
        return recipe_rows(self.params, self.data, self.workers)

    @cached_property
    def searched(self) -> tuple[Row, ...]:
        """The searched track's rows once a search ran, else none."""
        return searched_rows(self.params, self.data, self.tuned, self.workers) if self.tuned else ()

    @cached_property
    def searches(self) -> tuple[Search, ...]:
        return searches(self.params, self.data) if self.params.searched else ()

    @cached_property
    def study(self) -> tuple[Row, ...]:
        s = self.params.study
        return study_rows(self.params, self.data, self.workers) if s.enabled and s.dataset == self.data.name else ()

    @property
    def adopted(self) -> bool:
        """Whether the searches' outcome is known (``searched`` is then exact)."""
        return self.tuned is not None

    @property
    def tracks(self) -> dict[str, tuple[Row, ...]]:
        """The report's tracks: ``recipe``, and ``searched`` when a search ran."""
        return {"recipe": self.recipe, **({"searched": self.searched} if self.searched else {})}
