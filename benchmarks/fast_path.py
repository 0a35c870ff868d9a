"""Training speed of one model, eager vs each fast-path switch vs all of them, side by side in one run.

Needs only Python and torch (no Ray, MLflow, pydantic or numpy), so it runs on a bare GPU machine: copy this
file with pipeline/models/, pipeline/device.py and pipeline/train/engine.py (or the whole repo) there and run
it. Prints training images/s and model FLOP utilisation: achieved training FLOP/s (3x the forward FLOPs counted by
torch.utils.flop_counter: forward + backward) over the GPU's dense bf16 peak ("MFU n/a" where there is no
known peak, as on a CPU). Uses the pipeline's own ``train_one_epoch`` on a synthetic CIFAR-sized set held as
uint8, on the host or, with data on device, on the GPU (the same as eager on a CPU). The first epoch of each
variant is warm-up (compilation, allocator) and not timed. A variant that fails (say, torch.compile without
a working compiler) prints one line saying why, and the others still run.

    python benchmarks/fast_path.py [--model resnet --depth 110] [--images 25600] [--batch 128] [--no-compile]
    python benchmarks/fast_path.py --smoke   # ResNet-8, 64 images, 1 thread, no compile: seconds, for CI
"""

from __future__ import annotations

import argparse
import contextlib
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

# torch-only modules: this script must run where only torch is installed (tests/test_fast_path.py checks it)
from pipeline.device import FastPath  # noqa: E402
from pipeline.models import create_model, registry  # noqa: E402
from pipeline.models.cost import flops_per_image  # noqa: E402
from pipeline.train.engine import TensorData, build_optimizer, train_one_epoch  # noqa: E402

# dense bf16 tensor-core peaks, TFLOP/s (vendor data sheets, no sparsity); the first key in the name wins
PEAK_BF16 = {"H100 SXM": 989.0, "H100 NVL": 835.0, "H100 PCIe": 756.0, "H100": 989.0, "H200": 989.0,
             "A100": 312.0, "L40S": 362.0, "L4": 121.0, "A10": 125.0, "4090": 165.0}  # fmt: skip

CIFAR_RESNETS = ("resnet", "se_resnet", "cbam_resnet", "attn_resnet")
CIFAR_MODELS = (*CIFAR_RESNETS, "densenet_bc")  # the ones with a depth argument
MEAN, STD = (0.49, 0.48, 0.45), (0.25, 0.24, 0.26)


@dataclass(frozen=True)
class Recipe:
    """The fields of ``pipeline.config.TrainCfg`` that ``train_one_epoch`` and ``build_optimizer`` read, with
    its defaults (a plain dataclass: pydantic may be missing here)."""

    batch_size: int
    lr: float = 0.1
    momentum: float = 0.9
    nesterov: bool = False
    weight_decay: float = 1e-4
    crop_padding: int = 4
    flip: bool = True


def peak_tflops(device: torch.device) -> float | None:
    if device.type != "cuda":
        return None
    name = torch.cuda.get_device_name(device)
    return next((v for k, v in PEAK_BF16.items() if k in name), None)


def build(name: str, args: dict) -> nn.Module:
    """The CIFAR ResNets straight from the registry (``pipeline.models.resnet`` registers them when the package
    is imported: torch alone); any other model through the package, which loads the torchvision-backed nets."""
    if name in CIFAR_RESNETS:
        return registry.create_model(name, **args)
    return create_model(name, **args)


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def run(model_name: str, args: dict, fast: FastPath, data: TensorData, cfg: Recipe, device: torch.device) -> float:
    """Training images/s of one variant over one timed epoch, after an untimed warm-up epoch."""
    torch.manual_seed(0)
    model = fast.prepare(build(model_name, args).to(device))
    opt = build_optimizer(model, cfg)
    train_model = torch.compile(model) if fast.compile else model
    d = data.to(device) if fast.data_on_device else data
    mean, std = torch.tensor(MEAN, device=device), torch.tensor(STD, device=device)
    train_one_epoch(train_model, d, opt, cfg, mean, std, 0, 0, device=device, fast=fast)  # warm-up
    sync(device)
    t0 = time.perf_counter()
    rec = train_one_epoch(train_model, d, opt, cfg, mean, std, 0, 1, device=device, fast=fast)
    sync(device)
    seconds = time.perf_counter() - t0
    if rec["train_loss"] != rec["train_loss"]:
        raise FloatingPointError("NaN training loss")
    return len(data) / seconds


