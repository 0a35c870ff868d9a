"""The cluster runbook (docs/cluster.md), followed to the letter, on a real 2-node Ray cluster on 127.0.0.1.

The fixture starts a moto S3 server on 127.0.0.1, then runs the runbook's `cluster-steps` block as it is, in
a small copy of the project: Ray token authentication, an MLflow server (sqlite + S3 artifacts), a head and
a second node (one CPU each, so a 2-worker training job must use both), checkpoints and preprocessed data in
S3, S3 as the DVC remote, the pipeline as a `ray job submit` job, and `dvc repro --pull` here afterwards.
A secret is planted in the credentials; no record may contain it. The MLflow UI is checked in a real
headless Chromium, and its screenshots are kept under `test-artifacts/`.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import re
import shutil
import subprocess
import tempfile
import uuid
from pathlib import Path

import psutil
import pytest
import torch

from tests.project import ROOT, make_project, trained_unit
from tests.project import env as project_env
from tests.servers import S3_ENV, free_port, moto_s3

pytestmark = pytest.mark.slow

BUCKET = "attncnn-cluster"
SECRET = f"planted-secret-{uuid.uuid4().hex}"
ARTIFACTS = ROOT / "test-artifacts"
SETTINGS = {
    "grid": {"datasets": ["embedded"], "methods": ["attn_resnet", "no_attention"], "seeds": [0]},
    "datasets": {"embedded": {"fetch": {"seed": 0, "num_train": 600, "num_test": 200, "clutter": 6, "noise": 0.12}}},
    "train": {"epochs": 2},
    # one method searched, by explicit opt-in (the report marks the other NOT SEARCHED): 2 trials keep CI short
    "tune": {"methods": ["attn_resnet"], "allow_unequal": True, "num_samples": 2, "epochs": 1, "grace_period": 1},
    "compute": {"num_workers": 2, "checkpoint_every_s": 0},  # checkpoints every epoch: the test looks for them
}


def readme_steps() -> str:
    text = (ROOT / "docs" / "cluster.md").read_text()
    block = text.split("<!-- cluster-steps:begin -->", 1)[1].split("<!-- cluster-steps:end -->", 1)[0]
    (code,) = re.findall(r"```bash\n(.*?)```", block, re.S)
    return code


def _listeners(port: int) -> set[str]:
    return {c.laddr.ip for c in psutil.net_connections("tcp") if c.status == "LISTEN" and c.laddr.port == port}


def _hashes(root: Path) -> dict[str, str]:
    return {
        str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(root.rglob("*"))
        if p.is_file()
    }


@pytest.fixture(scope="module")
def cluster(tmp_path_factory):
    import boto3

    tmp = tmp_path_factory.mktemp("cluster")
    proj = make_project(tmp / "proj", SETTINGS)
    short = Path(tempfile.mkdtemp(prefix="rc", dir="/tmp"))  # Ray's unix sockets need a short path
    ports = {"RAY_PORT": free_port(), "DASHBOARD_PORT": free_port(), "MLFLOW_PORT": free_port()}
    with moto_s3() as endpoint:
        boto3.client("s3", endpoint_url=endpoint, **_creds()).create_bucket(Bucket=BUCKET)
        env = {
            **project_env(),
            **S3_ENV,
            "AWS_SECRET_ACCESS_KEY": SECRET,
            "AWS_ENDPOINT_URL": endpoint,
            "HOME": str(tmp / "home"),  # ~/.ray/auth_token of this cluster only
            "RAY_TMPDIR": str(short),  # this cluster's Ray logs, to search for the secret
            "RAY_OVERRIDE_RESOURCES": '{"CPU": 1}',  # each node: one CPU
            "HEAD_IP": "127.0.0.1",
            "NODE_IP": "127.0.0.1",
            "S3": f"s3://{BUCKET}/attncnn",
            "MLFLOW_HOME": str(tmp / "mlflow"),
            **{k: str(v) for k, v in ports.items()},
        }
        (tmp / "home").mkdir()
        try:
            r = subprocess.run(
                ["bash", "-euo", "pipefail", "-c", readme_steps()],
                cwd=proj,
                env=env,
                capture_output=True,
                text=True,
                timeout=1500,
            )
            (tmp / "steps.log").write_text(r.stdout + r.stderr)
            assert r.returncode == 0, (
                f"docs/cluster.md cluster steps failed ({r.returncode}):\n{r.stdout[-5000:]}\n{r.stderr[-5000:]}"
            )
            yield {
                "proj": proj,
                "env": env,
                "endpoint": endpoint,
                "ports": ports,
                "tmp": tmp,
                "out": r.stdout + r.stderr,
                "ray_tmp": short,
            }
        finally:
            subprocess.run(["ray", "stop", "--force"], env=env, capture_output=True)
            for c in psutil.net_connections("tcp"):
                if c.status == "LISTEN" and c.laddr.port == ports["MLFLOW_PORT"] and c.pid:
                    with contextlib.suppress(psutil.Error):
                        psutil.Process(c.pid).terminate()
            shutil.rmtree(short, ignore_errors=True)


def _creds() -> dict[str, str]:
    return {
        "aws_access_key_id": S3_ENV["AWS_ACCESS_KEY_ID"],
        "aws_secret_access_key": SECRET,
        "region_name": S3_ENV["AWS_DEFAULT_REGION"],
    }


def _objects(endpoint: str) -> dict[str, bytes]:
    import boto3

    s3 = boto3.client("s3", endpoint_url=endpoint, **_creds())
    out = {}
    for page in s3.get_paginator("list_objects_v2").paginate(Bucket=BUCKET):
        for o in page.get("Contents", []):
            out[o["Key"]] = s3.get_object(Bucket=BUCKET, Key=o["Key"])["Body"].read()
    return out


def test_job_trained_on_both_nodes_with_s3_storage(cluster) -> None:
    proj = cluster["proj"]
    assert "Job 'raysubmit_" in cluster["out"] and "succeeded" in cluster["out"]
    for m in SETTINGS["grid"]["methods"]:
        rec = torch.load(trained_unit(proj, m, 0) / "model.pt", weights_only=True)
        nodes = {n["node_id"] for n in rec["provenance"]["nodes"]}
        assert len(nodes) == 2, rec["provenance"]["nodes"]  # one worker per node: the job spanned both
        assert rec["spec"]["dataset"]["path"].startswith(f"s3://{BUCKET}/attncnn/data/embedded/")
    keys = set(_objects(cluster["endpoint"]))
    # preprocessed data published for every node, checkpoints and finished units, search cache, DVC remote
    assert any(re.fullmatch(r"attncnn/data/embedded/[0-9a-f]{16}/manifest\.json", k) for k in keys)
    assert any(re.search(r"attncnn/ray/embedded-train-[0-9a-f]+/checkpoint_[^/]+/state\.pt$", k) for k in keys)
    assert sum(k.startswith("attncnn/ray/units/embedded/") and k.endswith(".pt") for k in keys) == 2
    assert any(k.startswith("attncnn/ray/tune-cache/embedded/") for k in keys)
    assert any(k.startswith("attncnn/dvc/files/md5/") for k in keys)
    assert any(k.startswith("attncnn/dvc/runs/") for k in keys)  # the run cache `dvc repro --pull` used
    assert any(k.startswith("attncnn/mlflow/") and k.endswith("model.pt") for k in keys)


def test_results_come_back_through_the_dvc_remote(cluster) -> None:
    proj, env = cluster["proj"], cluster["env"]
    out = cluster["out"]
    for stage in ("fetch@embedded", "preprocess@embedded", "tune@embedded", "train@embedded", "report"):
        assert f"Stage '{stage}' is cached - skipping run, checking out outputs" in out, stage
    before = _hashes(proj / "reports")
    tables = (proj / "reports/tables.md").read_text()
    assert "tables.md" in before and "NOT CIFAR" in tables
    assert "| CNN without attention | **NOT SEARCHED** |" in tables  # the unequal search, opted into, is marked
    shutil.rmtree(proj / ".dvc/cache")
    for d in ("data", "results", "reports"):  # every output; the .gitignore files DVC wrote belong to git
        for p in (proj / d).rglob("*"):
            if p.is_file() and p.name != ".gitignore":
                p.unlink()
    assert not (proj / "reports/tables.md").exists()
    r = subprocess.run(["dvc", "pull"], cwd=proj, env=env, capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stderr[-3000:]
    assert _hashes(proj / "reports") == before  # the report regenerates unchanged
    r = subprocess.run(["dvc", "status"], cwd=proj, env=env, capture_output=True, text=True, timeout=600)
    assert "Data and pipelines are up to date" in r.stdout, r.stdout


def test_mlflow_server_has_the_runs_and_its_ui_shows_them(cluster) -> None:
    from mlflow.tracking import MlflowClient

    uri = f"http://127.0.0.1:{cluster['ports']['MLFLOW_PORT']}"
    c = MlflowClient(tracking_uri=uri)
    exp = c.get_experiment_by_name("attncnn-embedded")
    assert exp.tags["mlflow.experimentKind"] == "custom_model_development"  # the UI opens on its runs
    runs = c.search_runs([exp.experiment_id], "tags.stage = 'train'")
    assert {r.info.run_name for r in runs} == {"attn_resnet seed 0", "no_attention seed 0"}
    for r in runs:
        assert r.info.status == "FINISHED"
        assert [m.step for m in c.get_metric_history(r.info.run_id, "val_top1")] == [1, 2]
        assert r.info.artifact_uri.startswith("mlflow-artifacts:")  # through the server, into S3
        assert "test_top1" in r.data.metrics
    trials = c.search_runs([exp.experiment_id], "tags.stage = 'tune-trial'")
    # the searched method's 2 trials, the recipe's own first
    assert len(trials) == 2 and all(t.info.status in ("FINISHED", "KILLED") for t in trials)

    # the report's run in an experiment of its own, linked to the training experiment both ways
    rexp = c.get_experiment_by_name("attncnn-report")
    (report,) = c.search_runs([rexp.experiment_id], "tags.dataset = 'embedded'")
    assert not c.search_runs([exp.experiment_id], "tags.stage = 'report'")
    assert report.data.tags["training_experiment_id"] == exp.experiment_id
    assert c.get_experiment(exp.experiment_id).tags["report_run_id"] == report.info.run_id

    run = next(r for r in runs if r.info.run_name.startswith("attn_resnet"))
    _browse(uri, exp.experiment_id, run, f"{run.data.metrics['test_top1']:g}", rexp.experiment_id)


def _browse(uri: str, exp_id: str, run, test_top1: str, report_exp_id: str) -> None:
    """The runs table shows each training run's Dataset (name and digest), Source (the DVC stage) and Models (a
    link to its logged model), and no report run; the run page its metrics, logged model, data set and commit;
    the logged model's page its registered version and test metrics; the report experiment its report run."""
    from playwright.sync_api import TimeoutError as PlaywrightTimeout
    from playwright.sync_api import sync_playwright

    run_id, run_name, commit = run.info.run_id, run.info.run_name, run.data.tags["mlflow.source.git.commit"]
    digest = run.inputs.dataset_inputs[0].dataset.digest

    chromium = ensure_chromium()
    ARTIFACTS.mkdir(exist_ok=True)
    flags = ["--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run", "--disable-background-networking"]
    flags += ["--disable-component-update", "--disable-sync"]
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=chromium, args=flags)
        # wide: the runs table renders only the columns in view, and the Models column is its last default one
        page = browser.new_page(viewport={"width": 2400, "height": 1000})
        page.goto(f"{uri}/#/experiments/{exp_id}/runs")
        page.get_by_text(run_name).first.wait_for(timeout=90_000)  # the runs table, rendered
        page.get_by_text("no_attention seed 0").first.wait_for(timeout=30_000)
        page.get_by_text(f"embedded ({digest})").first.wait_for(timeout=30_000)  # Dataset column
        # Models column: the run's logged model, shown as its registered version once it is registered
        registered = f"attncnn-embedded-{run.data.tags['method']}"
        model = f'a[href*="/models/{model_id(uri, run_id)}"], a[href*="/models/{registered}/versions/"]'
        page.locator(model).first.wait_for(timeout=30_000)
        page.screenshot(path=str(ARTIFACTS / "mlflow-experiment.png"), full_page=True)
        table = page.inner_text("body")
        assert table.count(f"embedded ({digest})") >= 2 and table.count("dvc repro train@embedded") >= 2  # Source
        page.goto(f"{uri}/#/experiments/{exp_id}/runs/{run_id}")
        page.get_by_text("val_top1").first.wait_for(timeout=90_000)  # the run's metrics
        page.get_by_text("test_top1").first.wait_for(timeout=30_000)
        # the logged-models panel renders after the metrics: wait for it (its assertion is below, on what is shown)
        with contextlib.suppress(PlaywrightTimeout):
            page.wait_for_function("document.body.innerText.includes('Logged models (')", timeout=30_000)
        body = page.inner_text("body")
        assert test_top1[:4] in body  # with its value
        assert commit[:7] in body and "dvc repro train@embedded" in body and f"embedded ({digest})" in body
        assert "Logged models (1)" in body
        page.get_by_text("test_top1").first.scroll_into_view_if_needed()
        page.screenshot(path=str(ARTIFACTS / "mlflow-run.png"), full_page=True)
        # the logged model's page: named for its unit, linked to its registry version, with its test metrics
        page.goto(f"{uri}/#/experiments/{exp_id}/models/{model_id(uri, run_id)}")
        page.get_by_text(f"embedded-{run.data.tags['method']}-seed0").first.wait_for(timeout=90_000)
        page.get_by_text(registered).first.wait_for(timeout=30_000)
        page.get_by_text("test_top1").first.wait_for(timeout=30_000)  # its metrics load after the model
        body = page.inner_text("body")
        assert "Not registered" not in body and "test_top1" in body, body[:3000]
        page.screenshot(path=str(ARTIFACTS / "mlflow-logged-model.png"), full_page=True)
        page.goto(f"{uri}/#/experiments/{report_exp_id}/runs")
        page.get_by_text("report | embedded").first.wait_for(timeout=90_000)
        page.screenshot(path=str(ARTIFACTS / "mlflow-report-experiment.png"), full_page=True)
        browser.close()
    # the experiment's description links its report run; no report run is among its runs
    assert table.count("report | embedded") == 1 and "in the experiment of reports" in table
    assert (ARTIFACTS / "mlflow-run.png").stat().st_size > 10_000


