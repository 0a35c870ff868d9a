"""Shared plumbing of the DVC stage scripts: one clear message for bad settings, no traceback."""

from __future__ import annotations

import signal
import sys
from collections.abc import Callable
from typing import NoReturn

from pipeline.config import ConfigError, Params, format_errors, load_params
from pipeline.data.errors import DataError

PARAMS_FILE = "params.yaml"


def usage(doc: str, argv: list[str], n: int) -> None:
    if len(argv) != n:
        sys.exit(f"usage error: expected {n} arguments, got {len(argv)}: {argv}\n{doc}")


def _terminated(signum: int, frame: object) -> NoReturn:
    raise SystemExit(128 + signum)


def run_stage(
    main: Callable[[Params, list[str]], object], *, checks: Callable[[Params], list[str]] | None = None
) -> NoReturn:
    """Validate params.yaml (and run ``checks``, e.g. ``pipeline.models.checks.check_models`` for stages that
    build nets), then call ``main(params, argv)``; exit 2 with the message on ``ConfigError``."""
    # SIGTERM (`ray job stop`, a scheduler's preemption notice) unwinds like Ctrl-C: cleanup runs, and MLflow
    # runs of unfinished units are closed as FAILED instead of being left RUNNING
    signal.signal(signal.SIGTERM, _terminated)
    try:
        params = load_params(PARAMS_FILE)
        errs = checks(params) if checks is not None else []
        if errs:
            raise ConfigError(format_errors(PARAMS_FILE, errs))
        main(params, sys.argv[1:])
    except ConfigError as e:
        print(f"error: {e}", file=sys.stderr)
        sys.exit(2)
    except DataError as e:  # bad or unreachable input data: the message says what to do
        print(f"error: {e}", file=sys.stderr)
        sys.exit(1)
    sys.exit(0)
