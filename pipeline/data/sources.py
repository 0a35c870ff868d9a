"""Where files come from: a source named by an environment variable (``env:NAME``), the addressing of http(s)://
and s3:// sources, the S3 client built from the standard AWS settings, and the one error a fetch raises."""

from __future__ import annotations

import os

from pipeline.config.datasets import ENV_SOURCE, check_location
from pipeline.redact import redact

from .errors import DataError


class FetchError(DataError):
    """A download or copy that could not be completed and verified; nothing was left at the destination."""


def resolve_source(source: str, *, setting: str, official: bool, what: str) -> str:
    """``source`` as params.yaml gives it, or for ``env:NAME`` the value of environment variable NAME, read now.

    A URL with a credential (``https://user:pw@host/...``, a presigned ``?X-Amz-Signature=...``) comes this way:
    params.yaml then holds ``env:NAME``, which is all that dvc.lock and DVC's run cache record. The value is
    checked as params.yaml's would be (``check_location``), except that it may carry a credential."""
    if not source.startswith(ENV_SOURCE):
        return source
    name = source.removeprefix(ENV_SOURCE)
    value = os.environ.get(name, "").strip()
    if not value:
        raise FetchError(
            f"{setting} = {source!r}, but the environment variable {name} is not set or empty; set it to the "
            "source's URL (or path) in the shell that runs the stage"
        )
    try:
        return check_location(value, official=official, what=what)
    except ValueError as e:
        raise FetchError(f"{setting} = {source!r}: {name} holds {redact(str(e))}") from None


def is_s3(uri: str) -> bool:
    return uri.startswith("s3://")


def is_http(uri: str) -> bool:
    return uri.startswith(("http://", "https://"))


def split_s3(uri: str) -> tuple[str, str]:
    bucket, _, key = uri.removeprefix("s3://").partition("/")
    if not bucket:
        raise FetchError(f"{uri}: not an S3 URI; expected s3://bucket/key")
    return bucket, key


def s3_client():
    """A boto3 S3 client from the standard AWS settings (and ``AWS_ENDPOINT_URL``, which boto3 reads itself).

    A new session each time: the environment is read now, not when some earlier client was made."""
    import boto3

    return boto3.session.Session().client("s3")


def s3_error(uri: str, e: Exception) -> FetchError:
    """Turn a botocore error into a message that says what to check."""
    from botocore.exceptions import ClientError, NoCredentialsError, PartialCredentialsError

    if isinstance(e, (NoCredentialsError, PartialCredentialsError)):
        return FetchError(
            f"{uri}: no AWS credentials found ({e}); set AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY, or AWS_PROFILE, "
            "(and AWS_ENDPOINT_URL for an S3-compatible store)"
        )
    if isinstance(e, ClientError):
        code = str(e.response.get("Error", {}).get("Code", "?"))
        if code in ("404", "NoSuchKey", "NotFound"):
            return FetchError(f"{uri}: no such key in the bucket (S3 {code}); check the bucket, key and endpoint")
        if code in ("NoSuchBucket",):
            return FetchError(f"{uri}: no such bucket (S3 {code}); check the bucket name and AWS_ENDPOINT_URL")
        if code in ("403", "AccessDenied", "InvalidAccessKeyId", "SignatureDoesNotMatch"):
            return FetchError(f"{uri}: access denied (S3 {code}); check the credentials and the bucket policy")
        return FetchError(f"{uri}: S3 error {code}: {e}")
    return FetchError(f"{uri}: {type(e).__name__}: {e}")
