"""A search killed mid-way resumes, for real: the tune stage (local Ray Tune, ASHA, random search, MLflow in
sqlite) is SIGKILLed, process group and all, once Tune's experiment snapshot records some trials as ended; the
same stage run again restores the search (``Tuner.restore``) and trains only the trials that had not ended.
With one trial at a time and deterministic training on CPUs, the resumed search's trials -- settings, every
epoch's held-out top-1, which trials ASHA stopped -- and its decision are an uninterrupted search's, because
ASHA's rungs are rebuilt from the kept trials (``pipeline.tune.ResumableASHA``; Ray does not restore them)."""

from __future__ import annotations

import glob
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from pipeline import tracking
from tests.project import ROOT, env

pytestmark = pytest.mark.slow

SAMPLES, KEEP = 5, 3  # trials per search; the kill comes once the snapshot records at least KEEP ended


@pytest.fixture
def processed(search_data):
    return search_data


def _project(root, raw: dict):
    root.mkdir()
    raw["methods"]["resnet"]["args"]["width"] = 4
    raw["compute"].update(storage_path=str(root / "ray"), num_workers=1)
    raw["tune"].update(
        methods=["resnet"],
        allow_unequal=True,
        arch_space={},
        num_samples=SAMPLES,
        epochs=2,
        grace_period=1,
        max_concurrent_trials=1,  # one at a time: ASHA's stops then do not depend on which trial reports first
    )
    (root / "params.yaml").write_text(yaml.safe_dump(raw, sort_keys=False))
    return root


def _stage_env(root) -> dict[str, str]:
    e = env()
    e.update(
        PYTHONPATH=str(ROOT),
        MLFLOW_TRACKING_URI=f"sqlite:///{root / 'mlflow.db'}",
        # Tune snapshots its experiment every 10 s or more; every second here, so the test need not wait long
        TUNE_GLOBAL_CHECKPOINT_S="1",
    )
    return e


def _stage(root, processed) -> list[str]:
    return [sys.executable, "-m", "stages.tune", "embedded", str(processed), str(root / "tune.json")]


def _run(root, processed) -> subprocess.CompletedProcess:
    r = subprocess.run(_stage(root, processed), cwd=root, env=_stage_env(root), capture_output=True, text=True,
                       timeout=600)  # fmt: skip
    assert r.returncode == 0, r.stderr[-4000:]
    return r


def _ended_in_snapshot(root) -> int:
    """Trials Tune's latest experiment snapshot records as ended (TERMINATED): what a restore keeps."""
    best = 0
    for f in glob.glob(str(root / "ray" / "*" / "experiment_state-*.json")):
        try:
            state = json.loads(Path(f).read_text())
        except (OSError, ValueError):  # being replaced
            continue
        best = max(best, sum(json.loads(t[0])["status"] == "TERMINATED" for t in state["trial_data"]))
    return best


def _start(root, processed) -> subprocess.Popen:
    """The stage in its own process group, its output in ``root``/stage.log."""
    with open(root / "stage.log", "w") as log:
        return subprocess.Popen(_stage(root, processed), cwd=root, env=_stage_env(root), stdout=log, stderr=log,
                                start_new_session=True)  # fmt: skip


def _kill_when_trials_ended(p: subprocess.Popen, root) -> int:
    """SIGKILL the stage's process group once the snapshot holds KEEP ended trials; the count then."""
    deadline = time.time() + 300
    while _ended_in_snapshot(root) < KEEP:
        assert p.poll() is None, "the stage ended before it could be killed: " + (root / "stage.log").read_text()
        assert time.time() < deadline, "no trials ended"
        time.sleep(0.2)
    os.killpg(p.pid, signal.SIGKILL)
    p.wait()
    return _ended_in_snapshot(root)


def _outcome(r: dict) -> list[tuple]:
    return [(json.dumps(tr["config"], sort_keys=True), tr["history"], tr["status"]) for tr in r["trials"]]


def test_a_killed_search_resumes_with_the_trials_it_had_finished(tmp_path, processed, raw_params) -> None:
    # the uninterrupted search and the one to be killed run side by side (one trial at a time each: their
    # trials and stops do not depend on timing), then the killed one is run again
    whole = _project(tmp_path / "uninterrupted", json.loads(json.dumps(raw_params)))
    cut = _project(tmp_path / "killed", json.loads(json.dumps(raw_params)))
    reference = _start(whole, processed)
    kept = _kill_when_trials_ended(_start(cut, processed), cut)
    assert reference.wait(timeout=600) == 0, (whole / "stage.log").read_text()[-4000:]
    ref = json.loads((whole / "tune.json").read_text())["methods"]["resnet"]
    assert KEEP <= kept < SAMPLES and not (cut / "tune.json").exists()
    again = _run(cut, processed)
    r = json.loads((cut / "tune.json").read_text())["methods"]["resnet"]

    assert "resuming the interrupted search" in again.stdout
    assert r["resumed"] == {"kept": kept, "trained": SAMPLES - kept} and r["side_by_side"] == 1
    started = again.stdout.count(" starting (")
    assert started == SAMPLES - kept, again.stdout  # the kept trials were not trained again
    print(f"\ntrials trained: {SAMPLES} uninterrupted; {SAMPLES - kept} in the resumed run ({kept} kept)")
    assert _outcome(r) == _outcome(ref)  # the same trials, epochs and ASHA stops
    # the first trial trained after the restore was stopped by ASHA at its first rung: restored with empty
    # rungs it would have been held against nothing and trained on (only the rebuilt rungs can stop it)
    assert r["trials"][kept]["status"] == "KILLED", [tr["status"] for tr in r["trials"]]
    for k in ("adopted", "chosen", "best", "reason"):
        assert r[k] == ref[k]
    assert r["consumed"]["trial_epochs"] == ref["consumed"]["trial_epochs"]
    # MLflow: one run per trial, none left RUNNING by the kill
    c = tracking.client(f"sqlite:///{cut / 'mlflow.db'}")
    exp = c.get_experiment_by_name("attncnn-embedded")
    runs = c.search_runs([exp.experiment_id], "tags.stage = 'tune-trial'")
    assert len(runs) == SAMPLES and len({run.data.tags["trial"] for run in runs}) == SAMPLES
    assert not c.search_runs([exp.experiment_id], "attributes.status = 'RUNNING'")
