from __future__ import annotations

import copy
import os
from pathlib import Path

import pytest
import yaml

from pipeline.cli import setup_logging
from pipeline.config import EmbeddedDataCfg, EmbeddedFetchCfg
from pipeline.data.fetch import fetch_dataset
from pipeline.data.preprocess import preprocess_dataset
from tests.project import ROOT

os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")


@pytest.fixture(autouse=True, scope="session")
def pipeline_logging() -> None:
    """The pipeline's lines go where a stage sends them (information to stdout, warnings to stderr), in every
    test alike, whichever test ran a stage function first."""
    setup_logging()


@pytest.fixture(scope="session")
def search_data(tmp_path_factory) -> Path:
    """An embedded data set of 200 train / 20 test images for real searches (tests/test_tune_trials.py,
    tests/test_search_resume.py), made once per session."""
    d = tmp_path_factory.mktemp("search-data")
    cfg = EmbeddedDataCfg(kind="embedded", fetch=EmbeddedFetchCfg(seed=3, num_train=200, num_test=20))
    fetch_dataset("embedded", cfg, d / "raw")
    preprocess_dataset(d / "raw", d / "proc")
    return d / "proc"


@pytest.fixture
def processed(tmp_path: Path) -> Path:
    """A tiny embedded data set (60 train / 20 test images), fetched and preprocessed for real."""
    cfg = EmbeddedDataCfg(kind="embedded", fetch=EmbeddedFetchCfg(seed=3, num_train=60, num_test=20))
    fetch_dataset("embedded", cfg, tmp_path / "raw")
    preprocess_dataset(tmp_path / "raw", tmp_path / "proc")
    return tmp_path / "proc"


@pytest.fixture
def raw_params() -> dict:
    """The shipped params.yaml as a plain mapping (a fresh copy per test)."""
    with open(ROOT / "params.yaml") as f:
        return copy.deepcopy(yaml.safe_load(f))
