"""Progress of the long stages, shown by the stage's own process: downloads, training units, search trials.

On a terminal each long stage draws a tqdm bar (bytes for a download; epochs of every unit for training,
with units done and images/s; ETA from tqdm). Where output is not a terminal (CI, a log file, `dvc repro`
piped), no bar is drawn: the same tqdm text is logged at most every few seconds, so a log shows progress and
a stall, never a wall of carriage returns.

Training runs in Ray workers, whose own output a local Ray does not forward (``pipeline.compute``): they
report typed events (``pipeline.events``) to a small hub actor, and a thread of the stage's driver
renders them (``relay``). Each line is printed once, by one process, in one format.
"""

from __future__ import annotations

import contextlib
import logging
import sys
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any, TextIO

from tqdm import tqdm

from pipeline.events import EpochDone, Event, UnitStarted, WorkerStarted

log = logging.getLogger(__name__)


def is_terminal(stream: TextIO) -> bool:
    return bool(getattr(stream, "isatty", lambda: False)())


class Bar:
    """A tqdm bar on ``stream`` (stderr) when it is a terminal; elsewhere the bar's text
    (``tqdm.format_meter``) written there as a line every ``every_s`` seconds and once at the end."""

    def __init__(
        self,
        desc: str,
        total: float | None,
        *,
        unit: str = "it",
        every_s: float = 10.0,
        stream: TextIO | None = None,
        **meter: Any,
    ) -> None:
        self.stream = stream or sys.stderr
        self.tty = is_terminal(self.stream)
        self.desc, self.total, self.unit, self.meter, self.every_s = desc, total, unit, meter, every_s
        self.n, self.start = 0.0, time.monotonic()
        self.last = self.start
        self.bar = tqdm(
            total=total, desc=desc, unit=unit, file=self.stream, disable=not self.tty, dynamic_ncols=True, **meter
        )

    def update(self, n: float) -> None:
        self.n += n
        self.bar.update(n)
        now = time.monotonic()
        if not self.tty and now - self.last >= self.every_s:
            self.last = now
            self._line()

    def text(self) -> str:
        elapsed = time.monotonic() - self.start  # ascii: a log file gets '#', not block characters
        return tqdm.format_meter(
            self.n, self.total, elapsed, prefix=self.desc, unit=self.unit, ascii=True, **self.meter
        )

    def _line(self) -> None:
        self.stream.write(self.text() + "\n")
        self.stream.flush()

    def close(self) -> None:
        self.bar.close()
        if not self.tty:
            self._line()


def eta(remaining: float, done: float, elapsed: float) -> str:
    """Time left at the rate so far (``done`` in ``elapsed`` seconds), as tqdm writes it; '?' before any."""
    if done <= 0 or elapsed <= 0:
        return "?"
    return tqdm.format_interval(remaining * elapsed / done)


@dataclass(frozen=True)
class PlannedUnit:
    key: str
    method: str
    seed: int
    epochs: int


class UnitProgress:
    """The train stage's units as they train: a log line per unit start and per epoch (with units done of the
    total and the ETA of the whole stage), and on a terminal one bar over every epoch of every unit."""

    def __init__(self, stage: str, units: Sequence[PlannedUnit]) -> None:
        self.stage = stage
        self.planned = {u.key: u.epochs for u in units}
        self.done = dict.fromkeys(self.planned, 0)
        self.order: dict[str, int] = {}  # unit key -> its place in the order units started (a restart keeps it)
        self.trained_here, self.t0 = 0, None  # epochs trained since the first unit started, and when it did
        self.bar = tqdm(
            total=sum(self.planned.values()),
            desc=stage,
            unit="epoch",
            disable=not is_terminal(sys.stderr),
            dynamic_ncols=True,
        )

    @property
    def finished(self) -> int:
        return sum(self.done[k] >= n for k, n in self.planned.items())

    def _advance(self, key: str, done: int) -> None:
        if key in self.done:
            self.bar.update(max(0, done - self.done[key]))
            self.done[key] = max(self.done[key], done)

    def __call__(self, e: Event) -> None:
        if isinstance(e, WorkerStarted):
            log.info("worker rank %d/%d pid %d on %s node %s", e.rank, e.world_size, e.pid, e.host, e.node_id[:8])
        elif isinstance(e, UnitStarted):
            self.order.setdefault(e.key, len(self.order) + 1)
            self.t0 = self.t0 or time.monotonic()
            self._advance(e.key, e.done)
            what = f"resuming at epoch {e.done + 1}" if e.done else "starting epoch 1"
            n, total = self.order[e.key], len(self.planned)
            log.info("[%s seed %d] %s/%d (unit %d of %d)", e.method, e.seed, what, e.epochs, n, total)
        elif isinstance(e, EpochDone):
            self._advance(e.key, e.epoch)
            self.trained_here += 1
            remaining = sum(n - self.done[k] for k, n in self.planned.items())
            left = eta(remaining, self.trained_here, time.monotonic() - (self.t0 or time.monotonic()))
            self.bar.set_postfix_str(f"{self.finished}/{len(self.planned)} units, {e.images_per_s:.0f} img/s")
            log.info(
                f"[{e.method} seed {e.seed}] epoch {e.epoch}/{e.epochs} loss {e.train_loss:.3f} test top-1 "
                f"{e.val_top1:.1f}% ({e.images_per_s:.0f} img/s) | {self.finished}/{len(self.planned)} units done, "
                f"ETA {left}"
            )

    def close(self) -> None:
        self.bar.close()


class _Hub:
    """The Ray actor workers send their events to; the driver takes them in batches (``relay``)."""

    def __init__(self) -> None:
        self._events: list[Event] = []

    def put(self, event: Event) -> None:
        self._events.append(event)

    def take(self) -> list[Event]:
        out, self._events = self._events, []
        return out


@contextlib.contextmanager
def relay(render: Callable[[Event], None], poll_s: float = 0.5) -> Iterator[Any]:
    """A hub actor (yielded: hand it to the workers, ``emitter``) and a driver thread that passes its events to
    ``render`` every ``poll_s`` seconds, and once more after the block. Needs a Ray session."""
    import ray  # here, not at the top: the fetch stage draws download bars with this module and never needs Ray

    hub = ray.remote(num_cpus=0)(_Hub).remote()
    stop = threading.Event()

    def pump() -> None:
        while True:
            last = stop.wait(poll_s)
            try:
                for e in ray.get(hub.take.remote()):
                    render(e)
            except Exception:  # a progress line is never worth a failed stage
                log.debug("progress relay", exc_info=True)
            if last:
                return

    thread = threading.Thread(target=pump, name="progress", daemon=True)
    thread.start()
    try:
        yield hub
    finally:
        stop.set()
        thread.join(timeout=30)
        with contextlib.suppress(Exception):
            ray.kill(hub)


class Emitter:
    """The worker's side of ``relay``: sends each event to the hub without waiting; ``flush`` waits until the
    hub holds all of them (call it before the worker returns, so the last line is not lost)."""

    def __init__(self, hub: Any) -> None:
        self.hub, self.last = hub, None

    def __call__(self, event: Event) -> None:
        self.last = self.hub.put.remote(event)

    def flush(self) -> None:
        if self.last is not None:
            import ray  # as in relay: only workers get here

            ray.get(self.last)
