"""Surviving failures: a training worker killed mid-epoch, the whole `dvc repro` killed, and a rerun with
changed settings, on a real local Ray with 2 workers and a real MLflow store.

One stage run goes through all three, in order:
A. a worker is SIGKILLed mid-epoch: Ray restarts the worker group (compute.max_failures) from the latest
   checkpoint and the run goes on; later the whole `dvc repro` process group is SIGKILLed;
B. a rerun with a changed learning rate must start from epoch 1, not resume A (and A's run, whose process
   died, is marked FAILED instead of being left RUNNING); it is killed too;
C. a rerun with A's settings resumes A from its latest checkpoint and finishes it: every epoch exactly once
   in the history and in A's MLflow run, nothing half-written left behind.
"""

from __future__ import annotations

import glob
import json
import re
import subprocess
import time

import psutil
import pytest
import torch
import yaml

from tests.project import env as project_env
from tests.project import make_project, mlflow_client, run, trained_unit
from tests.watch import Watched

pytestmark = pytest.mark.slow

EPOCHS = 4
SETTINGS = {
    "grid": {"datasets": ["embedded"], "methods": ["resnet"], "seeds": [0]},
    "datasets": {"embedded": {"fetch": {"seed": 0, "num_train": 3000, "num_test": 200, "clutter": 6, "noise": 0.12}}},
    "train": {"epochs": EPOCHS, "lr": 0.1, "schedule": "step", "milestones": [2]},
    "tune": {"methods": []},  # nothing is searched here
    "compute": {"num_workers": 2, "max_failures": 1, "checkpoint_every_s": 0},  # a checkpoint every epoch
}
EPOCH_LINE = r"\[resnet seed 0\] epoch {}/4 "


def _train_workers(log: str) -> list[psutil.Process]:
    """This run's training workers, by the pids they print at start (not every RayTrainWorker on the
    machine: another test's cluster may still be shutting down)."""
    pids = sorted({int(p) for p in re.findall(r"worker rank \d+/2 pid (\d+) on", log)})
    return [psutil.Process(p) for p in pids if psutil.pid_exists(p)]


def _wait_for_registered_checkpoint(proj, timeout: float = 120) -> None:
    """Ray Train's controller registers a reported checkpoint when it next polls the workers (every 2 s) and
    then writes its snapshot; a worker killed before that restarts from scratch, as it should. Wait for it."""
    deadline = time.time() + timeout
    while not glob.glob(str(proj / ".ray_results/embedded-train-*/checkpoint_manager_snapshot.json")):
        assert time.time() < deadline, "no checkpoint registered"
        time.sleep(0.2)


def _stop_ray() -> None:
    subprocess.run(["ray", "stop", "--force"], env=project_env(), capture_output=True)


def _set_lr(proj, lr: float) -> None:
    params = yaml.safe_load((proj / "params.yaml").read_text())
    params["train"]["lr"] = lr
    (proj / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))