def model_id(uri: str, run_id: str) -> str:
    from mlflow.tracking import MlflowClient

    (out,) = MlflowClient(tracking_uri=uri).get_run(run_id).outputs.model_outputs
    return out.model_id


def ensure_chromium() -> str:
    """Debian's chromium, installed here if missing (the test setup; needs root and the Debian mirror)."""
    found = shutil.which("chromium")
    if found:
        return found
    if os.geteuid() != 0:
        pytest.fail("chromium is missing and this user cannot install it: run `apt-get install -y chromium`")
    cmd = ["apt-get", "install", "-y", "--no-install-recommends", "chromium"]
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    if subprocess.run(cmd, env=env, capture_output=True).returncode != 0:
        subprocess.run(["apt-get", "update"], env=env, capture_output=True, check=True)
        subprocess.run(cmd, env=env, capture_output=True, check=True)
    return shutil.which("chromium") or pytest.fail("apt-get installed chromium, but it is not on PATH")


def test_no_credential_in_any_record(cluster) -> None:
    proj, tmp = cluster["proj"], cluster["tmp"]
    secret = SECRET.encode()
    places: dict[str, bytes] = {"runbook steps output": cluster["out"].encode()}
    for root in (proj, tmp / "mlflow", cluster["ray_tmp"]):  # project + DVC files, MLflow db and log, Ray logs
        for p in root.rglob("*"):
            if p.is_file() and not p.is_symlink() and ".git" not in p.parts and "sockets" not in p.parts:
                places[str(p)] = p.read_bytes()
    places.update({f"s3://{BUCKET}/{k}": v for k, v in _objects(cluster["endpoint"]).items()})
    assert any("runtime_env_agent" in k for k in places)  # Ray's logs were searched
    assert any(k.endswith("mlflow.db") for k in places) and any("/mlflow/" in k for k in places)
    leaks = [k for k, v in places.items() if secret in v]
    assert not leaks, f"the planted secret is in: {leaks}"
    from mlflow.tracking import MlflowClient

    c = MlflowClient(tracking_uri=f"http://127.0.0.1:{cluster['ports']['MLFLOW_PORT']}")
    exp = c.get_experiment_by_name("attncnn-embedded")
    for r in c.search_runs([exp.experiment_id]):
        assert SECRET not in json.dumps({**r.data.params, **r.data.tags})


