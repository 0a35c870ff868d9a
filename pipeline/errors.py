"""Errors a stage reports in one message and exits 1 on; lowest layer, so library modules raise them without
importing stage plumbing (``pipeline.cli``)."""


class StageError(RuntimeError):
    """A stage's work failed in a way its message explains in full (e.g. a crashed search trial): exit 1."""
