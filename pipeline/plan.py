"""A plan before the spend: what a settings object will train, and how long it should take here.

``make_plan`` resolves the work of validated ``Params`` per data set of ``grid.datasets`` -- the recipe
track's units (every method x every seed), the search track's trials and searched units when ``tune.methods``
is on, the attention study's units on ``study.dataset`` -- counting rows that resolve to the same unit once
(``same_unit``). It sizes the data without reading it (the preprocessed manifest, else the data set's kind),
then times a few training steps and evaluation batches of every distinct network on the device the training
workers would use (``probe``), and turns that into device-hours and wall time on the resources it sees.
``format_plan`` gives the result as a few lines; ``plan_lines`` does both.

What the estimate cannot see, and says so: data loading and augmentation, checkpoints, Ray start-up, and how
far data-parallel training falls short of a linear speed-up. ``torch.compile`` is never paid for in the probe
(about a minute per net), so where training compiles, the probe's eager rate errs on the slow side.
"""

from __future__ import annotations

import contextlib
import json
import logging
import math
import os
import socket
import statistics
import sys
import time
from collections.abc import Callable, Collection, Hashable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Literal

import torch
import torch.nn.functional as F

from pipeline.compute import Workers, local_resources, ray_session, resolve_workers
from pipeline.config import DatasetCfg, FastPathCfg, Overrides, Params, TrainCfg
from pipeline.data.manifest import MANIFEST, load_manifest
from pipeline.data.subset import take_per_class
from pipeline.models import create_model
from pipeline.spec import compressed, network_key
from pipeline.train.engine import FastPath, normalize

log = logging.getLogger(__name__)

# Image counts of a data set not preprocessed yet, by kind: (train, test, image side, classes)
KIND_SIZES: dict[str, tuple[int, int, int, int]] = {
    "cifar10": (50_000, 10_000, 32, 10),
    "cifar100": (50_000, 10_000, 32, 100),
    "imagenet": (1_281_167, 50_000, 224, 1000),
}
PROBE_S = 0.5  # seconds of timed training steps per net at most (evaluation: half), after the warm-up
CPU_START_BATCH = 8  # on a CPU the probe starts here and grows the batch only while a step stays short
NOT_SEEN = "data loading, checkpoints, start-up"


@dataclass(frozen=True)
class DataSize:
    """A data set's size as training sees it, known before it is fetched."""

    name: str
    num_train: int
    num_test: int
    image_size: int
    num_classes: int
    source: str  # "manifest", or how it was estimated


@dataclass(frozen=True)
class Net:
    """What the probe builds and times: a network, its input size, and the batches one worker runs. The class
    count is not part of its identity: the classifier head costs next to nothing."""

    model: str
    args_json: str  # the model arguments, JSON with sorted keys, without num_classes
    image_size: int
    batch: int  # training batch per worker
    eval_batch: int
    num_classes: int = field(default=10, compare=False)

    def args(self) -> dict[str, Any]:
        return json.loads(self.args_json)


@dataclass(frozen=True)
class Unit:
    """One row of the plan: a training unit (or search trial), what it trains, on what, for how long."""

    dataset: str
    row: str  # the method, study cell or searched method whose row it is
    model: str
    model_args: Mapping[str, Any]  # with num_classes, as the unit builds its net
    recipe: TrainCfg
    seed: int
    workers: int  # data-parallel workers it trains on
    train_images: int  # per epoch
    eval_images: int  # per epoch
    net: Net


SameUnit = Callable[[Unit], Hashable]


def unit_identity(u: Unit) -> Hashable:
    """The default ``same_unit``, as the train stage keys units (``pipeline.spec.RunSpec.identity``): one
    network as built (structure and initial weights, ``network_key``), recipe and seed, whatever the method's
    model is called (the ablation of a ResNet-backbone net *is* that ResNet). Builds each net once on the CPU."""
    return network_key(u.model, dict(u.model_args), u.seed), u.recipe.model_dump_json(), u.seed


Stage = Literal["train", "search", "searched", "study"]


@dataclass(frozen=True)
class Block:
    """One stage's work on one data set: its rows and the distinct units they resolve to."""

    dataset: str
    stage: Stage
    rows: int
    units: tuple[Unit, ...]  # each distinct unit once, in row order
    shape: str  # how the rows are formed: "7 methods x 3 seeds"
    shared_rows: int = 0  # rows that share their unit with another row
    upper_bound: bool = False  # the search: ASHA stops trials early, a search may keep the recipe

    @property
    def unit_epochs(self) -> int:
        return sum(u.recipe.epochs for u in self.units)


