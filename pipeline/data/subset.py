"""How many images of a class a subset keeps (``preprocess.subset``): the same rule for every data set."""

from __future__ import annotations


def take_per_class(count: int, per_class: int | float | None) -> int:
    """Of ``count`` images: all (None), the first ``per_class`` (an int) or that fraction, at least one (a float)."""
    if per_class is None:
        return count
    if isinstance(per_class, float):
        return min(count, max(1, round(per_class * count)))
    return min(count, per_class)
