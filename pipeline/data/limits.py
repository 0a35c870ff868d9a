"""What a download must satisfy: the limits on what a source may send (``Limits``, enforced by ``Meter``): a
size cap, an overall deadline and a minimum rate over a sliding window, each failure naming the setting to
change. The retry policy too (``Retry``). The checksum it is verified against: ``pipeline.checksum``."""

from __future__ import annotations

import time
from collections import deque
from dataclasses import dataclass

from .sources import FetchError


@dataclass(frozen=True)
class Retry:
    attempts: int = 5
    backoff_s: float = 1.0  # sleep backoff_s * 2**i before attempt i+1, capped at 30 s
    timeout_s: float = 60.0  # per connection/read


@dataclass(frozen=True)
class Limits:
    max_bytes: int | None = None  # None: no cap
    deadline_s: float = 3600.0  # the whole fetch: every attempt and wait
    min_rate_bytes_s: float = 0.0  # 0: off
    rate_window_s: float = 60.0
    setting: str = "datasets.<name>.fetch"  # where the user changes these, for the messages
    cap_note: str = ""  # why the cap is what it is (e.g. the official file's known size)


class TooSlow(Exception):
    """An attempt fell below the minimum rate; retried (resuming) while attempts and the deadline allow."""


class Meter:
    """One fetch's bytes and clock against its ``Limits``; raises ``FetchError`` (or ``TooSlow``)."""

    def __init__(self, limits: Limits, shown: str) -> None:
        self.limits, self.shown = limits, shown
        self.start = time.monotonic()
        self.window: deque[tuple[float, int]] = deque()
        self.attempt_start = self.start
        self.received = 0

    def remaining(self) -> float:
        left = self.limits.deadline_s - (time.monotonic() - self.start)
        if left <= 0:
            raise FetchError(
                f"{self.shown}: not finished within the deadline of {self.limits.deadline_s:g} s "
                f"({self.received:,} bytes received); raise {self.limits.setting}.deadline_s for a slow link"
            )
        return left

    def new_attempt(self) -> None:
        self.attempt_start = time.monotonic()
        self.window.clear()

    def check_size(self, size: int, announced: bool) -> None:
        cap = self.limits.max_bytes
        if cap is not None and size > cap:
            what = "announces" if announced else "sent more than"
            raise FetchError(
                f"{self.shown}: the source {what} {size:,} bytes, more than the {cap:,} allowed "
                f"({self.limits.setting}.max_bytes{self.limits.cap_note}); nothing was kept"
            )

    def add(self, n: int, total: int) -> None:
        """``n`` more bytes arrived; ``total`` is the file's size so far."""
        self.received += n
        self.check_size(total, announced=False)
        self.remaining()
        if not self.limits.min_rate_bytes_s:
            return
        now = time.monotonic()
        self.window.append((now, total))
        while len(self.window) > 2 and self.window[1][0] <= now - self.limits.rate_window_s:
            self.window.popleft()
        t0, b0 = self.window[0]
        if now - self.attempt_start >= self.limits.rate_window_s and now > t0:
            rate = (total - b0) / (now - t0)
            if rate < self.limits.min_rate_bytes_s:
                raise TooSlow(
                    f"{rate:,.0f} bytes/s over the last {now - t0:.0f} s, below {self.limits.setting}."
                    f"min_rate_bytes_s = {self.limits.min_rate_bytes_s:g} (over rate_window_s = "
                    f"{self.limits.rate_window_s:g} s)"
                )
