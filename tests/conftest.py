from __future__ import annotations

import copy
import os
from pathlib import Path

import pytest
import yaml

from pipeline.cli import setup_logging

ROOT = Path(__file__).resolve().parents[1]

os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")


@pytest.fixture(autouse=True, scope="session")
def pipeline_logging() -> None:
    """The pipeline's lines go where a stage sends them (information to stdout, warnings to stderr), in every
    test alike, whichever test ran a stage function first."""
    setup_logging()


@pytest.fixture
def raw_params() -> dict:
    """The shipped params.yaml as a plain mapping (a fresh copy per test)."""
    with open(ROOT / "params.yaml") as f:
        return copy.deepcopy(yaml.safe_load(f))
