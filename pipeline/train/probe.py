"""The plan's probe: a few training steps and evaluation batches of each distinct net, timed on the device the
training workers would use, with the engine's own functions -- ``train_one_epoch`` over a synthetic split of
one batch (normalisation, crop and flip, the recipe's optimizer, autocast, the loss and the step, as training
takes them) and ``evaluate`` -- so the rates ``pipeline.plan`` turns into device-hours are the pipeline's.

``torch.compile`` is never paid for here (about a minute per net), so where training compiles, the probe's
eager rate errs on the slow side; the plan says so, and what else the probe cannot see.
"""

from __future__ import annotations

import contextlib
import math
import statistics
import sys
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import replace
from typing import Any

import torch

from pipeline.compute import Workers
from pipeline.config import FastPathCfg
from pipeline.device import FastPath
from pipeline.models import create_model
from pipeline.plan import Net, Probe, Rate
from pipeline.train.engine import TensorData, build_optimizer, evaluate, train_one_epoch

PROBE_S = 0.5  # seconds of timed training steps per net at most (evaluation: half), after the warm-up
CPU_START_BATCH = 8  # on a CPU the probe starts here and grows the batch only while a step stays short


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


class _Split:
    """Random uint8 images and labels of one net's size, held where training holds its split (on the device
    with ``data_on_device``), with the statistics it is standardised by."""

    def __init__(self, net: Net, dev: torch.device, fp: FastPath) -> None:
        self.net, self.dev = net, dev
        self.home = dev if fp.data_on_device else torch.device("cpu")
        self.mean = torch.full((3,), 0.5, device=dev)
        self.std = torch.full((3,), 0.25, device=dev)

    def of(self, n: int) -> TensorData:
        g = torch.Generator().manual_seed(n)
        side = self.net.image_size
        images = torch.randint(0, 256, (n, 3, side, side), dtype=torch.uint8, generator=g)
        return TensorData(images, torch.randint(0, self.net.num_classes, (n,), generator=g)).to(self.home)


def _train_step(model: torch.nn.Module, split: _Split, batch: int, fp: FastPath) -> Callable[[], object]:
    """One training step as the engine takes it: ``train_one_epoch`` over a split of exactly one batch."""
    cfg = split.net.recipe.model_copy(update={"batch_size": batch})
    opt, data = build_optimizer(model, cfg), split.of(batch)
    return lambda: train_one_epoch(model, data, opt, cfg, split.mean, split.std, 0, 0, device=split.dev, fast=fp)


def _cpu_batch(model: torch.nn.Module, split: _Split, fp: FastPath, budget_s: float) -> int:
    """A CPU step of a deep net at the full batch takes seconds: time one at a small batch, then take the
    largest power of two whose step stays within a quarter of the budget (the full batch where it does)."""
    full = split.net.batch
    b0 = min(full, CPU_START_BATCH)
    per_image = _timed(_train_step(model, split, b0, fp), lambda: None) / b0
    if per_image * full <= budget_s / 4:
        return full
    return max(b0, min(full, 2 ** int(math.log2(max(1.0, budget_s / 4 / per_image)))))


def _rate(net: Net, dev: torch.device, fp: FastPath, budget_s: float) -> Rate:
    cuda = dev.type == "cuda"
    sync, most = (torch.cuda.synchronize, 20) if cuda else ((lambda: None), 5)
    model = fp.prepare(create_model(net.model, **net.args(), num_classes=net.num_classes).to(dev))
    split = _Split(net, dev, fp)
    batch = net.batch if cuda else _cpu_batch(model, split, fp, budget_s)
    train_s = seconds_per_call(_train_step(model, split, batch, fp), sync, budget_s=budget_s, most=most)
    eval_batch = net.eval_batch if cuda else min(net.eval_batch, 2 * batch)
    held = split.of(eval_batch)

    def forward() -> None:
        evaluate(model, held, split.mean, split.std, eval_batch, device=dev, fast=fp)

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
    """Time a few training steps (at the net's per-worker batch) and evaluation batches of each distinct net of
    ``nets`` on ``device``: a CPU with ``threads`` threads, as a training worker has. The fast path as
    training resolves it, less ``torch.compile`` (a minute per net, never paid back here)."""
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
    up (the train stage's, or ``pipeline.compute.seen_resources``'), else on this process's GPU; on CPUs, in
    this process."""
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
