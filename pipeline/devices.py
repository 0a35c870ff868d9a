"""A plan priced for a GPU that is not here (``python -m pipeline.profiles ... --plan --device h100``).

Nothing is probed on this machine: a user plans GPU spend from a laptop or a login node, where a probe would
time the wrong device. Each net's rate comes from ``benchmarks/fast_path.py``'s output where it measured that
net on that GPU (its stdout saved as ``benchmarks/results/*.txt``, the date in the file's name), else from the
net's FLOPs at a stated fraction of the GPU's dense peak -- an estimate, and every figure built on it says so.

Only ``pipeline.profiles`` imports this module (no stage does): it is in no stage's dvc.yaml deps.
"""

from __future__ import annotations

import ast
import re
from collections.abc import Sequence
from dataclasses import dataclass
from inspect import Parameter, signature
from pathlib import Path
from typing import Any

import torch

from pipeline.compute import Workers
from pipeline.config import ComputeCfg, ConfigError, FastPathCfg
from pipeline.device import FastPath
from pipeline.models import create_model, get_factory
from pipeline.models.cost import flops_per_image
from pipeline.plan import Net, Probe, Prober, Rate, Resources

RESULTS = Path(__file__).resolve().parents[1] / "benchmarks" / "results"
# A training step's FLOPs per forward's: the backward computes gradients for both inputs and weights, two
# forwards' worth (the convention of MFU figures, and benchmarks/fast_path.py's)
TRAIN_PER_FORWARD = 3
# A guess, not a measurement, and a conservative one: CIFAR's narrow nets (16-64 channels, batch 64-128) are bound
# by memory traffic and kernel launches, not math. At 35 % (what a wide bf16 ImageNet net reaches) ResNet-110
# would train at ~228k img/s on an H100; a bandwidth count gives 30-65k, i.e. 5-10 % of the peak. 8 % prices the
# plan in that range; a fast_path.py result replaces the guess for its net, and --utilisation overrides it.
UTILISATION = 0.08


@dataclass(frozen=True)
class Device:
    key: str  # what --device takes
    short: str  # what the hours are named by: "H100-hours"
    name: str  # the variant whose peaks these are
    pattern: str  # matches torch.cuda.get_device_name of this GPU, as fast_path.py's header prints it
    bf16: float | None  # dense TFLOP/s (no sparsity); None: no bf16 tensor cores
    tf32: float | None  # what cuDNN runs fp32 convolutions as, by default, where the GPU has it
    fp32: float


# Dense peaks from the vendor's data sheets (the sheets' sparsity figures halved): NVIDIA H100 Tensor Core GPU
# datasheet (SXM), H200 datasheet, A100 datasheet (SXM), V100 datasheet (SXM2; fp16 tensor cores, no bf16),
# L4 and A10 datasheets. benchmarks/fast_path.py's PEAK_BF16 holds the same bf16 figures.
DEVICES = {
    d.key: d
    for d in (
        Device("h100", "H100", "H100 SXM", r"H100", 989.0, 494.0, 67.0),
        Device("h200", "H200", "H200 SXM", r"H200", 989.0, 494.0, 67.0),
        Device("a100", "A100", "A100 SXM", r"A100", 312.0, 156.0, 19.5),
        Device("v100", "V100", "V100 SXM2", r"V100", None, None, 15.7),
        Device("l4", "L4", "L4", r"\bL4\b", 121.0, 60.0, 30.3),
        Device("a10", "A10", "A10", r"\bA10\b", 125.0, 62.5, 31.2),
    )
}

# fast_path.py's variant labels (their starts), by the switches each runs with
VARIANTS = {
    FastPath(bf16=True, channels_last=True, compile=True, data_on_device=True): "all (the fast path)",
    FastPath(bf16=True, channels_last=True, data_on_device=True): "all but compile",
    FastPath(): "eager",
    FastPath(bf16=True): "+ bf16 autocast",
    FastPath(channels_last=True): "+ channels_last",
    FastPath(compile=True): "+ torch.compile",
    FastPath(data_on_device=True): "+ data on device",
}
HEADER = re.compile(r"^(\w+) (\{.*\}): [\d.]+ GFLOPs forward per (\d+)x\d+ image; [\d,]+ images, batch (\d+); (.+)$")
FIGURE = re.compile(r"^  (\S.*?)\s+([\d,]+) images/s ")


