"""A command whose output lines are kept with the time each arrived, so a test can act between them."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import threading
import time
from pathlib import Path

from tests.project import env as project_env


class Watched:
    def __init__(self, cmd: list[str], cwd: Path, log: Path, env: dict[str, str] | None = None):
        self.lines: list[tuple[float, str]] = []
        self.log = log.open("w")
        self.proc = subprocess.Popen(
            cmd,
            cwd=cwd,
            env=env or project_env(),
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            start_new_session=True,  # its own process group: kill it whole
        )
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        for line in self.proc.stdout:
            self.lines.append((time.time(), line))
            self.log.write(line)
            self.log.flush()

    @property
    def text(self) -> str:
        return "".join(line for _, line in self.lines)

    def wait_for(self, pattern: str, timeout: float = 600, after: float = 0.0) -> tuple[float, re.Match]:
        """(arrival time, match) of the first line after time ``after`` matching ``pattern``."""
        rx = re.compile(pattern)
        deadline = time.time() + timeout
        seen = 0
        while time.time() < deadline:
            for t, line in self.lines[seen:]:
                m = rx.search(line)
                if m and t >= after:
                    return t, m
            seen = len(self.lines)
            if self.proc.poll() is not None and not self._reader.is_alive():
                break
            time.sleep(0.05)
        raise AssertionError(f"no line matching {pattern!r} (exit code {self.proc.poll()}):\n{self.text[-5000:]}")

    def kill_group(self) -> None:
        os.killpg(self.proc.pid, signal.SIGKILL)
        self.proc.wait()
        self._reader.join(timeout=10)

    def wait(self, timeout: float = 900) -> int:
        rc = self.proc.wait(timeout=timeout)
        self._reader.join(timeout=10)
        return rc
