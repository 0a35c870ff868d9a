"""Fetching CIFAR for real: from an HTTP server and a moto S3 server on 127.0.0.1, a local file; every bad case.

The code under test is the real fetch path (``fetch_dataset`` -> ``fetch_file``), given the servers' URLs and
the archives' checksums through the same settings a user writes in params.yaml.
"""

from __future__ import annotations

import io
import os
import re
import tarfile

import numpy as np
import pytest

from pipeline.config import CifarDataCfg
from pipeline.data.archives import UnsafeArchiveError, safe_extract
from pipeline.data.cifar import CIFAR10, read_cifar_binary
from pipeline.data.download import FetchError
from pipeline.data.fetch import fetch_dataset
from pipeline.data.manifest import load_split
from pipeline.data.preprocess import preprocess_dataset
from tests.archives import cifar10_archive, cifar100_archive
from tests.servers import S3_ENV, file_server, moto_s3

NAME = "cifar-10-binary.tar.gz"


def cfg(source: str, checksum: str | None, kind: str = "cifar10", **fetch) -> CifarDataCfg:
    f = {"source": source, "checksum": checksum, "backoff_s": 0.01, "timeout_s": 10, **fetch}
    return CifarDataCfg.model_validate({"kind": kind, "fetch": f})


def leftovers(parent) -> list[str]:
    return sorted(p.name for p in parent.iterdir() if p.name != "srv")


@pytest.fixture
def served(tmp_path):
    (tmp_path / "srv").mkdir()
    md5 = cifar10_archive(tmp_path / "srv" / NAME, per_class=40)  # 400 records: ~1.2 MB, several read chunks
    with file_server(tmp_path / "srv") as srv:
        yield srv, md5


def test_http_fetch_verifies_then_preprocess_reads_the_real_format(tmp_path, served) -> None:
    srv, md5 = served
    src = fetch_dataset("c10", cfg(f"{srv.url}/{NAME}", md5), tmp_path / "raw")
    assert src["md5"] == md5.removeprefix("md5:") and src["origin"]["verified_against"] == md5
    assert (tmp_path / "raw" / NAME).is_file() and leftovers(tmp_path) == ["raw"]
    man = preprocess_dataset(tmp_path / "raw", tmp_path / "proc")
    assert man.classes[0] == "airplane" and man.class_counts["train"] == [40] * 10
    assert man.source_files[NAME]["md5"] == md5.removeprefix("md5:")
    expect, _ = read_cifar_binary(tmp_path / "srv" / NAME, CIFAR10)
    np.testing.assert_array_equal(load_split(tmp_path / "proc", "train").images, expect["train"].images)


def test_progress_line_names_size_and_eta(tmp_path, served, capsys) -> None:
    """Not a terminal (pytest's capture): no bar drawn, tqdm's text as a line: size done of total, elapsed<ETA,
    rate."""
    from tqdm import tqdm

    srv, md5 = served
    fetch_dataset("c10", cfg(f"{srv.url}/{NAME}", md5), tmp_path / "raw")
    err = capsys.readouterr().err
    size = re.escape(tqdm.format_sizeof((tmp_path / "srv" / NAME).stat().st_size, divisor=1024))
    assert re.search(rf"fetch {re.escape(NAME)}: 100%\|#+\| {size}/{size} \[\d\d:\d\d<00:00, [\d.]+\wB/s\]", err), err
    assert "\r" not in err


def test_wrong_checksum_fails_and_keeps_nothing(tmp_path, served) -> None:
    srv, _ = served
    wrong = "md5:" + "0" * 32
    with pytest.raises(FetchError, match=r"checksum mismatch: expected md5:0{32}, got md5:[0-9a-f]{32}"):
        fetch_dataset("c10", cfg(f"{srv.url}/{NAME}", wrong), tmp_path / "raw")
    assert leftovers(tmp_path) == []


def test_the_pinned_official_checksum_is_the_default(tmp_path, served) -> None:
    srv, _ = served  # a mirror serving some other file than the official archive must be refused
    with pytest.raises(FetchError, match=r"expected md5:c32a1d4ab5d03f1284b67883e8d87530"):
        fetch_dataset("c10", cfg(f"{srv.url}/{NAME}", None), tmp_path / "raw")
    assert leftovers(tmp_path) == []


def test_404_fails_at_once_with_the_url(tmp_path, served) -> None:
    srv, md5 = served
    with pytest.raises(FetchError, match=rf"{srv.url}/missing.tar.gz: HTTP 404"):
        fetch_dataset("c10", cfg(f"{srv.url}/missing.tar.gz", md5), tmp_path / "raw")
    assert len(srv.behaviour.requests) == 1  # a 404 is not retried
    assert leftovers(tmp_path) == []


