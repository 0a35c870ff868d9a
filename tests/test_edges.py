"""Failure edges of issue 32 that are not settings: Ray failing to start, the unit key and the workers a unit
trains on, what counts as uncommitted changes, and a killed report stage's temporaries. Each through the real
part (a real local Ray failing to start in the real train stage, real git, a real SIGKILL)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from pipeline import tracking
from pipeline.compute import world_size
from pipeline.config import ComputeCfg
from pipeline.device import CPU, FastPath
from pipeline.io import scratch_dir
from pipeline.provenance import git_commit
from pipeline.settings import validate_params
from pipeline.spec import data_ref
from pipeline.train.engine import Shard
from pipeline.train.loop import Job, prepare_unit
from pipeline.train.run import plan_stage
from pipeline.units import Work
from tests.project import ROOT

STAGE_ENV = {"PYTHONPATH": str(ROOT), "PATH": os.environ["PATH"], "RAY_USAGE_STATS_ENABLED": "0"}


def test_ray_failing_to_start_is_one_message_and_nothing_written(tmp_path: Path, processed: Path) -> None:
    """A local Ray that cannot start (here: its temporary directory is a file; on a loaded machine, "GCS has
    become overloaded") stops the train stage with rc 1 and one message saying what to try, no traceback, and
    nothing written."""
    raw = yaml.safe_load((ROOT / "params.yaml").read_text())
    raw["grid"] = {"datasets": ["embedded"], "methods": ["resnet"], "seeds": [0]}
    raw["train"] |= {"epochs": 1, "milestones": [], "batch_size": 20}
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(raw))
    (tmp_path / "tune.json").write_text('{"methods": {}}')
    (tmp_path / "not-a-dir").write_text("")
    env = {**STAGE_ENV, "RAY_TMPDIR": str(tmp_path / "not-a-dir"), "MLFLOW_TRACKING_URI": f"sqlite:///{tmp_path}/m.db"}
    cmd = [sys.executable, "-m", "stages.train", "embedded", str(processed), "tune.json", "out", "metrics.json"]
    r = subprocess.run(cmd, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=600)
    assert r.returncode == 1, r.stderr[-3000:]
    assert "Traceback" not in r.stderr and r.stderr.count("error: ") == 1, r.stderr[-3000:]
    assert "error: could not start a local Ray on this machine (NotADirectoryError" in r.stderr
    assert "Nothing of this stage ran; run it again" in r.stderr and str(tmp_path / "not-a-dir") in r.stderr
    assert not (tmp_path / "out").exists() and not (tmp_path / "metrics.json").exists()


def test_the_workers_a_unit_trains_on_are_part_of_its_key(processed: Path) -> None:
    """1 and 2 data-parallel workers are different runs (per-rank BatchNorm batches, per-rank crop seeds): a unit
    trained on one is never reused for the other. ``auto`` resolves before the units are keyed."""
    params = validate_params(yaml.safe_load((ROOT / "params.yaml").read_text()))
    data = data_ref("embedded", processed)
    one, two = (Work(params, data, workers=n).recipe[0] for n in (1, 2))
    assert one.key != two.key and (one.unit.workers, two.unit.workers) == (1, 2)
    assert world_size(ComputeCfg(num_workers=1)) == 1
    assert world_size(ComputeCfg(num_workers="auto", use_gpu=False)) == 2  # this CPU machine's auto


def test_the_train_stage_keys_its_units_for_the_workers_they_train_on(tmp_path: Path, processed: Path) -> None:
    """The train stage's plan (what it looks up in the unit store and trains) keys every unit for
    ``compute.num_workers``; and a unit keyed for one worker count refuses to train on another."""
    raw = yaml.safe_load((ROOT / "params.yaml").read_text())
    raw["compute"] |= {"num_workers": 2, "storage_path": str(tmp_path / "runs")}
    params = validate_params(raw)
    (tmp_path / "tune.json").write_text('{"methods": {}}')
    c = tracking.client(f"sqlite:///{tmp_path / 'm.db'}")
    plan = plan_stage(params, "embedded", processed, tmp_path / "tune.json", c)
    assert {u.workers for u in plan.units} == {2}
    job = Job(Shard(), CPU, FastPath(), report=None, store=None, origin={}, streamed=False)
    with pytest.raises(ValueError, match="is keyed for 2 worker\\(s\\) but runs on 1"):
        prepare_unit(plan.units[0], job)


def _git(repo: Path, *args: str) -> None:
    who = ["-c", "user.email=t@t", "-c", "user.name=t"]
    subprocess.run(["git", *who, *args], cwd=repo, check=True, capture_output=True)


def test_what_a_run_writes_itself_is_no_uncommitted_change(tmp_path: Path, monkeypatch) -> None:
    """dvc.lock and the .gitignore files DVC keeps change (and `core.autostage` stages them) during every
    `dvc repro`: the report does not call that "(uncommitted changes)". A changed code file,
    staged or not, still is."""
    for f in ("dvc.lock", "data/.gitignore", "pipeline.py"):
        (tmp_path / f).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / f).write_text("1\n")
    _git(tmp_path, "init", "-q")
    _git(tmp_path, "add", "-A")
    _git(tmp_path, "commit", "-qm", "reference")
    monkeypatch.chdir(tmp_path)
    for f in ("dvc.lock", "data/.gitignore"):
        (tmp_path / f).write_text("2\n")
    _git(tmp_path, "add", "dvc.lock")  # as core.autostage does
    assert git_commit.__wrapped__()["dirty"] is False
    (tmp_path / "pipeline.py").write_text("2\n")
    assert git_commit.__wrapped__()["dirty"] is True
    _git(tmp_path, "add", "pipeline.py")
    assert git_commit.__wrapped__()["dirty"] is True


def test_a_killed_stages_scratch_directory_is_removed_by_the_next_run(tmp_path: Path) -> None:
    """The report stage builds its files in a scratch directory beside its outputs; a stage killed outright
    (SIGKILL: no cleanup runs) leaves it behind, and the next run removes it, never a live process's."""
    code = (
        "import sys, time; from pipeline.io import scratch_dir\n"
        f"with scratch_dir({str(tmp_path / 'report')!r}) as d:\n"
        "    print(d, flush=True); time.sleep(600)\n"
    )
    p = subprocess.Popen([sys.executable, "-c", code], env=STAGE_ENV, stdout=subprocess.PIPE, text=True)
    left = Path(p.stdout.readline().strip())
    alive = subprocess.Popen([sys.executable, "-c", code], env=STAGE_ENV, stdout=subprocess.PIPE, text=True)
    live = Path(alive.stdout.readline().strip())
    try:
        os.kill(p.pid, signal.SIGKILL)
        p.wait(timeout=30)
        assert left.is_dir() and left.name.startswith(".report.")
        with scratch_dir(tmp_path / "report") as mine:
            assert mine.is_dir() and not left.exists() and live.is_dir()
        assert not mine.exists()
    finally:
        alive.kill()
        alive.wait(timeout=30)
