"""A value is a credential by what it holds (userinfo, a secret query parameter, a known secret pattern), never
because a URL parser would spell it differently; what holds none passes to Ray workers byte for byte."""

from __future__ import annotations

import logging
import os

import pytest

from pipeline.compute import ray_session, worker_env
from pipeline.redact import carries_credentials, redact

HARMLESS = [
    "sqlite:////abs/path/mlflow.db",
    "sqlite:///mlflow.db",
    "file:///tmp/mlruns",
    "file:/tmp/mlruns",
    "s3://bucket/key",
    "s3://bucket/a/b.tar?versionId=3",
    "http://127.0.0.1:5000",
    "https://mlflow.example:8443/path?x=1",
    "https://mlflow.example/p?x=1&y=&z=a%20b#frag",
    "databricks",
    "databricks://profile",
    "postgresql://host/db",
    "postgresql://host:5432/db?sslmode=require",
    "see https://h/a and s3://b/k",
]
CAUGHT = {
    "https://u:p@host": "https://***@host",
    "https://u:p@host/path?x=1": "https://***@host/path?x=1",
    "postgresql://u:p@host/db": "postgresql://***@host/db",
    "http://h/x?token=abc&page=2": "http://h/x?token=***&page=2",
    "https://b.s3.amazonaws.com/k?X-Amz-Signature=abc&X-Amz-Date=20260101": (
        "https://b.s3.amazonaws.com/k?X-Amz-Signature=***&X-Amz-Date=20260101"
    ),
    "https://acct.blob.core.windows.net/c/f?sv=2020&sig=Zm9v%3D": "https://acct.blob.core.windows.net/c/f?sv=2020&sig=***",
    "key AKIAIOSFODNN7EXAMPLE in text": "key *** in text",
    "Authorization: Bearer abcdefgh12345": "Authorization: Bearer ***",
}


@pytest.mark.parametrize("value", HARMLESS)
def test_a_value_without_secrets_is_no_credential_and_comes_back_byte_for_byte(value: str) -> None:
    assert redact(value) == value
    assert not carries_credentials(value)


@pytest.mark.parametrize(("value", "shown"), CAUGHT.items())
def test_userinfo_secret_queries_and_known_patterns_are_caught_and_hidden(value: str, shown: str) -> None:
    assert carries_credentials(value)
    assert redact(value) == shown


@pytest.mark.slow
def test_a_local_ray_run_forwards_a_sqlite_tracking_uri_without_a_warning(tmp_path, monkeypatch, caplog) -> None:
    uri = f"sqlite:///{tmp_path}/mlflow.db"  # sqlite:////tmp/... : four slashes, the form that was rewritten
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    assert worker_env()["MLFLOW_TRACKING_URI"] == uri
    import ray

    @ray.remote
    def seen() -> tuple[str | None, str | None]:
        forwarded = ray.get_runtime_context().runtime_env.get("env_vars", {})
        return forwarded.get("MLFLOW_TRACKING_URI"), os.environ.get("MLFLOW_TRACKING_URI")

    with caplog.at_level(logging.WARNING), ray_session(num_cpus=1):
        assert ray.get(seen.remote()) == (uri, uri)
    assert not [r for r in caplog.records if "not forwarded" in r.getMessage()]