def test_killed_worker_killed_stage_and_changed_params(tmp_path) -> None:
    proj = make_project(tmp_path / "proj", SETTINGS)
    run(["dvc", "repro", "tune@embedded"], proj)
    c = mlflow_client(proj)

    # A: a worker dies mid-epoch 2; Ray restarts the group from epoch 1's checkpoint
    # every rank's start line, undeduplicated by Ray's log dedup (which ignores words with digits)
    a = Watched(["dvc", "repro", "train@embedded"], proj, tmp_path / "a.log", {**project_env(), "RAY_DEDUP_LOGS": "0"})
    a.wait_for(EPOCH_LINE.format(1))
    _wait_for_registered_checkpoint(proj)  # epoch 1's checkpoint is known to the controller: into epoch 2
    victims = _train_workers(a.text)
    assert len(victims) == 2, a.text[-3000:]
    victims[-1].kill()
    t_kill = time.time()
    t_resumed, m = a.wait_for(r"resuming at epoch (\d)/4", after=t_kill)
    assert m.group(1) == "2"  # from epoch 1's checkpoint: the half-done epoch 2 is redone
    print(f"\nkilled worker: {t_resumed - t_kill:.1f} s from SIGKILL to training resumed at epoch 2")
    a.wait_for(EPOCH_LINE.format(3), after=t_resumed)
    a.kill_group()  # now the whole stage: dvc, the driver, its local Ray
    _stop_ray()
    assert not (proj / "results/embedded/train").exists()  # nothing half-written that looks done
    (run_a,) = c.search_runs([c.get_experiment_by_name("attncnn-embedded").experiment_id], "tags.stage = 'train'")
    assert run_a.info.status == "RUNNING"  # its process was killed: nobody could close it

    # B: changed settings never resume A's checkpoint
    _set_lr(proj, 0.05)
    b = Watched(["dvc", "repro", "train@embedded"], proj, tmp_path / "b.log")
    b.wait_for(r"\[resnet seed 0\] starting epoch 1/4")
    assert "resuming" not in b.text.replace("resuming 0 unit(s)", "")
    b.kill_group()
    _stop_ray()
    assert c.get_run(run_a.info.run_id).info.status == "FAILED"  # B's start found A's process dead

    # C: A's settings again: A resumes from its latest checkpoint and finishes
    _set_lr(proj, SETTINGS["train"]["lr"])
    third = run(["dvc", "repro", "train@embedded"], proj, timeout=900)
    final = torch.load(trained_unit(proj, "resnet", 0) / "model.pt", weights_only=True)
    assert final["resumed_from"] is not None and 2 <= final["resumed_from"] < EPOCHS
    assert f"resuming at epoch {final['resumed_from'] + 1}/{EPOCHS}" in third.stdout + third.stderr
    assert [h["epoch"] for h in final["history"]] == list(range(1, EPOCHS + 1))
    assert {n["node_id"] for n in final["provenance"]["nodes"]} and len(final["provenance"]["nodes"]) == 2

    runs = {r.info.run_id: r for r in c.search_runs([run_a.info.experiment_id], "tags.stage = 'train'")}
    assert len(runs) == 2 and runs[run_a.info.run_id].info.status == "FINISHED"  # A continued, not a new run
    (run_b,) = [r for i, r in runs.items() if i != run_a.info.run_id]
    assert run_b.info.status == "FAILED" and run_b.data.params["train.lr"] == "0.05"
    steps = [m.step for m in c.get_metric_history(run_a.info.run_id, "val_top1")]
    assert steps == list(range(1, EPOCHS + 1))  # each epoch once: none lost to the kills, none twice
    assert not glob.glob(str(proj / "results/**/.*.tmp"), recursive=True)
    for f in ("model.pt", "history.csv"):
        assert (trained_unit(proj, "resnet", 0) / f).stat().st_size > 0


def test_an_unreadable_checkpoint_is_set_aside_and_the_unit_resumes_to_the_same_result(tmp_path) -> None:
    """A unit interrupted after its checkpoints were written (its unit record gone), whose newest ``state.pt``
    was then cut short (a crash mid-write): the re-run warns once naming it, resumes from the previous
    checkpoint, and ends with the weights and history of the clean run; no traceback, nothing stuck."""
    settings = {
        "grid": {"datasets": ["embedded"], "methods": ["resnet"], "seeds": [0]},
        "datasets": {"embedded": {"fetch": {"seed": 0, "num_train": 300, "num_test": 100}}},
        "train": {"epochs": 3, "bn_recalibration": 0},
        "tune": {"methods": []},
        "compute": {"num_workers": 1, "keep_checkpoints": 2, "checkpoint_every_s": 0},
    }
    proj = make_project(tmp_path / "proj", settings)
    run(["dvc", "repro", "train"], proj)
    (unit_file,) = (proj / ".ray_results" / "units" / "embedded").glob("*.pt")
    clean = torch.load(unit_file, weights_only=True)
    points = []
    for info in (proj / ".ray_results").glob("embedded-train-*/checkpoint_*/unit.json"):
        points.append((json.loads(info.read_text())["epoch"], info.parent))
    assert len(points) == 2, points
    epoch, newest = max(points)
    state = newest / "state.pt"
    state.write_bytes(state.read_bytes()[: state.stat().st_size // 2])  # cut short
    unit_file.unlink()  # the unit as an interrupted run leaves it: checkpoints, no record

    out = run(["dvc", "repro", "-f", "-s", "train@embedded"], proj)
    text = out.stdout + out.stderr
    assert text.count("set aside the unreadable checkpoint") == 1 and str(newest) in text, text[-3000:]
    assert "Traceback" not in text and "WorkerGroupError" not in text
    assert (newest / "state.pt.unreadable").is_file() and not state.exists()
    again = torch.load(unit_file, weights_only=True)
    assert again["resumed_from"] == epoch - 1
    assert [h["epoch"] for h in again["history"]] == [1, 2, 3]
    for k, v in clean["model"].items():
        assert torch.equal(v, again["model"][k]), k