def test_500_twice_then_success(tmp_path, served, capsys) -> None:
    srv, md5 = served
    srv.behaviour.fail_first = 2
    fetch_dataset("c10", cfg(f"{srv.url}/{NAME}", md5), tmp_path / "raw")
    assert [r["status"] for r in srv.behaviour.requests] == [500, 500, 200]
    assert capsys.readouterr().err.count("retrying in") == 2


def test_truncated_transfer_resumes_with_a_range_request(tmp_path, served) -> None:
    srv, md5 = served
    srv.behaviour.truncate_at, srv.behaviour.truncate_times = 300_000, 1
    fetch_dataset("c10", cfg(f"{srv.url}/{NAME}", md5), tmp_path / "raw")
    reqs = srv.behaviour.requests
    assert len(reqs) == 2 and reqs[0]["range"] is None
    assert reqs[1]["range"] == "bytes=300000-" and reqs[1]["status"] == 206  # only the rest was sent again


def test_truncated_transfer_restarts_when_the_server_ignores_ranges(tmp_path, served) -> None:
    srv, md5 = served
    srv.behaviour.truncate_at, srv.behaviour.truncate_times, srv.behaviour.ranges = 300_000, 1, False
    fetch_dataset("c10", cfg(f"{srv.url}/{NAME}", md5), tmp_path / "raw")
    assert [r["status"] for r in srv.behaviour.requests] == [200, 200]


def test_truncated_every_time_fails_clearly_and_keeps_nothing(tmp_path, served) -> None:
    srv, md5 = served
    srv.behaviour.truncate_at, srv.behaviour.ranges = 1000, False
    with pytest.raises(FetchError, match=r"failed after 3 attempts: transfer truncated: 1000 bytes received"):
        fetch_dataset("c10", cfg(f"{srv.url}/{NAME}", md5, retries=3), tmp_path / "raw")
    assert leftovers(tmp_path) == []


def test_local_file_source_and_a_missing_one(tmp_path, served) -> None:
    _, md5 = served
    fetch_dataset("c10", cfg(str(tmp_path / "srv" / NAME), md5), tmp_path / "raw")
    assert (tmp_path / "raw" / NAME).is_file()
    with pytest.raises(FetchError, match=r"nope\.tar\.gz: no such file"):
        fetch_dataset("c10", cfg(str(tmp_path / "nope.tar.gz"), md5), tmp_path / "raw2")
    assert not (tmp_path / "raw2").exists()


def test_kind_must_match_the_archive(tmp_path, served) -> None:
    """Fetch verifies the content, not only the checksum: a CIFAR-10 archive is no finished cifar100 output."""
    srv, md5 = served
    with pytest.raises(ValueError, match=r"not under cifar-100-binary/ \(this data set's kind expects a cifar-100"):
        fetch_dataset("c100", cfg(f"{srv.url}/{NAME}", md5, kind="cifar100"), tmp_path / "raw")
    assert leftovers(tmp_path) == []


# ---------------------------------------------------------------------------------------------------------
# S3 (moto server on 127.0.0.1)


@pytest.fixture
def s3(monkeypatch, tmp_path):
    with moto_s3() as endpoint:
        for k, v in {**S3_ENV, "AWS_ENDPOINT_URL": endpoint}.items():
            monkeypatch.setenv(k, v)
        import boto3

        client = boto3.client("s3")
        client.create_bucket(Bucket="datasets")
        yield client


def test_s3_fetch_cifar100_and_its_fine_labels(tmp_path, s3) -> None:
    md5 = cifar100_archive(tmp_path / "c100.tar.gz")
    s3.upload_file(str(tmp_path / "c100.tar.gz"), "datasets", "cifar/cifar-100-binary.tar.gz")
    fetch_dataset("c100", cfg("s3://datasets/cifar/cifar-100-binary.tar.gz", md5, kind="cifar100"), tmp_path / "raw")
    man = preprocess_dataset(tmp_path / "raw", tmp_path / "proc")
    assert man.num_classes == 100 and man.classes[7] == "fine_07"
    labels = load_split(tmp_path / "proc", "train").labels
    assert labels.tolist() == [i % 100 for i in range(200)]  # the fine label (byte 2), not the coarse one


def test_s3_missing_key(tmp_path, s3) -> None:
    with pytest.raises(FetchError, match=r"s3://datasets/nope\.tar\.gz: no such key"):
        fetch_dataset("c10", cfg("s3://datasets/nope.tar.gz", "md5:" + "0" * 32), tmp_path / "raw")
    assert leftovers(tmp_path) == []


