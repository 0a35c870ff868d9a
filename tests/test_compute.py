"""What this process hands to Ray: the settings every worker needs, never a credential."""

from __future__ import annotations

import time

import pytest

from pipeline.compute import ray_session, worker_env, world_size
from pipeline.config.params import ComputeCfg
from pipeline.errors import StageError
from tests.servers import free_port


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


def test_names_with_a_password_word_stay_home_and_urls_with_harmless_queries_go(monkeypatch, caplog) -> None:
    """``*_PASS``, ``*_PASSWD``, ``*_PWD``, ``*_CREDS`` are credentials by name; a URL whose query names only
    contain a marker (``design``, ``monkey``) is a setting, forwarded without a warning."""
    design = "https://data.example/render?design=2&monkey=1"
    for k, v in {
        "PIPELINE_DEBUG_PASS": "pw-1",
        "MLFLOW_DB_PASSWD": "pw-2",
        "AWS_PROXY_PWD": "pw-3",
        "PIPELINE_GCP_CREDS": "pw-4",
        "PIPELINE_DATA_URL": design,
    }.items():
        monkeypatch.setenv(k, v)
    env = worker_env()
    assert env["PIPELINE_DATA_URL"] == design
    assert not {"PIPELINE_DEBUG_PASS", "MLFLOW_DB_PASSWD", "AWS_PROXY_PWD", "PIPELINE_GCP_CREDS"} & set(env)
    assert not [r for r in caplog.records if "not forwarded" in r.getMessage()]


def test_an_unreachable_cluster_is_one_message_at_once(monkeypatch) -> None:
    """RAY_ADDRESS that takes no connection: every connection (a stage's session, ``auto`` asking for the GPUs)
    fails at once with one message naming it, not after Ray's minutes of retries."""
    address = f"127.0.0.1:{free_port()}"
    monkeypatch.setenv("RAY_ADDRESS", address)
    t0 = time.monotonic()
    for connect in (lambda: world_size(ComputeCfg(num_workers="auto")), lambda: ray_session().__enter__()):
        with pytest.raises(StageError, match=f"RAY_ADDRESS={address}: it takes no connection"):
            connect()
    assert time.monotonic() - t0 < 30
