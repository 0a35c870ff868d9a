"""Wall time of the training grid with its jobs side by side against one at a time, on this machine.

The same grid (methods x seeds of params.yaml on the embedded set, unchanged recipe) trained by the real train
stage driver (`pipeline.train.run.train_dataset`: local Ray, Ray Train, MLflow in a temporary sqlite store)
in three settings, each from an empty run storage:

- serial:     compute.num_workers=1, compute.concurrency=1  (one job, the units one after another)
- concurrent: compute.num_workers=1, compute.concurrency=auto (as many 1-worker jobs as the CPUs hold)
- ddp:        compute.num_workers=auto (2 workers on CPUs), concurrency auto: one 2-worker data-parallel job

    python benchmarks/grid_concurrency.py [--seeds 0 1] [--epochs 3] [--only serial,concurrent,ddp]
    python benchmarks/grid_concurrency.py --smoke   # concurrent only: 2 methods, 1 seed, 1 epoch, 300 images (CI)
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from pipeline.data.fetch import fetch_dataset  # noqa: E402
from pipeline.data.preprocess import preprocess_dataset  # noqa: E402
from pipeline.io import write_json  # noqa: E402
from pipeline.settings import load_params  # noqa: E402
from pipeline.train.run import train_dataset  # noqa: E402

SETTINGS = {
    "serial": {"num_workers": 1, "concurrency": 1},
    "concurrent": {"num_workers": 1, "concurrency": "auto"},
    "ddp": {"num_workers": "auto", "concurrency": "auto"},
}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--seeds", type=int, nargs="+", default=None)
    ap.add_argument("--epochs", type=int, default=None)
    ap.add_argument("--only", default=",".join(SETTINGS))
    ap.add_argument("--smoke", action="store_true", help="2 methods, 1 seed, 1 epoch, 300 images (CI)")
    args = ap.parse_args()
    base = load_params(ROOT / "params.yaml")
    if args.smoke:
        emb = base.dataset("embedded")
        small = emb.model_copy(update={"fetch": emb.fetch.model_copy(update={"num_train": 300, "num_test": 100})})
        grid = base.grid.model_copy(update={"methods": ["resnet", "attn_resnet"]})
        base = base.model_copy(update={"datasets": {**base.datasets, "embedded": small}, "grid": grid})
        args.seeds, args.epochs, args.only = [0], 1, "concurrent"
    tmp = Path(tempfile.mkdtemp(prefix="grid-bench-"))
    fetch_dataset("embedded", base.dataset("embedded"), tmp / "raw")
    preprocess_dataset(tmp / "raw", tmp / "proc")
    write_json(tmp / "tune.json", {"methods": {}})
    os.environ["MLFLOW_TRACKING_URI"] = f"sqlite:///{tmp / 'mlflow.db'}"
    grid = base.grid.model_copy(update={"seeds": args.seeds or base.grid.seeds})
    train = base.train.model_copy(update={"epochs": args.epochs or base.train.epochs})
    print(f"grid: {len(grid.methods)} methods x {len(grid.seeds)} seeds, {train.epochs} epochs, {os.cpu_count()} CPUs")
    walls = {}
    for name in args.only.split(","):
        compute = base.compute.model_copy(update={**SETTINGS[name], "storage_path": str(tmp / f"ray-{name}")})
        params = base.model_copy(update={"grid": grid, "train": train, "compute": compute})
        t0 = time.perf_counter()
        m = train_dataset(params, "embedded", tmp / "proc", tmp / "tune.json", tmp / name, tmp / f"{name}.json")
        walls[name] = time.perf_counter() - t0
        print(
            f"{name:>10}: {walls[name]:6.1f} s wall for {m['units_trained']} units, "
            f"{m['jobs_side_by_side']} job(s) side by side, {m['train_images_per_s']} img/s per job",
            flush=True,
        )
    if "serial" in walls:
        for name, w in walls.items():
            print(f"{name:>10}: {walls['serial'] / w:.2f}x the serial grid's speed")


if __name__ == "__main__":
    main()
