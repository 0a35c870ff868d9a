"""Preprocess throughput on CIFAR-format and ImageNet-format inputs, and the cost of loading CIFAR for training.

1. CIFAR-10 format: a 60,000-image binary archive (50,000 train + 10,000 test, random pixels: the worst case
   for compression) -> fetch from a local file (copy + md5/sha256 check) -> preprocess (Parquet + stats).
   Goal: preprocess under 10 s on 2 cores.
2. Loading the preprocessed CIFAR train split into one uint8 tensor (N, 3, 32, 32), as training does.
3. ImageNet format: the official tars + devkit with photo-sized JPEGs (smooth random images, 500x375,
   ~25 KB each) -> fetch (index + checksums) -> preprocess on Ray tasks (resize to 256, re-encode), images/s
   with Ray already started (its start-up is printed separately).

    python benchmarks/preprocess.py [--cifar-images 60000] [--imagenet-classes 8] [--imagenet-per-class 50]
    python benchmarks/preprocess.py --smoke   # 600 CIFAR images, 2 x 4 ImageNet images (CI)
"""

from __future__ import annotations

import argparse
import io
import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from pipeline.config import CifarDataCfg, ImageNetDataCfg  # noqa: E402
from pipeline.data.cifar import CIFAR10, write_cifar_binary  # noqa: E402
from pipeline.data.fetch import fetch_dataset  # noqa: E402
from pipeline.data.manifest import load_split  # noqa: E402
from pipeline.data.preprocess import preprocess_dataset  # noqa: E402
from tests.archives import CIFAR10_CLASSES, imagenet_official, md5  # noqa: E402


def timed(fn, *args, **kwargs) -> float:
    t0 = time.perf_counter()
    fn(*args, **kwargs)
    return time.perf_counter() - t0


def photo(rng: np.random.Generator, w: int = 500, h: int = 375) -> bytes:
    from PIL import Image

    small = Image.fromarray(rng.integers(0, 256, (12, 16, 3), dtype=np.uint8))
    img = small.resize((w, h), Image.Resampling.BICUBIC)
    arr = np.asarray(img).astype(np.int16) + rng.integers(-12, 13, (h, w, 3))  # some texture
    buf = io.BytesIO()
    Image.fromarray(np.clip(arr, 0, 255).astype(np.uint8)).save(buf, format="JPEG", quality=90)
    return buf.getvalue()


def bench_cifar(tmp: Path, n: int) -> None:
    rng = np.random.default_rng(0)
    n_test = n // 6
    n_train = n - n_test

    def split(k: int):
        return rng.integers(0, 256, (k, 32, 32, 3), dtype=np.uint8), (np.arange(k) % 10).astype(np.uint8)

    archive = tmp / "cifar-10-binary.tar.gz"
    write_cifar_binary(archive, CIFAR10, split(n_train), split(n_test), CIFAR10_CLASSES)
    cfg = CifarDataCfg.model_validate({"kind": "cifar10", "fetch": {"source": str(archive), "checksum": md5(archive)}})
    t_fetch = timed(fetch_dataset, "cifar10", cfg, tmp / "raw")
    t_prep = timed(preprocess_dataset, tmp / "raw", tmp / "proc", cfg.preprocess)
    import torch

    t0 = time.perf_counter()
    tr = load_split(tmp / "proc", "train")
    x = torch.from_numpy(tr.images).permute(0, 3, 1, 2).contiguous()  # (N, 3, 32, 32) uint8, as training holds it
    t_load = time.perf_counter() - t0
    mb = archive.stat().st_size / 1e6
    print(f"CIFAR-10 format, {n:,} images ({mb:.0f} MB archive), {os.cpu_count()} CPUs")
    print(f"  fetch (local copy + md5/sha256 verify): {t_fetch:6.2f} s")
    print(f"  preprocess (decode, stats, Parquet):     {t_prep:6.2f} s  = {n / t_prep:10,.0f} images/s  (goal < 10 s)")
    rate = len(x) / t_load
    print(f"  load train split into one tensor:        {t_load:6.2f} s  = {rate:10,.0f} images/s  {tuple(x.shape)}")


def bench_imagenet(tmp: Path, classes: int, per_class: int) -> None:
    import ray

    root = tmp / "inet"
    n_val = max(1, per_class // 5)
    t0 = time.perf_counter()
    sums = imagenet_official(root, classes, per_class, n_val, image=photo)
    t_make = time.perf_counter() - t0
    total = classes * (per_class + n_val)
    mb = sum(f.stat().st_size for f in root.iterdir()) / 1e6
    cfg = ImageNetDataCfg.model_validate(
        {"kind": "imagenet", "fetch": {"source": str(root), "checksums": sums}, "preprocess": {"shard_size": 100}}
    )
    t_ray = timed(ray.init, num_cpus=os.cpu_count(), include_dashboard=False, logging_level="ERROR")
    try:
        t_fetch = timed(fetch_dataset, "imagenet", cfg, tmp / "iraw")
        t_prep = timed(preprocess_dataset, tmp / "iraw", tmp / "iproc", cfg.preprocess)
    finally:
        ray.shutdown()
    print(f"ImageNet format (official tars + devkit), {total:,} JPEGs of 500x375 ({mb:.0f} MB; made in {t_make:.0f} s)")
    print(f"  Ray start-up (not counted below):        {t_ray:6.2f} s")
    print(f"  fetch (stream, md5/sha256, index):       {t_fetch:6.2f} s  = {mb / t_fetch:10,.0f} MB/s")
    print(f"  preprocess (Ray tasks: decode, resize 256, re-encode, Parquet): {t_prep:6.2f} s  = "
          f"{total / t_prep:,.0f} images/s on {os.cpu_count()} CPUs")  # fmt: skip


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--cifar-images", type=int, default=60000)
    ap.add_argument("--imagenet-classes", type=int, default=8)
    ap.add_argument("--imagenet-per-class", type=int, default=50)
    ap.add_argument("--smoke", action="store_true", help="600 CIFAR images, 2 x 4 ImageNet images (CI)")
    args = ap.parse_args()
    if args.smoke:
        args.cifar_images, args.imagenet_classes, args.imagenet_per_class = 600, 2, 4
    with tempfile.TemporaryDirectory() as d:
        bench_cifar(Path(d), args.cifar_images)
        bench_imagenet(Path(d), args.imagenet_classes, args.imagenet_per_class)


if __name__ == "__main__":
    main()
