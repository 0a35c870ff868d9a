"""What the long stages show while they work: the train stage's unit lines (built from the workers' events,
with units done and an ETA), and the progress text where output is not a terminal."""

from __future__ import annotations

import io
import re

import pytest

from pipeline.events import EpochDone, UnitStarted, WorkerStarted
from pipeline.progress import Bar, PlannedUnit, UnitProgress, eta


@pytest.fixture
def lines(capsys):
    """The lines the pipeline printed (stdout; tqdm draws no bar where output is not a terminal)."""
    return lambda: capsys.readouterr().out.splitlines()


def _epoch(key: str, method: str, epoch: int, epochs: int = 2) -> EpochDone:
    return EpochDone(
        key, method, 0, epoch, epochs, train_loss=1.25, val_top1=40.0 + epoch, images_per_s=120.0, seconds=1.0
    )


def test_unit_lines_count_units_and_say_whats_left(lines) -> None:
    p = UnitProgress("train@x", [PlannedUnit("a", "resnet", 0, 2), PlannedUnit("b", "attn_resnet", 0, 2)])
    p(WorkerStarted(0, 2, 4242, "host", "0123456789abcdef"))
    p(UnitStarted("a", "resnet", 0, done=0, epochs=2))
    p(_epoch("a", "resnet", 1))
    p(_epoch("a", "resnet", 2))
    p(UnitStarted("b", "attn_resnet", 0, done=1, epochs=2))  # resumed from a checkpoint after epoch 1
    p(UnitStarted("a", "resnet", 0, done=0, epochs=2))  # a restarted worker group: still unit 1
    p(_epoch("b", "attn_resnet", 2))
    p.close()
    got = lines()
    assert got[0] == "worker rank 0/2 pid 4242 on host node 01234567"
    assert got[1] == "[resnet seed 0] starting epoch 1/2 (unit 1 of 2)"
    assert re.fullmatch(
        r"\[resnet seed 0\] epoch 1/2 loss 1\.250 test top-1 41\.0% \(120 img/s\) \| 0/2 units done, ETA \d\d:\d\d",
        got[2],
    ), got[2]
    assert got[3].startswith("[resnet seed 0] epoch 2/2 ") and "| 1/2 units done, ETA " in got[3]
    assert got[4] == "[attn_resnet seed 0] resuming at epoch 2/2 (unit 2 of 2)"
    assert got[5] == "[resnet seed 0] starting epoch 1/2 (unit 1 of 2)"
    assert "| 2/2 units done, ETA 00:00" in got[6]  # nothing left


def test_eta_is_the_rate_so_far_applied_to_what_is_left() -> None:
    assert eta(remaining=6, done=3, elapsed=30.0) == "01:00"
    assert eta(remaining=6, done=0, elapsed=30.0) == "?"


def test_off_a_terminal_the_bar_is_lines_of_tqdm_text() -> None:
    out = io.StringIO()  # not a terminal
    bar = Bar("fetch f", 2048, unit="B", unit_scale=True, unit_divisor=1024, every_s=0.0, stream=out)
    bar.update(1024)
    bar.update(1024)
    bar.close()
    got = out.getvalue().splitlines()
    assert got[0].startswith("fetch f:  50%|#####") and "1.00k/2.00k" in got[0]
    assert got[-1].startswith("fetch f: 100%|##########| 2.00k/2.00k [")
    assert "\r" not in out.getvalue()
