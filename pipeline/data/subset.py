"""How many images of a class a subset keeps (``preprocess.subset``) and how many a search holds out of the train
split (``held_out``): the same rules for every data set and every stage."""

from __future__ import annotations


def take_per_class(count: int, per_class: int | float | None) -> int:
    """Of ``count`` images: all (None), the first ``per_class`` (an int) or that fraction, at least one (a float)."""
    if per_class is None:
        return count
    if isinstance(per_class, float):
        return min(count, max(1, round(per_class * count)))
    return min(count, per_class)


def held_out(num_train: int, fraction: float) -> int:
    """The images a unit holds out of the train split to validate on (a search trial): ``fraction`` of them,
    rounded down, at least one. The one rule: the training loop splits by it, the search and the plan count by it."""
    return max(1, int(num_train * fraction))