def variants(cuda: bool, compile_: bool) -> dict[str, FastPath]:
    """Eager, each switch alone, then all of them (all but compile with ``--no-compile``)."""
    out = {
        "eager (fp32, NCHW, data on host)": FastPath(),
        "+ channels_last": FastPath(channels_last=True),
        "+ bf16 autocast": FastPath(bf16=True),
        "+ torch.compile": FastPath(compile=True),
        "+ data on device" + ("" if cuda else " (= eager on CPU)"): FastPath(data_on_device=True),
        "all (the fast path)": FastPath(bf16=True, channels_last=True, compile=True, data_on_device=True),
    }
    if compile_:
        return out
    out = {k: v for k, v in out.items() if not v.compile}
    out["all but compile"] = FastPath(bf16=True, channels_last=True, data_on_device=True)
    return out


def figures(label: str, ips: float, base: float | None, fwd: int, peak: float | None) -> str:
    """One result line: images/s, ratio to eager, training TFLOP/s and MFU."""
    tflops = 3 * fwd * ips / 1e12
    ratio = f"x{ips / base:5.2f}" if base else "x   -  "
    mfu = f"MFU {100 * tflops / peak:5.1f}% of {peak:.0f}" if peak else "MFU n/a"
    return f"  {label:34s} {ips:10,.0f} images/s  {ratio}  {tflops:8.3f} TFLOP/s  {mfu}"


def parse_args() -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument(
        "--model",
        default="resnet",
        help=f"a registered model; {', '.join(CIFAR_RESNETS)} need torch alone, the others (densenet_bc, the "
        "ImageNet nets) also torchvision",
    )
    ap.add_argument("--depth", type=int, default=None, help="default: 110 (8 with --smoke)")
    ap.add_argument("--images", type=int, default=None, help="default: 25,600 on a GPU, 1,024 on CPU")
    ap.add_argument("--batch", type=int, default=128)
    ap.add_argument("--threads", type=int, default=None)
    ap.add_argument("--no-compile", action="store_true")
    ap.add_argument("--smoke", action="store_true", help="depth 8, 64 images, batch 16, 1 thread, no compile (CI)")
    a = ap.parse_args()
    if a.smoke:  # 1 thread: on a busy 2-core CI machine, 2 threads' spin-waits took 4x as long
        a.depth, a.images, a.batch, a.no_compile, a.threads = a.depth or 8, 64, 16, True, a.threads or 1
    a.depth = a.depth or 110
    return a


def main() -> None:
    a = parse_args()
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if a.threads:
        torch.set_num_threads(a.threads)
    n = a.images or (25_600 if device.type == "cuda" else 1_024)
    n = max(a.batch, n // a.batch * a.batch)  # whole batches: no odd-sized last batch to recompile for
    g = torch.Generator().manual_seed(0)
    data = TensorData(torch.randint(0, 256, (n, 3, 32, 32), dtype=torch.uint8, generator=g), torch.arange(n) % 10)
    cfg = Recipe(batch_size=a.batch)
    margs = {"depth": a.depth} if a.model in CIFAR_MODELS else {}  # the ImageNet nets have a fixed depth
    fwd = flops_per_image(build(a.model, margs), torch.randn(1, 3, 32, 32))
    cuda = device.type == "cuda"
    name = torch.cuda.get_device_name(device) if cuda else f"CPU ({torch.get_num_threads()} threads)"
    peak = peak_tflops(device)
    print(f"{a.model} {margs}: {fwd / 1e9:.3f} GFLOPs forward per 32x32 image; {n:,} images, batch {a.batch}; {name}")
    base = None
    for label, fast in variants(cuda, not a.no_compile).items():
        try:
            ips = run(a.model, margs, fast, data, cfg, device)
        except Exception as e:  # one variant failing (compile unavailable, out of memory) must not hide the rest
            reason = (str(e).strip().splitlines() or [""])[0][:160]
            print(f"  {label:34s} failed: {type(e).__name__}: {reason}", flush=True)
            continue
        finally:
            if fast.compile:  # drop compiled graphs and their memory; a broken compiler must not stop the run
                with contextlib.suppress(Exception):
                    torch.compiler.reset()
            if cuda:
                torch.cuda.empty_cache()
        if fast == FastPath():  # eager: the ratios' base
            base = ips
        line = figures(label, ips, base, fwd, peak)
        if a.model == "resnet" and a.depth == 110:
            line += f"  (200 epochs of 50k: {200 * 50_000 / ips / 60:6.1f} min)"
        print(line, flush=True)


if __name__ == "__main__":
    main()
