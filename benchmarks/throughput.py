"""Throughput, measured side by side in one run on the same data and thread count.

1. Pipeline overhead: training images/s through the pipeline (Ray Train worker, per-epoch checkpoint, report
   barrier, MLflow logging and system metrics, progress events: the job as the train stage makes it) vs a bare
   PyTorch loop doing the same per-epoch work (train, BN recalibration, evaluation) on the same model. Goal:
   ratio >= 0.95. Both use 1 process with --threads threads; a 2-worker DDP line is printed for information (on
   a 2-core machine it mostly measures DDP). The two take turns for --rounds rounds and each rate is taken from
   its median epoch after the first (the first carries start-up), so a transient load on the machine hits both
   alike rather than one of them; the ratio is the median of the rounds' ratios (each round's two runs are
   about half a minute apart: this machine's speed drifts by 10-20 % over tens of seconds, the same work at full
   CPU use). The pipeline's own cost between epochs (report barrier, checkpoint, logging:
   the time from the end of one epoch's work to the end of the next, minus that work) is printed apart.
2. Attention cost: parameters and bare-loop training images/s of the paper's attention net vs the plain
   backbone, SE and CBAM, at the embedded default size and at ResNet-20 size.

    python benchmarks/throughput.py [--epochs 4] [--rounds 5] [--threads 2] [--images 3000] [--only pipeline|attention]
    python benchmarks/throughput.py --smoke   # tiny sizes, one pipeline run: checks it still runs (CI)
"""

from __future__ import annotations

import argparse
import itertools
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from pipeline import tracking  # noqa: E402
from pipeline.compute import Workers, ray_session  # noqa: E402
from pipeline.config import Params  # noqa: E402
from pipeline.data.fetch import fetch_dataset  # noqa: E402
from pipeline.data.preprocess import preprocess_dataset  # noqa: E402
from pipeline.models import create_model  # noqa: E402
from pipeline.progress import PlannedUnit, UnitProgress, relay  # noqa: E402
from pipeline.settings import load_params  # noqa: E402
from pipeline.spec import RunSpec, build_spec, data_ref  # noqa: E402
from pipeline.train.engine import (  # noqa: E402
    Shard,
    build_optimizer,
    build_scheduler,
    evaluate,
    recalibrate_bn,
    train_one_epoch,
)
from pipeline.train.loop import load_data  # noqa: E402
from pipeline.train.run import fit, job_for  # noqa: E402
from pipeline.train.store import UnitStore  # noqa: E402


def bare_loop(spec: RunSpec, threads: int) -> list[float]:
    """Per-epoch wall times of the same work the worker does, in a plain loop."""
    torch.set_num_threads(threads)
    train, val = load_data(spec)
    mean, std = torch.tensor(spec.dataset.mean), torch.tensor(spec.dataset.std)
    torch.manual_seed(spec.seed)
    model = create_model(spec.model, **spec.model_args)
    cfg = spec.train
    opt = build_optimizer(model, cfg)
    sched = build_scheduler(opt, cfg)
    times = []
    for epoch in range(cfg.epochs):
        t0 = time.perf_counter()
        train_one_epoch(model, train, opt, cfg, mean, std, spec.seed, epoch, Shard())
        sched.step()
        recalibrate_bn(model, train, cfg, mean, std, spec.seed, epoch)
        evaluate(model, val, mean, std, cfg.eval_batch_size)
        times.append(time.perf_counter() - t0)
    return times


