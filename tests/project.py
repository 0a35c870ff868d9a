"""A throw-away copy of this repository with small settings, for the end-to-end tests.

The copy is a real git repository (so results carry a commit) and runs the real stages: `dvc repro` with a
local Ray, a local MLflow store (sqlite in the copy) and the embedded data set.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import yaml

from pipeline.records import read_trained, unit_dir

ROOT = Path(__file__).resolve().parents[1]
OUTPUTS = ("data", "results", "reports")
BIN = Path(sys.executable).parent

# Small enough for a 2-core CI machine, big enough that every method learns something (the default nets'
# width: at width 4 and 600 images every method stays at chance).
TINY: dict[str, Any] = {
    "grid": {"datasets": ["embedded"], "methods": ["resnet", "attn_resnet", "no_attention"], "seeds": [0, 1]},
    "datasets": {"embedded": {"fetch": {"seed": 0, "num_train": 1200, "num_test": 400, "clutter": 4, "noise": 0.08}}},
    "train": {"epochs": 2},
    # the search track on: every method searched with the same budget (the recipe is the first trial), by TPE
    # (random search runs in tests/test_tune_trials.py and tests/test_search_resume.py)
    "tune": {
        "methods": "all",
        "num_samples": 2,
        "epochs": 2,
        "grace_period": 1,
        "searcher": "tpe",
        "tpe_startup_trials": 1,
    },
    # one worker per unit: on 2 cores the grid then trains as two jobs side by side (compute.concurrency: auto)
    "compute": {"num_workers": 1},
}


def deep_update(d: dict, u: dict) -> dict:
    for k, v in u.items():
        d[k] = deep_update(dict(d.get(k) or {}), v) if isinstance(v, dict) and not k.startswith("args") else v
    return d


def env() -> dict[str, str]:
    e = {k: v for k, v in os.environ.items() if not k.startswith(("MLFLOW_", "RAY_ADDRESS"))}
    e["PATH"] = f"{BIN}{os.pathsep}{e.get('PATH', '')}"
    e["RAY_USAGE_STATS_ENABLED"] = "0"
    return e


def run(cmd: list[str], cwd: Path, check: bool = True, timeout: float = 900) -> subprocess.CompletedProcess:
    r = subprocess.run(cmd, cwd=cwd, env=env(), capture_output=True, text=True, timeout=timeout)
    if check and r.returncode != 0:
        raise AssertionError(f"{cmd} failed ({r.returncode}):\n{r.stdout[-4000:]}\n{r.stderr[-6000:]}")
    return r


def make_project(dst: Path, overrides: dict[str, Any], width: int | None = 4) -> Path:
    """Copy the tracked and untracked-but-not-ignored files of this repository to ``dst``, apply
    ``overrides`` to params.yaml (nets narrowed to ``width`` unless None) and commit."""
    files = subprocess.run(
        ["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        check=True,
    ).stdout.split("\0")
    for f in filter(None, files):
        if f == "dvc.lock" or f.split("/")[0] in OUTPUTS:  # results of a run in this checkout: not inputs
            continue
        src = ROOT / f
        if src.is_file():
            (dst / f).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(src, dst / f)
    with open(dst / "params.yaml") as fh:
        params = yaml.safe_load(fh)
    for m in params["methods"].values():  # narrow nets: the pipeline is under test, not the models
        if "width" in m.get("args", {}) and width is not None:
            m["args"]["width"] = width
    params = deep_update(params, overrides)
    (dst / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    for cmd in (
        ["git", "init", "-q"],
        ["git", "add", "-A"],
        ["git", "-c", "user.name=t", "-c", "user.email=t@t", "commit", "-qm", "test project"],
    ):
        subprocess.run(cmd, cwd=dst, check=True, capture_output=True)
    return dst


def mlflow_client(project: Path):
    from mlflow.tracking import MlflowClient

    return MlflowClient(tracking_uri=f"sqlite:///{project / 'mlflow.db'}")


def trained_unit(project: Path, method: str, seed: int, *, track: str = "recipe", dataset: str = "embedded") -> Path:
    """The directory of the unit the train stage trained for ``method``'s ``seed`` row (``rows.json`` names it):
    its ``model.pt`` and ``history.csv``."""
    train = project / "results" / dataset / "train"
    (key,) = {r.key for r in read_trained(train).rows if (r.method, r.seed, r.track) == (method, seed, track)}
    return unit_dir(train, key)
