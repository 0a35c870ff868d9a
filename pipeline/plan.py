"""A plan before the spend: what a settings object will train, and how long it should take here.

The work is ``pipeline.units``' (``Work``: the recipe track's rows, the searches and their trials, the searched
track, the study), counted as the stages train it: rows of one unit once. ``make_plan`` sizes each data set
without reading it (the preprocessed manifest, else the data set's kind), has every distinct network timed on
the device the training workers would use (a ``Prober``: ``pipeline.train.probe``, the engine's own training
step), and turns that into device-hours and wall time on the resources it sees. ``format_plan`` gives the
result as a few lines; ``plan_lines`` does both. The train and study stages log the plan of their own work
before they train; ``python -m pipeline.profiles ... --plan`` prints it for settings not yet run, and with
``--device h100`` prices it for a device that is not here (``pipeline.devices``: a prober that probes nothing).

What the estimate cannot see, and says so: data loading and augmentation, checkpoints, Ray start-up, and how
far data-parallel training falls short of a linear speed-up.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Collection, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from pipeline.compute import Workers, local_resources, resolve_workers
from pipeline.config import DatasetCfg, FastPathCfg, Params, TrainCfg
from pipeline.data.manifest import MANIFEST, load_manifest
from pipeline.data.sizes import DataSize, expected_size, kind_size
from pipeline.spec import DataRef, RunSpec
from pipeline.units import Row, Work, group

NOT_SEEN = "data loading, checkpoints, start-up"
Stage = Literal["train", "search", "searched", "study"]


@dataclass(frozen=True)
class Net:
    """What the probe builds and times: a network, its input size, and the batches one worker runs. Neither the
    class count nor the recipe is part of its identity: the classifier head costs next to nothing, and the
    recipe's optimizer settings next to nothing beside the step (the probe builds the optimizer from it)."""

    model: str
    args_json: str  # the model arguments, JSON with sorted keys, without num_classes
    image_size: int
    batch: int  # training batch per worker
    eval_batch: int
    recipe: TrainCfg = field(compare=False)
    num_classes: int = field(default=10, compare=False)

    def args(self) -> dict[str, Any]:
        return json.loads(self.args_json)


@dataclass(frozen=True)
class Block:
    """One stage's work on one data set: how many rows (or trials) and the distinct units they resolve to."""

    dataset: str
    stage: Stage
    rows: int
    units: tuple[Row, ...]  # each distinct unit once (its first row), in row order; a search: every trial
    nets: tuple[Net, ...]  # what each unit's net is timed as
    shape: str  # how the rows are formed: "7 methods x 3 seeds"
    workers: int  # the devices each unit trains on
    shared_rows: int = 0  # rows that share their unit with another row
    upper_bound: bool = False  # the search: ASHA stops trials early; before it: a search may keep the recipe

    @property
    def unit_epochs(self) -> int:
        return sum(r.unit.train.epochs for r in self.units)


@dataclass(frozen=True)
class Rate:
    """Images per second of one worker's device on one net, measured."""

    train: float
    eval: float
    batch: int  # the training batch it was measured at
    eval_batch: int
    scaled: bool  # measured at another batch than training runs (a smaller one, here); time per image the same
    source: str = ""  # where a priced rate came from when not every net's came from the same place


@dataclass(frozen=True)
class Probe:
    device: str  # "NVIDIA H200", "cpu, 1 thread per worker"
    rates: Mapping[Net, Rate]
    seconds: float
    notes: tuple[str, ...] = ()
    # a device priced from elsewhere (``pipeline.devices``), not probed here: its short name names the hours
    priced: str = ""
    basis: str = "measured probe"  # what the hours rest on, as the total line says it
    estimated: bool = False  # some rate is an estimate, not a measurement: every hours figure says so


Prober = Callable[[Sequence[Net], Workers, FastPathCfg], Probe]


@dataclass(frozen=True)
class Resources:
    cpus: float
    gpus: float
    where: str


@dataclass(frozen=True)
class Cost:
    device_s: float  # summed over the devices a unit trains on
    wall_s: float


