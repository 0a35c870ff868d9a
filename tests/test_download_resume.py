"""Resuming a killed fetch whose ``.part`` is as long as the remote file, or longer: the server (as nginx, Apache
and S3 do, RFC 9110 15.5.17) answers the ``Range`` request with 416 Range Not Satisfiable, and the fetch starts
over from byte 0 instead of failing. A real HTTP server on 127.0.0.1 (``tests.servers``, which answers so too)
and the real fetch path."""

from __future__ import annotations

import logging

import pytest

from pipeline.checksum import Checksum
from pipeline.config import CifarDataCfg
from pipeline.data.download import _resumable
from pipeline.data.fetch import fetch_dataset
from tests.archives import cifar10_archive, md5
from tests.servers import file_server

NAME = "cifar-10-binary.tar.gz"


def cfg(source: str, checksum: str) -> CifarDataCfg:
    f = {"source": source, "checksum": checksum, "backoff_s": 0.01, "timeout_s": 10}
    return CifarDataCfg.model_validate({"kind": "cifar10", "fetch": f})


@pytest.fixture
def served(tmp_path):
    (tmp_path / "srv").mkdir()
    sum_ = cifar10_archive(tmp_path / "srv" / NAME, per_class=10)
    with file_server(tmp_path / "srv") as srv:
        yield srv, sum_


@pytest.mark.parametrize(
    "kept",
    [
        pytest.param(lambda b: b, id="complete"),  # killed between the last byte and the checksum
        pytest.param(lambda b: bytes(len(b)), id="stale-same-length"),  # the remote file changed since
        pytest.param(lambda b: b + b"x" * 1000, id="longer"),
    ],
)
def test_a_part_as_long_as_the_file_or_longer_restarts_from_zero(tmp_path, served, caplog, kept) -> None:
    srv, sum_ = served
    url, raw = f"{srv.url}/{NAME}", tmp_path / "data" / "c10"
    part = raw.parent / ".c10.part"
    raw.parent.mkdir()
    _resumable(part, url, Checksum.parse(sum_))  # the stamp a killed run of this very fetch leaves beside it
    data = (tmp_path / "srv" / NAME).read_bytes()
    part.write_bytes(kept(data))

    with caplog.at_level(logging.WARNING, logger="pipeline.data.download"):
        fetch_dataset("c10", cfg(url, sum_), raw)
    assert md5(raw / NAME) == sum_
    have = len(kept(data))
    assert srv.behaviour.requests == [
        {"path": f"/{NAME}", "range": f"bytes={have}-", "status": 416},
        {"path": f"/{NAME}", "range": None, "status": 200},
    ]
    said = [r.getMessage() for r in caplog.records if "416" in r.getMessage()]
    assert said == [
        f"{url}: the server has no bytes past the {have:,} kept in {part} (HTTP 416 Range Not Satisfiable): the "
        f"kept file is complete or stale; downloading it again from the start"
    ]
    assert sorted(p.name for p in raw.parent.iterdir()) == ["c10"]  # the .part and its stamp: gone