def test_s3_without_credentials(tmp_path, s3, monkeypatch) -> None:
    for k in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN", "AWS_PROFILE"):
        monkeypatch.delenv(k, raising=False)
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", str(tmp_path / "none"))
    monkeypatch.setenv("AWS_CONFIG_FILE", str(tmp_path / "none"))
    with pytest.raises(FetchError, match=r"no AWS credentials found.*AWS_ACCESS_KEY_ID"):
        fetch_dataset("c10", cfg("s3://datasets/x.tar.gz", "md5:" + "0" * 32), tmp_path / "raw")
    assert leftovers(tmp_path) == []


# ---------------------------------------------------------------------------------------------------------
# Hostile archives


def _archive_with(path, member: tarfile.TarInfo, blob: bytes = b"") -> None:
    with tarfile.open(path, "w:gz") as tar:
        ok = tarfile.TarInfo("cifar-10-batches-bin/batches.meta.txt")
        ok.size = 2
        tar.addfile(ok, io.BytesIO(b"a\n"))
        member.size = len(blob) if member.isfile() else 0
        tar.addfile(member, io.BytesIO(blob) if blob else None)


@pytest.mark.parametrize(
    ("member", "why"),
    [
        (tarfile.TarInfo("cifar-10-batches-bin/../../escaped.txt"), r"'\.\.' path component"),
        (tarfile.TarInfo("/tmp/absolute.txt"), "absolute path"),
        (None, r"link to '/etc/passwd'"),
        (None, "device file"),
    ],
)
def test_unsafe_archives_are_refused_before_anything_is_read(tmp_path, member, why) -> None:
    if member is None and "link" in why:
        member = tarfile.TarInfo("cifar-10-batches-bin/data_batch_1.bin")
        member.type, member.linkname = tarfile.SYMTYPE, "/etc/passwd"
    elif member is None:
        member = tarfile.TarInfo("cifar-10-batches-bin/null")
        member.type = tarfile.CHRTYPE
    path = tmp_path / "evil.tar.gz"
    _archive_with(path, member, b"x" if member.isfile() else b"")
    with pytest.raises(UnsafeArchiveError, match=rf"evil\.tar\.gz: unsafe member .*\({why}"):
        read_cifar_binary(path, CIFAR10)
    (tmp_path / "out").mkdir()
    with pytest.raises(UnsafeArchiveError):
        safe_extract(path, tmp_path / "out")
    assert os.listdir(tmp_path / "out") == [] and not (tmp_path.parent / "escaped.txt").exists()


def test_s3_fetch_keeps_to_its_size_cap_and_deadline(tmp_path, s3) -> None:
    md5 = cifar10_archive(tmp_path / "c10.tar.gz", per_class=40)  # ~1.2 MB: several callback blocks
    s3.upload_file(str(tmp_path / "c10.tar.gz"), "datasets", "c10.tar.gz")
    with pytest.raises(FetchError, match=r"announces 1,2\d\d,\d\d\d bytes, more than the 100,000 allowed"):
        fetch_dataset("c10", cfg("s3://datasets/c10.tar.gz", md5, max_bytes=100_000), tmp_path / "raw")
    with pytest.raises(FetchError, match=r"not finished within the deadline of 0.001 s .*fetch.deadline_s"):
        fetch_dataset("c10", cfg("s3://datasets/c10.tar.gz", md5, deadline_s=0.001), tmp_path / "raw")
    assert leftovers(tmp_path) == ["c10.tar.gz"]


# ---------------------------------------------------------------------------------------------------------
# A source with a credential: named by an environment variable (env:NAME), never written in params.yaml

SECRET_URL_PARTS = ("s3cr3t-pw", "sig-deadbeef99", "tok-cafe42")


def _secret_url(srv) -> str:
    host = srv.url.removeprefix("http://")
    return f"http://reader:s3cr3t-pw@{host}/{NAME}?sig=sig-deadbeef99&token=tok-cafe42&v=1"