@dataclass(frozen=True)
class Plan:
    data: tuple[DataSize, ...]
    blocks: tuple[Block, ...]
    costs: tuple[Cost, ...]  # one per block
    probe: Probe
    workers: Workers
    resources: Resources
    devices: int  # usable at once by the training stage

    @property
    def device_s(self) -> float:
        return sum(c.device_s for c in self.costs)

    @property
    def wall_s(self) -> float:  # DVC runs the stages, and their data sets, one after another
        return sum(c.wall_s for c in self.costs)


# --- the work -------------------------------------------------------------------------------------------


def data_size(name: str, cfg: DatasetCfg, data_dir: str | Path | None = None) -> DataSize:
    """From the preprocessed manifest in ``data_dir`` when it was made with these preprocess settings, else
    from the data set's kind, with ``preprocess.classes`` and ``subset`` applied per class (approximate)."""
    if data_dir is not None and (Path(data_dir) / MANIFEST).is_file():
        man = load_manifest(data_dir)
        if man.preprocess == cfg.preprocess.model_dump():
            side = man.image_shape[0] if man.image_shape else kind_size(cfg)[2]
            return DataSize(name, man.num_train, man.num_test, side, man.num_classes, "manifest")
    return expected_size(name, cfg)


def unfetched(d: DataSize) -> DataRef:
    """A data set not fetched yet, as far as the work needs it: its name and class count (its checksum unknown,
    the same for every unit, so rows still group into units as they will)."""
    return DataRef(
        name=d.name, path="", sha256="(not fetched)", num_classes=d.num_classes, mean=[0.5] * 3, std=[0.25] * 3
    )


