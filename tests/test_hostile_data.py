"""Hostile sources and archives, and a killed fetch: bombs, trickling and endless servers, bad content,
credentials in URLs. Real servers on 127.0.0.1, the real fetch path; the stage itself where the exit code
and peak memory matter."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
import tracemalloc
from pathlib import Path

import pytest

from pipeline.compute import worker_env
from pipeline.config import CifarDataCfg, ImageNetFetchCfg
from pipeline.data.archives import UnsafeArchiveError
from pipeline.data.download import FetchError
from pipeline.data.errors import DataError
from pipeline.data.fetch import fetch_dataset
from pipeline.data.manifest import SOURCE
from pipeline.data.preprocess import preprocess_dataset
from pipeline.io import sha256_file
from pipeline.redact import redact, redact_url
from tests.archives import cifar10_archive, cifar10_archive_with, gzip_bomb, imagenet_folders, md5
from tests.project import ROOT, env, make_project
from tests.servers import file_server

NAME = "cifar-10-binary.tar.gz"


def cfg(source: str, checksum: str | None, **fetch) -> CifarDataCfg:
    f = {"source": source, "checksum": checksum, "backoff_s": 0.01, "timeout_s": 10, **fetch}
    return CifarDataCfg.model_validate({"kind": "cifar10", "fetch": f})


def leftovers(parent: Path) -> list[str]:
    return sorted(p.name for p in parent.iterdir() if p.name not in ("srv", "repo"))


@pytest.fixture(scope="module")
def bomb(tmp_path_factory) -> tuple[Path, int]:
    path = tmp_path_factory.mktemp("bomb") / NAME
    return path, gzip_bomb(path)


# ---------------------------------------------------------------------------------------------------------
# Decompression bomb


def test_a_decompression_bomb_stops_the_fetch_stage_from_its_header(tmp_path, bomb) -> None:
    """2 MB of gzip declaring a 2.15 GB batch: refused from the member's header, exit 1, one message, peak
    memory of the stage process far below the member's size, nothing left in data/raw."""
    path, size = bomb
    params = {"datasets": {"c10": {"kind": "cifar10", "fetch": {"source": str(path), "checksum": md5(path)}}}}
    proj = _project(tmp_path, params)
    r = _stage(proj, "fetch", "c10", "data/raw/c10")
    assert r.returncode == 1, r.stderr[-3000:]
    errors = [ln for ln in r.stderr.splitlines() if ln.startswith("error:")]
    assert len(errors) == 1 and "Traceback" not in r.stderr
    assert f"data_batch_1.bin': declares {size:,} bytes" in errors[0] and "at most 10,000" in errors[0]
    assert _maxrss_mb(r.stderr) < 300  # 77 MB measured; reading the member would take > 2150 MB
    assert not (proj / "data/raw").exists() or os.listdir(proj / "data/raw") == []


def test_a_bomb_that_reaches_preprocess_anyway_is_refused_there_too(tmp_path, bomb) -> None:
    """An archive from a DVC remote or a shared raw directory did not pass this fetch: preprocess checks it."""
    path, _ = bomb
    raw = tmp_path / "raw"
    raw.mkdir()
    shutil.copy(path, raw / NAME)
    source = {"format": "cifar-binary", "archive": NAME, "sha256": sha256_file(raw / NAME), "kind": "cifar10"}
    (raw / SOURCE).write_text(json.dumps({**source, "dataset": "c10"}))
    tracemalloc.start()
    try:
        with pytest.raises(UnsafeArchiveError, match=r"declares 2,151,100,000 bytes"):
            preprocess_dataset(raw, tmp_path / "proc")
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < 50e6 and not (tmp_path / "proc").exists()


# ---------------------------------------------------------------------------------------------------------
# Content


@pytest.mark.parametrize(
    ("labels", "names", "message"),
    [
        (([k % 10 for k in range(20)], []), 10, r"the test split is empty"),
        (([k % 10 for k in range(20)], [k % 10 for k in range(10)]), 201, r"names 201 classes; .* exactly 10"),
        (([k % 10 for k in range(20)], [0, 1, 2] * 3), 10, r"test split has no image of 7 of 10 classes \(c3, c4"),
        (([k % 10 for k in range(20)], [k % 10 for k in range(10)]), 9, r"names 9 classes"),
    ],
)
def test_fetch_checks_the_content_and_keeps_nothing_bad(tmp_path, labels, names, message) -> None:
    path = tmp_path / NAME
    train, test = labels
    sum_ = cifar10_archive_with(path, train_labels=train, test_labels=test, names=names)
    with pytest.raises(DataError, match=message):
        fetch_dataset("c10", cfg(str(path), sum_), tmp_path / "raw")
    assert leftovers(tmp_path) == [NAME]


