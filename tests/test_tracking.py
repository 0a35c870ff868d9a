"""MLflow runs whose process died: found and closed by the next stage, live ones left alone."""

from __future__ import annotations

import os
import subprocess
import sys

from pipeline import tracking


def test_runs_of_dead_processes_are_marked_failed_and_live_ones_kept(tmp_path, monkeypatch) -> None:
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    c = tracking.client(uri)
    exp = tracking.get_experiment(c, "attncnn-test")
    mine, _ = tracking.find_or_create_run(c, exp, "live", {"run_key": "a"}, {})
    # a run created by another process that then died (a killed `dvc repro`)
    code = (
        "import sys; from pipeline import tracking as t; c = t.client(sys.argv[1]); "
        "e = t.get_experiment(c, 'attncnn-test'); print(t.find_or_create_run(c, e, 'dead', {'run_key': 'b'}, {})[0])"
    )
    dead = subprocess.run([sys.executable, "-c", code, uri], capture_output=True, text=True, check=True)
    dead_id = dead.stdout.strip().splitlines()[-1]
    assert c.get_run(dead_id).data.tags[tracking.OWNER].split("@")[0] != str(os.getpid())
    assert tracking.close_dead_runs(c, exp) == [dead_id]
    assert (
        c.get_run(dead_id).info.status == "FAILED"
        and "ended without" in c.get_run(dead_id).data.tags["pipeline.failure"]
    )
    assert c.get_run(mine).info.status == "RUNNING"  # its owner (this process) is alive
    again, existed = tracking.find_or_create_run(c, exp, "dead", {"run_key": "b"}, {})  # resumed later
    assert existed and again == dead_id and c.get_run(dead_id).info.status == "RUNNING"
    assert tracking.close_dead_runs(c, exp) == []  # now owned by a live process