def pipeline_run(
    spec: RunSpec, params: Params, workers: int, threads: int, storage: str
) -> tuple[list[float], list[float]]:
    """Per-epoch wall times through Ray Train + checkpoints + MLflow, from the epochs' end timestamps, and the
    pipeline's own share of each (wall time minus the epoch's work as the loop timed it)."""

    params = params.model_copy(
        update={
            "compute": params.compute.model_copy(
                update={"num_workers": workers, "cpus_per_worker": threads, "storage_path": storage}
            )
        }
    )
    spec = spec.model_copy(update={"workers": workers})  # a unit is keyed for the workers it trains on
    c = tracking.client()
    exp = tracking.get_experiment(c, "benchmark")
    ref = tracking.UnitRun(experiment_id=exp, name=f"benchmark {workers} worker(s)", tags={"run_key": spec.key()})
    job = job_for(params, [spec], {spec.key(): ref}, {})  # as the train stage makes it: system metrics included
    progress = UnitProgress("benchmark", [PlannedUnit(spec.key(), spec.method, spec.seed, spec.train.epochs)])
    with ray_session(num_cpus=max(workers * threads, os.cpu_count() or 1)), relay(progress) as hub:
        fit(job, params, f"benchmark-{workers}-{time.time_ns()}", Workers(workers, False, threads), hub)
    progress.close()
    hist = UnitStore(storage, spec.dataset.name).load(spec.key())["history"]
    stamps = [h["timestamp_ms"] / 1000 for h in hist]
    walls = [hist[0]["epoch_time_s"]] + [b - a for a, b in itertools.pairwise(stamps)]
    return walls, [w - h["epoch_time_s"] for w, h in zip(walls[1:], hist[1:], strict=True)]


def rate(spec: RunSpec, times: list[float]) -> float:
    """Images/s of the median epoch after the first (the first carries start-up)."""
    return len(load_data(spec)[0]) / statistics.median(times[1:] or times)


def model_cost(
    specs: dict[str, tuple[str, dict]], data_spec: RunSpec, threads: int, steps: int = 8, rounds: int = 5
) -> None:
    """Params and training images/s of each net. The nets take turns for ``rounds`` rounds of ``steps`` steps
    and each reports its median round, so a transient load on the machine hits all of them alike."""
    torch.set_num_threads(threads)
    train, _ = load_data(data_spec)
    x = train.images[:64].float() / 255.0
    y = train.labels[:64]
    nets = {}
    for label, (name, args) in specs.items():
        torch.manual_seed(0)
        m = create_model(name, **args, num_classes=10)
        nets[label] = (m, torch.optim.SGD(m.parameters(), lr=0.01, momentum=0.9), [])

    def step(m, opt) -> None:
        loss = torch.nn.functional.cross_entropy(m(x), y)
        opt.zero_grad()
        loss.backward()
        opt.step()

    for m, opt, _ in nets.values():  # warm-up
        for _ in range(2):
            step(m, opt)
    for _ in range(rounds):
        for m, opt, rates in nets.values():
            t0 = time.perf_counter()
            for _ in range(steps):
                step(m, opt)
            rates.append(64 * steps / (time.perf_counter() - t0))
    base = None
    print(f"{'model':<34}{'params':>10}{'vs backbone':>13}{'train img/s':>13}{'vs backbone':>13}")
    for label, (m, _, rates) in nets.items():
        ips = statistics.median(rates)
        n = sum(p.numel() for p in m.parameters())
        base = base or (n, ips)
        print(f"{label:<34}{n:>10,}{n / base[0]:>13.4f}{ips:>13.0f}{ips / base[1]:>13.3f}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--epochs", type=int, default=4)
    ap.add_argument("--rounds", type=int, default=5, help="bare loop and pipeline take turns this many times")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--images", type=int, default=3000)
    ap.add_argument("--only", choices=["pipeline", "attention"], default=None)
    ap.add_argument("--smoke", action="store_true", help="tiny sizes, no DDP line, one round: seconds, for CI")
    args = ap.parse_args()
    if args.smoke:
        args.epochs, args.threads, args.images, args.rounds = 2, 1, 200, 1

    params = load_params(ROOT / "params.yaml")
    work = Path(tempfile.mkdtemp(prefix="attncnn-bench-"))
    os.environ["MLFLOW_TRACKING_URI"] = f"sqlite:///{work / 'mlflow.db'}"
    emb = params.dataset("embedded")
    ds = emb.model_copy(update={"fetch": emb.fetch.model_copy(update={"num_train": args.images, "num_test": 500})})
    fetch_dataset("embedded", ds, work / "raw")
    preprocess_dataset(work / "raw", work / "data")
    params = params.model_copy(update={"train": params.train.model_copy(update={"epochs": args.epochs})})
    spec = build_spec(params, "attn_resnet", data_ref("embedded", work / "data"), seed=0)
    print(
        f"machine: {os.cpu_count()} CPUs, torch {torch.__version__}, {args.threads} threads, "
        f"{args.images} train images, {args.epochs} epochs, model attn_resnet {spec.model_args}\n"
    )

    if args.only in (None, "pipeline"):
        pipeline_overhead(spec, params, args.threads, work, rounds=args.rounds, ddp=not args.smoke)
    if args.only in (None, "attention"):
        attention_cost(spec, params, args.threads, smoke=args.smoke)


