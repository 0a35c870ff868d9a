"""What this process hands to Ray: the settings every worker needs, never a credential."""

from __future__ import annotations

from pipeline.compute import worker_env


def test_workers_get_settings_but_never_credentials(monkeypatch) -> None:
    for k, v in {
        "AWS_ENDPOINT_URL": "http://s3.local",
        "AWS_DEFAULT_REGION": "eu-west-1",
        "AWS_SECRET_ACCESS_KEY": "s",
        "AWS_ACCESS_KEY_ID": "i",
        "AWS_SESSION_TOKEN": "t",
        "MLFLOW_TRACKING_URI": "http://mlflow:5000",
        "MLFLOW_TRACKING_PASSWORD": "p",
        "MLFLOW_TRACKING_TOKEN": "t",
        "HOME_SECRET": "unrelated",
    }.items():
        monkeypatch.setenv(k, v)
    env = worker_env()
    assert env["AWS_ENDPOINT_URL"] == "http://s3.local" and env["MLFLOW_TRACKING_URI"] == "http://mlflow:5000"
    assert env["AWS_DEFAULT_REGION"] == "eu-west-1"
    for k in ("AWS_SECRET_ACCESS_KEY", "AWS_ACCESS_KEY_ID", "AWS_SESSION_TOKEN", "MLFLOW_TRACKING_PASSWORD"):
        assert k not in env
    assert "MLFLOW_TRACKING_TOKEN" not in env and "HOME_SECRET" not in env
