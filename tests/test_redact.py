"""A value is a credential by what it holds (userinfo, a secret query parameter, a known secret pattern), never
because a URL parser would spell it differently; what holds none passes to Ray workers byte for byte."""

from __future__ import annotations

import logging
import os
from pathlib import Path

import pytest

from pipeline.compute import ray_session, worker_env
from pipeline.redact import carries_credentials, is_secret_name, redact, safe_env

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
    # query names that only contain a marker, and words that only start or end like one: no credentials
    "https://h.example/render?design=2&monkey=1",
    "https://h.example/s?keyword=attention&passage=3&author=x&assignee=y&policy_version=2",
    "https://h.example/docs#section=signatures",
    "-----BEGIN CERTIFICATE-----\nMIIB\n-----END CERTIFICATE-----",  # a certificate is public
    "eyJ alone, a task-sk-like name, sk-learn, glpat- too short: glpat-abc",
]
PEM = "-----BEGIN RSA PRIVATE KEY-----\nMIIEowIBAAKCAQEAu1SU1LfVLPHCozMxH2Mo4lgOEePzNm0t\n-----END RSA PRIVATE KEY-----"
JWT = "eyJhbGciOiJIUzI1NiIsInR5cCI6IkpXVCJ9.eyJzdWIiOiIxMjM0NTY3ODkwIn0.dozjgNryP4J3jVmNHl0w5N_XgL0n3I9PlFUP0THsR8U"
GLPAT = "glpat-xK3v9QmZ2rT8yW1nB4cD"
SK_PROJ = "sk-proj-4fQ9v2LmZ8tR1wX7yB3nC6kJ0pH5sD2aG9eF1uI8oK3qW7zE4rT6yU0iO"
SK = "sk-" + "Ab3dEf6hIj9kLm2nOp5qRs8tUv1wXy4z" + "T3BlbkFJ"
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
    f"key file:\n{PEM}\nend": "key file:\n***\nend",
    "-----BEGIN OPENSSH PRIVATE KEY-----\nb3BlbnNzaC1rZXktdjEAAAAA": "***",  # a BEGIN line without its END
    f"jwt {JWT} here": "jwt *** here",
    f"GITLAB={GLPAT}": "GITLAB=***",
    f"OPENAI_KEY={SK_PROJ}": "OPENAI_KEY=***",
    f"legacy {SK}.": "legacy ***.",
    # CloudFront signed URL, S3's session token, API keys by word and in camelCase, a token in the fragment
    "https://d1.cloudfront.net/a.tgz?Expires=1&Policy=eyJT&Signature=Zm9v&Key-Pair-Id=K2J": (
        "https://d1.cloudfront.net/a.tgz?Expires=1&Policy=***&Signature=***&Key-Pair-Id=***"
    ),
    "https://b.s3.amazonaws.com/k?X-Amz-Security-Token=IQo&X-Amz-SignedHeaders=host": (
        "https://b.s3.amazonaws.com/k?X-Amz-Security-Token=***&X-Amz-SignedHeaders=host"
    ),
    "https://api.example/v1?api_key=1&apikey=2&apiKey=3&access_token=4&password=5&secret=6&design=7": (
        "https://api.example/v1?api_key=***&apikey=***&apiKey=***&access_token=***&password=***&secret=***&design=7"
    ),
    "https://app.example/cb#access_token=abc&state=1": "https://app.example/cb#access_token=***&state=1",
}


@pytest.mark.parametrize("value", HARMLESS)
def test_a_value_without_secrets_is_no_credential_and_comes_back_byte_for_byte(value: str) -> None:
    assert redact(value) == value
    assert not carries_credentials(value)


@pytest.mark.parametrize(
    "name",
    ["apitoken", "authtoken", "accesstoken", "sessiontoken", "secretkey", "accesskey", "clientsecret", "privatekey",
     "sastoken", "tokenizer"],  # a harmless name dropped (tokenizer) costs less than a secret kept
)  # fmt: skip
def test_a_query_name_joining_a_secret_marker_to_another_word_is_a_secret(name: str) -> None:
    assert redact(f"https://h.example/f?{name}=v4lu3&x=1") == f"https://h.example/f?{name}=***&x=1"