def net_of(u: RunSpec, d: DataSize, workers: int) -> Net:
    """Unit ``u``'s net as the probe times it: its per-worker batch on ``workers`` devices."""
    args = json.dumps({k: v for k, v in u.model_args.items() if k != "num_classes"}, sort_keys=True, default=str)
    batch = max(1, u.train.batch_size // workers)
    return Net(u.model, args, d.image_size, batch, u.train.eval_batch_size, u.train, d.num_classes)


def _count(n: int, noun: str) -> str:
    return f"{n} {noun}" + ("" if n == 1 else "es" if noun.endswith("ch") else "s")


def _block(d: DataSize, stage: Stage, rows: Sequence[Row], shape: str, workers: int, *, upper: bool = False) -> Block:
    """``rows`` (a stage's), counted as the stage trains them: each unit once."""
    groups = group(rows)
    first = tuple(g[0] for g in groups.values())
    shared = sum(len(g) for g in groups.values() if len(g) > 1)
    nets = tuple(net_of(r.unit, d, workers) for r in first)
    return Block(d.name, stage, len(rows), first, nets, shape, workers, shared, upper)


def _grid_shape(names: Collection[str], seeds: int, noun: str = "method") -> str:
    return f"{_count(len(names), noun)} x {_count(seeds, 'seed')}"


def _search_block(params: Params, work: Work, d: DataSize) -> Block:
    """Every trial of every search (one worker each, on train less its held-out part): each its own unit."""
    t, searches = params.tune, work.searches
    trials = tuple(r for s in searches for r in s.trials(t.num_samples))
    methods = sum(len(s.methods) for s in searches)
    what = _count(methods, "method")
    if methods != len(searches):
        what = f"{_count(len(searches), 'search')} of {what}"
    shape = f"{what} x {_count(t.num_samples, 'trial')}"
    nets = tuple(net_of(r.unit, d, 1) for r in trials)
    return Block(d.name, "search", len(trials), trials, nets, shape, 1, upper_bound=True)


def _searched_block(params: Params, work: Work, d: DataSize, workers: int) -> Block:
    """The units trained again at what the searches adopted: known once they ran (the searched rows a search
    changed); before, at most the searched methods' recipe rows again."""
    seeds = len(params.grid.seeds)
    if work.adopted:
        recipe = {r.key for r in work.recipe}
        again = [r for r in work.searched if r.key not in recipe]
        shape = _grid_shape({r.name for r in again}, seeds)
        return _block(d, "searched", again, shape, workers)
    searched = set(params.searched)
    again = [r for r in work.recipe if r.name in searched]
    return _block(d, "searched", again, _grid_shape(searched, seeds), workers, upper=True)


def blocks_of(params: Params, work: Work, d: DataSize, w: Workers, stages: Collection[Stage]) -> list[Block]:
    """The blocks of ``stages`` of ``work`` (on data of size ``d``): a stage with nothing to do has none."""
    out = []
    if "train" in stages:
        out.append(
            _block(d, "train", work.recipe, _grid_shape(params.grid.methods, len(params.grid.seeds)), w.num_workers)
        )
    if "search" in stages and work.searches:
        out.append(_search_block(params, work, d))
    if "searched" in stages and params.searched:
        out.append(_searched_block(params, work, d, w.num_workers))
    if "study" in stages and work.study:
        s = params.study
        shape = _grid_shape(s.cells(), len(s.seeds), "cell")
        out.append(_block(d, "study", work.study, shape, w.num_workers))
    return out


# --- the estimate ---------------------------------------------------------------------------------------


def resources_of(resources: Mapping[str, float] | None = None) -> Resources:
    """What training would run on: ``resources`` as Ray reports them (``{"CPU": n, "GPU": m}``: the train
    stage passes its session's), else this machine."""
    if resources is not None:
        return Resources(float(resources.get("CPU", 0)), float(resources.get("GPU", 0)), "the Ray cluster")
    cpus, gpus = local_resources()
    return Resources(float(cpus), float(gpus), "this machine")


def side_by_side(params: Params, w: Workers, r: Resources) -> tuple[int, int]:
    """(units, trials) side by side: each unit takes ``num_workers`` devices (GPUs, or cpus_per_worker CPUs),
    each trial one; ``compute.concurrency`` and ``tune.max_concurrent_trials`` cap them when set."""
    n = int(r.gpus) if w.use_gpu else int(r.cpus // w.cpus_per_worker)
    k, kt = params.compute.concurrency, params.tune.max_concurrent_trials
    units = n // w.num_workers if k == "auto" else min(k, n // w.num_workers)
    return max(1, units), max(1, n if kt == "auto" else min(kt, n))


def unit_seconds(u: RunSpec, workers: int, d: DataSize, rate: Rate) -> float:
    """Device-seconds of one unit on ``workers`` devices, every device counted: each epoch trains on its train
    images and evaluates its evaluation images (``RunSpec.images``: the test split, or the held-out part of
    train; both split over the workers, linear speed-up assumed), and recalibrates BatchNorm on
    ``bn_recalibration`` whole batches on every worker (a forward, timed as evaluation)."""
    r = u.train
    train, held = u.images(d.num_train, d.num_test)
    bn = workers * r.bn_recalibration * r.batch_size / rate.eval
    return r.epochs * (train / rate.train + held / rate.eval + bn)


def _wall(seconds: Sequence[float], at_once: int, width: int) -> float:
    """Units of ``width`` devices each, ``at_once`` side by side: the work spread evenly, or the longest one."""
    return max(sum(seconds) / (at_once * width), max(seconds, default=0.0) / width)


def estimate(
    blocks: Sequence[Block],
    sizes: Mapping[str, DataSize],
    rate: Callable[[Net], Rate],
    *,
    units_at_once: int,
    trials_at_once: int,
) -> list[Cost]:
    """Each block's device-seconds and wall time from ``rate`` (a probe's ``rates``, or any function): a
    search runs its trials one search after another, each search's trials side by side."""
    out = []
    for b in blocks:
        d = sizes[b.dataset]
        secs = [unit_seconds(r.unit, b.workers, d, rate(n)) for r, n in zip(b.units, b.nets, strict=True)]
        if b.stage == "search":
            names = list(dict.fromkeys(r.name for r in b.units))
            per = [[s for r, s in zip(b.units, secs, strict=True) if r.name == m] for m in names]
            wall = sum(_wall(p, trials_at_once, 1) for p in per)
        else:
            wall = _wall(secs, units_at_once, b.workers)
        out.append(Cost(sum(secs), wall))
    return out


def make_plan(
    params: Params,
    datasets: Sequence[str] | None = None,
    *,
    prober: Prober,
    data_dirs: Mapping[str, str | Path] | None = None,
    resources: Mapping[str, float] | Resources | None = None,
    stages: Collection[Stage] | None = None,
    works: Sequence[Work] | None = None,
) -> Plan:
    """The plan of ``params`` on ``datasets`` (default: ``grid.datasets``, or those of ``works``), their
    preprocessed data looked for in ``data_dirs`` (default: ``data/processed/<d>``), on ``resources``
    (default: this machine; a ``Resources``: devices priced from elsewhere), of the work of ``stages``
    (default: all: ``train``, ``search``, ``searched``, ``study``), timed by ``prober``. ``works``: the work
    as a stage resolved it (default: resolved here, before any data or search exists)."""
    given = {w.data.name: w for w in works or ()}
    names = list(datasets if datasets is not None else given or params.grid.datasets)
    dirs = {d: Path("data/processed") / d for d in names} | dict(data_dirs or {})
    data = tuple(data_size(d, params.dataset(d), dirs.get(d)) for d in names)
    r = resources if isinstance(resources, Resources) else resources_of(resources)
    w = resolve_workers(params.compute, r.cpus, r.gpus, r.where)
    todo = set(stages) if stages is not None else {"train", "search", "searched", "study"}
    blocks = [b for d in data for b in blocks_of(params, given.get(d.name) or Work(params, unfetched(d)), d, w, todo)]
    measured = prober([n for b in blocks for n in b.nets], w, params.compute.fast_path)
    units_at_once, trials_at_once = side_by_side(params, w, r)
    sizes = {d.name: d for d in data}
    costs = estimate(
        blocks, sizes, measured.rates.__getitem__, units_at_once=units_at_once, trials_at_once=trials_at_once
    )
    return Plan(data, tuple(blocks), tuple(costs), measured, w, r, units_at_once * w.num_workers)


# --- the lines ------------------------------------------------------------------------------------------


def _num(x: float) -> str:
    return f"{x:,.0f}" if x >= 100 else f"{x:.1f}"


def _hours(seconds: float) -> str:
    h = seconds / 3600
    return f"{h:,.0f}" if h >= 10 else f"{h:.1f}" if h >= 1 else f"{h:.2f}" if h >= 0.01 else f"{h:.3f}"


def _duration(seconds: float) -> str:
    if seconds < 90:
        return f"{seconds:.0f} s"
    if seconds < 90 * 60:
        return f"{seconds / 60:.0f} min"
    if seconds < 48 * 3600:
        return f"{seconds / 3600:.1f} h"
    return f"{seconds / 86400:.1f} days" if seconds < 10 * 86400 else f"{seconds / 86400:,.0f} days"


def _epochs(b: Block) -> str:
    e = sorted({r.unit.train.epochs for r in b.units})
    return f"{e[0]} epochs each" if len(e) == 1 else f"{e[0]}-{e[-1]} epochs"


def _hours_of(p: Probe, seconds: float) -> str:
    """``about 12 device-hours``, or for a priced device ``about 12 H100-hours``, ``(estimate)`` after it
    where any rate is one."""
    return f"about {_hours(seconds)} {p.priced or 'device'}-hours" + " (estimate)" * p.estimated


def _block_line(b: Block, c: Cost, d: DataSize, p: Probe) -> str:
    up = "up to " if b.upper_bound else ""
    cost = f"{up}{_hours_of(p, c.device_s)}"
    shape = b.shape + (f"; {b.shared_rows} rows share a unit" if b.shared_rows else "")
    size = f"{d.num_train:,} train / {d.num_test:,} test images of {d.image_size}x{d.image_size} ({d.source})"
    if b.stage == "search":
        train, held = b.units[0].unit.images(d.num_train, d.num_test)
        what = f"search: {up}{b.rows} trials ({b.shape}) of {up}{_epochs(b)} = {up}{b.unit_epochs:,} trial-epochs"
        return f"plan: {d.name}: {what} on {train:,} train / {held:,} held-out images; {cost}"
    if b.stage == "searched" and not b.units:
        return f"plan: {d.name}: no unit trained again: every search kept the recipe"
    units = f"{up}{_count(len(b.units), 'unit')} ({shape}), {_epochs(b)} = {up}{b.unit_epochs:,} unit-epochs"
    if b.stage == "searched":
        return f"plan: {d.name}: then {units} at the recipes the searches adopt{'ed' * (not up)}; {cost}"
    where = f" on {size}" if b.stage == "train" else ""
    return f"plan: {d.name}: {'study: ' if b.stage == 'study' else ''}{units}{where}; {cost}"


def _probe_line(plan: Plan) -> str:
    rows: dict[Net, list[str]] = {}
    for b in plan.blocks:
        for r, net in zip(b.units, b.nets, strict=True):
            names = rows.setdefault(net, [])
            names += [] if r.name in names else [r.name]
    p = plan.probe
    each = []
    for net, names in rows.items():
        r = p.rates[net]
        label = names[0] + (f" +{len(names) - 1}" if len(names) > 1 else "")
        at = f" at batch {r.batch}/{r.eval_batch}" if r.scaled else ""
        each.append(f"{label} {_num(r.train)}/{_num(r.eval)}{at}" + (f" ({r.source})" if r.source else ""))
    per = f"train/eval img/s per device: {', '.join(each)}"
    if p.priced:  # nothing ran here: say so, and what the rates are instead
        return f"plan: rates for {p.device}, not probed here ({'; '.join(p.notes)}); {per}"
    notes = "".join(f", {n}" for n in p.notes)
    return f"plan: probe on {p.device}{notes} ({p.seconds:.1f} s); {per}"


def _on(plan: Plan) -> str:
    w, n = plan.workers, plan.devices
    gpu = f"{plan.probe.priced} GPU" if plan.probe.priced else "GPU"
    what = f"{n} {gpu}{'s' * (n > 1)}" if w.use_gpu else f"{n} CPU worker{'s' * (n > 1)} of {w.cpus_per_worker} core"
    what += "s" * (not w.use_gpu and w.cpus_per_worker > 1)
    return what + (f", {w.num_workers} per unit, linear speed-up assumed" if w.num_workers > 1 else "")


def format_plan(plan: Plan) -> list[str]:
    """The plan as a few lines: per data set and stage its units, epochs and device-hours; the probe's rates;
    the total, with the wall time on the devices usable at once."""
    sizes = {d.name: d for d in plan.data}
    p = plan.probe
    lines = [_block_line(b, c, sizes[b.dataset], p) for b, c in zip(plan.blocks, plan.costs, strict=True)]
    lines.append(_probe_line(plan))
    units = [b for b in plan.blocks if b.stage != "search"]
    trials = sum(b.rows for b in plan.blocks if b.stage == "search")
    n, ue = sum(len(b.units) for b in units), sum(b.unit_epochs for b in units)
    up = any(b.upper_bound for b in plan.blocks)
    more = f" (+ up to {trials:,} search trials)" if trials else ""
    lines.append(
        f"plan: total {_count(n, 'unit')}{more}, {ue:,} unit-epochs, {'up to ' * up}{_hours_of(p, plan.device_s)}; "
        f"about {_duration(plan.wall_s)} wall on {_on(plan)} ({p.basis}, +/- what it cannot see: {NOT_SEEN})"
    )
    return lines


def plan_lines(params: Params, datasets: Sequence[str] | None = None, **kwargs: Any) -> list[str]:
    """``format_plan(make_plan(params, datasets, **kwargs))``: what a stage logs before it trains, and what
    ``python -m pipeline.profiles ... --plan`` prints."""
    return format_plan(make_plan(params, datasets, **kwargs))