def test_a_non_tar_or_truncated_gzip_gets_a_message_not_a_traceback(tmp_path) -> None:
    good = tmp_path / "good.tar.gz"
    cifar10_archive(good)
    for name, blob in (("notar.tar.gz", b"<html>not found</html>" * 50), ("cut.tar.gz", good.read_bytes()[:3000])):
        (tmp_path / name).write_bytes(blob)
        with pytest.raises(DataError, match=rf"{name}: not a readable tar archive \("):
            fetch_dataset("c10", cfg(str(tmp_path / name), md5(tmp_path / name)), tmp_path / "raw")
    assert not (tmp_path / "raw").exists()


def test_imagenet_members_larger_than_the_cap_are_refused_unread(tmp_path) -> None:
    from pipeline.data.imagenet_index import index_source

    imagenet_folders(tmp_path / "src", num_classes=2, train_per_class=2, val_per_class=1)
    big = next((tmp_path / "src/train").rglob("*.JPEG"))
    fetch = ImageNetFetchCfg(source=str(tmp_path / "src"), max_member_bytes=big.stat().st_size - 1)
    (tmp_path / "out").mkdir()
    with pytest.raises(FetchError, match=r"declares .* bytes, more than datasets.<name>.fetch.max_member_bytes"):
        index_source(fetch, tmp_path / "out")


# ---------------------------------------------------------------------------------------------------------
# Servers that never finish


@pytest.fixture
def served(tmp_path):
    (tmp_path / "srv").mkdir()
    sum_ = cifar10_archive(tmp_path / "srv" / NAME, per_class=40)  # ~1.2 MB
    with file_server(tmp_path / "srv") as srv:
        yield srv, sum_


def test_an_endless_body_stops_at_max_bytes(tmp_path, served) -> None:
    srv, sum_ = served
    srv.behaviour.endless = True
    with pytest.raises(FetchError, match=r"sent more than [\d,]+ bytes, more than the 2,000,000 allowed "):
        fetch_dataset("c10", cfg(f"{srv.url}/{NAME}", sum_, max_bytes=2_000_000), tmp_path / "raw")
    assert leftovers(tmp_path) == [] and len(srv.behaviour.requests) == 1  # too big is not retried


def test_the_published_archive_is_capped_at_its_known_size_before_the_body(tmp_path, served) -> None:
    srv, _ = served
    srv.behaviour.announce = 10**10
    with pytest.raises(FetchError, match=r"announces 10,000,000,000 bytes, .* the published archive is 170,052,171"):
        fetch_dataset("c10", cfg(f"{srv.url}/{NAME}", None), tmp_path / "raw")
    assert leftovers(tmp_path) == []


def test_a_trickling_server_fails_on_the_minimum_rate(tmp_path, served) -> None:
    srv, sum_ = served
    srv.behaviour.throttle = (1, 0.2)  # 5 bytes/s, each byte well inside the socket timeout
    t0 = time.monotonic()
    with pytest.raises(FetchError, match=r"failed after 2 attempts: \d+ bytes/s over the last 1 s, below "):
        fetch_dataset(
            "c10", cfg(f"{srv.url}/{NAME}", sum_, retries=2, min_rate_bytes_s=1000, rate_window_s=1), tmp_path / "raw"
        )
    assert time.monotonic() - t0 < 10 and leftovers(tmp_path) == []
    assert len(srv.behaviour.requests) == 2 and srv.behaviour.requests[1]["range"] is not None  # it resumed


def test_the_overall_deadline_names_its_setting(tmp_path, served) -> None:
    srv, sum_ = served
    srv.behaviour.throttle = (20_000, 0.1)  # 200 kB/s: above the minimum rate, 6 s for the file
    with pytest.raises(FetchError, match=r"not finished within the deadline of 1.5 s .*datasets.c10.fetch.deadline_s"):
        fetch_dataset("c10", cfg(f"{srv.url}/{NAME}", sum_, deadline_s=1.5), tmp_path / "raw")
    assert leftovers(tmp_path) == []


# ---------------------------------------------------------------------------------------------------------
# A fetch killed outright