@pytest.mark.parametrize(("value", "shown"), CAUGHT.items())
def test_userinfo_secret_queries_and_known_patterns_are_caught_and_hidden(value: str, shown: str) -> None:
    assert carries_credentials(value)
    assert redact(value) == shown


@pytest.mark.parametrize(
    "name",
    ["PIPELINE_DEBUG_PASS", "DB_PASSWD", "SMTP_PWD", "GCP_CREDS", "AWS_SECRET_ACCESS_KEY", "MLFLOW_TRACKING_PASSWORD",
     "GITHUB_TOKEN", "OPENAI_APIKEY", "DBPASSWORD", "PIPELINE_SSH_KEYS", "MY_CREDENTIALS", "pipeline_debug_pass",
     # compounds: the unambiguous markers anywhere, KEY at the end of a known compound
     "PIPELINE_SECRETKEY", "AWS_SECRETKEY", "PIPELINE_SIGNINGKEY", "PIPELINE_ENCRYPTIONKEY", "MLFLOW_MASTERKEY",
     "PIPELINE_SSHKEY", "PIPELINE_SECRETVALUE", "MLFLOW_PASSWORDFILE", "PIPELINE_TOKENVALUE"],
)  # fmt: skip
def test_a_name_with_a_secret_word_is_a_secret(name: str) -> None:
    assert is_secret_name(name)


@pytest.mark.parametrize(
    "name",
    ["PWD", "OLDPWD", "PATH", "PIPELINE_MONKEY_MODE", "PIPELINE_BYPASS_CACHE", "PIPELINE_KEYWORD", "PIPELINE_DESIGN",
     "PIPELINE_PASSAGES", "MLFLOW_TRACKING_URI", "AWS_DEFAULT_REGION"],
)  # fmt: skip
def test_a_name_that_only_contains_a_marker_is_no_secret(name: str) -> None:
    """The shell's PWD (and OLDPWD) is its working directory; ``*_PWD`` is a password."""
    assert not is_secret_name(name)


def test_a_url_whose_query_names_only_contain_a_marker_is_forwarded_and_secrets_by_shape_are_not() -> None:
    design = "https://h.example/render?design=2&monkey=1"
    keep, dropped = safe_env({"PIPELINE_SOURCE": design, "PIPELINE_NOTE": JWT, "PIPELINE_PEM": PEM, "PWD": "/w"})
    assert keep == {"PIPELINE_SOURCE": design, "PWD": "/w"} and sorted(dropped) == ["PIPELINE_NOTE", "PIPELINE_PEM"]


@pytest.mark.slow
def test_a_local_ray_run_forwards_a_sqlite_tracking_uri_without_a_warning(tmp_path, monkeypatch, caplog) -> None:
    """... and a URL whose query only looks like a secret's (``?design=2``); never a ``*_PASS`` variable, which
    Ray would write into its runtime_env_agent.log."""
    uri = f"sqlite:///{tmp_path}/mlflow.db"  # sqlite:////tmp/... : four slashes, the form that was rewritten
    design, planted = "https://data.example/render?design=2&monkey=1", f"planted-{os.getpid()}-pw"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    monkeypatch.setenv("PIPELINE_DATA_URL", design)
    monkeypatch.setenv("PIPELINE_DEBUG_PASS", planted)
    assert worker_env()["MLFLOW_TRACKING_URI"] == uri
    import ray

    @ray.remote
    def seen() -> tuple[dict[str, str], str | None]:
        return ray.get_runtime_context().runtime_env.get("env_vars", {}), os.environ.get("MLFLOW_TRACKING_URI")

    with caplog.at_level(logging.WARNING), ray_session(num_cpus=1):
        forwarded, inherited = ray.get(seen.remote())
        session = Path(ray._private.worker.global_worker.node.get_session_dir_path())
    assert forwarded["MLFLOW_TRACKING_URI"] == uri and inherited == uri
    assert forwarded["PIPELINE_DATA_URL"] == design and "PIPELINE_DEBUG_PASS" not in forwarded
    logs = [p for p in session.rglob("*") if p.is_file() and not p.is_symlink() and "sockets" not in p.parts]
    assert any("runtime_env_agent" in p.name for p in logs)
    assert not [p for p in logs if planted.encode() in p.read_bytes()]
    assert not [r for r in caplog.records if "not forwarded" in r.getMessage()]
