"""The fast path changes speed, not results: a few training steps with and without each switch the CPU
supports (channels_last, bf16 autocast, torch.compile, data kept on the device) end in the same place,
up to numerical noise. And the fast-path benchmark runs where only torch is installed."""

from __future__ import annotations

import copy
import json
import re
import subprocess
import sys

import pytest
import torch

from pipeline.config import FastPathCfg, TrainCfg
from pipeline.device import CPU, EAGER, FastPath
from pipeline.models import create_model
from pipeline.train.engine import TensorData, build_optimizer, evaluate, train_one_epoch
from tests.project import ROOT, env

CFG = TrainCfg(epochs=1, batch_size=16, lr=0.05, weight_decay=5e-4, schedule="cosine")
MEAN, STD = torch.tensor([0.5, 0.5, 0.5]), torch.tensor([0.25, 0.25, 0.25])


def data() -> TensorData:
    g = torch.Generator().manual_seed(0)
    return TensorData(torch.randint(0, 256, (64, 3, 32, 32), dtype=torch.uint8, generator=g), torch.arange(64) % 10)


def steps(fast: FastPath, model_name: str = "attn_resnet") -> tuple[dict, dict[str, torch.Tensor], dict]:
    torch.manual_seed(0)
    model = fast.prepare(create_model(model_name, depth=8, width=8, num_classes=10))
    opt = build_optimizer(model, CFG)
    train_model = torch.compile(model) if fast.compile else model
    d = data().to(CPU) if fast.data_on_device else data()
    rec = train_one_epoch(train_model, d, opt, CFG, MEAN, STD, seed=0, epoch=0, fast=fast)  # 4 steps
    ev = evaluate(model, d, MEAN, STD, 32, fast=fast)
    return rec, {k: v.detach().float().clone() for k, v in model.state_dict().items()}, ev


@pytest.fixture(scope="module")
def eager():
    return steps(EAGER)


def close(eager, fast, loss_rtol: float, param_atol: float) -> None:
    (r0, p0, e0), (r1, p1, e1) = eager, fast
    assert abs(r1["train_loss"] - r0["train_loss"]) <= loss_rtol * r0["train_loss"]
    assert abs(e1["val_loss"] - e0["val_loss"]) <= loss_rtol * e0["val_loss"]
    worst = max((p1[k] - p0[k]).abs().max().item() for k in p0)
    assert worst <= param_atol, f"largest parameter difference {worst:.2e}"
    moved = max((p0[k] - v).abs().max().item() for k, v in steps_init().items() if v.is_floating_point())
    assert moved > 10 * param_atol  # the steps moved the weights far more than the switch did


def steps_init() -> dict[str, torch.Tensor]:
    torch.manual_seed(0)
    return copy.deepcopy(create_model("attn_resnet", depth=8, width=8, num_classes=10).state_dict())


def test_auto_is_eager_on_cpu() -> None:
    assert FastPath.resolve(FastPathCfg(), CPU) == EAGER
    on = FastPath.resolve(FastPathCfg(bf16=True, channels_last=True, compile=False, data_on_device=True), CPU)
    assert on == FastPath(bf16=True, channels_last=True, compile=False, data_on_device=True)


def test_channels_last_is_exact_up_to_rounding(eager) -> None:
    fast = steps(FastPath(channels_last=True))
    # fp32 summation order differs between memory formats: measured 1.1e-4 at most, against 0.55 of movement
    close(eager, fast, loss_rtol=1e-4, param_atol=5e-4)


def test_data_on_device_is_identical(eager) -> None:
    fast = steps(FastPath(data_on_device=True))
    close(eager, fast, loss_rtol=0, param_atol=0)


def test_bf16_autocast_within_bf16_noise(eager) -> None:
    fast = steps(FastPath(bf16=True))
    close(eager, fast, loss_rtol=0.03, param_atol=0.02)


@pytest.mark.slow
def test_torch_compile_matches_eager(eager) -> None:
    fast = steps(FastPath(compile=True))
    close(eager, fast, loss_rtol=1e-3, param_atol=1e-3)


# what a bare GPU machine lacks: everything the pipeline needs beyond torch
ABSENT = ("ray", "mlflow", "pydantic", "dvc", "pyarrow", "yaml", "scipy", "pandas", "numpy", "torchvision", "PIL")
# Runs before anything else in the child: every import finder is wrapped so that it finds nothing by these names,
# as if they were not installed (``importlib.util.find_spec`` answers None, as torch's optional probes expect),
# each attempt is recorded with the file that made it, and at exit one line says what was loaded and attempted.
ABSENT_PRELUDE = """
import atexit, json, sys
ABSENT = set(%r)
top = lambda name: name.partition('.')[0]
early = sorted(m for m in sys.modules if top(m) in ABSENT)
attempts = set()

class Absent:
    def __init__(self, finder):
        self.finder = finder

    def find_spec(self, name, path=None, target=None):
        if top(name) not in ABSENT:
            find = getattr(self.finder, 'find_spec', None)
            return find(name, path, target) if find else None
        f = sys._getframe(1)
        while f and f.f_code.co_filename.startswith('<frozen'):  # the import machinery, up to the importer
            f = f.f_back
        attempts.add((name, f.f_code.co_filename if f else '?'))
        return None

    def __getattr__(self, attr):
        return getattr(self.finder, attr)

sys.meta_path[:] = [Absent(f) for f in sys.meta_path]
atexit.register(lambda: print('IMPORTS ' + json.dumps({
    'early': early, 'loaded': sorted(m for m in sys.modules if top(m) in ABSENT), 'attempts': sorted(attempts)})))
import runpy
runpy.run_path(%r, run_name='__main__')
"""


def test_benchmark_runs_with_torch_alone(tmp_path) -> None:
    """benchmarks/fast_path.py is the one-command GPU check: it must run where only Python and torch are
    installed, so the pipeline's other dependencies are hidden from it; importing any of them (say,
    ``pipeline.config`` for its pydantic ``TrainCfg``) fails the run."""
    prelude = ABSENT_PRELUDE % (ABSENT, str(ROOT / "benchmarks" / "fast_path.py"))
    r = subprocess.run(
        [sys.executable, "-c", prelude, "--smoke"], cwd=tmp_path, env=env(), capture_output=True, text=True, timeout=300
    )
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    report = json.loads(r.stdout.rpartition("IMPORTS ")[2])
    assert report["early"] == [] and report["loaded"] == []  # hidden from the first line on, and never loaded
    ours = [a for a in report["attempts"] if a[1].startswith((str(ROOT / "pipeline"), str(ROOT / "benchmarks")))]
    assert ours == [], f"project code tried to import what a bare GPU machine lacks: {ours}"
    figures = r"[^\n]*?\s[\d,]+ images/s\s+x\s*[\d.]+\s+[\d.]+ TFLOP/s\s+MFU (n/a|[\d.]+% of \d+)"
    for label in (
        r"eager \(fp32, NCHW, data on host\)",
        r"\+ channels_last",
        r"\+ bf16 autocast",
        r"\+ data on device",
    ):
        assert re.search(label + figures, r.stdout), r.stdout