def pipeline_overhead(
    spec: RunSpec, params: Params, threads: int, work: Path, *, rounds: int = 5, ddp: bool = True
) -> None:
    print(f"1. pipeline (Ray Train + checkpoints + MLflow) vs bare PyTorch loop, same work per epoch, {rounds} rounds")
    bare, piped, own = [], [], []
    for r in range(rounds):  # turns: a load on the machine slows both, not one
        bare.append(rate(spec, bare_loop(spec, threads)))
        walls, between = pipeline_run(spec, params, 1, threads, str(work / f"ray1-{r}"))
        piped.append(rate(spec, walls))
        own += between
        ratio = piped[-1] / bare[-1]
        print(f"   round {r + 1}: bare {bare[-1]:6.0f} img/s, pipeline {piped[-1]:6.0f} img/s, ratio {ratio:.3f}")
    b, p = statistics.median(bare), statistics.median(piped)
    ratios = sorted(x / y for x, y in zip(piped, bare, strict=True))
    print(f"   bare loop, 1 process x {threads} threads     {b:8.0f} img/s   (median of {rounds} rounds)")
    print(
        f"   pipeline, 1 worker x {threads} threads       {p:8.0f} img/s   ratio {statistics.median(ratios):.3f} "
        f"(goal >= 0.95; median of the rounds' ratios, {ratios[0]:.3f} to {ratios[-1]:.3f})"
    )
    epoch_s, cost = len(load_data(spec)[0]) / p, statistics.median(own)
    print(
        f"   pipeline's own cost between epochs (report barrier, checkpoint, logging): {1000 * cost:.0f} ms median "
        f"per epoch = {100 * cost / epoch_s:.1f} % of a {epoch_s:.2f} s epoch"
    )
    if ddp:
        walls, _ = pipeline_run(spec, params, 2, max(1, threads // 2), str(work / "ray2"))
        two = rate(spec, walls)
        print(
            f"   pipeline, 2 DDP workers x {max(1, threads // 2)} thread(s)  {two:8.0f} img/s   ratio "
            f"{two / b:.3f} (information)\n"
        )


def attention_cost(spec: RunSpec, params: Params, threads: int, smoke: bool = False) -> None:
    print("2. attention cost (bare loop, batch 64, median of 5 interleaved rounds)")
    small = dict(params.method("resnet").args)
    big = {"depth": 20, "width": 16}
    sizes = (
        (("embedded default size", small),) if smoke else (("embedded default size", small), ("ResNet-20 size", big))
    )
    for title, a in sizes:
        print(f"   {title}: {a}")
        model_cost(
            {
                "plain backbone (resnet)": ("resnet", a),
                "attention, final (default)": ("attn_resnet", {**a, "placement": "final"}),
                "attention, stage (Sec. 3.1)": ("attn_resnet", {**a, "placement": "stage"}),
                "SE (se_resnet)": ("se_resnet", a),
                "CBAM (cbam_resnet)": ("cbam_resnet", a),
            },
            spec,
            threads,
            *((2, 1) if smoke else ()),
        )
        print()


if __name__ == "__main__":
    main()
