"""MLflow runs whose process died: found and closed by the next stage, live ones left alone; a tracking URI's
password never in MLflow's own output."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

from pipeline import tracking
from tests.servers import free_port


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


PASSWORD = "s3cr3t-tracking-pw"


def _mlflow_server(tmp_path: Path) -> tuple[subprocess.Popen, str]:
    """A real MLflow tracking server on 127.0.0.1 (its own sqlite store); (process, address) once it answers."""
    port = free_port()
    store, artifacts = f"sqlite:///{tmp_path / 'server.db'}", str(tmp_path / "artifacts")
    cmd = [sys.executable, "-m", "mlflow", "server", "--host", "127.0.0.1", "--port", str(port), "--workers", "1",
           "--backend-store-uri", store, "--default-artifact-root", artifacts]  # fmt: skip
    with (tmp_path / "server.log").open("w") as log:
        proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    address = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 180
    while time.monotonic() < deadline and proc.poll() is None:
        try:
            with urllib.request.urlopen(f"{address}/health", timeout=5):
                return proc, address
        except OSError:
            time.sleep(0.5)
    os.killpg(proc.pid, signal.SIGKILL)
    raise AssertionError(f"mlflow server did not answer: {(tmp_path / 'server.log').read_text()[-2000:]}")


@pytest.mark.slow  # an MLflow server's start: 10-40 s
def test_mlflows_own_run_links_never_print_the_tracking_password(tmp_path) -> None:
    """A run that ends on a tracking server makes MLflow print "View run <name> at: <url>" and "View experiment
    at: <url>", the URL built from the tracking URI with its userinfo: with ``http://alice:<pw>@host`` the
    password was printed in clear. Now MLflow is told not to print them, and its log records are redacted."""
    proc, address = _mlflow_server(tmp_path)
    try:
        uri = address.replace("http://", f"http://alice:{PASSWORD}@")
        code = (
            "import logging, sys; from pipeline import tracking as t; c = t.client(sys.argv[1]); "
            "e = t.get_experiment(c, 'attncnn-report'); "
            "r, _ = t.find_or_create_run(c, e, 'report', {'run_key': 'k'}, {}); "
            # a record on MLflow's logger naming the store's URL, as its retry and error messages do
            "logging.getLogger('mlflow.utils.rest_utils').warning('API request to %s/api/2.0 failed', sys.argv[1]); "
            "t.finish(c, r); print(r)"
        )  # fmt: skip
        env = {**os.environ, "MLFLOW_TRACKING_URI": uri}
        env.pop("MLFLOW_SUPPRESS_PRINTING_URL_TO_STDOUT", None)
        ended = subprocess.run([sys.executable, "-c", code, uri], capture_output=True, text=True, env=env, timeout=300)
        assert ended.returncode == 0, ended.stderr
        shown = ended.stdout + ended.stderr
        assert "API request to http://***@127.0.0.1" in shown  # the record is there, redacted
        assert PASSWORD not in shown and "alice" not in shown, shown
        run_id = ended.stdout.strip().splitlines()[-1]
        assert tracking.client(address).get_run(run_id).info.status == "FINISHED"  # the run did end, for real
    finally:
        os.killpg(proc.pid, signal.SIGTERM)
        proc.wait(timeout=60)
