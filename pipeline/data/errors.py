"""Errors about input data. Stage scripts print their message (which says what is wrong and what to do)
without a traceback."""


class DataError(ValueError):
    """Data that cannot be fetched, verified, read or preprocessed as configured."""