def test_servers_listen_on_loopback_only(cluster) -> None:
    for name in ("MLFLOW_PORT", "DASHBOARD_PORT"):
        assert _listeners(cluster["ports"][name]) == {"127.0.0.1"}, name


def test_more_units_with_ray_address_reuse_the_finished_ones(cluster) -> None:
    """The runbook's other way in: DVC here, Ray work on the cluster (`RAY_ADDRESS`). Runs last: it adds a
    seed to the project."""
    proj, env = cluster["proj"], {**cluster["env"], "RAY_ADDRESS": f"127.0.0.1:{cluster['ports']['RAY_PORT']}"}
    env["RAY_AUTH_MODE"] = "token"  # as the runbook's steps export it
    env["MLFLOW_TRACKING_URI"] = f"http://127.0.0.1:{cluster['ports']['MLFLOW_PORT']}"
    for cmd in (
        ["python", "-m", "pipeline.profiles", "--set", "grid.seeds=[0, 1]"],
        ["dvc", "repro", "train@embedded"],
    ):
        r = subprocess.run(cmd, cwd=proj, env=env, capture_output=True, text=True, timeout=900)
        assert r.returncode == 0, f"{cmd}: {r.stdout[-3000:]}\n{r.stderr[-3000:]}"
    # the first seed's units (both tracks: a search that kept the recipe shares them) reused, the new seed's trained
    m = re.search(r"train@embedded: \d+ rows \(.*?\) resolve to (\d+) units.*?; (\d+) already in the unit store, "
                  r"(\d+) to train", r.stdout)  # fmt: skip
    assert m is not None, r.stdout[-3000:]
    total, reused, trained = map(int, m.groups())
    assert total >= 4 and reused == trained == total // 2
    for m in SETTINGS["grid"]["methods"]:
        rec = torch.load(trained_unit(proj, m, 1) / "model.pt", weights_only=True)
        assert len({n["node_id"] for n in rec["provenance"]["nodes"]}) == 2
