"""Where a result came from: git commit, hardware, library versions, time."""

from __future__ import annotations

import os
import platform
import socket
import subprocess
import time
from functools import cache
from importlib.metadata import PackageNotFoundError, version
from typing import Any

# What `dvc repro` itself writes into tracked files while it runs (the lock file, the .gitignore entries of its
# outputs; `core.autostage` stages them): not a change of the code or settings a result came from
RUN_WRITES = (":(exclude)dvc.lock", ":(exclude,glob)**/.gitignore")


@cache
def git_commit() -> dict[str, Any]:
    """HEAD, and whether tracked files differ from it (staged or not), apart from what a run writes itself."""

    def git(*args: str) -> str:
        return subprocess.run(["git", *args], capture_output=True, text=True, check=True).stdout.strip()

    try:
        changed = git("status", "--porcelain", "--untracked-files=no", "--", ".", *RUN_WRITES)
        return {"commit": git("rev-parse", "HEAD"), "dirty": bool(changed)}
    except (OSError, subprocess.CalledProcessError):
        return {"commit": "unknown", "dirty": None}


def hardware() -> dict[str, Any]:
    import torch

    gpus = (
        [torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count())] if torch.cuda.is_available() else []
    )
    return {
        "host": socket.gethostname(),
        "platform": platform.platform(),
        "python": platform.python_version(),
        "cpu_count": os.cpu_count(),
        "cpu": platform.processor() or platform.machine(),
        "gpus": gpus,
        "torch": str(torch.__version__),  # a TorchVersion object is not plain data: checkpoints hold this
    }


def versions() -> dict[str, str]:
    out = {}
    for pkg in ("torch", "torchvision", "ray", "mlflow", "dvc", "pyarrow"):
        try:
            out[pkg] = version(pkg)
        except PackageNotFoundError:
            out[pkg] = "absent"
    return out


def provenance(**extra: Any) -> dict[str, Any]:
    """Git state (of the current directory, unless ``git`` is given), hardware, versions, time, extras."""
    return {
        "git": git_commit(),
        "hardware": hardware(),
        "versions": versions(),
        "finished_at": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        **extra,
    }
