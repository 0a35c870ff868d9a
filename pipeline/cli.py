"""Shared plumbing of the DVC stage scripts: one clear message for bad settings, no traceback."""

from __future__ import annotations

import logging
import os
import signal
import sys
import tempfile
import traceback
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import NoReturn

from pipeline.config import ConfigError, Params, format_errors
from pipeline.data.errors import DataError
from pipeline.errors import StageError
from pipeline.redact import redact
from pipeline.settings import load_params

PARAMS_FILE = "params.yaml"


def usage(doc: str, argv: list[str], n: int) -> None:
    if len(argv) != n:
        sys.exit(f"usage error: expected {n} arguments, got {len(argv)}: {argv}\n{doc}")


def _terminated(signum: int, frame: object) -> NoReturn:
    raise SystemExit(128 + signum)


Check = Callable[[Params], list[str]]  # a settings check that needs more than the settings: its problems


def check_storage(params: Params) -> list[str]:
    """``compute.storage_path`` is a directory this user can write: created where missing, a probe file written
    and removed, and the directories it created removed again (the check leaves nothing behind). Without it an
    unwritable path fails inside Ray, well into the stage, with a traceback that names no setting. A URI
    (s3://bucket/prefix) is not probed: no network before work starts."""
    value = params.compute.storage_path
    if "://" in value:
        return []
    path = Path(value).absolute()
    missing = [d for d in (path, *path.parents) if not d.exists()]
    try:
        path.mkdir(parents=True, exist_ok=True)
        fd, probe = tempfile.mkstemp(prefix=".write-probe-", dir=path)
        os.close(fd)
        os.unlink(probe)
    except OSError as e:
        found = next((d for d in (path, *path.parents) if d.exists()), path)
        if isinstance(e, PermissionError):
            why = f"permission denied ({e.filename or path})"
        elif not found.is_dir():
            why = f"not a directory ({found} is a file)"
        else:
            why = f"{(e.strerror or str(e)).lower()} ({e.filename or path})"
        return [
            f"compute.storage_path = {value!r}: cannot write there: {why}; allowed: a directory this user "
            "can write (relative to the repository, created if missing) or s3://bucket/prefix"
        ]
    finally:
        for d in missing:  # deepest first; only what this check created, and only while still empty
            try:
                d.rmdir()
            except OSError:
                break
    return []


class _Std(logging.StreamHandler):
    """A handler writing to whatever ``sys.stdout`` / ``sys.stderr`` is when a record comes (not when the handler
    was made): tqdm's and pytest's redirections then just work."""

    def __init__(self, name: str) -> None:
        super().__init__()
        self.name_ = name

    @property
    def stream(self):  # type: ignore[override]
        return getattr(sys, self.name_)

    @stream.setter
    def stream(self, value) -> None:  # logging.StreamHandler.__init__ sets it; the property decides
        pass


FORMAT = "%(message)s"  # the pipeline's lines start with their stage (``train@embedded: ...``), a unit or a worker


def setup_logging() -> None:
    """The pipeline's own lines (loggers under ``pipeline``), once each: information to stdout, warnings and
    errors to stderr, as plain messages in one format. Other libraries keep Python's default (warnings and
    errors to stderr)."""
    root = logging.getLogger("pipeline")
    if not any(isinstance(h, _Std) for h in root.handlers):
        out, err = _Std("stdout"), _Std("stderr")
        out.addFilter(lambda r: r.levelno < logging.WARNING)
        err.setLevel(logging.WARNING)
        for h in (out, err):
            h.setFormatter(logging.Formatter(FORMAT))
            root.addHandler(h)
    root.setLevel(logging.INFO)
    root.propagate = False


def run_stage(main: Callable[[Params, list[str]], object], *, checks: Check | Sequence[Check] = ()) -> NoReturn:
    """Validate params.yaml (and run ``checks``, e.g. ``pipeline.models.checks.check_models`` for stages that
    build nets, ``check_storage`` for those that write to the run storage), then call ``main(params, argv)``;
    exit 2 with the message on ``ConfigError``, 1 on ``DataError`` or ``StageError``."""
    # SIGTERM (`ray job stop`, a scheduler's preemption notice) unwinds like Ctrl-C: cleanup runs, and MLflow
    # runs of unfinished units are closed as FAILED instead of being left RUNNING
    signal.signal(signal.SIGTERM, _terminated)
    setup_logging()
    try:
        params = load_params(PARAMS_FILE)
        errs = [e for check in ([checks] if callable(checks) else checks) for e in check(params)]
        if errs:
            raise ConfigError(format_errors(PARAMS_FILE, errs))
        main(params, sys.argv[1:])
    except ConfigError as e:
        print(f"error: {e}", file=sys.stderr)
        sys.exit(2)
    except (DataError, StageError) as e:  # bad input data, a failed job: the message says what to do
        print(f"error: {e}", file=sys.stderr)
        sys.exit(1)
    except Exception:  # a bug or a library's error: its traceback helps, but may quote a URL with its password
        sys.stderr.write(redact(traceback.format_exc()))
        sys.exit(1)
    sys.exit(0)
