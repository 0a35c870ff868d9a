"""What the stages hand each other through their DVC outputs, typed: the train stage's rows (``rows.json``), each
pointing at its unit, whose files it writes once (``units/<key>/``: ``model.pt``, ``history.csv``), and the
evaluate stage's record of each row (``summary.json``). Torch-free: the report reads them without a net.
"""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict

from pipeline.io import read_json

ROWS_FILE = "rows.json"  # in the train stage's output directory, beside units/<key>/
HISTORY_FILE = "history.csv"  # a unit's epochs, in units/<key>/
CHECKPOINT_FILE = "model.pt"  # a unit's checkpoint, in units/<key>/: what evaluation rebuilds the net from


class Record(BaseModel):
    """A record one stage writes and another reads: frozen, no unknown fields. Unlike settings, measurements
    may be NaN (a diverged run's loss)."""

    model_config = ConfigDict(frozen=True, extra="forbid")


class TrainedRow(Record):
    """One row the train stage wrote, pointing at its unit."""

    method: str
    track: Literal["recipe", "searched"]
    seed: int
    key: str  # its unit: units/<key>/ in the train stage's output
    spec: dict[str, Any]  # the row's own resolved settings (a RunSpec, dumped): its method on the unit's network
    run_id: str  # the unit's MLflow run

    @property
    def rel(self) -> Path:
        """``<method>/<track>/seed<k>``: where the row's evaluation is written."""
        return Path(self.method, self.track, f"seed{self.seed}")


class TrainedRows(Record):
    """The train stage's record of its rows (``rows.json``)."""

    dataset: str
    experiment_id: str  # the MLflow experiment of its units' runs
    rows: list[TrainedRow]
    shared_by: dict[str, list[str]]  # unit key -> the methods whose rows it is

    def of(self, methods: Iterable[str]) -> list[TrainedRow]:
        """The rows of ``methods``, in method, track and seed order."""
        order = {m: i for i, m in enumerate(methods)}
        picked = [r for r in self.rows if r.method in order]
        return sorted(picked, key=lambda r: (order[r.method], r.track, r.seed))


def unit_dir(train_dir: str | Path, key: str) -> Path:
    """Where the train stage wrote unit ``key``'s files (``CHECKPOINT_FILE``, ``HISTORY_FILE``)."""
    return Path(train_dir) / "units" / key


def read_trained(train_dir: str | Path) -> TrainedRows:
    """``rows.json`` of the train stage's output ``train_dir``, validated."""
    path = Path(train_dir) / ROWS_FILE
    if not path.is_file():
        raise ValueError(f"{train_dir}: no {ROWS_FILE}; run the train stage first")
    return TrainedRows.model_validate(read_json(path))


class RowEval(Record):
    """One row's evaluation as the evaluate stage writes it (``eval/<method>/<track>/seed<k>/summary.json``):
    the row's own settings beside its unit's results."""

    key: str  # the unit key
    spec: dict[str, Any]
    metrics: dict[str, int | float | None]  # test_top1, test_top5, test_loss, params, flops_per_image, speeds
    num_test: int
    pairing: dict[str, Any] | None  # which units started from the same backbone and data order
    diverged: bool


def read_row_eval(path: str | Path) -> RowEval:
    return RowEval.model_validate(read_json(path))
