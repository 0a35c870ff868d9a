"""An interrupted training stage resumes from its last saved epoch, not from 0, and MLflow holds every epoch
exactly once."""

from __future__ import annotations

import glob
import os
import signal
import subprocess
import time

import pytest
import torch

from tests.project import env as project_env
from tests.project import make_project, mlflow_client, run

pytestmark = pytest.mark.slow

EPOCHS = 4
SETTINGS = {
    "grid": {"datasets": ["embedded"], "methods": ["resnet"], "seeds": [0]},
    "datasets": {"embedded": {"fetch": {"seed": 0, "num_train": 2400, "num_test": 200, "clutter": 6, "noise": 0.12}}},
    "train": {"epochs": EPOCHS, "schedule": "step", "milestones": [2]},
    "tune": {"methods": []},
    "methods": {"no_attention": {"tuned_from": None}},  # nothing is searched here
}


def _checkpoints(proj) -> list[str]:
    return glob.glob(str(proj / ".ray_results" / "embedded-train-*" / "checkpoint_*"))


def test_killed_training_resumes_from_its_checkpoint(tmp_path) -> None:
    proj = make_project(tmp_path, SETTINGS)
    run(["dvc", "repro", "tune@embedded"], proj)
    log = (tmp_path / "first.log").open("w")
    first = subprocess.Popen(
        ["dvc", "repro", "train@embedded"],
        cwd=proj,
        env=project_env(),
        stdout=log,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    deadline = time.time() + 600
    while len(_checkpoints(proj)) < 2 and first.poll() is None and time.time() < deadline:
        time.sleep(0.5)
    assert first.poll() is None, "training finished before it could be interrupted"
    assert len(_checkpoints(proj)) >= 2, (tmp_path / "first.log").read_text()[-3000:]
    os.killpg(first.pid, signal.SIGKILL)  # the whole stage: dvc, the driver and its local Ray
    first.wait()
    subprocess.run(["ray", "stop", "--force"], env=project_env(), capture_output=True)
    assert not (proj / "results" / "embedded" / "train").exists()  # nothing half-written that looks done

    second = run(["dvc", "repro", "train@embedded"], proj, timeout=900)
    final = torch.load(proj / "results/embedded/train/resnet/seed0/model.pt", weights_only=False)
    # from the last checkpoint Ray had registered when the stage died (epoch 1 or later), not from 0
    assert final["resumed_from"] is not None and 1 <= final["resumed_from"] < EPOCHS
    assert f"resuming at epoch {final['resumed_from'] + 1}/{EPOCHS}" in second.stdout + second.stderr
    assert [h["epoch"] for h in final["history"]] == list(range(1, EPOCHS + 1))

    c = mlflow_client(proj)
    exp = c.get_experiment_by_name("attncnn-embedded")
    runs = c.search_runs([exp.experiment_id], "tags.stage = 'train'")
    assert len(runs) == 1 and runs[0].info.status == "FINISHED"  # the same run continued, not a second one
    steps = [m.step for m in c.get_metric_history(runs[0].info.run_id, "val_top1")]
    assert steps == list(range(1, EPOCHS + 1))