def test_a_credential_in_a_source_is_refused_at_check_and_env_name_is_what_is_allowed(tmp_path) -> None:
    """params.yaml's values go verbatim into dvc.lock and DVC's run cache (and git): a source carrying a
    credential is refused by the check stage, rc 2, one message naming the setting, why, and env:NAME."""
    import yaml

    from tests.test_config_hostile import SHIPPED, assert_one_clean_error, run_check_stage

    raw = yaml.safe_load(SHIPPED)
    raw["grid"]["datasets"] = ["cifar10"]
    raw["datasets"]["cifar10"]["fetch"]["source"] = "https://mirror.example/c10.tgz?X-Amz-Signature=sig-deadbeef99"
    r = run_check_stage(tmp_path, yaml.safe_dump(raw, sort_keys=False))
    assert_one_clean_error(r, tmp_path)
    assert "datasets.cifar10.fetch.source" in r.stderr and "carries a credential" in r.stderr, r.stderr
    assert "dvc.lock" in r.stderr and "allowed: env:NAME" in r.stderr, r.stderr
    assert "sig-deadbeef99" not in r.stderr, r.stderr
    raw["datasets"]["cifar10"]["fetch"]["source"] = "env:C10-URL"
    r = run_check_stage(tmp_path, yaml.safe_dump(raw, sort_keys=False))
    assert_one_clean_error(r, tmp_path)
    assert "names no environment variable; allowed: env:NAME" in r.stderr, r.stderr


def test_an_env_source_fetches_with_its_credentials_and_records_only_the_name(tmp_path, served, monkeypatch) -> None:
    """``source: env:C10_URL`` with the variable holding a URL with userinfo, a signature and a token: the
    fetch stage, run by ``dvc repro``, uses them (the server demands them), and dvc.lock, DVC's run cache,
    source.json and the console hold ``env:C10_URL`` or the redacted URL, never the credentials."""
    from tests.project import make_project, run

    srv, md5 = served
    srv.behaviour.auth = "reader:s3cr3t-pw"
    monkeypatch.setenv("C10_URL", _secret_url(srv))
    fetch = {"source": "env:C10_URL", "checksum": md5, "backoff_s": 0.01, "timeout_s": 10}
    proj = make_project(
        tmp_path / "proj", {"grid": {"datasets": ["cifar10"]}, "datasets": {"cifar10": {"fetch": fetch}}}
    )
    (proj / "results").mkdir(exist_ok=True)
    (proj / "results" / "settings-checked.txt").write_text("ok\n")  # the check stage's mark, upstream of fetch
    out = run(["dvc", "repro", "--single-item", "fetch@cifar10"], proj, timeout=600)
    assert srv.behaviour.requests[-1]["status"] == 200  # fetched with the credentials
    lock = (proj / "dvc.lock").read_text()
    assert "source: env:C10_URL" in lock
    recorded = {"dvc.lock": lock, "console": out.stdout + out.stderr}
    recorded |= {str(p): p.read_text() for p in (proj / ".dvc" / "cache" / "runs").rglob("*") if p.is_file()}
    recorded["source.json"] = (proj / "data" / "raw" / "cifar10" / "source.json").read_text()
    assert any("runs" in k for k in recorded)  # DVC's run cache was searched
    assert f"http://***@{srv.url.removeprefix('http://')}/{NAME}?sig=***&token=***&v=1" in recorded["source.json"]
    leaks = [(k, s) for k, v in recorded.items() for s in SECRET_URL_PARTS if s in v]
    assert not leaks, leaks


def test_an_env_source_whose_variable_is_unset_or_unreadable_fails_naming_it(tmp_path, monkeypatch) -> None:
    monkeypatch.delenv("C10_URL", raising=False)
    with pytest.raises(FetchError) as e:
        fetch_dataset("c10", cfg("env:C10_URL", None), tmp_path / "raw")
    assert str(e.value).startswith("datasets.c10.fetch.source = 'env:C10_URL', but the environment variable C10_URL")
    monkeypatch.setenv("C10_URL", "ftp://u:s3cr3t-pw@mirror.example/c10.tgz")
    with pytest.raises(FetchError) as e:
        fetch_dataset("c10", cfg("env:C10_URL", None), tmp_path / "raw")
    assert "C10_URL holds 'ftp://***@mirror.example/c10.tgz': the ftp:// scheme is not supported" in str(e.value)
    assert "s3cr3t-pw" not in str(e.value) and not (tmp_path / "raw").exists()


def test_an_imagenet_source_may_come_from_an_environment_variable_too(tmp_path, monkeypatch) -> None:
    from pipeline.config import ImageNetDataCfg
    from tests.archives import imagenet_folders

    imagenet_folders(tmp_path / "src", num_classes=2, train_per_class=2, val_per_class=1)
    monkeypatch.setenv("IMAGENET_ROOT", str(tmp_path / "src"))
    c = ImageNetDataCfg.model_validate({"kind": "imagenet", "fetch": {"source": "env:IMAGENET_ROOT"}})
    src = fetch_dataset("imagenet", c, tmp_path / "raw")
    # the root preprocess reads is recorded as the name, never the value (a URL may carry a credential);
    # preprocess resolves it (tests/test_imagenet.py)
    assert src["root"] == "env:IMAGENET_ROOT" and src["layout"] == "folders"
