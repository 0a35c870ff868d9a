"""What a training job tells the stage that started it while it runs: typed progress events.

The training loop (``pipeline.train.loop``) and the Ray adapters emit these on rank 0 through a callable they
are handed; the stage's driver renders them (``pipeline.progress``). Workers print nothing themselves, so
the terminal shows each line once, in the driver's words, whatever Ray does with worker output. Plain
frozen dataclasses: they cross process boundaries (Ray pickles them) and carry no behaviour.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass


@dataclass(frozen=True)
class WorkerStarted:
    """A data-parallel worker of a training job is up (once per rank, again after a worker-group restart)."""

    rank: int
    world_size: int
    pid: int
    host: str
    node_id: str


@dataclass(frozen=True)
class UnitStarted:
    """A unit begins training: from epoch 1, or resumed from a checkpoint after ``done`` epochs."""

    key: str
    method: str
    seed: int
    done: int  # epochs already trained (a resumed unit's checkpoint), 0 for a fresh start
    epochs: int


@dataclass(frozen=True)
class EpochDone:
    """A unit finished one epoch; the global (all-rank) metrics of that epoch."""

    key: str
    method: str
    seed: int
    epoch: int
    epochs: int
    train_loss: float
    val_top1: float
    images_per_s: float
    seconds: float


Event = WorkerStarted | UnitStarted | EpochDone
Emit = Callable[[Event], None]