def device(key: str) -> Device:
    """The device ``--device`` names, or ``ConfigError`` naming the allowed ones."""
    if key.lower() not in DEVICES:
        raise ConfigError(f"--device {key!r}: not a device the plan knows; allowed: {', '.join(DEVICES)}")
    return DEVICES[key.lower()]


def resources(d: Device, gpus: int, compute: ComputeCfg) -> Resources:
    """``gpus`` of ``d``, each with the CPUs its worker takes: what the plan spreads the units over."""
    if compute.use_gpu is False:
        raise ConfigError(f"--device {d.key}: compute.use_gpu is false, so training would not use it; allowed: auto")
    return Resources(float(gpus * compute.cpus_per_worker), float(gpus), f"--gpus {gpus} ({d.short})")


def switches(cfg: FastPathCfg, d: Device) -> FastPath:
    """The fast path as training resolves it on ``d`` (``FastPath.of``: ``auto`` on with a CUDA GPU)."""
    return FastPath.of(cfg, cuda=True, bf16=d.bf16 is not None)


def peak(d: Device, fp: FastPath) -> tuple[str, float]:
    """(precision, dense TFLOP/s) the net's convolutions run at on ``d``."""
    if fp.bf16 and d.bf16 is not None:
        return "bf16", d.bf16
    return ("tf32", d.tf32) if d.tf32 is not None else ("fp32", d.fp32)


@dataclass(frozen=True)
class Measured:
    """One run of benchmarks/fast_path.py: a net's training images/s per variant on one GPU."""

    model: str
    args: dict[str, Any]
    side: int
    batch: int
    gpu: str
    date: str
    rates: dict[str, float]  # variant label -> training images/s


def parse_results(text: str, date: str) -> list[Measured]:
    """Every run in ``text`` (fast_path.py's stdout; several runs may follow one another)."""
    out: list[Measured] = []
    for line in text.splitlines():
        if h := HEADER.match(line):
            model, args, side, batch, gpu = h.groups()
            out.append(Measured(model, ast.literal_eval(args), int(side), int(batch), gpu.strip(), date, {}))
        elif (f := FIGURE.match(line)) and out:
            out[-1].rates[f.group(1)] = float(f.group(2).replace(",", ""))
    return out


def read_results(folder: Path | None) -> list[Measured]:
    """The runs saved in ``folder``, newest first (by the date in the file's name)."""
    files = sorted(folder.glob("*.txt")) if folder is not None and folder.is_dir() else []
    runs = []
    for f in files:
        date = re.search(r"\d{4}-\d{2}-\d{2}", f.name)
        runs += parse_results(f.read_text(errors="replace"), date.group(0) if date else "undated")
    return sorted(runs, key=lambda m: m.date, reverse=True)


def _full_args(model: str, args: dict[str, Any]) -> dict[str, Any]:
    """``args`` with the factory's defaults filled in: the benchmark passes only what differs (the depth)."""
    params = signature(get_factory(model)).parameters.values()
    defaults = {p.name: p.default for p in params if p.default is not Parameter.empty}
    return {k: v for k, v in (defaults | args).items() if k != "num_classes"}


def measured_rate(net: Net, runs: Sequence[Measured], d: Device, fp: FastPath) -> tuple[Measured, float] | None:
    """The newest run of this net, at its image size, on ``d``, of the variant training runs: (run, images/s)."""
    variant = VARIANTS.get(fp)
    for m in runs:
        same = m.model == net.model and m.side == net.image_size and re.search(d.pattern, m.gpu)
        if variant is None or not same or _full_args(m.model, m.args) != _full_args(net.model, net.args()):
            continue
        ips = next((v for k, v in m.rates.items() if k.startswith(variant)), None)
        if ips:
            return m, ips
    return None


