"""Preprocessed data published for every node of a cluster (``compute.shared_data``), on a real S3 server."""

from __future__ import annotations

from pipeline.data.manifest import load_split
from pipeline.settings import validate_params
from pipeline.spec import build_spec, data_ref
from pipeline.spec import shared as share
from tests.servers import S3_ENV, moto_s3


def test_shared_data_on_s3_reads_back_identically_and_keys_ignore_where(processed, monkeypatch, raw_params) -> None:
    with moto_s3() as endpoint:
        for k, v in {**S3_ENV, "AWS_ENDPOINT_URL": endpoint}.items():
            monkeypatch.setenv(k, v)
        import boto3

        boto3.client("s3", endpoint_url=endpoint).create_bucket(Bucket="shared")
        local = data_ref("embedded", processed)
        shared = share(local, "s3://shared/data")
        assert shared.path.startswith("s3://shared/data/embedded/") and shared.path.endswith(shared.sha256[:16])
        for split in ("train", "test"):
            a, b = load_split(local.path, split), load_split(shared.path, split)
            assert (a.images == b.images).all() and (a.labels == b.labels).all()
        assert share(local, "s3://shared/data").path == shared.path  # idempotent
        params = validate_params(raw_params)
        # the same unit whether its data is read in place or from S3: a rerun on a cluster reuses it
        assert build_spec(params, "resnet", local, 0).key() == build_spec(params, "resnet", shared, 0).key()
