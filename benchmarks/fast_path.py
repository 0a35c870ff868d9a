"""Training speed of one model, eager vs each fast-path switch vs all of them, side by side in one run.

Prints training images/s and, on a GPU, model FLOP utilisation: achieved training FLOP/s (3x the forward
FLOPs counted by torch.utils.flop_counter: forward + backward) over the GPU's dense bf16 peak. Uses the
pipeline's own ``train_one_epoch`` on a synthetic CIFAR-sized set held as uint8 (on the GPU with
data_on_device). The first epoch of each variant is warm-up (compilation, cudnn autotuning) and not timed.

    python benchmarks/fast_path.py [--model resnet --depth 110] [--images 10240] [--batch 128] [--no-compile]
    python benchmarks/fast_path.py --smoke   # ResNet-8, 64 images, no compile: seconds, for CI
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from pipeline.config import TrainCfg  # noqa: E402
from pipeline.evaluate import flops_per_image  # noqa: E402
from pipeline.models import create_model  # noqa: E402
from pipeline.train.engine import FastPath, TensorData, build_optimizer, train_one_epoch  # noqa: E402

# dense bf16 tensor-core peaks, TFLOP/s (vendor data sheets, no sparsity)
PEAK_BF16 = {"H100 SXM": 989.0, "H100 NVL": 835.0, "H100 PCIe": 756.0, "H100": 989.0, "H200": 989.0,
             "A100": 312.0, "L40S": 362.0, "L4": 121.0, "A10": 125.0, "4090": 165.0}  # fmt: skip


CIFAR_MODELS = ("resnet", "se_resnet", "cbam_resnet", "attn_resnet", "densenet_bc")


def peak_tflops(device: torch.device) -> float | None:
    if device.type != "cuda":
        return None
    name = torch.cuda.get_device_name(device)
    return next((v for k, v in PEAK_BF16.items() if k in name), None)


def run(model_name: str, args: dict, fast: FastPath, data: TensorData, cfg: TrainCfg, device: torch.device) -> float:
    torch.manual_seed(0)
    model = fast.prepare(create_model(model_name, **args).to(device))
    opt = build_optimizer(model, cfg)
    train_model = torch.compile(model) if fast.compile else model
    d = data.to(device) if fast.data_on_device else data
    mean = torch.tensor([0.49, 0.48, 0.45], device=device)
    std = torch.tensor([0.25, 0.24, 0.26], device=device)
    train_one_epoch(train_model, d, opt, cfg, mean, std, 0, 0, device=device, fast=fast)  # warm-up
    if device.type == "cuda":
        torch.cuda.synchronize()
    t0 = time.perf_counter()
    rec = train_one_epoch(train_model, d, opt, cfg, mean, std, 0, 1, device=device, fast=fast)
    if device.type == "cuda":
        torch.cuda.synchronize()
    assert rec["train_loss"] == rec["train_loss"], "NaN loss"
    return (len(data) // cfg.batch_size * cfg.batch_size) / (time.perf_counter() - t0)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="resnet")
    ap.add_argument("--depth", type=int, default=110)
    ap.add_argument("--images", type=int, default=None, help="default: 25,600 on a GPU, 1,024 on CPU")
    ap.add_argument("--batch", type=int, default=128)
    ap.add_argument("--threads", type=int, default=None)
    ap.add_argument("--no-compile", action="store_true")
    ap.add_argument("--smoke", action="store_true", help="ResNet-8, 64 images, batch 16, no compile (CI)")
    a = ap.parse_args()
    if a.smoke:
        a.depth, a.images, a.batch, a.no_compile = 8, 64, 16, True
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if a.threads:
        torch.set_num_threads(a.threads)
    n = a.images or (25_600 if device.type == "cuda" else 1_024)
    g = torch.Generator().manual_seed(0)
    data = TensorData(torch.randint(0, 256, (n, 3, 32, 32), dtype=torch.uint8, generator=g), torch.arange(n) % 10)
    cfg = TrainCfg(epochs=2, batch_size=a.batch, lr=0.1, schedule="cosine")
    margs = {"depth": a.depth} if a.model in CIFAR_MODELS else {}  # the ImageNet nets have a fixed depth
    fwd = flops_per_image(create_model(a.model, **margs), torch.randn(1, 3, 32, 32))
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else f"CPU ({torch.get_num_threads()} threads)"
    peak = peak_tflops(device)
    print(f"{a.model} {margs}: {fwd / 1e9:.3f} GFLOPs forward per 32x32 image; {n:,} images, batch {a.batch}; {name}")
    cuda = device.type == "cuda"
    variants = {
        "eager (fp32, NCHW, no compile)": FastPath(data_on_device=cuda),
        "+ channels_last": FastPath(channels_last=True, data_on_device=cuda),
        "+ bf16 autocast": FastPath(bf16=True, data_on_device=cuda),
        "+ torch.compile": FastPath(compile=True, data_on_device=cuda),
        "all (the fast path)": FastPath(bf16=True, channels_last=True, compile=True, data_on_device=cuda),
    }
    if a.no_compile:
        variants = {k: v for k, v in variants.items() if not v.compile}
    base = None
    for label, fast in variants.items():
        ips = run(a.model, margs, fast, data, cfg, device)
        base = base or ips
        line = f"  {label:32s} {ips:10,.0f} images/s  x{ips / base:4.2f}"
        tflops = 3 * fwd * ips / 1e12
        line += f"  {tflops:7.2f} TFLOP/s"
        if peak:
            line += f"  MFU {100 * tflops / peak:5.1f}% of {peak:.0f}"
        if a.model == "resnet" and a.depth == 110:
            line += f"  (200 epochs of 50k: {200 * 50_000 / ips / 60:6.1f} min)"
        print(line, flush=True)


if __name__ == "__main__":
    main()