def test_a_fetch_killed_with_sigkill_is_resumed_by_the_next_run_and_git_never_sees_it(tmp_path, served) -> None:
    srv, sum_ = served
    repo = tmp_path / "repo"
    (repo / "data/raw").mkdir(parents=True)
    shutil.copy(ROOT / ".gitignore", repo / ".gitignore")
    _git(repo, "init", "-q")
    _git(repo, "add", ".gitignore")
    _git(repo, "-c", "user.name=t", "-c", "user.email=t@t", "commit", "-qm", "init")
    srv.behaviour.throttle = (16_384, 0.05)  # ~330 kB/s: about 4 s for the file
    fetch = cfg(f"{srv.url}/{NAME}", sum_).model_dump()
    code = "import json, sys; from pipeline.config import CifarDataCfg; from pipeline.data.fetch import "
    code += "fetch_dataset; fetch_dataset('c10', CifarDataCfg.model_validate(json.loads(sys.argv[1])), sys.argv[2])"
    p = subprocess.Popen([sys.executable, "-c", code, json.dumps(fetch), "data/raw/c10"], cwd=repo)
    part = repo / "data/raw/.c10.part"
    deadline = time.monotonic() + 60
    while not (part.is_file() and part.stat().st_size > 200_000) and time.monotonic() < deadline:
        time.sleep(0.05)
    p.send_signal(signal.SIGKILL)
    p.wait()
    kept = part.stat().st_size
    assert kept > 200_000 and any(x.name.endswith(".tmp") for x in (repo / "data/raw").iterdir())
    assert _git(repo, "status", "--porcelain", "--untracked-files=all") == ""  # nothing for `git add -A`

    srv.behaviour.throttle, srv.behaviour.requests = None, []
    fetch_dataset("c10", CifarDataCfg.model_validate(fetch), repo / "data/raw/c10")
    assert srv.behaviour.requests == [{"path": f"/{NAME}", "range": f"bytes={kept}-", "status": 206}]
    assert sorted(os.listdir(repo / "data/raw")) == ["c10"]  # the partial and the dead run's temporary: gone
    assert md5(repo / "data/raw/c10" / NAME) == sum_


# ---------------------------------------------------------------------------------------------------------
# Credentials


def test_credentials_in_a_url_are_used_but_never_shown(tmp_path, served, capsys, monkeypatch) -> None:
    srv, sum_ = served
    srv.behaviour.auth, srv.behaviour.fail_first = "reader:s3cr3t-pw", 1
    host = srv.url.removeprefix("http://")
    url = f"http://reader:s3cr3t-pw@{host}/{NAME}?X-Amz-Credential=AKIDX&X-Amz-Signature=deadbeef99&v=1"
    monkeypatch.setenv("C10_URL", url)  # a source with a credential comes from the environment (env:NAME)
    src = fetch_dataset("c10", cfg("env:C10_URL", sum_), tmp_path / "raw")
    shown = capsys.readouterr().err + json.dumps(src) + (tmp_path / "raw" / SOURCE).read_text()
    assert "attempt 1 failed" in shown and f"http://***@{host}/{NAME}?" in shown  # which file: still said
    for secret in ("s3cr3t-pw", "reader", "deadbeef99", "AKIDX"):
        assert secret not in shown
    srv.behaviour.auth = "reader:other"
    with pytest.raises(FetchError) as e:
        fetch_dataset("c10", cfg("env:C10_URL", sum_), tmp_path / "raw2")
    assert "HTTP 401" in str(e.value) and "s3cr3t" not in str(e.value) and "deadbeef99" not in str(e.value)


def test_redaction_and_worker_environments(monkeypatch) -> None:
    assert redact_url("https://u:p@h.example/a?sig=XYZ&n=1") == "https://***@h.example/a?sig=***&n=1"
    assert redact("see s3://bucket/key and http://h/x?token=abc.") == "see s3://bucket/key and http://h/x?token=***"
    assert redact_url("https://h.example/a?page=2") == "https://h.example/a?page=2"  # nothing secret: unchanged
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "https://bob:hunter2@mlflow.example")
    monkeypatch.setenv("MLFLOW_EXPERIMENT_NAME", "plain")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "x")
    env = worker_env()
    assert "MLFLOW_TRACKING_URI" not in env and "AWS_SECRET_ACCESS_KEY" not in env
    assert env["MLFLOW_EXPERIMENT_NAME"] == "plain"


# ---------------------------------------------------------------------------------------------------------
# helpers


def _git(repo: Path, *args: str) -> str:
    return subprocess.run(["git", *args], cwd=repo, capture_output=True, text=True, check=True).stdout.strip()


def _project(tmp_path: Path, params: dict) -> Path:
    proj = tmp_path / "proj"
    proj.mkdir()
    return make_project(proj, params)


def _stage(proj: Path, name: str, *args: str) -> subprocess.CompletedProcess:
    """Run stages/<name>.py as DVC does, and print the process's peak RSS (MB) to stderr at exit: VmHWM, the
    high-water mark of this program's own memory (ru_maxrss would count the forking pytest's)."""
    code = (
        "import atexit, re, runpy, sys; atexit.register(lambda: print('MAXRSS_MB', int(re.search("
        "r'VmHWM:\\s+(\\d+)', open('/proc/self/status').read())[1]) // 1024, file=sys.stderr)); "
        f"sys.argv = {[name, *args]!r}; runpy.run_module('stages.{name}', run_name='__main__')"
    )
    return subprocess.run(
        [sys.executable, "-c", code], cwd=proj, env=env(), capture_output=True, text=True, timeout=300
    )


def _maxrss_mb(stderr: str) -> int:
    return int(next(ln.split()[1] for ln in stderr.splitlines() if ln.startswith("MAXRSS_MB")))