def forward_flops(net: Net) -> int:
    """The net's forward FLOPs per image, counted on this machine's CPU (one image; no timing). One thread:
    on a busy machine two threads' spin-waits made ResNet-110's one forward 3-4 s instead of 0.13."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        with torch.random.fork_rng(devices=[]):
            model = create_model(net.model, **net.args(), num_classes=net.num_classes)
        return flops_per_image(model, torch.zeros(1, 3, net.image_size, net.image_size))
    finally:
        torch.set_num_threads(threads)


def estimated_rate(net: Net, fwd: int, tflops: float, utilisation: float) -> Rate:
    """Images/s at ``utilisation`` of ``tflops``: a training step costs ``TRAIN_PER_FORWARD`` forwards
    (forward and backward), evaluation one."""
    flops = tflops * 1e12 * utilisation
    return Rate(flops / (TRAIN_PER_FORWARD * fwd), flops / fwd, net.batch, net.eval_batch, False)


def pricer(d: Device, *, utilisation: float = UTILISATION, results: Path | None = RESULTS) -> Prober:
    """A prober that runs nothing on ``d``'s behalf: measured rates from ``results`` where fast_path.py
    measured the net on ``d``, else ``estimated_rate``."""
    if not 0 < utilisation <= 1:
        raise ConfigError(f"--utilisation {utilisation:g}: a fraction of the peak; allowed: (0, 1]")
    runs = read_results(results)

    def prober(nets: Sequence[Net], w: Workers, fast: FastPathCfg) -> Probe:
        fp = switches(fast, d)
        prec, tflops = peak(d, fp)
        rates: dict[Net, Rate] = {}
        seen: set[tuple[str, str]] = set()
        flops: dict[tuple[str, str, int], int] = {}  # nets of one network differ only in their batches: count once
        for net in dict.fromkeys(nets):
            if hit := measured_rate(net, runs, d, fp):
                m, ips = hit
                scaled = m.batch != net.batch
                rates[net] = Rate(ips, TRAIN_PER_FORWARD * ips, m.batch, m.batch, scaled, f"measured {m.date}")
                seen.add((m.gpu, m.date))
            else:
                shape = (net.model, net.args_json, net.image_size)
                if shape not in flops:
                    flops[shape] = forward_flops(net)
                rates[net] = estimated_rate(net, flops[shape], tflops, utilisation)
        pct = f"{utilisation * 100:g} %"
        basis = f"FLOPs at {pct} of {d.name}'s {prec} peak"
        how = f"{TRAIN_PER_FORWARD}x forward FLOPs at {pct} of {tflops:g} TFLOP/s, {d.name}'s dense {prec} peak"
        return _probe(d, rates, seen, basis=basis, how=how)

    return prober


def _probe(d: Device, rates: dict[Net, Rate], seen: set[tuple[str, str]], *, basis: str, how: str) -> Probe:
    """The probe's record of priced rates, in the plan's own words: what they rest on (``basis``, the
    estimate's in short, ``how`` in full), each rate marked where some are measured and some not."""
    guessed = any(not r.source for r in rates.values())
    measured = "; ".join(f"measured on {g} {day} by benchmarks/fast_path.py" for g, day in sorted(seen))
    notes = [measured, f"eval taken as {TRAIN_PER_FORWARD}x train"] if measured else []
    if guessed:
        notes.append(f"estimate: {how} (--utilisation)")
    if not (guessed and measured):  # one source for all: no need to mark each rate
        rates = {n: Rate(r.train, r.eval, r.batch, r.eval_batch, r.scaled) for n, r in rates.items()}
    said = f"estimate: {basis}" + (", the rest measured" if measured else "") if guessed else measured
    return Probe(d.name, rates, 0.0, tuple(notes), priced=d.short, basis=said, estimated=guessed)
