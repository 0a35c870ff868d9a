"""Eval-store entries that cannot be trusted -- cut short, edited by hand or by another writer of a shared store,
with fields this code does not know, or written before entries carried a checksum -- are set aside with one
warning naming the file and why, and the unit is evaluated again; never a traceback, never the edited value.
Local storage and a moto S3 server on 127.0.0.1. (The evaluate stage itself: ``tests/test_faults.py``.)"""

from __future__ import annotations

import hashlib
import json
import logging
import re

import pytest

from pipeline.evaluate import EvalStore, UnitEval
from pipeline.tune import SearchCache
from tests.servers import S3_ENV, moto_s3

KEY = "ab" * 32


def set_aside(path, why: str) -> str:
    """The warning's pattern: ``why`` is a regular expression."""
    return (
        re.escape(f"set aside the unreadable eval-store entry {path}: ")
        + why
        + re.escape("; the unit is evaluated again")
    )


def same(a: UnitEval | None, b: UnitEval) -> bool:
    return a is not None and json.dumps(a.dump()) == json.dumps(b.dump())  # NaN == NaN here


def unit_eval() -> UnitEval:
    return UnitEval(
        key="cd" * 32,
        metrics={"test_top1": 61.5, "test_top5": 97.0, "test_loss": float("nan"), "params": 1234},
        num_test=4,
        pairing={"backbone": "ef" * 8},
        diverged=True,
        pred=[0, 3, 1, 1],
        attention_png=b"\x89PNG\r\n\x1a\n fake",
    )


@pytest.fixture
def store(tmp_path) -> EvalStore:
    s = EvalStore(str(tmp_path / "runs"), "embedded")
    s.put(KEY, unit_eval())
    return s


def entry(tmp_path):
    return tmp_path / "runs" / "eval" / "embedded" / f"{KEY}.json"


def test_an_entry_is_read_back_as_written_and_carries_the_sha256_of_its_canonical_json(tmp_path, store) -> None:
    got = store.get(KEY)
    assert same(got, unit_eval()) and got.attention_png == unit_eval().attention_png
    d = json.loads(entry(tmp_path).read_text())
    stored = d.pop("checksum")
    canonical = json.dumps(d, sort_keys=True, separators=(",", ":")).encode()
    assert stored == "sha256:" + hashlib.sha256(canonical).hexdigest()


def _truncate(p) -> str:
    p.write_bytes(p.read_bytes()[:40])
    return r"not valid JSON \(.+\)"


def _edit_top1(p) -> str:
    p.write_text(p.read_text().replace('"test_top1": 61.5', '"test_top1": 99.99'))
    return r"its checksum does not match its content \(changed after it was written\)"


def _unknown_field(p) -> str:
    d = json.loads(p.read_text())
    p.write_text(json.dumps({**d, "calibration": 0.1}))
    return r"its checksum does not match its content \(changed after it was written\)"


def _no_checksum(p) -> str:  # as the code before checksums wrote it
    d = json.loads(p.read_text())
    del d["checksum"]
    p.write_text(json.dumps(d))
    return r"it has no checksum \(written by an older version, or by hand\)"


def _not_an_object(p) -> str:
    p.write_text("[1, 2]")
    return r"not a JSON object \(a list\)"


@pytest.mark.parametrize("spoil", [_truncate, _edit_top1, _unknown_field, _no_checksum, _not_an_object])
def test_an_entry_that_cannot_be_trusted_is_set_aside_and_evaluated_again(tmp_path, store, caplog, spoil) -> None:
    p = entry(tmp_path)
    why = spoil(p)
    spoiled = p.read_bytes()
    with caplog.at_level(logging.WARNING):
        assert store.get(KEY) is None  # missing: the stage evaluates the unit again
    (said,) = [r.getMessage() for r in caplog.records]
    assert re.fullmatch(set_aside(p, why), said), said
    assert not p.exists() and p.with_name(p.name + ".unreadable").read_bytes() == spoiled  # kept to look at
    store.put(KEY, unit_eval())  # the new evaluation
    assert same(store.get(KEY), unit_eval())


@pytest.mark.parametrize(
    ("change", "why"),
    [
        ({"calibration": 0.1}, r"unknown field 'calibration'"),
        ({"pred": None}, r"field 'pred' is a NoneType, not a list"),
        ({"attention_png": "not base64!"}, r"field 'attention_png' is not base64 \(.+\)"),
    ],
)
def test_a_sealed_entry_with_fields_this_code_does_not_know_is_set_aside(tmp_path, store, caplog, change, why) -> None:
    """A checksum that matches (a newer version's entry, or a writer that recomputed it) is not enough: the
    fields must be this code's."""
    store.write_entry(KEY, {**unit_eval().dump(), **change})
    with caplog.at_level(logging.WARNING):
        assert store.get(KEY) is None
    (said,) = [r.getMessage() for r in caplog.records]
    assert re.fullmatch(set_aside(entry(tmp_path), why), said), said


def test_a_missing_field_is_named(tmp_path, store, caplog) -> None:
    d = unit_eval().dump()
    del d["num_test"]
    store.write_entry(KEY, d)
    with caplog.at_level(logging.WARNING):
        assert store.get(KEY) is None
    assert "missing field 'num_test'" in caplog.text


def test_an_entry_in_s3_storage_is_set_aside_there(monkeypatch, caplog) -> None:
    with moto_s3() as endpoint:
        for k, v in {**S3_ENV, "AWS_ENDPOINT_URL": endpoint}.items():
            monkeypatch.setenv(k, v)
        import boto3

        s3 = boto3.client("s3")
        s3.create_bucket(Bucket="runs")
        store = EvalStore("s3://runs/shared", "embedded")
        store.put(KEY, unit_eval())
        name = f"shared/eval/embedded/{KEY}.json"
        body = s3.get_object(Bucket="runs", Key=name)["Body"].read()
        s3.put_object(Bucket="runs", Key=name, Body=body.replace(b'"test_top1": 61.5', b'"test_top1": 99.99'))
        with caplog.at_level(logging.WARNING):
            assert store.get(KEY) is None
        assert f"set aside the unreadable eval-store entry s3://runs/{name}: its checksum does not match" in caplog.text
        keys = {o["Key"] for o in s3.list_objects_v2(Bucket="runs")["Contents"] if not o["Key"].endswith("/")}
        assert keys == {f"{name}.unreadable"}
        store.put(KEY, unit_eval())
        assert same(store.get(KEY), unit_eval())


def test_a_search_cache_entry_cut_short_is_set_aside_and_the_search_runs_again(tmp_path, caplog) -> None:
    """The search cache is kept the same way: a kept search cut short is not a traceback on every rerun."""
    cache = SearchCache(str(tmp_path / "runs"), "embedded")
    cache.put(KEY, {"chosen": {"train.lr": 0.05}, "trials": [{"val_top1": 41.5}]})
    assert cache.get(KEY) == {"chosen": {"train.lr": 0.05}, "trials": [{"val_top1": 41.5}]}
    path = tmp_path / "runs" / "tune-cache" / "embedded" / f"{KEY}.json"
    path.write_text(path.read_text()[:30])
    with caplog.at_level(logging.WARNING):
        assert cache.get(KEY) is None
    assert f"set aside the unreadable search-cache entry {path}: not valid JSON" in caplog.text
    assert "the search runs again" in caplog.text
    assert not path.exists() and path.with_name(path.name + ".unreadable").exists()
