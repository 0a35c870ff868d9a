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


def split_sizes(num_train: int, num_test: int, val_fraction: float | None, train_subset: int | None) -> tuple[int, int]:
    """(train, evaluation) images of one epoch on a data set of that size: the test split, or the held-out part
    of train (``held_out``), and the train split less it, cut to ``train_subset``."""
    if val_fraction is None:
        train, val = num_train, num_test
    else:
        val = held_out(num_train, val_fraction)
        train = num_train - val
    return (min(train, train_subset) if train_subset else train), val