@dataclass(frozen=True)
class Rate:
    """Images per second of one worker's device on one net, measured."""

    train: float
    eval: float
    batch: int  # the training batch it was measured at
    eval_batch: int
    scaled: bool  # measured at a smaller batch than training runs; time per image taken as the same


@dataclass(frozen=True)
class Probe:
    device: str  # "NVIDIA H200", "cpu, 1 thread per worker"
    rates: Mapping[Net, Rate]
    seconds: float
    notes: tuple[str, ...] = ()


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
            side = man.image_shape[0] if man.image_shape else _kind_size(cfg)[2]
            return DataSize(name, man.num_train, man.num_test, side, man.num_classes, "manifest")
    train, test, side, classes = _kind_size(cfg)
    p = cfg.preprocess
    kept = classes if p.classes is None else min(classes, p.classes if isinstance(p.classes, int) else len(p.classes))
    n_train = kept * take_per_class(train // classes, p.subset.train)
    n_test = kept * take_per_class(test // classes, p.subset.test)
    exact = kept == classes and p.subset.train is None and p.subset.test is None
    return DataSize(name, n_train, n_test, side, kept, f"{cfg.kind}'s size" + ("" if exact else ", approximate"))


def _kind_size(cfg: DatasetCfg) -> tuple[int, int, int, int]:
    if cfg.kind == "embedded":
        return cfg.fetch.num_train, cfg.fetch.num_test, 32, 10
    train, test, side, classes = KIND_SIZES[cfg.kind]
    return train, test, (cfg.preprocess.image_size if cfg.kind == "imagenet" else side), classes


def _unit(
    d: DataSize,
    row: str,
    model: str,
    args: Mapping[str, Any],
    recipe: TrainCfg,
    seed: int,
    *,
    workers: int,
    images: tuple[int, int] | None = None,
) -> Unit:
    """Row ``row`` on ``d``: its net as the probe times it (the per-worker batch); ``images`` (train, eval) per
    epoch, default the data set's train and test splits."""
    batch = max(1, recipe.batch_size // workers)
    net = Net(model, json.dumps(dict(args), sort_keys=True, default=str), d.image_size, batch, recipe.eval_batch_size)
    net = replace(net, num_classes=d.num_classes)
    train, test = images or (d.num_train, d.num_test)
    return Unit(d.name, row, model, {**args, "num_classes": d.num_classes}, recipe, seed, workers, train, test, net)


def distinct(rows: Sequence[Unit], same_unit: SameUnit = unit_identity) -> tuple[tuple[Unit, ...], int]:
    """Each unit once (its first row), and how many rows share their unit with another: rows with one
    ``same_unit`` key are trained once."""
    first: dict[Hashable, list[Unit]] = {}
    for u in rows:
        first.setdefault(same_unit(u), []).append(u)
    return tuple(g[0] for g in first.values()), sum(len(g) for g in first.values() if len(g) > 1)


def _block(
    d: str, stage: Stage, rows: Sequence[Unit], shape: str, same_unit: SameUnit, *, upper: bool = False
) -> Block:
    units, shared = distinct(rows, same_unit)
    return Block(d, stage, len(rows), units, shape, shared, upper)


def _count(n: int, noun: str) -> str:
    return f"{n} {noun}{'s' * (n != 1)}"


def _recipe_rows(params: Params, d: DataSize, w: Workers, methods: Sequence[str]) -> list[Unit]:
    return [
        _unit(d, m, *params.model_of(m, d.name), params.recipe(m, d.name), s, workers=w.num_workers)
        for m in methods
        for s in params.grid.seeds
    ]


def _search_blocks(params: Params, d: DataSize, w: Workers, same_unit: SameUnit) -> list[Block]:
    """The trials (each on one worker, on train minus the held-out part) and the units trained again at what
    the searches adopt: as many as the searched methods' recipe units, at most."""
    t, searched = params.tune, params.searched
    n_val = max(1, int(d.num_train * t.val_fraction))  # as pipeline.train.loop.load_data holds out
    n_train = min(t.train_subset or d.num_train, d.num_train - n_val)
    trials = []
    for m in searched:
        short = Overrides.parse(compressed(params.recipe(m, d.name), t.epochs)).train
        recipe = params.recipe(m, d.name, short)
        u = _unit(d, m, *params.model_of(m, d.name), recipe, t.seed, workers=1, images=(n_train, n_val))
        trials += [u] * t.num_samples
    again = _recipe_rows(params, d, w, searched)
    shape = f"{_count(len(searched), 'method')} x {_count(t.num_samples, 'trial')}"
    return [
        Block(d.name, "search", len(trials), tuple(trials), shape, upper_bound=True),  # every trial its own
        _block(
            d.name,
            "searched",
            again,
            f"{_count(len(searched), 'method')} x {_count(len(params.grid.seeds), 'seed')}",
            same_unit,
            upper=True,
        ),
    ]


def _study_block(params: Params, d: DataSize, w: Workers, same_unit: SameUnit) -> Block:
    """The study's cells (``StudyCfg.cells``, as ``pipeline.study.study_specs`` forms them) x its seeds."""
    s = params.study
    model, base = params.model_of(s.method, d.name)
    length = Overrides.parse(compressed(params.recipe(s.method, d.name), s.epochs)).train if s.epochs else {}
    recipe = params.recipe(s.method, d.name, length)
    cells = s.cells()
    rows = [
        _unit(d, cell, model, {**base, **args}, recipe, seed, workers=w.num_workers)
        for cell, args in cells.items()
        for seed in s.seeds
    ]
    return _block(d.name, "study", rows, f"{_count(len(cells), 'cell')} x {_count(len(s.seeds), 'seed')}", same_unit)


def work(params: Params, data: Sequence[DataSize], w: Workers, same_unit: SameUnit = unit_identity) -> list[Block]:
    """Every stage's rows and distinct units, per data set of ``data``."""
    out = []
    for d in data:
        rows = _recipe_rows(params, d, w, params.grid.methods)
        shape = f"{_count(len(params.grid.methods), 'method')} x {_count(len(params.grid.seeds), 'seed')}"
        out.append(_block(d.name, "train", rows, shape, same_unit))
        out += _search_blocks(params, d, w, same_unit) if params.searched else []
        study = params.study.enabled and params.study.dataset == d.name
        out += [_study_block(params, d, w, same_unit)] if study else []
    return out


# --- the probe ------------------------------------------------------------------------------------------


def _timed(fn: Callable[[], object], sync: Callable[[], None]) -> float:
    """Seconds of one call of ``fn``, the device synchronised before the clock stops (CUDA runs asynchronously)."""
    t0 = time.perf_counter()
    fn()
    sync()
    return time.perf_counter() - t0


def seconds_per_call(fn: Callable[[], object], sync: Callable[[], None], *, budget_s: float, most: int) -> float:
    """One or two untimed warm-up calls (first-call costs: allocation, kernel choice), then the median of up
    to ``most`` timed calls within ``budget_s`` (robust to a stall of the machine): just one when a single
    call takes longer than that."""
    if _timed(fn, sync) < budget_s / 8:
        _timed(fn, sync)  # a second warm-up where it is cheap
    times = [_timed(fn, sync)]
    while len(times) < most and sum(times) + times[0] <= budget_s:
        times.append(_timed(fn, sync))
    return statistics.median(times)


def _images(n: int, side: int, dev: torch.device) -> torch.Tensor:
    """Normalised random uint8 images, as training feeds the net."""
    x = torch.randint(0, 256, (n, 3, side, side), dtype=torch.uint8).to(dev)
    return normalize(x, torch.full((3,), 0.5, device=dev), torch.full((3,), 0.25, device=dev))


def _train_step(model: torch.nn.Module, net: Net, batch: int, dev: torch.device, fp: FastPath) -> Callable[[], None]:
    opt = torch.optim.SGD(model.parameters(), lr=1e-3, momentum=0.9)
    x, y = fp.inputs(_images(batch, net.image_size, dev)), torch.randint(0, net.num_classes, (batch,)).to(dev)

    def step() -> None:
        with fp.autocast(dev):
            loss = F.cross_entropy(model(x), y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()

    return step


def _cpu_batch(model: torch.nn.Module, net: Net, dev: torch.device, fp: FastPath, budget_s: float) -> int:
    """A CPU step of a deep net at the full batch takes seconds: time one at a small batch, then take the
    largest power of two whose step stays within a quarter of the budget (the full batch where it does)."""
    b0 = min(net.batch, CPU_START_BATCH)
    per_image = _timed(_train_step(model, net, b0, dev, fp), lambda: None) / b0
    if per_image * net.batch <= budget_s / 4:
        return net.batch
    return max(b0, min(net.batch, 2 ** int(math.log2(max(1.0, budget_s / 4 / per_image)))))


def _rate(net: Net, dev: torch.device, fp: FastPath, budget_s: float) -> Rate:
    cuda = dev.type == "cuda"
    sync, most = (torch.cuda.synchronize, 20) if cuda else ((lambda: None), 5)
    model = fp.prepare(create_model(net.model, **net.args(), num_classes=net.num_classes).to(dev)).train()
    batch = net.batch if cuda else _cpu_batch(model, net, dev, fp, budget_s)
    train_s = seconds_per_call(_train_step(model, net, batch, dev, fp), sync, budget_s=budget_s, most=most)
    eval_batch = net.eval_batch if cuda else min(net.eval_batch, 2 * batch)
    x = fp.inputs(_images(eval_batch, net.image_size, dev))
    model.eval()

    def forward() -> None:
        with torch.no_grad(), fp.autocast(dev):
            model(x)

    eval_s = seconds_per_call(forward, sync, budget_s=budget_s / 2, most=most)
    scaled = batch < net.batch or eval_batch < net.eval_batch
    return Rate(batch / train_s, eval_batch / eval_s, batch, eval_batch, scaled)


@contextlib.contextmanager
def _threads(n: int | None) -> Iterator[None]:
    before = torch.get_num_threads()
    if n:
        torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def measure(
    nets: Sequence[Net],
    *,
    device: str = "cpu",
    threads: int = 1,
    fast: FastPathCfg | None = None,
    budget_s: float = PROBE_S,
) -> Probe:
    """Time a few training steps (SGD on random images at the net's per-worker batch) and evaluation batches
    of each distinct net of ``nets`` on ``device``: a CPU with ``threads`` threads, as a training worker has.
    The fast path as training resolves it, less ``torch.compile`` (a minute per net, never paid back here)."""
    dev, t0 = torch.device(device), time.perf_counter()
    fp = replace(FastPath.resolve(fast or FastPathCfg(), dev), compile=False)
    with _threads(threads if dev.type == "cpu" else None), torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        rates = {net: _rate(net, dev, fp, budget_s) for net in dict.fromkeys(nets)}
    if dev.type == "cuda":
        name = torch.cuda.get_device_name(dev)
    else:
        name = f"cpu, {threads} thread{'s' * (threads > 1)} per worker"
    on = [k for k in ("bf16", "channels_last") if getattr(fp, k)]
    notes = [", ".join(on) if on else "fp32"]
    if FastPath.resolve(fast or FastPathCfg(), dev).compile:
        notes.append("eager: training compiles, so it may run faster")
    if any(r.scaled for r in rates.values()):
        notes.append("at smaller batches than training's where marked (time per image taken as the same)")
    return Probe(name, rates, time.perf_counter() - t0, tuple(notes))


def probe(nets: Sequence[Net], w: Workers, fast: FastPathCfg) -> Probe:
    """``measure`` where the training workers would run: on GPUs, in a one-GPU Ray task when a Ray session is
    up (the train stage's, or ``seen_resources``'), else on this process's GPU; on CPUs, in this process."""
    kwargs: dict[str, Any] = {"threads": w.cpus_per_worker, "fast": fast}
    if not w.use_gpu:
        return measure(nets, device="cpu", **kwargs)
    ray = sys.modules.get("ray")  # a session exists only where ray was imported: never import it for this
    if ray is not None and ray.is_initialized():
        # a worker process of its own that ends with the task (max_calls=1): no CUDA memory stays held beside
        # the training workers, and the driver never touches the GPU
        task = ray.remote(num_gpus=1, num_cpus=w.cpus_per_worker, max_calls=1)(measure)
        return ray.get(task.remote(nets, device="cuda", **kwargs))
    if torch.cuda.is_available():
        return measure(nets, device="cuda", **kwargs)
    out = measure(nets, device="cpu", **kwargs)
    return replace(out, notes=(*out.notes, "no GPU visible here: CPU rates, the estimate is far too long"))


# --- the estimate ---------------------------------------------------------------------------------------


def resources_of(resources: Mapping[str, float] | None = None) -> Resources:
    """What training would run on: ``resources`` as Ray reports them (``{"CPU": n, "GPU": m}``: the train
    stage passes its session's), else this machine."""
    if resources is not None:
        return Resources(float(resources.get("CPU", 0)), float(resources.get("GPU", 0)), "the Ray cluster")
    cpus, gpus = local_resources()
    return Resources(float(cpus), float(gpus), "this machine")


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
        res, why = None, "" if not address or _reachable(address) else "no connection"
        if address and not why:
            try:
                res = dict(stack.enter_context(ray_session()))
            except Exception as e:  # ray missing, the cluster refusing: plan for this machine
                why = str(e)
        if why:
            log.warning("plan: the Ray cluster at %s is not reachable (%s): planning for this machine", address, why)
        yield res


def side_by_side(params: Params, w: Workers, r: Resources) -> tuple[int, int]:
    """(units, trials) side by side: each unit takes ``num_workers`` devices (GPUs, or cpus_per_worker CPUs),
    each trial one; ``compute.concurrency`` and ``tune.max_concurrent_trials`` cap them when set."""
    n = int(r.gpus) if w.use_gpu else int(r.cpus // w.cpus_per_worker)
    k, kt = params.compute.concurrency, params.tune.max_concurrent_trials
    units = n // w.num_workers if k == "auto" else min(k, n // w.num_workers)
    return max(1, units), max(1, n if kt == "auto" else min(kt, n))


def unit_seconds(u: Unit, rate: Rate) -> float:
    """Device-seconds of one unit, every device it trains on counted: each epoch trains on its train images
    and evaluates its eval images (both split over the workers, linear speed-up assumed), and recalibrates
    BatchNorm on ``bn_recalibration`` whole batches on every worker (a forward, timed as evaluation)."""
    r = u.recipe
    bn = u.workers * r.bn_recalibration * r.batch_size / rate.eval
    return r.epochs * (u.train_images / rate.train + u.eval_images / rate.eval + bn)


def _wall(seconds: Sequence[float], at_once: int, width: int) -> float:
    """Units of ``width`` devices each, ``at_once`` side by side: the work spread evenly, or the longest one."""
    return max(sum(seconds) / (at_once * width), max(seconds, default=0.0) / width)


def estimate(
    blocks: Sequence[Block], rate: Callable[[Net], Rate], *, units_at_once: int, trials_at_once: int
) -> list[Cost]:
    """Each block's device-seconds and wall time from ``rate`` (a probe's ``rates``, or any function): a
    search runs its methods' trials one method after another, each method's trials side by side."""
    out = []
    for b in blocks:
        secs = [unit_seconds(u, rate(u.net)) for u in b.units]
        if b.stage == "search":
            rows = list(dict.fromkeys(u.row for u in b.units))
            per = [[s for u, s in zip(b.units, secs, strict=True) if u.row == m] for m in rows]
            wall = sum(_wall(p, trials_at_once, 1) for p in per)
        else:
            wall = _wall(secs, units_at_once, b.units[0].workers if b.units else 1)
        out.append(Cost(sum(secs), wall))
    return out


def make_plan(
    params: Params,
    datasets: Sequence[str] | None = None,
    *,
    data_dirs: Mapping[str, str | Path] | None = None,
    resources: Mapping[str, float] | None = None,
    same_unit: SameUnit = unit_identity,
    prober: Prober = probe,
    stages: Collection[Stage] | None = None,
) -> Plan:
    """The plan of ``params`` on ``datasets`` (default: ``grid.datasets``), their preprocessed data looked
    for in ``data_dirs`` (default: ``data/processed/<d>``), on ``resources`` (default: this machine), of the
    work of ``stages`` (default: all: ``train``, ``search``, ``searched``, ``study``)."""
    names = list(params.grid.datasets if datasets is None else datasets)
    dirs = {d: Path("data/processed") / d for d in names} | dict(data_dirs or {})
    data = tuple(data_size(d, params.dataset(d), dirs.get(d)) for d in names)
    r = resources_of(resources)
    w = resolve_workers(params.compute, r.cpus, r.gpus, r.where)
    blocks = [b for b in work(params, data, w, same_unit) if stages is None or b.stage in stages]
    measured = prober([u.net for b in blocks for u in b.units], w, params.compute.fast_path)
    units_at_once, trials_at_once = side_by_side(params, w, r)
    costs = estimate(blocks, measured.rates.__getitem__, units_at_once=units_at_once, trials_at_once=trials_at_once)
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
    e = sorted({u.recipe.epochs for u in b.units})
    return f"{e[0]} epochs each" if len(e) == 1 else f"{e[0]}-{e[-1]} epochs"


def _block_line(b: Block, c: Cost, d: DataSize) -> str:
    up = "up to " if b.upper_bound else ""
    cost = f"{up}about {_hours(c.device_s)} device-hours"
    shape = b.shape + (f"; {b.shared_rows} rows share a unit" if b.shared_rows else "")
    size = f"{d.num_train:,} train / {d.num_test:,} test images of {d.image_size}x{d.image_size} ({d.source})"
    if b.stage == "search":
        u = b.units[0]
        what = f"search: {up}{b.rows} trials ({b.shape}) of {up}{_epochs(b)} = {up}{b.unit_epochs:,} trial-epochs"
        return f"plan: {d.name}: {what} on {u.train_images:,} train / {u.eval_images:,} held-out images; {cost}"
    units = f"{up}{_count(len(b.units), 'unit')} ({shape}), {_epochs(b)} = {up}{b.unit_epochs:,} unit-epochs"
    if b.stage == "searched":
        return f"plan: {d.name}: then {units} at the recipes the searches adopt; {cost}"
    where = f" on {size}" if b.stage == "train" else ""
    return f"plan: {d.name}: {'study: ' if b.stage == 'study' else ''}{units}{where}; {cost}"


def _probe_line(plan: Plan) -> str:
    rows: dict[Net, list[str]] = {}
    for b in plan.blocks:
        for u in b.units:
            names = rows.setdefault(u.net, [])
            names += [] if u.row in names else [u.row]
    p = plan.probe
    each = []
    for net, names in rows.items():
        r = p.rates[net]
        label = names[0] + (f" +{len(names) - 1}" if len(names) > 1 else "")
        at = f" at batch {r.batch}/{r.eval_batch}" if r.scaled else ""
        each.append(f"{label} {_num(r.train)}/{_num(r.eval)}{at}")
    notes = "".join(f", {n}" for n in p.notes)
    return f"plan: probe on {p.device}{notes} ({p.seconds:.1f} s); train/eval img/s per device: {', '.join(each)}"


def _on(plan: Plan) -> str:
    w, n = plan.workers, plan.devices
    what = f"{n} GPU{'s' * (n > 1)}" if w.use_gpu else f"{n} CPU worker{'s' * (n > 1)} of {w.cpus_per_worker} core"
    what += "s" * (not w.use_gpu and w.cpus_per_worker > 1)
    return what + (f", {w.num_workers} per unit, linear speed-up assumed" if w.num_workers > 1 else "")


def format_plan(plan: Plan) -> list[str]:
    """The plan as a few lines: per data set and stage its units, epochs and device-hours; the probe's rates;
    the total, with the wall time on the devices usable at once."""
    sizes = {d.name: d for d in plan.data}
    lines = [_block_line(b, c, sizes[b.dataset]) for b, c in zip(plan.blocks, plan.costs, strict=True)]
    lines.append(_probe_line(plan))
    units = [b for b in plan.blocks if b.stage != "search"]
    trials = sum(b.rows for b in plan.blocks if b.stage == "search")
    n, ue = sum(len(b.units) for b in units), sum(b.unit_epochs for b in units)
    up = any(b.upper_bound for b in plan.blocks)
    more = f" (+ up to {trials:,} search trials)" if trials else ""
    lines.append(
        f"plan: total {_count(n, 'unit')}{more}, {ue:,} unit-epochs, {'up to ' * up}about {_hours(plan.device_s)} "
        f"device-hours; about {_duration(plan.wall_s)} wall on {_on(plan)} (measured probe, +/- what it cannot "
        f"see: {NOT_SEEN})"
    )
    return lines


def plan_lines(params: Params, datasets: Sequence[str] | None = None, **kwargs: Any) -> list[str]:
    """``format_plan(make_plan(params, datasets, **kwargs))``: what a stage logs before it trains, and what
    ``python -m pipeline.profiles ... --plan`` prints."""
    return format_plan(make_plan(params, datasets, **kwargs))
